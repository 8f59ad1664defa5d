"""Soft Targets (Srivastava et al., App. A.5 (3) and A.6.3): label smoothing on answer tokens.

The hard one-hot target over the vocabulary (N tokens) is replaced by a smoothed one: the
target token gets probability 1 − α and every other token α / (N − 1). The loss at an
answer position is the cross-entropy against that distribution:

    loss = −(1 − α) · log p(y) − α / (N − 1) · Σ_{v ≠ y} log p(v)
         = −(1 − α) · log p(y) − α / (N − 1) · (Σ_v log p(v) − log p(y))

averaged over answer tokens, computed from `log_softmax` in float32 (stable for any
logits). This is *not* ``F.cross_entropy(label_smoothing=α)``, which gives the target
1 − α + α/N and every token α/N. α = 0 is plain cross-entropy. The paper tried
α ∈ {0.001, 0.01, 0.1} and chose 0.01. Soft Targets changes only the loss; what trains is
the LLaVA default (projector + LLM; see MethodStack.prepare_model).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ConfigError
from .base import ContinualMethod, TaskContext, register_method


@dataclass
class SoftTargetsParams:
    """Settings of Soft Targets (method.params.soft_targets)."""

    alpha: float = 0.01  # α: probability mass moved from the target token to the N − 1 others

    def __post_init__(self):
        if not 0.0 <= self.alpha < 1.0:
            raise ConfigError(f"method.params.soft_targets.alpha {self.alpha} must be in [0, 1)")


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mean cross-entropy of `logits` [M, N] against targets [M] smoothed as Srivastava A.5."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logp_target = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    n = logits.shape[-1]
    if alpha == 0.0 or n < 2:
        return -logp_target.mean()
    rest = logp.sum(-1) - logp_target
    loss = -(1.0 - alpha) * logp_target - (alpha / (n - 1)) * rest
    return loss.mean()


@register_method("soft_targets")
class SoftTargets(ContinualMethod):
    Params = SoftTargetsParams
    replaces_loss = True

    def __init__(self, params: SoftTargetsParams | None = None):
        super().__init__(params or SoftTargetsParams())

    def token_loss(self, logits, targets, ctx: TaskContext):
        return soft_target_loss(logits, targets, self.params.alpha)
