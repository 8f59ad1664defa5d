"""Tiny shared test fixtures: a byte-level BPE tokenizer, a 32-wide model spec, and a
coloured-squares VL task written under a caller-given directory."""
from __future__ import annotations

import json
from pathlib import Path

from mllmcl_ray.config import ModelSpec

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
QUESTION = "What colour is the image?"


def make_tokenizer(path: str | Path):
    """Train the tiny BPE on the VL text and save it at `path`; returns the tokenizer."""
    from mllmcl_ray.models.tokenizers import train_bpe_tokenizer

    text = f"{QUESTION} Name the colour. And again? Describe the image. " + " ".join(COLOURS)
    tok = train_bpe_tokenizer([text + " Q: A:"] * 20, vocab_size=300)
    Path(path).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(path))
    return tok


def tiny_spec(tok_dir: str | Path, family: str = "gpt_neox", vocab_size: int = 304) -> ModelSpec:
    """A random 2-layer, 32-wide LM of `family` with a 32 px, patch-8 CLIP tower (16 patches)."""
    llm = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               vocab_size=vocab_size, max_position_embeddings=128)
    if family == "llama":
        llm["num_key_value_heads"] = 2
    return ModelSpec(name=f"tiny-{family}", family=family, tokenizer=str(tok_dir), template="micro",
                     max_seq_len=64, llm_config=llm,
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8))


def make_task(root: str | Path, task: str, n: int) -> Path:
    """`n` single-colour 32 px images and a LLaVA-format JSON `<root>/<task>.json`."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    recs = []
    for i in range(n):
        c = names[i % len(names)]
        rel = f"images/{task}-r{i}.png"
        Image.new("RGB", (32, 32), COLOURS[c]).save(root / rel)
        recs.append({"id": f"r{i}", "image": rel, "conversations": [
            {"from": "human", "value": "<image>\n" + QUESTION}, {"from": "gpt", "value": c}]})
    p = root / f"{task}.json"
    p.write_text(json.dumps(recs))
    return p
