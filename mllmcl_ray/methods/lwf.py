"""Learning without Forgetting (Li & Hoiem; as CoIN Sec. 5 / Tab. 9 uses it).

Before a new task trains (`before_training`), the model as it is — the teacher, i.e. the
previous task's final model — is run on a seeded sample of every previous VL task's
training data (default 100 samples per task, CoIN's "100 logits per task"), and its
next-token distributions at the answer positions are recorded, softened by the
temperature T: the full distributions (``top_k: 0``), or the k most probable tokens plus
one bucket for all the others (``top_k: k``; the bucket keeps the recorded distribution
summing to 1). While the task trains, each training micro-batch is accompanied by a
replay micro-batch of recorded samples (``penalty`` runs the student on it with the
trainer's forward), and

    λ · T² · KL(p_teacher^T ‖ p_student^T)        (λ = 0.1, CoIN)

averaged over the replayed answer tokens is added to the loss. The T² factor (Hinton et
al.) keeps the gradient scale of the softened targets independent of T. The loss is 0
when the student equals the teacher (before the first update). The records live in
memory for one task and are re-made from the current model at the next task's start, so
LwF carries no state across tasks. Replay batches load pixels (not the feature cache)
and the forward runs the frozen tower on them. The first VL task has no previous task:
LwF does nothing there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..models.training import answer_positions
from ._util import seeded_sample
from .base import ContinualMethod, TaskContext, register_method

_FLOOR = -1e4  # log-probabilities are clamped here so that 0·log 0 terms vanish


@dataclass
class LwFParams:
    """Settings of LwF (method.params.lwf)."""

    lam: float = 0.1  # λ: weight of the distillation loss
    temperature: float = 2.0  # T: both distributions are softened by T; the loss is scaled by T²
    samples_per_task: int = 100  # recorded samples of each previous task (seeded)
    top_k: int = 0  # 0: record full distributions; k > 0: the top k tokens + an "all others" bucket
    replay_batch_size: int = 0  # replayed samples per training micro-batch (0: as the micro-batch)

    def __post_init__(self):
        if self.lam < 0 or self.temperature <= 0:
            raise ConfigError("method.params.lwf: lam must be >= 0 and temperature > 0")
        if self.samples_per_task < 1 or self.top_k < 0 or self.replay_batch_size < 0:
            raise ConfigError("method.params.lwf: samples_per_task >= 1, top_k >= 0 and "
                              "replay_batch_size >= 0 are required")


@dataclass
class TeacherRecord:
    """A recorded sample and the teacher's softened distributions at its answer positions."""

    sample: dict
    logp: torch.Tensor  # [m, V] (full) or [m, k + 1] (top-k + rest), log-probabilities at T
    index: torch.Tensor | None = None  # [m, k] token ids of the top-k columns (None: full)


def record_teacher(logits: torch.Tensor, temperature: float, top_k: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher log-probabilities at T from answer-position logits [m, V]."""
    z = logits.float() / temperature
    logp = F.log_softmax(z, dim=-1)
    if not top_k or top_k >= z.shape[-1]:
        return logp.cpu(), None
    top = logp.topk(top_k, dim=-1)
    return torch.cat([top.values, _rest_logp(z, top.indices)], dim=-1).cpu(), top.indices.cpu()


def _rest_logp(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside `index` ([m, 1])."""
    masked = z.scatter(-1, index, float("-inf"))
    return (torch.logsumexp(masked, -1) - torch.logsumexp(z, -1)).unsqueeze(-1)


def distill_loss(student_logits: torch.Tensor, teacher_logp: torch.Tensor,
                 teacher_index: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """T² · mean over positions of KL(teacher ‖ student), both softened by T."""
    z = student_logits.float() / temperature
    if teacher_index is None:
        s_logp = F.log_softmax(z, dim=-1)
    else:
        s_logp = torch.cat([z.gather(-1, teacher_index) - torch.logsumexp(z, -1, keepdim=True),
                            _rest_logp(z, teacher_index)], dim=-1)
    t_logp = teacher_logp.clamp_min(_FLOOR)
    kl = (t_logp.exp() * (t_logp - s_logp.clamp_min(_FLOOR))).sum(-1)
    return kl.mean() * temperature ** 2


@register_method("lwf")
class LwF(ContinualMethod):
    Params = LwFParams

    def __init__(self, params: LwFParams | None = None):
        super().__init__(params or LwFParams())
        self.records: list[TeacherRecord] = []
        self._order: np.ndarray = np.zeros(0, dtype=np.int64)
        self._pos = 0
        self._collate = None

    def before_training(self, module, ctx: TaskContext) -> None:
        self.records = []
        if not ctx.previous_tasks or self.params.lam == 0:
            return
        self._collate = ctx.pixel_collate()
        p = self.params
        was = module.training
        module.eval()
        try:
            with torch.no_grad():
                for name in ctx.previous_tasks:
                    data = ctx.previous_data.get(name)
                    if data is None:
                        raise RuntimeError(f"lwf: no data of previous task {name!r} in the context")
                    idx = seeded_sample(len(data), p.samples_per_task, ctx.seed, f"lwf/{name}")
                    for start in range(0, len(idx), 8):
                        samples = [data[i] for i in idx[start:start + 8]]
                        batch = self._collate(samples)
                        logits = ctx.forward(module, batch)
                        labels = batch["labels"].to(logits.device)
                        sel, _ = answer_positions(logits, labels)
                        counts = (labels[:, 1:] != -100).sum(1).tolist()
                        for sample, rows in zip(samples, sel.split(counts)):
                            if rows.shape[0]:
                                logp, index = record_teacher(rows, p.temperature, p.top_k)
                                self.records.append(TeacherRecord(sample, logp, index))
        finally:
            module.train(was)
        rng = np.random.default_rng([ctx.seed, ctx.task_index, ctx.rank])
        self._order = rng.permutation(len(self.records))
        self._pos = 0

    def _next(self, n: int) -> list[TeacherRecord]:
        out = []
        for _ in range(min(n, len(self.records))):
            if self._pos >= len(self._order):
                self._pos = 0
            out.append(self.records[int(self._order[self._pos])])
            self._pos += 1
        return out

    def penalty(self, module, batch, logits, ctx: TaskContext):
        if not self.records:
            return None
        recs = self._next(self.params.replay_batch_size or len(batch["input_ids"]))
        replay = self._collate([r.sample for r in recs])
        student = ctx.forward(module, replay)
        sel, _ = answer_positions(student, replay["labels"].to(student.device))
        t_logp = torch.cat([r.logp for r in recs]).to(sel.device)
        index = None if recs[0].index is None else torch.cat([r.index for r in recs]).to(sel.device)
        return self.params.lam * distill_loss(sel, t_logp, index, self.params.temperature)

    def finish_task(self, mllm, ctx: TaskContext) -> None:
        self.records = []
