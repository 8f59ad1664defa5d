"""MoELoRA (CoIN, Sec. 5 and App. I): a LoRA of rank r split into E gated experts.

Each targeted linear layer W₀ of the LLM gets E experts (Bᵢ, Aᵢ) of rank r/E and a dense
per-token gate g(x) = softmax(W_g x) (W_g: a bias-free linear map of the layer input to
E logits):

    y = W₀x + Σᵢ gᵢ(x) · s · Bᵢ Aᵢ x,      s = α/r  (α/√r with use_rslora)

The experts are stored as one LoRA pair (A: r × d_in, B: d_out × r) whose rank blocks are
the experts, so the trainable parameter count, gate aside, equals a LoRA of rank r, and
E = 1 (softmax of one logit = 1) is exactly LoRA. r must be divisible by E.

It is built on peft's LoRA tuner: `MoELoRAConfig` (a `LoraConfig` with ``num_experts``)
registers `MoELoRALinear` (a peft LoRA `Linear` with the gate) for ``nn.Linear`` through
``LoraConfig._register_custom_module``, and `peft.get_peft_model` injects it; targets,
freezing and trainable flags are peft's. The gate makes the update input-dependent, so
it cannot be merged into W₀: the same adapter keeps training across tasks (CoIN) and a
checkpoint is the base model plus the adapter.

Checkpoint format (a task checkpoint's ``model/`` directory)::

    model/                            plain LLaVA, `save_pretrained` (safetensors): the base
                                      weights W₀ and the projector, + tokenizer, image
                                      processor, mllmcl.json (with "moelora": "moelora")
    model/moelora/config.json         {"format": "mllmcl-moelora/1", "num_experts": E,
                                       "peft": MoELoRAConfig kwargs (r, lora_alpha, ...)}
    model/moelora/adapter.safetensors adapter weights (lora_A, lora_B, lora_gate of every
                                      targeted layer) keyed as in the state dict of the
                                      peft-wrapped LlavaForConditionalGeneration

`load_moelora_checkpoint(path)` opens it (base via `load_mllm`, then the adapter) and
returns an `MLLM` whose ``.model`` is the peft-wrapped model; it serves as a plain LLaVA
(`forward`/`generate` run through the injected layers). The continual trainer reloads it
through this method's `load_model` hook, so the next task trains the same experts and
gate. A checkpoint without ``moelora/`` (e.g. after alignment) is a plain LLaVA.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..models.build import MLLM, load_mllm, save_mllm, set_trainable, unwrap
from .base import ContinualMethod, TaskContext, register_method
from .lora import (
    adapter_key,
    check_lora_params,
    is_peft,
    lora_config,
    plain_state_dict,
    resolve_rank,
    set_projector_trainable,
)

ADAPTER_DIR = "moelora"
ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "mllmcl-moelora/1"


# ---------------------------------------------------------------------------------------
# the peft layer and config
# ---------------------------------------------------------------------------------------
def _layer_cls():
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.lora.layer import LoraLayer

    class MoELoRALinear(LoraLinear):
        """A peft LoRA Linear whose rank-r pair is E experts mixed by a per-token gate."""

        adapter_layer_names = LoraLayer.adapter_layer_names + ("lora_gate",)
        other_param_names = LoraLayer.other_param_names + ("num_experts",)

        def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
            n_exp = int(getattr(config, "num_experts", 1))
            check_experts(r, n_exp)
            if "lora_gate" not in self._modules:
                self.lora_gate = nn.ModuleDict()
            if "num_experts" not in self.__dict__:
                self.num_experts = {}
            self.num_experts[adapter_name] = n_exp
            self.lora_gate[adapter_name] = nn.Linear(self.in_features, n_exp, bias=False)
            super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

        def gate_weights(self, x: torch.Tensor, adapter_name: str = "default") -> torch.Tensor:
            """g(x) = softmax(W_g x): [..., E], summing to 1 per token."""
            gate = self.lora_gate[adapter_name]
            x = self._cast_input_dtype(x, gate.weight.dtype)
            return torch.softmax(gate(x).float(), dim=-1)

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if kwargs.pop("adapter_names", None) is not None:
                raise NotImplementedError("MoELoRA does not support mixed adapter batches")
            kwargs.pop("alora_offsets", None)
            result = self.base_layer(x, *args, **kwargs)
            if self.disable_adapters:
                return result
            out_dtype = result.dtype
            for name in self.active_adapters:
                if name not in self.lora_A:
                    continue
                lora_a, lora_b = self.lora_A[name], self.lora_B[name]
                xa = self._cast_input_dtype(x, lora_a.weight.dtype)
                g = self.gate_weights(xa, name).to(xa.dtype)  # [..., E]
                h = lora_a(self.lora_dropout[name](xa))  # [..., r]: the experts' rank blocks
                h = (h.unflatten(-1, (self.num_experts[name], -1)) * g.unsqueeze(-1)).flatten(-2)
                result = result + lora_b(h) * self.scaling[name]
            return result.to(out_dtype)

        def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
            raise RuntimeError("MoELoRA's token gate makes its update input-dependent: it "
                               "cannot be merged into the base weights (save base + adapter)")

        def get_delta_weight(self, adapter) -> torch.Tensor:
            raise RuntimeError("MoELoRA has no input-independent delta weight")

        def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
            return False

        def __repr__(self) -> str:
            return "moe" + super().__repr__()

    return MoELoRALinear


_LAYER = None


def moelora_layer_cls():
    """The `MoELoRALinear` class (built lazily so importing this module does not import peft)."""
    global _LAYER
    if _LAYER is None:
        _LAYER = _layer_cls()
    return _LAYER


_CONFIG = None


def moelora_config_cls():
    """`MoELoRAConfig`: peft's LoraConfig plus ``num_experts``, mapping nn.Linear to MoELoRA."""
    global _CONFIG
    if _CONFIG is None:
        from peft import LoraConfig

        @dataclass
        class MoELoRAConfig(LoraConfig):
            num_experts: int = field(default=1, metadata={"help": "experts E (r divisible by E)"})

            def __post_init__(self):
                super().__post_init__()
                self._register_custom_module({nn.Linear: moelora_layer_cls()})

        _CONFIG = MoELoRAConfig
    return _CONFIG


def check_experts(r: int, num_experts: int) -> None:
    if num_experts < 1:
        raise ConfigError(f"moelora: num_experts {num_experts} must be >= 1")
    if r % num_experts:
        raise ConfigError(f"moelora: rank {r} is not divisible by num_experts {num_experts}; each "
                          "expert has rank r/E, so choose r as a multiple of E")


def moelora_modules(model) -> list:
    cls = moelora_layer_cls()
    return [m for m in unwrap(model).modules() if isinstance(m, cls)]


def is_moelora(model) -> bool:
    return is_peft(model) and bool(moelora_modules(model))


# ---------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------
@dataclass
class MoELoRAParams:
    """Settings of MoELoRA (method.params.moelora); defaults: CoIN (LLaVA's LoRA setting)."""

    num_experts: int = 8  # E experts of rank r/E each (CoIN Tab. 8: 1, 2, 4, 8; 1 = plain LoRA)
    target: str = "all_linear"  # "all_linear" (every linear layer of the LLM) or "attention_qkv"
    rank: float = 128  # total rank r; in (0, 1): that fraction of the LLM hidden size
    alpha: float = 256.0  # α: scaling α/r (α/√r with use_rslora)
    dropout: float = 0.05  # dropout on the experts' input (not the gate's)
    use_rslora: bool = False  # rank-stabilised scaling α/√r
    train_projector: bool = True  # the projector trains fully beside the experts

    def __post_init__(self):
        check_lora_params(self, "moelora")
        if self.rank >= 1:
            check_experts(int(self.rank), self.num_experts)
        elif self.num_experts < 1:
            check_experts(1, self.num_experts)


def wrap_moelora(model, params: MoELoRAParams):
    """Add a fresh MoELoRA adapter to plain LLaVA `model`; returns the PeftModel."""
    from peft import get_peft_model

    if is_peft(model):
        raise RuntimeError("moelora: the model already carries a peft adapter")
    check_experts(resolve_rank(params.rank, model), params.num_experts)
    training = model.training
    set_trainable(model, "none")
    wrapped = get_peft_model(model, lora_config(model, params, moelora_config_cls(),
                                                num_experts=params.num_experts))
    set_projector_trainable(wrapped, params.train_projector)
    wrapped.train(training)
    return wrapped


def _peft_kwargs(config) -> dict:
    keys = ("r", "lora_alpha", "lora_dropout", "use_rslora", "target_modules", "bias",
            "num_experts")
    out = {k: getattr(config, k) for k in keys}
    if isinstance(out["target_modules"], set):
        out["target_modules"] = sorted(out["target_modules"])
    return out


def save_moelora(mllm: MLLM, path: str | Path) -> Path:
    """Write the base LLaVA + the adapter (format in the module docstring)."""
    from safetensors.torch import save_file

    path = Path(path)
    model = mllm.model
    if not is_moelora(model):
        raise TypeError("save_moelora: the model carries no MoELoRA adapter")
    save_mllm(mllm, path, state_dict=plain_state_dict(model), extra_meta={"moelora": ADAPTER_DIR})
    d = path / ADAPTER_DIR
    d.mkdir(parents=True, exist_ok=True)
    adapter = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()
               if adapter_key(k)}
    save_file(adapter, str(d / ADAPTER_FILE))
    config = model.peft_config["default"]
    (d / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, "num_experts": config.num_experts,
                                             "peft": _peft_kwargs(config)}, indent=1))
    return path


def is_moelora_checkpoint(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_DIR / CONFIG_FILE).exists()


def load_moelora_checkpoint(path: str | Path, spec=None) -> MLLM:
    """Open a MoELoRA checkpoint: an MLLM whose .model is the peft-wrapped LLaVA (eval mode)."""
    from peft import get_peft_model
    from safetensors.torch import load_file

    path = Path(path)
    if not is_moelora_checkpoint(path):
        raise FileNotFoundError(f"{path} is not a MoELoRA checkpoint "
                                f"(no {ADAPTER_DIR}/{CONFIG_FILE})")
    meta = json.loads((path / ADAPTER_DIR / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown MoELoRA format {meta.get('format')!r}, "
                         f"expected {FORMAT}")
    mllm = load_mllm(path, spec)
    model = get_peft_model(mllm.model, moelora_config_cls()(**meta["peft"]))
    weights = load_file(str(path / ADAPTER_DIR / ADAPTER_FILE))
    inner = unwrap(model)
    missing, unexpected = inner.load_state_dict(weights, strict=False)
    missing = [k for k in missing if adapter_key(k)]
    if missing or unexpected:
        raise ValueError(f"{path}: the MoELoRA adapter does not fit the model: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    mllm.model = model
    return mllm


@register_method("moelora")
class MoELoRA(ContinualMethod):
    exclusive = ("trainable", "adapter")
    Params = MoELoRAParams
    plain_checkpoints = False

    def __init__(self, params: MoELoRAParams | None = None):
        super().__init__(params or MoELoRAParams())

    def prepare_model(self, mllm, ctx: TaskContext) -> None:
        if not is_moelora(mllm.model):
            mllm.model = wrap_moelora(mllm.model, self.params)
            return
        # continuing the previous task's adapter (loaded by load_model)
        config = mllm.model.peft_config["default"]
        r = resolve_rank(self.params.rank, mllm.model)
        if (config.num_experts, config.r) != (self.params.num_experts, r):
            raise ConfigError(f"moelora: the checkpoint has {config.num_experts} experts of total "
                              f"rank {config.r}, the config asks for {self.params.num_experts} "
                              f"and rank {r}; a run cannot change them between tasks")
        set_trainable(mllm.model, "none")
        for name, p in unwrap(mllm.model).named_parameters():
            if adapter_key(name):
                p.requires_grad_(True)
        set_projector_trainable(mllm.model, self.params.train_projector)

    def save_model(self, mllm, path: Path) -> bool:
        if not is_moelora(mllm.model):
            return False
        save_moelora(mllm, path)
        return True

    def load_model(self, path: Path, spec) -> Any:
        return load_moelora_checkpoint(path, spec) if is_moelora_checkpoint(path) else None
