"""mSGM (Srivastava App. A.5 (5)): SGM (Soft targets, Gradient-free weight init, LoRA;
ref. [21]) adapted to LLaVA: Soft Targets + LoRA, without SGM's weight re-initialisation
and without output-layer freezing (the vocabulary is static and the output layer serves
causal generation).

A composite: ``msgm`` expands into the `soft_targets` and `lora` methods, configured under
``method.params.soft_targets`` and ``method.params.lora`` (their own defaults otherwise).
``msgm+rehearsal`` adds the rehearsal buffer (Srivastava's best setting, Tab. 1).
"""
from __future__ import annotations

from ..config import ConfigError
from .base import ContinualMethod, _params, register_method
from .lora import LoRA
from .soft_targets import SoftTargets


@register_method("msgm")
class MSGM(ContinualMethod):
    components = ("soft_targets", "lora")

    @classmethod
    def expand(cls, params: dict) -> list[ContinualMethod]:
        if params.get("msgm"):
            raise ConfigError("method.params.msgm: mSGM takes no settings of its own; set them "
                              "under method.params.soft_targets and method.params.lora")
        return [SoftTargets(_params(SoftTargets, params.get("soft_targets", {}), "soft_targets")),
                LoRA(_params(LoRA, params.get("lora", {}), "lora"))]
