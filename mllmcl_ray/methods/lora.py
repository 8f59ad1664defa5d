"""LoRA through `peft` (Srivastava App. A.5 (2), A.6.2; CoIN Sec. 3.1.2).

At each VL task's start the LLM's linear layers get LoRA adapters (`peft.get_peft_model`
with a ``LoraConfig``); the base LLM and the vision tower stay frozen, the projector
trains fully beside the adapters (``train_projector``; CoIN's LoRA-only setting sets it
to false). At the task's end the adapters are merged into the LLM weights
(`merge_and_unload`, Srivastava A.4), so every checkpoint is a plain LLaVA and the next
task starts a fresh adapter on the merged weights.

Targets come from the LLM family registry (models/families.py): ``all_linear`` (every
linear layer of the decoder blocks: Srivastava's choice, LoRA's recommended protocol) or
``attention_qkv`` (query/key/value projections only). They are matched with a regex over
module names under ``model.language_model.`` so they never touch the CLIP tower (which
also has ``q_proj``/``k_proj``/``v_proj``) nor the projector.

``rank`` is the LoRA rank r; a value in (0, 1) is a fraction of the LLM hidden size
(Srivastava's "1/4 full rank" = 0.25, "1/2 full rank" = 0.5, rounded to an integer ≥ 1).
The scaling is α/r, or α/√r with rank-stabilised LoRA (``use_rslora``). Defaults are
Srivastava's best setting (Table 2: 1/2 full rank, rsLoRA, α = 8, all linear layers).
CoIN's setting is ``{rank: 128, alpha: 256, use_rslora: false}`` with ``train_projector``
true or false; CoIN keeps training one adapter across tasks without merging, which is
``moelora`` with ``num_experts: 1``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..models.build import parts, set_trainable, unwrap
from ..models.families import family_for_model_type
from .base import ContinualMethod, TaskContext, register_method

TARGETS = ("all_linear", "attention_qkv")


@dataclass
class LoRAParams:
    """Settings of LoRA (method.params.lora)."""

    target: str = "all_linear"  # "all_linear" (every linear layer of the LLM) or "attention_qkv"
    rank: float = 0.5  # r; in (0, 1): that fraction of the LLM hidden size; >= 1: r itself (whole)
    alpha: float = 8.0  # α: LoRA scaling numerator (α/r, or α/√r with use_rslora)
    dropout: float = 0.05  # dropout on the adapter's input
    use_rslora: bool = True  # rank-stabilised LoRA: scaling α/√r instead of α/r
    train_projector: bool = True  # the projector trains fully beside the adapters

    def __post_init__(self):
        check_lora_params(self, "lora")


def check_lora_params(p, name: str) -> None:
    if p.target not in TARGETS:
        raise ConfigError(f"method.params.{name}.target {p.target!r} must be one of {TARGETS}")
    if p.rank <= 0 or (p.rank >= 1 and p.rank != int(p.rank)):
        raise ConfigError(f"method.params.{name}.rank {p.rank} must be a fraction in (0, 1) of the "
                          "hidden size or a whole number >= 1")
    if not 0.0 <= p.dropout < 1.0:
        raise ConfigError(f"method.params.{name}.dropout {p.dropout} must be in [0, 1)")
    if p.alpha <= 0:
        raise ConfigError(f"method.params.{name}.alpha {p.alpha} must be positive")


# ---------------------------------------------------------------------------------------
# helpers shared with MoELoRA
# ---------------------------------------------------------------------------------------
def llm_hidden_size(model) -> int:
    text = unwrap(model).config.text_config
    fam = family_for_model_type(text.model_type)
    return int(getattr(text, fam.hidden_size_key))


def resolve_rank(rank: float, model) -> int:
    """The integer LoRA rank: `rank` itself, or a fraction (0 < rank < 1) of the hidden size."""
    if 0 < rank < 1:
        return max(1, int(round(rank * llm_hidden_size(model))))
    if rank < 1 or rank != int(rank):
        raise ConfigError(f"LoRA rank {rank} must be a fraction in (0, 1) or a whole number >= 1")
    return int(rank)


def target_names(model, target: str) -> tuple[str, ...]:
    fam = family_for_model_type(unwrap(model).config.text_config.model_type)
    if target == "all_linear":
        return fam.all_linear
    if target == "attention_qkv":
        return fam.attention_qkv
    raise ConfigError(f"LoRA target {target!r} must be one of {TARGETS}")


def target_regex(model, target: str) -> str:
    """A regex (peft fullmatch) for the target layers of the LLM, and nothing outside it."""
    names = "|".join(re.escape(n) for n in target_names(model, target))
    return rf"model\.language_model\.(?:.*\.)?(?:{names})"


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def lora_modules(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in unwrap(model).modules() if isinstance(m, LoraLayer)]


def adapter_key(key: str) -> bool:
    """Is a state-dict key an adapter weight (lora_A/lora_B/lora_gate/...)?"""
    return any(part.startswith("lora_") for part in key.split("."))


def plain_state_dict(model) -> dict[str, torch.Tensor]:
    """The base weights of a peft-wrapped LLaVA under plain LLaVA names (adapters left out)."""
    out = {}
    for k, v in unwrap(model).state_dict().items():
        if adapter_key(k):
            continue
        out[k.replace(".base_layer.", ".")] = v
    return out


def set_projector_trainable(model, train: bool) -> None:
    parts(model)["projector"].requires_grad_(train)


def lora_config(model, p, config_cls=None, **extra):
    """A peft LoraConfig (or subclass) for LLaVA `model` from LoRA-like params `p`."""
    from peft import LoraConfig

    cls = config_cls or LoraConfig
    r = resolve_rank(p.rank, model)
    return cls(r=r, lora_alpha=p.alpha, lora_dropout=p.dropout, use_rslora=p.use_rslora,
               target_modules=target_regex(model, p.target), bias="none", **extra)


@register_method("lora")
class LoRA(ContinualMethod):
    exclusive = ("trainable", "adapter")
    Params = LoRAParams

    def __init__(self, params: LoRAParams | None = None):
        super().__init__(params or LoRAParams())

    def wrap(self, model):
        """Add a fresh LoRA adapter to plain LLaVA `model`; returns the PeftModel."""
        from peft import get_peft_model

        if is_peft(model):
            raise RuntimeError("lora: the model already carries a peft adapter; LoRA expects the "
                               "plain (merged) checkpoint of the previous task")
        training = model.training
        set_trainable(model, "none")
        wrapped = get_peft_model(model, lora_config(model, self.params))
        wrapped.train(training)
        set_projector_trainable(wrapped, self.params.train_projector)
        return wrapped

    def prepare_model(self, mllm, ctx: TaskContext) -> None:
        mllm.model = self.wrap(mllm.model)

    def finish_task(self, mllm, ctx: TaskContext) -> None:
        if is_peft(mllm.model):
            mllm.model = mllm.model.merge_and_unload()

    def snapshot_model(self, mllm):
        """A merged copy (the training model keeps its adapter): one more model in memory."""
        if not is_peft(mllm.model):
            return mllm
        import copy
        import dataclasses

        return dataclasses.replace(mllm, model=copy.deepcopy(mllm.model).merge_and_unload())
