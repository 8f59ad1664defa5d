"""Linear fine-tuning (Zhai et al., EMT): only the projector trains; the LLM stays frozen."""
from __future__ import annotations

from ..models.build import set_trainable
from .base import ContinualMethod, TaskContext, register_method


@register_method("linear")
class LinearFT(ContinualMethod):
    exclusive = ("trainable",)

    def prepare_model(self, mllm, ctx: TaskContext) -> None:
        set_trainable(mllm.model, "projector")
