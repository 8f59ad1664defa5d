"""The plain PyTorch training loop for one stage of one task (no Ray needed).

Ray Train runs this same function on each worker (train/ray_trainer.py); a single
process runs it directly. The global batch is fixed by config: each optimizer step
consumes exactly `global_batch_size` samples, split over workers and accumulation steps
(`schedule.accumulation_steps`). Sample order is a seeded permutation, so worker r of W
sees a deterministic slice and a resumed stage skips exactly the consumed steps.
Everything that happens around the steps (progress reports, mid-task checkpoints, epoch
checkpoints, a test's injected failure) is a `TrainCallback` (train/callbacks.py).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import StageConfig
from ..methods.base import ContinualMethod, TaskContext
from ..models.training import answer_positions, forward_batch  # noqa: F401  (forward_batch re-exported)
from .callbacks import TrainCallback
from .schedule import accumulation_steps, make_optimizer, make_scheduler, num_optimizer_steps
from .strategies.base import Strategy


@dataclass
class StageResult:
    steps: int = 0  # optimizer steps run in this call
    total_steps: int = 0  # optimizer steps of the whole stage
    losses: list[float] = field(default_factory=list)  # mean loss per optimizer step
    tokens: int = 0  # tokens processed (this worker)
    samples: int = 0  # samples processed (all workers)
    seconds: float = 0.0
    tokens_per_s: float = 0.0  # all workers


def step_indices(n: int, stage: StageConfig, seed: int, total_steps: int,
                 lengths: np.ndarray | None = None) -> np.ndarray:
    """[total_steps, global_batch] sample indices: seeded epochs of permutations
    (regrouped by length when `stage.group_by_length`; `lengths`: data/grouping.py)."""
    if n <= 0:  # would loop forever below (epochs of empty permutations)
        from ..errors import DataError

        raise DataError("the stage has no training samples; give the task a non-empty training file")
    rng = np.random.default_rng(seed)
    need = total_steps * stage.global_batch_size
    chunks, have = [], 0
    while have < need:
        chunks.append(rng.permutation(n))
        have += n
    order = np.concatenate(chunks)[:need].reshape(total_steps, stage.global_batch_size)
    if stage.group_by_length and lengths is not None:
        from ..data.grouping import group_order

        order = group_order(order, lengths, per_device=stage.per_device_batch_size,
                            window_steps=stage.group_window_steps, seed=seed)
    return order


def epoch_end_steps(n: int, stage: StageConfig, total_steps: int) -> dict[int, int]:
    """{optimizer step: epoch} at which the stage has passed over its `n` samples e times.

    Epoch e (1 .. ceil(stage.epochs)) ends at the first step whose samples reach e·n,
    ceil(e·n / global_batch), and the stage's last step ends the last epoch. A stage cut
    short by `max_steps` keeps the epochs it reached; its last step is the end of the
    first epoch that does not fit.
    """
    epochs = max(1, math.ceil(stage.epochs))
    out: dict[int, int] = {}
    for e in range(epochs, 0, -1):  # an earlier epoch wins a shared step
        out[min(total_steps, math.ceil(e * n / stage.global_batch_size))] = e
    return dict(sorted(out.items()))


def train_stage(module, dataset, stage: StageConfig, method: ContinualMethod, strategy: Strategy,
                ctx: TaskContext, collate: Callable, *, lr: float | None = None, seed: int = 0,
                stage_name: str = "finetune", start_step: int = 0, optimizer_state: dict | None = None,
                log_every: int = 10, checkpoint_every: int = 0,
                callbacks: TrainCallback | None = None,
                features: Callable[[list[str]], torch.Tensor] | None = None,
                progress: bool = True) -> StageResult:
    """Train `module` (a strategy-wrapped MLLMForTraining) for one stage on `dataset`.

    `callbacks` (a TrainCallback, e.g. a CallbackList) get `on_step_end` after every
    optimizer step, `on_log(metrics)` every `log_every` steps on every rank (Ray Train's
    `report` needs all ranks), `on_checkpoint(step, state)` every `checkpoint_every` steps
    with the optimizer/scheduler state and `on_epoch_end(epoch, step)` at the epoch ends
    of `epoch_end_steps`; `features(paths)` supplies cached tower features.
    """
    callbacks = callbacks or TrainCallback()
    world, rank = strategy.world_size, strategy.rank
    accum = accumulation_steps(stage, world, stage_name)
    total = num_optimizer_steps(stage, len(dataset))
    from ..data.grouping import sample_lengths

    order = step_indices(len(dataset), stage, seed, total,
                         lengths=sample_lengths(dataset) if stage.group_by_length else None)
    opt = make_optimizer(module.parameters(), stage, lr if lr is not None else stage.lr)
    sched = make_scheduler(opt, stage, total)
    if optimizer_state:
        opt.load_state_dict(optimizer_state["optimizer"])
        sched.load_state_dict(optimizer_state["scheduler"])
    epoch_ends = epoch_end_steps(len(dataset), stage, total)
    result = StageResult(total_steps=total)
    per_rank = stage.global_batch_size // world
    bar = tqdm(total=total, initial=start_step, desc=f"{ctx.task_name}/{stage_name}",
               disable=not progress or rank != 0, leave=False)
    t0 = time.perf_counter()
    window_tokens, window_t0 = 0, t0
    module.train()
    for step in range(start_step, total):
        mine = order[step, rank * per_rank:(rank + 1) * per_rank]
        step_loss = 0.0
        for a in range(accum):
            idx = mine[a * stage.per_device_batch_size:(a + 1) * stage.per_device_batch_size]
            batch = collate([dataset[int(i)] for i in idx])
            if features is not None and any(batch["image_paths"]):
                batch["image_features"] = features([p for p in batch["image_paths"] if p])
            sync = strategy.no_sync(module) if a < accum - 1 else _null()
            with sync:
                with strategy.autocast():
                    logits = ctx.forward(module, batch)
                    sel_logits, targets = answer_positions(logits, batch["labels"].to(logits.device))
                    if targets.numel() == 0:
                        loss = logits.sum() * 0.0
                    else:
                        loss = method.token_loss(sel_logits, targets, ctx)
                    pen = method.penalty(module, batch, logits, ctx)
                    if pen is not None:
                        loss = loss + pen
                (loss / accum).backward()
            step_loss += float(loss.detach()) / accum
            n_tok = int(batch["attention_mask"].sum())
            result.tokens += n_tok
            window_tokens += n_tok
        strategy.clip_grad_norm(module, stage.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"{ctx.task_name}/{stage_name}: loss is {step_loss} at step "
                                     f"{step}; lower stages.{stage_name}.lr")
        step_loss = strategy.all_reduce_mean(step_loss)
        result.losses.append(step_loss)
        result.steps += 1
        result.samples += stage.global_batch_size
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}")
        done = step + 1
        callbacks.on_step_end(done, step_loss)
        if done % max(1, log_every) == 0 or done == total:
            now = time.perf_counter()
            tps = strategy.all_reduce_mean(window_tokens / max(now - window_t0, 1e-9)) * world
            callbacks.on_log({
                "loss": step_loss, "lr": sched.get_last_lr()[0], "tokens_per_s": tps,
                "step": done, "total_steps": total, "samples_seen": done * stage.global_batch_size,
                "task_index": ctx.task_index, "task": ctx.task_name, "stage": stage_name})
            window_tokens, window_t0 = 0, now
        if checkpoint_every and done % checkpoint_every == 0 and done < total:
            callbacks.on_checkpoint(done, {"optimizer": opt.state_dict(),
                                           "scheduler": sched.state_dict()})
        if done in epoch_ends:
            callbacks.on_epoch_end(epoch_ends[done], done)
    bar.close()
    result.seconds = time.perf_counter() - t0
    result.tokens_per_s = strategy.all_reduce_mean(result.tokens / max(result.seconds, 1e-9)) * world
    return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
