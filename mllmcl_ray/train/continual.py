"""The continual run: base model → task 2 … task T, checkpoint and evaluate after each.

`ContinualRun` is the driver. It plans the steps (alignment, then the VL tasks in order,
or all of them mixed for the LLaVA recipe), runs each on a training backend (in-process
`LocalBackend`, or Ray Train's `RayBackend` in train/ray_trainer.py), records finished
steps in `run_state.json`, and calls an evaluator after every task. A rerun with the same
config skips finished steps, starting from the last checkpoint, so no work is repeated.

A task with `eval_every_epoch` (the EMT protocol: one lr schedule, one optimizer, one
adapter, evaluated after each epoch) also leaves a checkpoint at each epoch end but the
last; the evaluator is called for each, in epoch order, with ``step.epoch`` = e (1..E-1),
then for the task's end with ``step.epoch`` = 0 (the last epoch's model).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import RunConfig, config_hash, to_dict
from ..methods.base import method_revisions
from .callbacks import ReportMetrics, TrainCallback
from .checkpoint import RunState, clean_stale_temps, is_complete
from .task import StepPlan, plan_steps, run_step


def run_id_for(cfg: RunConfig) -> str:
    """Stable id: the run name plus a hash of everything that changes results — the config
    and the revisions (above 1) of its methods' code."""
    data = to_dict(cfg)
    data.pop("output_dir", None)
    data.pop("trainer", None)  # workers/strategy do not change what is learned
    data.pop("eval", None)
    revisions = method_revisions(cfg.method)
    if revisions:  # absent at revision 1, so ids of unrevised methods stay as they were
        data["method_revisions"] = revisions
    return f"{cfg.name}-{config_hash(data)}"


class LocalBackend:
    """Runs a step in this process (no Ray): the plain loop."""

    name = "local"

    def __init__(self, progress: bool = True, report: Callable[[dict], None] | None = None,
                 callbacks: Sequence[TrainCallback] = ()):
        self.progress = progress
        self.callbacks = list(callbacks) + ([ReportMetrics(report)] if report is not None else [])

    def run(self, cfg: RunConfig, step: StepPlan, prev_checkpoint: str | None, out_dir: Path,
            run_dir: Path) -> dict:
        cache = Path(cfg.output_dir) / "cache"
        return run_step(cfg, step, prev_checkpoint, out_dir, callbacks=self.callbacks,
                        cache_dir=cache, progress=self.progress,
                        feature_cache_dir=cache / "features" if cfg.trainer.feature_cache else None)


@dataclass
class StepOutcome:
    step: StepPlan
    checkpoint: str
    summary: dict
    skipped: bool  # finished in an earlier run


class ContinualRun:
    """Drive one run's steps, resuming where an earlier run of the same config stopped."""

    def __init__(self, cfg: RunConfig, backend=None,
                 evaluate: Callable[[RunConfig, StepPlan | None, str, str], None] | None = None,
                 log: Callable[[str], None] = print):
        self.cfg = cfg
        self.run_id = run_id_for(cfg)
        self.run_dir = Path(cfg.output_dir) / "runs" / self.run_id
        self.backend = backend or LocalBackend()
        self.evaluate = evaluate
        self.log = log

    def checkpoint_dir(self, step: StepPlan) -> Path:
        return self.run_dir / "checkpoints" / step.key

    def run(self) -> list[StepOutcome]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(self.run_dir / "checkpoints")
        (self.run_dir / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=1))
        state = RunState.load(self.run_dir, self.run_id)
        steps = plan_steps(self.cfg)
        outcomes: list[StepOutcome] = []
        if self.evaluate is not None:
            self.evaluate(self.cfg, None, "", self.run_id)  # task 1: the base model
        prev = state.last_checkpoint()
        for i, step in enumerate(steps):
            done = state.finished(step.key)
            if done is not None and is_complete(done["checkpoint"]):
                self.log(f"[{self.run_id}] step {i + 1}/{len(steps)} {step.key}: done earlier, skipped")
                outcomes.append(StepOutcome(step, done["checkpoint"], done.get("summary", {}), True))
                prev = done["checkpoint"]
                self._evaluate(step, done["checkpoint"], done.get("summary", {}))
                continue
            self.log(f"[{self.run_id}] step {i + 1}/{len(steps)} {step.key}: training "
                     f"({step.stage}, task {step.task_index} {step.task_name})")
            out = self.checkpoint_dir(step)
            summary = self.backend.run(self.cfg, step, prev, out, self.run_dir)
            if not is_complete(out):
                raise RuntimeError(f"step {step.key} finished without a complete checkpoint at {out}")
            slim = {k: v for k, v in summary.items() if k != "losses"}
            state.done.append({"key": step.key, "checkpoint": str(out), "summary": slim})
            state.save(self.run_dir)
            self.log(f"[{self.run_id}] step {step.key}: loss {summary.get('first_loss', 0):.3f} → "
                     f"{summary.get('last_loss', 0):.3f} in {summary.get('steps')} steps, "
                     f"{summary.get('tokens_per_s', 0):.0f} tok/s")
            outcomes.append(StepOutcome(step, str(out), summary, False))
            prev = str(out)
            self._evaluate(step, str(out), summary)
        return outcomes

    def _evaluate(self, step: StepPlan, checkpoint: str, summary: dict) -> None:
        """Evaluate the step's epoch checkpoints (epoch order), then its end (epoch 0)."""
        if self.evaluate is None or not step.evaluate:
            return
        for epoch, path in summary.get("epoch_checkpoints") or []:
            self.evaluate(self.cfg, replace(step, epoch=int(epoch)), path, self.run_id)
        self.evaluate(self.cfg, step, checkpoint, self.run_id)
