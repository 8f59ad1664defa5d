"""Naive fine-tuning: the LLaVA recipe as it is (Srivastava A.5 (1)): the projector and the
whole LLM train with cross-entropy on answer tokens; nothing else."""
from __future__ import annotations

from ..models.build import set_trainable
from .base import ContinualMethod, TaskContext, register_method


@register_method("naive")
class NaiveFT(ContinualMethod):
    def prepare_model(self, mllm, ctx: TaskContext) -> None:
        set_trainable(mllm.model, "projector" if ctx.stage == "align" else "projector+llm")
