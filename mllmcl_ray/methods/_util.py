"""Small helpers shared by the methods that look at data or the training module themselves
(EWC, LwF, Rehearsal): seeded samples, an image-loading collator, the trainer's forward."""
from __future__ import annotations

import zlib

import numpy as np
import torch

from ..models.build import unwrap


def seeded_sample(n: int, k: int, seed: int, key: str) -> list[int]:
    """`k` distinct indices of range(n), sorted; the same for the same (n, k, seed, key)."""
    k = max(0, min(int(k), n))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode())])
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False)) if k else []


def pixel_collate(ctx):
    """A collator like the trainer's that always loads pixel values.

    The trainer's collator leaves images out when the vision-feature cache supplies them;
    a method that runs its own batches (LwF replay, EWC's Fisher) needs the pixels, and
    the forward then runs the frozen tower on them.
    """
    from ..data.collate import Collator

    base = ctx.collate
    if base is None:
        raise RuntimeError("the task context has no collate function yet")
    return Collator(base.pad_token_id, base.image_processor, load_pixels=True)


def forward(module, batch: dict, device) -> torch.Tensor:
    """The trainer's forward (MLLMForTraining on a collated batch) -> logits [B, L, V]."""
    from ..train.loop import forward_batch

    return forward_batch(module, batch, device)


def training_module(model):
    """An MLLMForTraining around a (possibly peft-wrapped) LLaVA model."""
    from ..train.module import MLLMForTraining

    return MLLMForTraining(model)


def llava_of(module):
    """The LlavaForConditionalGeneration inside a strategy-wrapped MLLMForTraining."""
    from ..train.module import MLLMForTraining

    m = module
    for _ in range(8):
        if isinstance(m, MLLMForTraining):
            m = m.model
        elif isinstance(getattr(m, "module", None), torch.nn.Module):  # DDP and the like
            m = m.module
        else:
            break
    return unwrap(m)


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """The local part of a DTensor (FSDP2 parameter); a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def like_param(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`t` (a full tensor shaped like parameter `p`) on p's device, sharded like p if p is a
    DTensor (FSDP2): the local shard is returned."""
    if hasattr(p, "device_mesh") and hasattr(p, "placements"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(t.to(p.device), p.device_mesh, p.placements).to_local()
    return t.to(p.device)
