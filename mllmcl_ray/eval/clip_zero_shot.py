"""Zero-shot CLIP classification of a vision tower (Zhai et al. Fig. 4–7 reference line).

EMT compares the MLLM's classification accuracy with the zero-shot accuracy of its own
vision encoder. `clip_zero_shot_accuracy` computes the latter the CLIP way: embed one
prompt per class with the CLIP *text* tower (``"a photo of a {label}"`` by default),
embed each image with the vision tower (the same LLaVA letterbox + CLIP preprocessing the
MLLM sees, `data.images.pixel_values`), and predict the class of highest cosine
similarity. It needs a full ``CLIPModel`` (both towers): a hub id / directory of one
(e.g. ``openai/clip-vit-large-patch14-336``, or the micro preset's CLIP dir, which keeps
both towers), or a loaded ``CLIPModel`` with its tokenizer and image processor.

Text inputs: CLIP pools the text at its end-of-text token. Tokenizers that add it
(OpenAI's ``CLIPTokenizer``) are used as they are; for tokenizers that do not (the micro
world's BPE) the eos token is appended, as the micro CLIP was trained.

`clip_zero_shot_rows` turns accuracies into result rows (metric ``clip_zero_shot``, split
``emt``, trained_task_index 1, eval_task = the dataset's name) with every column of the
ResultStore schema; `evaluate_clip_zero_shot` scores a list of EvalSets and appends the
rows that are not stored yet.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

CLIP_METRIC = "clip_zero_shot"
CLIP_PROMPT = "a photo of a {label}"
CLIP_PROMPT_VERSION = "clip-zs-v1"


@dataclass
class ClipZeroShot:
    """Per-set outcome: accuracy (fraction), predictions (label index per record)."""

    accuracy: float
    n: int
    labels: list[str]
    predictions: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)


def load_clip(clip_dir: str, device: str = "cpu"):
    """(CLIPModel, tokenizer, image processor) from a hub id or directory (offline-safe:
    from_pretrained honours HF_HUB_OFFLINE)."""
    from transformers import AutoTokenizer, CLIPModel

    from ..models.build import make_image_processor

    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(clip_dir).model_type
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"CLIP {clip_dir!r} is not a local directory or an available "
                                f"hub id: {e}") from e
    if model_type != "clip":
        raise FileNotFoundError(f"CLIP {clip_dir!r} is a {model_type!r} checkpoint, not a full "
                                "CLIPModel with its text tower")
    try:
        model = CLIPModel.from_pretrained(clip_dir).to(device).eval()
    except (OSError, ValueError) as e:
        raise FileNotFoundError(
            f"CLIP {clip_dir!r} is not a local directory or an available hub id of a full "
            f"CLIPModel (text and vision towers): {e}") from e
    tok = AutoTokenizer.from_pretrained(clip_dir)
    proc = make_image_processor(model.config.vision_config.image_size, clip_dir)
    return model, tok, proc


def _pooled(out) -> torch.Tensor:
    return out.pooler_output if hasattr(out, "pooler_output") else out


def text_batch(tokenizer, texts: Sequence[str], max_len: int, eos_id: int | None,
               pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids + mask; every row ends with eos (appended where the tokenizer did not)."""
    rows = []
    for t in texts:
        ids = list(tokenizer(t, add_special_tokens=True)["input_ids"])
        if eos_id is not None and (not ids or ids[-1] != eos_id):
            ids = ids + [eos_id]
        if len(ids) > max_len:
            ids = ids[:max_len - 1] + ([eos_id] if eos_id is not None else [ids[max_len - 1]])
        rows.append(ids)
    width = max(len(r) for r in rows)
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


@torch.no_grad()
def clip_zero_shot(clip_dir_or_model: Any, records: Sequence[dict], labels: Sequence[str],
                   prompt: str = CLIP_PROMPT, *, tokenizer=None, image_processor=None,
                   batch_size: int = 64, device: str = "cpu") -> ClipZeroShot:
    """Zero-shot classification of `records` (each with ``image``: a path, and ``label``:
    one of `labels`) among `labels`; see the module doc."""
    from ..data.images import pixel_values

    labels = [str(x) for x in labels]
    if not labels:
        raise ValueError("clip_zero_shot needs at least one label")
    if "{label}" not in prompt:
        raise ValueError(f"prompt {prompt!r} must contain '{{label}}'")
    if isinstance(clip_dir_or_model, (str, Path)):
        model, tok, proc = load_clip(str(clip_dir_or_model), device)
        tokenizer = tokenizer or tok
        image_processor = image_processor or proc
    else:
        model = clip_dir_or_model
        if tokenizer is None or image_processor is None:
            raise ValueError("a CLIPModel object needs tokenizer= and image_processor=")
    model.eval()
    index = {lab: i for i, lab in enumerate(labels)}
    targets = []
    for r in records:
        lab = str(r.get("label", ""))
        if lab not in index:
            raise ValueError(f"record {r.get('id')!r}: label {lab!r} is not among {labels}")
        targets.append(index[lab])
    tcfg = model.config.text_config
    eos = getattr(tcfg, "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    ids, mask = text_batch(tokenizer, [prompt.format(label=lab) for lab in labels],
                           int(getattr(tcfg, "max_position_embeddings", 77)), eos, pad)
    txt = F.normalize(_pooled(model.get_text_features(input_ids=ids.to(device),
                                                      attention_mask=mask.to(device))).float(),
                      dim=-1)
    preds: list[int] = []
    for i in range(0, len(records), batch_size):
        chunk = records[i:i + batch_size]
        pix = pixel_values(image_processor, [str(r["image"]) for r in chunk]).to(device)
        img = F.normalize(_pooled(model.get_image_features(pixel_values=pix)).float(), dim=-1)
        preds.extend((img @ txt.T).argmax(-1).tolist())
    n = len(records)
    acc = float(np.mean([p == t for p, t in zip(preds, targets)])) if n else float("nan")
    return ClipZeroShot(acc, n, labels, preds, targets)


@dataclass
class ClipTextEmbedder:
    """EMT §7 (1)'s sentence embedding: ``texts -> (N, D)`` L2-normalised CLIP text
    features (the projection CLIP's zero-shot classification compares images with;
    normalised, so ``argmin ||e_i - e(y)||`` is the cosine-nearest label). Underscores
    become spaces ("aquarium_fish" -> "aquarium fish"), as in EMT's label texts."""

    clip: str
    model: Any
    tokenizer: Any
    device: str = "cpu"

    @property
    def name(self) -> str:
        return f"clip-text:{self.clip}"

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t).replace("_", " ") for t in texts]
        tcfg = self.model.config.text_config
        eos = getattr(tcfg, "eos_token_id", None)
        if eos is None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
        ids, mask = text_batch(self.tokenizer, texts,
                               int(getattr(tcfg, "max_position_embeddings", 77)), eos,
                               getattr(self.tokenizer, "pad_token_id", None))
        out = _pooled(self.model.get_text_features(input_ids=ids.to(self.device),
                                                   attention_mask=mask.to(self.device)))
        return F.normalize(out.float(), dim=-1).cpu().numpy()


_EMBEDDERS: dict[tuple[str, str], ClipTextEmbedder] = {}


def clip_text_embedder(clip: str, device: str = "cpu") -> ClipTextEmbedder:
    """The (cached) CLIP text embedder of a full CLIP checkpoint (hub id or dir)."""
    key = (str(clip), device)
    if key not in _EMBEDDERS:
        model, tok, _ = load_clip(str(clip), device)
        _EMBEDDERS[key] = ClipTextEmbedder(str(clip), model, tok, device)
    return _EMBEDDERS[key]


def clip_zero_shot_accuracy(clip_dir_or_model: Any, records: Sequence[dict],
                            labels: Sequence[str], prompt: str = CLIP_PROMPT, **kwargs) -> float:
    """Zero-shot CLIP accuracy (fraction) of `records` among `labels` (see `clip_zero_shot`)."""
    return clip_zero_shot(clip_dir_or_model, records, labels, prompt, **kwargs).accuracy


def set_labels(records: Sequence[dict]) -> list[str]:
    """The class set of an EMT record list: the first record's ``labels``, else the sorted
    set of ``label`` values (as eval.suites.emt does)."""
    for r in records:
        if r.get("labels"):
            return [str(x) for x in r["labels"]]
    return sorted({str(r["label"]) for r in records if "label" in r})


def clip_zero_shot_rows(run_meta: dict, dataset: str, res: ClipZeroShot, *, clip: str,
                        prompt: str, eval_set_hash: str) -> list[dict]:
    """Result rows (full ResultStore schema) for one dataset's CLIP zero-shot accuracy."""
    return [dict(run_meta, trained_task_index=1, trained_task="zero_shot", eval_task=dataset,
                 eval_task_index=1, dataset=dataset, split="emt", metric=CLIP_METRIC,
                 value=float(res.accuracy), n=int(res.n), time=time.time(),
                 checkpoint_id=str(clip), eval_set_hash=eval_set_hash,
                 prompt_version=f"{CLIP_PROMPT_VERSION}:{prompt}",
                 decoding=json.dumps({"clip": str(clip), "prompt": prompt,
                                      "labels": len(res.labels)}, sort_keys=True))]


def evaluate_clip_zero_shot(clip: str, eval_sets: Sequence, store, run_meta: dict, *,
                            prompt: str = CLIP_PROMPT, seed: int = 0, device: str = "cpu",
                            log=print) -> list[dict]:
    """Score every EvalSet whose row is not in `store` yet (a `results.ResultStore`, or
    None to compute only); append and return the new rows. `run_meta` holds the run
    columns (run_id, study, model, scale, method, method_params, seed)."""
    from .suites.common import content_hash
    from .suites.vl import load_eval_records, record_fingerprint

    have = store.keys() if store is not None else set()
    todo = [e for e in eval_sets
            if (run_meta["run_id"], 1, e.name, e.name, CLIP_METRIC) not in have]
    if not todo:
        return []
    model, tok, proc = load_clip(clip, device)
    rows: list[dict] = []
    for es in todo:
        records = load_eval_records(es, seed)
        res = clip_zero_shot(model, records, set_labels(records), prompt, tokenizer=tok,
                             image_processor=proc, device=device)
        h = content_hash(["clip_zero_shot", prompt, [record_fingerprint(r) for r in records]])
        new = clip_zero_shot_rows(run_meta, es.name, res, clip=clip, prompt=prompt,
                                  eval_set_hash=h)
        if store is not None:
            store.append(new)
        rows.extend(new)
        log(f"[clip zero-shot] {es.name}: {res.accuracy:.3f} over {res.n} images "
            f"({len(res.labels)} classes, prompt {prompt!r})")
    return rows
