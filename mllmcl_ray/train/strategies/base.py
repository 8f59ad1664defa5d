"""Parallel strategies behind one base class and a name registry.

A strategy wraps the training module for its process group and knows how to gather a
full state dict for saving; it never knows which CL method runs. The base class declares
everything the trainer asks of a strategy, with the single-process answer as default:
`wrap`, `no_sync`, `autocast`, `clip_grad_norm`, `all_reduce_mean`, `full_state_dict`,
`load_model_state`, `full_model` (a plain model with the full weights, for checkpoints
taken mid-task), `plain_model`, `gather_into` (end of task) and `barrier`; and, as a
`ParamLayout`, how a parameter is split across processes (`local`, `shard_like`), which
is how methods such as EWC reach sharded parameters without knowing about DTensors. `single` is the plain
one-process loop; `ddp` and the FSDP2 strategies (`full_shard`, `shard_grad_op`) live in
their own modules.
"""
from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
from torch import nn

from ...config import ConfigError
from ...models.training import MLLMForTraining, ParamLayout

STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(*names: str):
    def deco(cls):
        for n in names:
            STRATEGIES[n] = cls
        cls.names = names
        return cls

    return deco


def get_strategy(name: str, **kwargs) -> Strategy:
    import mllmcl_ray.train.strategies  # noqa: F401  (registers built-ins)

    if name not in STRATEGIES:
        raise ConfigError(f"parallel strategy {name!r} is unknown; known: {sorted(STRATEGIES)}")
    return STRATEGIES[name](name=name, **kwargs)


class Strategy(ParamLayout):
    names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str = "none", device: torch.device | None = None,
                 mixed_precision: str = "fp32", activation_checkpointing: bool = False):
        self.name = name
        self.device = device or torch.device("cpu")
        self.mixed_precision = mixed_precision
        self.activation_checkpointing = activation_checkpointing
        self.wrapped: nn.Module | None = None  # the module `wrap` returned last

    @property
    def world_size(self) -> int:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size()
        return 1

    @property
    def rank(self) -> int:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank()
        return 0

    def wrap(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        if self.activation_checkpointing:
            enable_activation_checkpointing(module)
        self.wrapped = module
        return module

    def no_sync(self, module: nn.Module):
        """Skip gradient sync on accumulation micro-steps where the strategy can."""
        return contextlib.nullcontext()

    def autocast(self):
        if self.mixed_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def clip_grad_norm(self, module: nn.Module, max_norm: float) -> float:
        params = [p for p in module.parameters() if p.grad is not None]
        if not params or max_norm <= 0:
            return 0.0
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def all_reduce_mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def full_state_dict(self, module: nn.Module) -> dict | None:
        """The unwrapped inner model's full state dict (on rank 0; None elsewhere)."""
        return {k: v.detach().cpu() for k, v in self.unwrap(module).model.state_dict().items()}

    def unwrap(self, module: nn.Module) -> MLLMForTraining:
        """The MLLMForTraining inside what `wrap` returned (itself when not wrapped)."""
        return module

    def plain_model(self, state: dict) -> nn.Module:
        """Rank 0: an ordinary (unsharded) model holding `state` (a full state dict of the
        inner model). Unsharded strategies train a plain model already: it is returned
        as it is (its weights are `state`)."""
        return self.unwrap(self.wrapped).model

    def full_model(self, module: nn.Module) -> nn.Module | None:
        """A plain model with the full current weights on rank 0 (None on ranks without
        one). A collective under sharding: every rank calls it. Unsharded: the live model."""
        return self.unwrap(module).model

    def gather_into(self, module: nn.Module, mllm) -> None:
        """At the task's end: make `mllm.model` a plain model with the trained weights
        where `full_model` gives one (every rank here; rank 0 under sharding), for the
        end-of-task hooks and saving. A collective: every rank calls it."""
        plain = self.full_model(module)
        if plain is not None:
            mllm.model = plain

    def load_model_state(self, module: nn.Module, state: dict) -> None:
        """Load a full state dict of the inner model (keys of `mllm.model`) into the
        wrapped module, on every rank (mid-task resume)."""
        self.unwrap(module).model.load_state_dict(state)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def enable_activation_checkpointing(module: nn.Module) -> None:
    """transformers' gradient checkpointing (non-reentrant) on the LLaVA model inside
    `module` (an MLLMForTraining, before any wrapping): recompute each decoder layer's
    activations in backward. Module names do not change, so state dicts stay plain."""
    from ...models.build import unwrap

    model = unwrap(module.model)
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@register_strategy("none", "single")
class SingleProcess(Strategy):
    """One process, no wrapping (the plain loop; also Ray Train with one worker)."""


def check_strategy_name(name: str) -> None:
    import mllmcl_ray.train.strategies  # noqa: F401

    if name not in STRATEGIES:
        raise ConfigError(f"parallel strategy {name!r} is unknown; known: {sorted(STRATEGIES)}")
