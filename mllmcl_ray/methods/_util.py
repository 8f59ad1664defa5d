"""Small helpers shared by the methods that look at data or the training module themselves
(EWC, LwF, Rehearsal): seeded samples, the trainer's forward and module (from
`models.training`; methods never import `train/`)."""
from __future__ import annotations

import zlib

import numpy as np

from ..models.training import MLLMForTraining, forward_batch


def seeded_sample(n: int, k: int, seed: int, key: str) -> list[int]:
    """`k` distinct indices of range(n), sorted; the same for the same (n, k, seed, key)."""
    k = max(0, min(int(k), n))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode())])
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False)) if k else []


def forward(module, batch: dict, device):
    """The trainer's forward (MLLMForTraining on a collated batch) -> logits [B, L, V]."""
    return forward_batch(module, batch, device)


def training_module(model) -> MLLMForTraining:
    """An MLLMForTraining around a (possibly peft-wrapped) LLaVA model."""
    return MLLMForTraining(model)
