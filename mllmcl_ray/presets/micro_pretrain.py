"""Base models of the micro preset, made here because nothing can be downloaded.

Task 1 of every run is "the base LLM already exists". On a laptop with no model hub the
micro preset makes its own base models from the micro world, caches them, and starts the
LLaVA recipe from them exactly as a real run starts from Pythia and CLIP:

- a byte-level BPE tokenizer trained on the corpus and the VL text;
- a GPT-NeoX causal LM pretrained on the corpus (`GPTNeoXForCausalLM`, sizes in
  `LLM_SIZES`; 3.6M tokens at lr 3e-3 for the 1M-parameter size, calibrated so that the
  Lambada-like skill is well formed);
- a CLIP model (`CLIPModel`) trained contrastively on image–caption pairs (the scene
  captions and, as real CLIP saw text in web images, the OCR images as "the word X"),
  whose vision tower becomes the frozen tower of the MLLM.

Each is saved with `save_pretrained` into a cache directory keyed by the world's content
hash and the size settings (written atomically), so a second run reuses them. Skill
figures (last-word accuracy, multiple-choice accuracy, CLIP retrieval) are written beside
them in `skill.json` and printed: they must be well above chance.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import config_hash
from ..io import atomic_dir


@dataclass(frozen=True)
class LLMSize:
    """A micro GPT-NeoX size."""

    name: str
    hidden: int
    layers: int
    heads: int
    ffn: int
    tokens: int  # pretraining tokens
    lr: float = 2e-3  # peak pretraining lr (cosine, 5% warm-up)
    seq_len: int = 256
    batch: int = 16


LLM_SIZES: dict[str, LLMSize] = {
    "nano": LLMSize("nano", 32, 2, 2, 128, 60_000),  # unit tests only: seconds
    # ~0.5M non-embedding params. Recalibrated 2026-11-26 (third session): at 2M tokens and
    # lr 2e-3 the Lambada-like skill had not appeared (0.13); 3.6M at 3e-3 gave 0.39; 6M at
    # 4e-3 gives 0.52 (ARC-E-like 0.94), ~4 min on 2 cores (README, micro scale study).
    "micro-xs": LLMSize("micro-xs", 96, 3, 3, 384, 6_000_000, lr=4e-3),
    # ~1M. Calibrated 2026-11-26 on the micro world (stories 0.75 of the corpus): at lr 3e-3
    # the Lambada-like skill (copying an entity from the context) appears between 1.5M and
    # 2M tokens; 3.6M tokens (878 steps of 4096, cosine) is the budget (README, micro run).
    "micro-s": LLMSize("micro-s", 128, 4, 4, 512, 3_600_000, lr=3e-3),
    "micro-m": LLMSize("micro-m", 192, 4, 4, 768, 3_000_000),  # ~2M
}


@dataclass(frozen=True)
class CLIPSize:
    name: str
    image_size: int
    patch_size: int
    hidden: int
    layers: int
    heads: int
    steps: int
    batch: int = 64
    lr: float = 1e-3


CLIP_SIZES: dict[str, CLIPSize] = {
    "nano": CLIPSize("nano", 32, 8, 32, 2, 2, 20),
    # 4800 steps: the tower learns to read the OCR words (zero-shot "the word X" 0.92 at
    # 4800 steps, 0.81 at 2400, 0.12 at 600, chance 0.05; scene retrieval 0.985), ~6 min
    # on 2 cores
    "micro": CLIPSize("micro", 32, 8, 96, 3, 4, 4800),
}


def settings_key(size: LLMSize | CLIPSize) -> str:
    """Short hash of a size's settings (widths, tokens or steps, lr, batch): part of its
    cache directory's name, so changing a size's budget pretrains it again instead of
    reusing a base made with the old settings."""
    return config_hash(size)[:8]


def set_threads() -> None:
    import os

    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 4)))


# ---------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------
def vl_texts(json_paths: list[Path]):
    for p in json_paths:
        for rec in json.loads(Path(p).read_text()):
            for turn in rec["conversations"]:
                yield turn["value"].replace("<image>", "")


def corpus_texts(path: Path):
    with open(path) as f:
        for line in f:
            yield json.loads(line)["text"]


def train_tokenizer(corpus: Path, vl_jsons: list[Path], out_dir: Path, vocab_size: int = 1024):
    from ..models.tokenizers import train_bpe_tokenizer

    def texts():
        yield from corpus_texts(corpus)
        yield from vl_texts(vl_jsons)
        # the prompt scaffolding of the templates
        yield "Q: A: USER: ASSISTANT: What is the object in the image? Please only answer"

    tok = train_bpe_tokenizer(texts(), vocab_size=vocab_size)
    with atomic_dir(out_dir) as tmp:
        tok.save_pretrained(str(tmp))
    return tok


# ---------------------------------------------------------------------------------------
# the base LLM
# ---------------------------------------------------------------------------------------
def _packed_tokens(tok, corpus: Path) -> np.ndarray:
    eos = tok.eos_token_id
    ids: list[int] = []
    batch: list[str] = []
    for text in corpus_texts(corpus):
        batch.append(text)
        if len(batch) == 1024:
            for row in tok(batch, add_special_tokens=False)["input_ids"]:
                ids.extend(row + [eos])
            batch = []
    if batch:
        for row in tok(batch, add_special_tokens=False)["input_ids"]:
            ids.extend(row + [eos])
    return np.asarray(ids, dtype=np.int64)


def llm_config(size: LLMSize, vocab_size: int) -> dict:
    return dict(model_type="gpt_neox", hidden_size=size.hidden, num_hidden_layers=size.layers,
                num_attention_heads=size.heads, intermediate_size=size.ffn, vocab_size=vocab_size,
                max_position_embeddings=1024, rotary_pct=0.25, use_parallel_residual=True,
                tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)


def pretrain_llm(tok, corpus: Path, size: LLMSize, out_dir: Path, seed: int = 0,
                 progress: bool = True) -> dict:
    """Pretrain a GPT-NeoX on the corpus (packed sequences, AdamW, cosine)."""
    from transformers import AutoConfig, GPTNeoXForCausalLM
    from transformers import get_cosine_schedule_with_warmup

    set_threads()
    torch.manual_seed(seed)
    data = _packed_tokens(tok, corpus)
    cfg = dict(llm_config(size, len(tok)))
    cfg.pop("model_type")
    model = GPTNeoXForCausalLM(AutoConfig.for_model("gpt_neox", **cfg))
    per_step = size.batch * size.seq_len
    steps = max(1, size.tokens // per_step)
    opt = torch.optim.AdamW(model.parameters(), lr=size.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = get_cosine_schedule_with_warmup(opt, max(1, steps // 20), steps)
    rng = np.random.default_rng(seed)
    n_windows = (len(data) - 1) // size.seq_len
    t0 = time.perf_counter()
    model.train()
    losses = []
    for step in tqdm(range(steps), desc=f"pretrain LLM {size.name}", disable=not progress):
        starts = rng.integers(0, n_windows, size=size.batch) * size.seq_len
        x = torch.from_numpy(np.stack([data[s:s + size.seq_len] for s in starts]))
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
    n_params = sum(p.numel() for p in model.parameters())
    return {"params": n_params, "steps": steps, "tokens": steps * per_step,
            "seconds": round(time.perf_counter() - t0, 1),
            "first_loss": losses[0], "last_loss": float(np.mean(losses[-20:]))}


# ---------------------------------------------------------------------------------------
# the CLIP tower
# ---------------------------------------------------------------------------------------
def clip_config(size: CLIPSize, vocab_size: int, pad_id: int, eos_id: int):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=size.hidden, intermediate_size=size.hidden * 4,
                         num_hidden_layers=2, num_attention_heads=size.heads,
                         max_position_embeddings=64, pad_token_id=pad_id, eos_token_id=eos_id,
                         bos_token_id=eos_id),
        vision_config=dict(hidden_size=size.hidden, intermediate_size=size.hidden * 4,
                           num_hidden_layers=size.layers, num_attention_heads=size.heads,
                           image_size=size.image_size, patch_size=size.patch_size),
        projection_dim=size.hidden)


def _caption_pairs(caption_json: Path, image_root: Path) -> list[tuple[str, str]]:
    recs = json.loads(Path(caption_json).read_text())
    return [(str(Path(image_root) / r["image"]), r["conversations"][-1]["value"]) for r in recs]


# Bump when the CLIP pretraining pairs change: it is part of the CLIP cache key.
CLIP_DATA_VERSION = "2"


def ocr_caption(word: str) -> str:
    """The CLIP caption of an OCR image: real CLIP saw text in web images with alt-texts
    naming it, which is why its features can be read (TextVQA, OCR-VQA)."""
    return f"the word {word}"


def _ocr_pairs(ocr_json: Path, image_root: Path, scenes_jsonl: Path) -> list[tuple[str, str]]:
    """The word comes from the image's scene (an OCR record may ask a yes/no question)."""
    words = {}
    with open(scenes_jsonl) as f:
        for line in f:
            scene = json.loads(line)
            if scene.get("kind") == "ocr":
                words[scene["image"]] = scene["word"]
    return [(str(Path(image_root) / r["image"]), ocr_caption(words[r["image"]]))
            for r in json.loads(Path(ocr_json).read_text())]


def clip_pairs(caption_json: Path, ocr_json: Path | None, image_root: Path,
               scenes_jsonl: Path | None = None) -> list[tuple[str, str]]:
    """CLIP's image–text pairs: every alignment caption (the scene pool) and, since data
    version 2, every OCR training image with "the word X" (`ocr_caption`; the words are
    read from the world's scenes file, `scenes_jsonl`)."""
    pairs = _caption_pairs(caption_json, image_root)
    if ocr_json is not None:
        if scenes_jsonl is None:
            raise ValueError("OCR pairs need the world's scenes file (vl/scenes.jsonl)")
        pairs += _ocr_pairs(ocr_json, image_root, scenes_jsonl)
    return pairs


def _clip_text(tok, captions: list[str], max_len: int = 32):
    enc = tok([c + tok.eos_token for c in captions], padding="max_length", truncation=True,
              max_length=max_len, add_special_tokens=False, return_tensors="pt")
    # CLIP pools at the eos token; make sure every row has one (truncated rows too).
    ids = enc["input_ids"]
    mask = enc["attention_mask"]
    if tok.padding_side == "left":
        raise ValueError("CLIP text batches must be right-padded")
    return ids, mask


def pretrain_clip(tok, pairs: list[tuple[str, str]], size: CLIPSize, out_dir: Path,
                  seed: int = 0, progress: bool = True) -> dict:
    """Contrastive CLIP training on (image path, text) pairs (`CLIPModel(return_loss=True)`;
    `clip_pairs` gives the micro world's)."""
    from transformers import CLIPModel, get_cosine_schedule_with_warmup

    from ..models.build import make_image_processor
    from ..data.images import pixel_values

    set_threads()
    torch.manual_seed(seed)
    tok = _right_padded(tok)
    proc = make_image_processor(size.image_size)
    pix = torch.cat([pixel_values(proc, [p for p, _ in pairs[i:i + 256]])
                     for i in range(0, len(pairs), 256)])
    ids, mask = _clip_text(tok, [c for _, c in pairs])
    model = CLIPModel(clip_config(size, len(tok), tok.pad_token_id, tok.eos_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=size.lr, weight_decay=0.05)
    sched = get_cosine_schedule_with_warmup(opt, max(1, size.steps // 20), size.steps)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    model.train()
    losses = []
    for _ in tqdm(range(size.steps), desc="pretrain CLIP", disable=not progress):
        idx = torch.from_numpy(rng.choice(len(pairs), size=min(size.batch, len(pairs)), replace=False))
        out = model(input_ids=ids[idx], attention_mask=mask[idx], pixel_values=pix[idx],
                    return_loss=True)
        out.loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
    model.eval()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        proc.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return {"params": sum(p.numel() for p in model.vision_model.parameters()),
            "pairs": len(pairs), "data_version": CLIP_DATA_VERSION, "steps": size.steps, "seconds": round(time.perf_counter() - t0, 1),
            "first_loss": losses[0], "last_loss": float(np.mean(losses[-20:]))}


def _right_padded(tok):
    import copy

    t = copy.copy(tok)
    t.padding_side = "right"
    return t


@torch.no_grad()
def _clip_choices(clip_dir: Path, images: list[str], texts: list[str]) -> list[int]:
    """For each image, the index of the text CLIP ranks first (cosine of the projections)."""
    from transformers import AutoTokenizer, CLIPModel

    from ..models.build import make_image_processor
    from ..data.images import pixel_values

    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    tok = _right_padded(AutoTokenizer.from_pretrained(str(clip_dir)))
    proc = make_image_processor(model.config.vision_config.image_size)
    pix = pixel_values(proc, images)
    ids, mask = _clip_text(tok, texts)
    img = F.normalize(_pooled(model.get_image_features(pixel_values=pix)), dim=-1)
    txt = F.normalize(_pooled(model.get_text_features(input_ids=ids, attention_mask=mask)), dim=-1)
    return (img @ txt.T).argmax(-1).tolist()


def clip_retrieval_accuracy(clip_dir: Path, caption_json: Path, image_root: Path,
                            n: int = 200) -> dict:
    """Image→text top-1 retrieval among `n` test captions; a hit is the right caption
    text (several images can share a caption). Chance = mean share of the true caption."""
    pairs = _caption_pairs(caption_json, image_root)[:n]
    caps = [c for _, c in pairs]
    uniq = sorted(set(caps))
    pred = _clip_choices(clip_dir, [p for p, _ in pairs], uniq)
    acc = float(np.mean([uniq[p] == c for p, c in zip(pred, caps)]))
    chance = 1.0 / len(uniq)
    return {"retrieval_top1": acc, "candidates": len(uniq), "chance": chance}


def clip_ocr_accuracy(clip_dir: Path, ocr_json: Path, image_root: Path, n: int = 200) -> dict:
    """Can the tower read? Zero-shot choice of "the word X" among every OCR word, on `n`
    OCR test images (chance 1 / number of words)."""
    recs = json.loads(Path(ocr_json).read_text())[:n]
    words = sorted({r["conversations"][-1]["value"] for r in recs})
    pred = _clip_choices(clip_dir, [str(Path(image_root) / r["image"]) for r in recs],
                         [ocr_caption(w) for w in words])
    acc = float(np.mean([words[p] == r["conversations"][-1]["value"]
                         for p, r in zip(pred, recs)]))
    return {"ocr_top1": acc, "ocr_chance": 1.0 / len(words)}


def _pooled(out) -> torch.Tensor:
    """Projected embeddings from get_*_features (a tensor, or an output with pooler_output)."""
    return out.pooler_output if hasattr(out, "pooler_output") else out
