"""Rehearsal / experience replay (Srivastava App. A.5 (4)): a seeded p % of every finished
VL task is kept and mixed into every later task's training data.

Task 1 (the base LLM) has no stored data. Task 2 of Srivastava's continual recipe (Table 4)
is the alignment captions (CC-LAION-SBU) *and* the first instruction set, trained as two
steps of one task: its buffer keeps p % of each, i.e. round(p × captions) alignment
samples (tokenised with the plain template, as they were trained) beside round(p ×
instructions) instruction samples. Later tasks keep p % of their own data. The buffer
holds, per finished task, exactly round(p × size) sample indices of that part's tokenised
training set, drawn without replacement by a generator seeded with (run seed, part name),
so the same seed keeps the same samples. It is the method state
(``method_state/rehearsal/buffer.json``: part name → indices, sample ids, size; the
alignment part of task ``t`` is ``t/align``); samples are rebuilt from
``ctx.previous_data[t]`` and ``ctx.previous_align_data[t]`` (the tokenised datasets of that
earlier task, which the trainer provides) and the ids are checked (looked up by id if the
dataset's order changed). `train_data` appends one
``torch.utils.data.Subset`` per buffered task; the trainer concatenates and shuffles.
Rehearsal composes with any method (``msgm+rehearsal``); alone it is Srivastava's
"Rehearsal (1 %)": naive fine-tuning plus the buffer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Subset

from ..config import ConfigError
from ._util import seeded_sample
from .base import ContinualMethod, TaskContext, register_method

BUFFER_FILE = "buffer.json"
ALIGN_PART = "/align"  # buffer key suffix of a task's alignment captions


def align_key(task: str) -> str:
    return task + ALIGN_PART


@dataclass
class RehearsalParams:
    """Settings of Rehearsal (method.params.rehearsal)."""

    fraction: float = 0.01  # p: fraction of each finished VL task kept (0.01 = 1 %, Srivastava)

    def __post_init__(self):
        if not 0.0 <= self.fraction <= 1.0:
            raise ConfigError(f"method.params.rehearsal.fraction {self.fraction} must be in [0, 1]")


def buffer_size(fraction: float, n: int) -> int:
    return int(round(fraction * n))


@register_method("rehearsal")
class Rehearsal(ContinualMethod):
    Params = RehearsalParams
    revision = 2  # 2: task 2's buffer keeps p % of the alignment captions too (Table 4)

    def __init__(self, params: RehearsalParams | None = None):
        super().__init__(params or RehearsalParams())
        self.buffer: dict[str, dict] = {}  # task -> {"indices": [...], "ids": [...], "size": n}
        self._current = None

    def select(self, task: str, data, seed: int) -> dict:
        """The buffer entry of a finished task: round(p × len(data)) seeded indices + ids."""
        idx = seeded_sample(len(data), buffer_size(self.params.fraction, len(data)), seed,
                            f"rehearsal/{task}")
        return {"indices": idx, "ids": [data[i]["id"] for i in idx], "size": len(data)}

    def samples(self, task: str, data) -> Subset:
        """The buffered samples of `task` as a Subset of its tokenised dataset."""
        entry = self.buffer[task]
        idx = list(entry["indices"])
        if any(i >= len(data) or data[i]["id"] != sid for i, sid in zip(idx, entry["ids"])):
            where = {}
            for i in range(len(data)):
                where.setdefault(data[i]["id"], i)
            missing = [sid for sid in entry["ids"] if sid not in where]
            if missing:
                raise RuntimeError(f"rehearsal: {len(missing)} buffered samples of task {task!r} "
                                   f"(e.g. {missing[:3]}) are not in its data any more")
            idx = [where[sid] for sid in entry["ids"]]
        return Subset(data, idx)

    def train_data(self, datasets, ctx: TaskContext):
        if ctx.stage != "finetune":
            return datasets
        self._current = (ctx.task_name, datasets[0], ctx.align_data, ctx.seed)
        out = list(datasets)
        for task in ctx.previous_tasks:
            data = ctx.previous_data.get(task)
            if data is None:
                raise RuntimeError(f"rehearsal: no data of previous task {task!r} in the context")
            parts = [(task, data)]
            if ctx.previous_align_data.get(task) is not None:
                parts.append((align_key(task), ctx.previous_align_data[task]))
            for key, part in parts:
                if key not in self.buffer:  # e.g. rehearsal added to a run after that task
                    self.buffer[key] = self.select(key, part, ctx.seed)
                if self.buffer[key]["indices"]:
                    out.append(self.samples(key, part))
        return out

    def finish_task(self, mllm, ctx: TaskContext) -> None:
        if self._current is not None and ctx.stage == "finetune":
            task, data, align, seed = self._current
            self.buffer[task] = self.select(task, data, seed)
            if align is not None:
                self.buffer[align_key(task)] = self.select(align_key(task), align, seed)
        self._current = None

    def save_state(self, path: Path) -> None:
        (Path(path) / BUFFER_FILE).write_text(json.dumps(self.buffer, indent=1))

    def load_state(self, path: Path) -> None:
        p = Path(path) / BUFFER_FILE
        if p.exists():
            self.buffer = json.loads(p.read_text())
