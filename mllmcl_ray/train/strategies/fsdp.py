"""FSDP2 (`torch.distributed.fsdp.fully_shard`) strategies: `full_shard` and `shard_grad_op`.

The module is sharded over a 1-D device mesh of all workers: each decoder layer of the
LLM is its own FSDP unit, then the root (`MLLMForTraining`: embeddings, projector, final
norm, LM head). The frozen CLIP tower is *not* sharded: its parameters are passed as
`ignored_params`, so it stays a plain replicated module that runs under `no_grad`; with
bf16 on the GPU it computes under bf16 autocast (`MLLMForTraining.tower_autocast`), since
the MixedPrecisionPolicy covers only the sharded modules.

- ``full_shard`` (ZeRO-3; `reshard_after_forward=True`): parameters, gradients and
  optimizer state are sharded; each layer is all-gathered for its forward and again for
  its backward. Used for fine-tuning.
- ``shard_grad_op`` (ZeRO-2-like; `reshard_after_forward=False`): parameters stay
  gathered between forward and backward, gradients and optimizer state are sharded (the
  alignment stage in Srivastava et al.).

On GPU with `mixed_precision="bf16"`, parameters are gathered and computed in bf16 while
gradients are reduced in fp32 and the optimizer keeps fp32 master weights
(`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`). Activation checkpointing
is transformers' non-reentrant gradient checkpointing (module names unchanged).

Ray's `prepare_model(parallel_strategy="fsdp")` refuses CPU, so the sharding is applied
here, inside each worker, over the process group Ray Train (or the caller) set up; this
runs on CPU with gloo as well as on GPU with nccl.

Data: each rank trains on its own slice of the step's global batch (train/loop.py), so
no sampler is involved.

`gather_into` gives rank 0 an ordinary, unsharded model for the end-of-task hooks and
`save_pretrained`: at `wrap` time rank 0 keeps a *skeleton* of the model (a deep copy
whose parameters live on the meta device, so it costs no memory), and at gather time the
full state dict (gathered to rank 0's CPU) is assigned into it. Peak host memory on
rank 0 at that moment is one full fp32 copy of the model (4 bytes per parameter).
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from ...models.build import parts, unwrap
from .base import Strategy, enable_activation_checkpointing, register_strategy


def decoder_layers(model) -> list[nn.Module]:
    """The LLM's transformer blocks (the first non-empty ModuleList of the decoder)."""
    lm = parts(model)["language_model"]
    for name in ("layers", "h", "blocks"):
        layers = getattr(lm, name, None)
        if isinstance(layers, nn.ModuleList) and len(layers):
            return list(layers)
    for child in lm.modules():
        if isinstance(child, nn.ModuleList) and len(child):
            return list(child)
    raise TypeError(f"no decoder layers found in {type(lm).__name__}")


class _Skeleton:
    """A parameter-free copy of a model, to be filled with a full state dict later.

    `copy.deepcopy` with a memo that maps every parameter to a meta-device parameter of
    the same shape: the structure (peft wrappers included), buffers (small; the
    non-persistent ones such as rotary frequencies are not in state dicts), configs and
    requires_grad flags are copied, the weights are not. Parameters shared between
    modules (tied embeddings) are recorded and re-tied after loading.
    """

    def __init__(self, model: nn.Module):
        memo = {}
        for p in model.parameters():
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"),
                                       requires_grad=p.requires_grad)
        self.model = copy.deepcopy(model, memo)
        groups: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(p), []).append(name)
        self.tied = [names for names in groups.values() if len(names) > 1]

    def materialize(self, state: dict) -> nn.Module:
        model = self.model
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        tied_names = {n for group in self.tied for n in group[1:]}
        missing = [k for k in missing if k not in tied_names]
        if missing or unexpected:
            raise RuntimeError(f"gathered state dict does not fit the model: missing {missing[:5]}"
                               f", unexpected {unexpected[:5]}")
        for group in self.tied:
            src = model.get_parameter(group[0])
            for name in group[1:]:
                mod_name, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(mod_name) if mod_name else model, leaf, src)
        return model


@register_strategy("full_shard", "shard_grad_op")
class FSDPStrategy(Strategy):
    """FSDP2 over all workers; `full_shard` or `shard_grad_op` by the registered name."""

    def __init__(self, name: str = "full_shard", **kwargs):
        super().__init__(name=name, **kwargs)
        self.reshard_after_forward = name != "shard_grad_op"
        self.skeleton: _Skeleton | None = None

    def _mesh(self):
        from torch.distributed.device_mesh import init_device_mesh

        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError(f"parallel strategy {self.name!r} needs an initialised process "
                               "group (Ray Train sets one up; or use parallel='none')")
        return init_device_mesh(self.device.type, (self.world_size,))

    def wrap(self, module: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if self.rank == 0:  # before activation checkpointing touches the model
            self.skeleton = _Skeleton(module.model)
        if self.device.type != "cpu":
            module = module.to(self.device)
        if self.activation_checkpointing:
            enable_activation_checkpointing(module)
        mesh = self._mesh()
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if self.mixed_precision == "bf16" else MixedPrecisionPolicy())
        kw = dict(mesh=mesh, reshard_after_forward=self.reshard_after_forward, mp_policy=mp)
        tower = set(parts(module.model)["vision_tower"].parameters())
        if self.mixed_precision == "bf16" and self.device.type == "cuda":
            # the tower is left out of the shards, so the policy's bf16 does not reach it
            module.tower_autocast = torch.bfloat16
        for layer in decoder_layers(module.model):
            fully_shard(layer, **kw)
        # The root keeps the last all-gather alive anyway: no reshard after its forward.
        fully_shard(module, ignored_params=tower, **{**kw, "reshard_after_forward": False})
        self.wrapped = module
        return module

    def autocast(self):
        # bf16 compute comes from the MixedPrecisionPolicy; no autocast on top.
        return contextlib.nullcontext()

    def no_sync(self, module: nn.Module):
        @contextlib.contextmanager
        def _ctx():
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)

        return _ctx()

    def clip_grad_norm(self, module: nn.Module, max_norm: float) -> float:
        from torch.distributed.tensor import DTensor

        params = [p for p in module.parameters() if p.grad is not None]
        if not params or max_norm <= 0:
            return 0.0
        total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
        if isinstance(total, DTensor):
            total = total.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return float(total)

    def full_state_dict(self, module: nn.Module) -> dict | None:
        """Full state dict of the inner model (keys of `mllm.model`), on rank 0's CPU;
        None on the other ranks. A collective: every rank must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True,
                                                                   cpu_offload=True))
        if self.rank != 0:
            return None
        return {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}

    def load_model_state(self, module: nn.Module, state: dict) -> None:
        """Load a full state dict of `mllm.model` (every rank holds it) into the shards."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, {f"model.{k}": v for k, v in state.items()},
                             options=StateDictOptions(full_state_dict=True))

    def local(self, param: torch.Tensor) -> torch.Tensor:
        """A DTensor parameter's local shard (differentiable); a plain tensor as it is."""
        from torch.distributed.tensor import DTensor

        return param.to_local() if isinstance(param, DTensor) else param

    def shard_like(self, full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """This rank's shard of `full`, split as DTensor `param` is (plain: moved only)."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        if isinstance(param, DTensor):
            return distribute_tensor(full.to(param.device), param.device_mesh,
                                     param.placements).to_local()
        return full.to(param.device)

    def full_model(self, module: nn.Module) -> nn.Module | None:
        """Gather the full weights (a collective) into rank 0's skeleton copy."""
        state = self.full_state_dict(module)
        return self.plain_model(state) if self.rank == 0 else None

    def plain_model(self, state: dict) -> nn.Module:
        """Rank 0: an ordinary (unsharded) copy of the model holding `state`."""
        if self.skeleton is None:
            raise RuntimeError("plain_model is only available on rank 0 after wrap()")
        return self.skeleton.materialize(state)

    def gather_into(self, module: nn.Module, mllm) -> None:
        """Gather the full weights; rank 0's `mllm.model` becomes a plain model with them.

        A collective (all ranks call it). The other ranks keep their sharded model; only
        rank 0 runs the end-of-task hooks and saves.
        """
        plain = self.full_model(module)
        if plain is not None:
            plain.eval()
            mllm.model = plain
            unwrap(plain)  # fail early if the LLaVA model is not inside


__all__ = ["FSDPStrategy", "decoder_layers"]
