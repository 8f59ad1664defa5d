"""A tiny LLaVA world for trainer tests: coloured squares, two VL tasks, a 32-wide model.

Used by test_strategies.py (spawned processes import it by name) and test_ray_train.py
(the model spec comes from spine_world.tiny_spec, the other tests' fixtures); also the tests' `TrainCallback`s
(an injected worker failure, a logits probe at the end of training).
Everything is written under a caller-given directory.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (250, 250, 250)}
QUESTIONS = {"caption": "Describe the image.", "colour": "What colour is the image?",
             "name": "Name the colour."}


def make_world(root: str | Path, n: int = 32) -> Path:
    """Images + LLaVA-format JSON for `caption`, `colour`, `name`, and a tokenizer; idempotent."""
    from PIL import Image

    from mllmcl_ray.models.tokenizers import train_bpe_tokenizer

    root = Path(root)
    if (root / "tok" / "tokenizer.json").exists():
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for task, q in QUESTIONS.items():
        recs = []
        for i in range(n):
            c = names[i % len(names)]
            rel = f"images/{task}{i}.png"
            Image.new("RGB", (32, 32), COLOURS[c]).save(root / rel)
            recs.append({"id": f"{task}{i}", "image": rel, "conversations": [
                {"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": c}]})
        (root / f"{task}.json").write_text(json.dumps(recs))
    text = " ".join(QUESTIONS.values()) + " " + " ".join(names) + " Q: A:"
    tok = train_bpe_tokenizer([text] * 20, vocab_size=300)
    tok.save_pretrained(str(root / "tok"))
    return root


def tiny_config(root: str | Path, out: str | Path, *, tasks=("colour", "name"), align: bool = False,
                parallel: str = "full_shard", num_workers: int = 2, max_steps: int | None = 6,
                global_batch: int = 8, per_device: int = 2, lr: float = 3e-3, **trainer):
    from spine_world import tiny_spec

    from mllmcl_ray.config import (DataSource, EvalConfig, RunConfig, StageConfig, StagesConfig,
                                   TaskSpec, TrainerConfig)

    root = Path(root)
    spec = dataclasses.replace(tiny_spec(root / "tok", vocab=304), name="tiny")
    stage = dict(lr=lr, global_batch_size=global_batch, per_device_batch_size=per_device,
                 warmup_ratio=0.0, schedule="constant", max_steps=max_steps, epochs=2.0,
                 parallel=parallel)
    return RunConfig(
        name="tiny", model=spec, output_dir=str(out),
        stages=StagesConfig(align=StageConfig(**{**stage, "train": "projector",
                                                 "parallel": "shard_grad_op"}),
                            finetune=StageConfig(**stage)),
        align=[DataSource(path=str(root / "caption.json"), image_root=str(root))] if align else [],
        tasks=[TaskSpec(name=t, train=[DataSource(path=str(root / f"{t}.json"),
                                                  image_root=str(root))]) for t in tasks],
        trainer=TrainerConfig(num_workers=num_workers, cpus_per_worker=1.0, log_every=1,
                              feature_cache=False, **trainer),
        eval=EvalConfig(nl=False, vl=False))


# ---------------------------------------------------------------------------------------
# test callbacks (passed to run_step / RayBackend; pickled to Ray workers by value)
# ---------------------------------------------------------------------------------------
from mllmcl_ray.train.callbacks import TrainCallback  # noqa: E402


class FailOnce(TrainCallback):
    """Worker `rank` raises once, after optimizer step `step`, leaving `marker` behind."""

    def __init__(self, rank: int, step: int, marker: str | Path):
        self.rank, self.step, self.marker = rank, step, str(marker)

    def on_step_end(self, step: int, loss: float) -> None:
        if self.state.rank == self.rank and step == self.step and not Path(self.marker).exists():
            Path(self.marker).write_text(f"failed at step {step} on rank {self.rank}\n")
            raise RuntimeError(f"injected worker failure at step {step} (rank {self.rank})")


class SaveLogits(TrainCallback):
    """At the stage's end, before the strategy gathers the weights: the trained (possibly
    sharded) module's logits on a saved batch (`batch`: a torch.save'd dict); rank 0
    writes them to `out` (tests compare them with the saved checkpoint)."""

    def __init__(self, batch: str | Path, out: str | Path):
        self.batch, self.out = str(batch), str(out)

    def on_train_end(self) -> None:
        import torch

        st = self.state
        batch = torch.load(self.batch, weights_only=True)
        st.module.eval()
        with torch.no_grad():
            logits = st.module(**{k: v.to(st.ctx.device) for k, v in batch.items()})
        if st.rank == 0:
            torch.save(logits.float().cpu(), self.out)
