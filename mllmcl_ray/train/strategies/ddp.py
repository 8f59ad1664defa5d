"""DistributedDataParallel: every worker holds the whole model; gradients are all-reduced.

gloo on CPU, nccl on GPU (the process group is set up by Ray Train's TorchTrainer, or by
whoever starts the processes). Accumulation micro-steps run under `no_sync`, so gradients
are all-reduced once per optimizer step. The frozen vision tower has no gradients and is
skipped by DDP. `find_unused_parameters=True` because a batch without image tokens does
not use the projector.

Data: each rank trains on its own slice of the step's global batch (train/loop.py), so
DDP needs no sampler.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .base import Strategy, enable_activation_checkpointing, register_strategy


@register_strategy("ddp")
class DDPStrategy(Strategy):
    def wrap(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        if self.activation_checkpointing:
            enable_activation_checkpointing(module)
        if self.world_size == 1:  # nothing to synchronise (a single worker)
            self.wrapped = module
            return module
        ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()
               ] if self.device.type == "cuda" else None
        self.wrapped = DistributedDataParallel(module, device_ids=ids,
                                               find_unused_parameters=True)
        return self.wrapped

    def no_sync(self, module: nn.Module):
        if isinstance(module, DistributedDataParallel):
            return module.no_sync()
        return super().no_sync(module)

    def unwrap(self, module: nn.Module) -> nn.Module:
        return module.module if isinstance(module, DistributedDataParallel) else module
