"""Tiny synthetic data + models for the spine's tests (hand-made, seconds; not the micro
world). Colour images with a white box left or right; caption/colour/position tasks."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from mllmcl_ray.config import (DataSource, EvalSet, ModelSpec, RunConfig, StageConfig,
                               StagesConfig, TaskSpec, TrainerConfig)
from mllmcl_ray.models.tokenizers import train_bpe_tokenizer

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
SIDES = ("left", "right")


def make_tokenizer(path: Path):
    texts = ["What colour is the image? red green blue. Where is the box? left right. "
             "a red image a green image a blue image Q: A:"] * 20
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    tok.save_pretrained(str(path))
    return tok


def make_task(root: Path, task: str, n: int, seed: int = 0, test: bool = False) -> Path:
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        c = list(COLOURS)[(i + seed) % 3]
        side = SIDES[(i // 3 + seed) % 2]
        im = Image.new("RGB", (32, 32), COLOURS[c])
        x0 = 2 if side == "left" else 20
        for x in range(x0, x0 + 10):
            for y in range(10, 20):
                im.putpixel((x, y), (255, 255, 255))
        rel = f"images/{task}-{'t' if test else 'r'}{i}.png"
        im.save(root / rel)
        if task == "caption":
            q, a = "<image>", f"a {c} image"
        elif task == "colour":
            q, a = "<image>\nWhat colour is the image?", c
        else:
            q, a = "<image>\nWhere is the box?", side
        rec = {"id": f"{task}-{i}", "image": rel,
               "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        if test:
            rec["answers"] = [a] * 10
        recs.append(rec)
    path = root / f"{task}{'_test' if test else ''}.json"
    path.write_text(json.dumps(recs))
    return path


def tiny_spec(tok_dir: Path, family: str = "gpt_neox", vocab: int = 300) -> ModelSpec:
    llm = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               vocab_size=vocab, max_position_embeddings=128)
    if family == "llama":
        llm["num_key_value_heads"] = 2
    return ModelSpec(name=f"tiny-{family}", family=family, tokenizer=str(tok_dir), template="micro",
                     max_seq_len=64, llm_config=llm,
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8))


def tiny_run_config(root: Path, method: str = "naive", steps: int | None = None,
                    n_train: int = 48, lr: float = 3e-3, family: str = "gpt_neox") -> RunConfig:
    """A 2-task continual run (alignment on captions, then colour, then position)."""
    root = Path(root)
    data = root / "data"
    if not (root / "tok" / "tokenizer.json").exists():
        make_tokenizer(root / "tok")
    paths = {t: make_task(data, t, n) for t, n in
             (("caption", 16), ("colour", n_train), ("position", n_train))}
    tests = {t: make_task(data, t, 12, seed=1, test=True) for t in ("colour", "position")}
    from mllmcl_ray.models.tokenizers import load_tokenizer

    vocab = len(load_tokenizer(str(root / "tok")))
    return RunConfig(
        name=f"tiny-{method.replace('+', '_')}", seed=0, model=tiny_spec(root / "tok", family, vocab),
        stages=StagesConfig(
            align=StageConfig(lr=1e-2, global_batch_size=8, per_device_batch_size=8, train="projector",
                              parallel="shard_grad_op", warmup_ratio=0.0),
            finetune=StageConfig(lr=lr, global_batch_size=8, per_device_batch_size=4, epochs=2.0,
                                 max_steps=steps, warmup_ratio=0.0)),
        align=[DataSource(path=str(paths["caption"]))],
        tasks=[TaskSpec(name=t, train=[DataSource(path=str(paths[t]))],
                        eval=[EvalSet(name=t, path=str(tests[t]), kind="vqa", max_samples=12,
                                      max_new_tokens=3)])
               for t in ("colour", "position")],
        trainer=TrainerConfig(num_workers=0, log_every=1, feature_cache=False),
        output_dir=str(root / "out"))
