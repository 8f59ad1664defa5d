"""Parallel strategies (registry in base.py).

- ``none`` / ``single``: one process, no wrapping (base.py);
- ``ddp``: DistributedDataParallel (ddp.py);
- ``full_shard`` / ``shard_grad_op``: FSDP2 `fully_shard` (fsdp.py).

`make_strategy` resolves the trainer's "auto" settings (bf16 and activation
checkpointing on GPU, fp32 and none on CPU) and builds the strategy for a stage.
"""
from __future__ import annotations

import torch

from .base import STRATEGIES, SingleProcess, Strategy, get_strategy, register_strategy
from . import ddp, fsdp  # noqa: E402,F401  (registration)
from .ddp import DDPStrategy
from .fsdp import FSDPStrategy


def resolve_precision(setting: str, device: torch.device) -> str:
    """"auto" → bf16 on GPU, fp32 on CPU; "bf16"/"fp32" as given."""
    from ...config import ConfigError

    if setting == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if setting not in ("bf16", "fp32"):
        raise ConfigError(f"trainer.mixed_precision {setting!r} must be 'auto', 'bf16' or 'fp32'")
    return setting


def resolve_activation_checkpointing(setting: str, device: torch.device) -> bool:
    """"auto" → on with GPU, off on CPU; "on"/"off" as given."""
    from ...config import ConfigError

    if setting == "auto":
        return device.type == "cuda"
    if setting not in ("on", "off"):
        raise ConfigError(f"trainer.activation_checkpointing {setting!r} must be 'auto', 'on' "
                          "or 'off'")
    return setting == "on"


def make_strategy(parallel: str, trainer, device: torch.device | None = None,
                  world_size: int | None = None) -> Strategy:
    """The strategy for a stage's `parallel` setting and a TrainerConfig.

    With one worker every strategy degenerates to the plain single-process one.
    """
    device = device or torch.device("cpu")
    if world_size == 1:
        parallel = "none"
    return get_strategy(parallel, device=device,
                        mixed_precision=resolve_precision(trainer.mixed_precision, device),
                        activation_checkpointing=resolve_activation_checkpointing(
                            trainer.activation_checkpointing, device))


__all__ = ["STRATEGIES", "DDPStrategy", "FSDPStrategy", "SingleProcess", "Strategy",
           "get_strategy", "make_strategy", "register_strategy", "resolve_activation_checkpointing",
           "resolve_precision"]
