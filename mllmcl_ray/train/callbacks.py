"""Training callbacks: code that runs at fixed points of a step without the trainer
knowing what it does (OLMo-core's callbacks are the model).

The trainer (`task.run_step` and `loop.train_stage`) calls every hook of every callback
in order, on every rank; each hook is a no-op here. A callback is handed to
`run_step(callbacks=[...])`, `LocalBackend(callbacks=[...])` or
`RayBackend(callbacks=[...])`; with Ray it is pickled to each worker (define it at a
module's top level), so each worker holds its own copy. `state` (a `TrainState`) is set
before the first hook and tells a hook where it is: the task context (rank, world size,
task), the strategy, the MLLM and the wrapped training module.

Hooks, in the order a step sees them:

- ``on_stage_start()``: the model is wrapped and ready, before the first optimizer step;
- ``on_step_end(step, loss)``: after every optimizer step (``step`` counts from 1);
- ``on_log(metrics)``: every ``trainer.log_every`` steps and at the last step (loss, lr,
  tokens/s over all workers, step, samples seen, task, stage);
- ``on_checkpoint(step, optimizer_state)``: every ``trainer.checkpoint_every`` steps (not
  at the last), with this rank's optimizer + scheduler state (mid-task resume);
- ``on_epoch_end(epoch, step)``: when the stage finishes an epoch of its data (epoch
  ``E`` is the stage's last step);
- ``on_train_end()``: after the last step, before the strategy gathers the weights;
- ``on_save(path)``: rank 0, after the step's (task-end) checkpoint is written.

Raising from a hook stops the step (a test's injected worker failure does this).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrainState:
    """What a callback may look at: set on every callback before its first hook."""

    step: Any  # the StepPlan being trained (key, task index/name, stage)
    ctx: Any  # the methods' TaskContext (rank, world size, device, task)
    strategy: Any  # the Strategy (train/strategies)
    mllm: Any  # the MLLM (tokenizer, spec; .model is the model being trained)
    module: Any = None  # the strategy-wrapped MLLMForTraining

    @property
    def rank(self) -> int:
        return self.ctx.rank


class TrainCallback:
    """Base class: every hook does nothing."""

    state: TrainState | None = None

    def on_stage_start(self) -> None:
        pass

    def on_step_end(self, step: int, loss: float) -> None:
        pass

    def on_log(self, metrics: dict) -> None:
        pass

    def on_checkpoint(self, step: int, optimizer_state: dict) -> None:
        pass

    def on_epoch_end(self, epoch: int, step: int) -> None:
        pass

    def on_train_end(self) -> None:
        pass

    def on_save(self, path: Path) -> None:
        pass


class CallbackList(TrainCallback):
    """Several callbacks run as one, in order."""

    def __init__(self, callbacks: Iterable[TrainCallback] = ()):
        self.callbacks = list(callbacks)

    def bind(self, state: TrainState) -> CallbackList:
        self.state = state
        for c in self.callbacks:
            c.state = state
        return self

    def on_stage_start(self):
        for c in self.callbacks:
            c.on_stage_start()

    def on_step_end(self, step, loss):
        for c in self.callbacks:
            c.on_step_end(step, loss)

    def on_log(self, metrics):
        for c in self.callbacks:
            c.on_log(metrics)

    def on_checkpoint(self, step, optimizer_state):
        for c in self.callbacks:
            c.on_checkpoint(step, optimizer_state)

    def on_epoch_end(self, epoch, step):
        for c in self.callbacks:
            c.on_epoch_end(epoch, step)

    def on_train_end(self):
        for c in self.callbacks:
            c.on_train_end()

    def on_save(self, path):
        for c in self.callbacks:
            c.on_save(path)


class ReportMetrics(TrainCallback):
    """Hands every `on_log` metrics dict to a function (a progress log, Ray's report)."""

    def __init__(self, report: Callable[[dict], None]):
        self.report = report

    def on_log(self, metrics: dict) -> None:
        self.report(metrics)


__all__ = ["CallbackList", "ReportMetrics", "TrainCallback", "TrainState"]
