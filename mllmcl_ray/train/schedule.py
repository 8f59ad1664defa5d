"""Optimiser, learning-rate schedule and the global-batch rule.

Schedules are transformers' (`get_cosine_schedule_with_warmup`,
`get_constant_schedule_with_warmup`); nothing here re-implements one.
"""
from __future__ import annotations

import math

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from ..config import ConfigError, StageConfig


def accumulation_steps(stage: StageConfig, world_size: int, stage_name: str = "stage") -> int:
    """Gradient-accumulation steps that keep the global batch exactly as configured.

    global = per_device × workers × accumulation; a config that cannot reach it exactly
    is rejected with the numbers.
    """
    per_step = stage.per_device_batch_size * world_size
    if stage.global_batch_size % per_step:
        raise ConfigError(
            f"stages.{stage_name}: global_batch_size {stage.global_batch_size} is not a "
            f"multiple of per_device_batch_size {stage.per_device_batch_size} × {world_size} "
            f"worker(s) = {per_step}; pick per_device_batch_size × workers dividing "
            f"{stage.global_batch_size}")
    return stage.global_batch_size // per_step


def num_optimizer_steps(stage: StageConfig, n_samples: int) -> int:
    steps = max(1, int(n_samples * stage.epochs) // stage.global_batch_size)
    return min(steps, stage.max_steps) if stage.max_steps else steps


def make_optimizer(params, stage: StageConfig, lr: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen for this stage/method")
    return torch.optim.AdamW(params, lr=lr, weight_decay=stage.weight_decay,
                             betas=(0.9, 0.999))


def make_scheduler(opt, stage: StageConfig, total_steps: int):
    warmup = int(math.ceil(stage.warmup_ratio * total_steps))
    if stage.schedule == "cosine":
        return get_cosine_schedule_with_warmup(opt, warmup, total_steps)
    if stage.schedule == "constant":
        return get_constant_schedule_with_warmup(opt, warmup)
    raise ConfigError(f"schedule {stage.schedule!r} must be 'cosine' or 'constant'")
