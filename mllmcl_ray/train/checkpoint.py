"""Checkpoint layout, atomic directories and the run's progress record.

A step checkpoint is a directory::

    <run_dir>/checkpoints/<step key>/
        model/            HF format (save_pretrained, safetensors) + tokenizer + processor,
                          or a method's own format (MoELoRA: base + adapter, see its module)
        method_state/     what CL methods carry across tasks (rehearsal buffer, Fisher, ...)
        position.json     step key, task index/name, stage, losses, complete=true

It is written into a temp dir beside it and renamed into place (`mllmcl_ray.io`), so a
kill leaves either the old state or the whole new checkpoint. `RunState` (run_state.json, also written
atomically) lists the finished steps in order; a rerun skips them.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..io import atomic_dir, atomic_write_text  # noqa: F401  (re-exported)

POSITION_FILE = "position.json"
STATE_FILE = "run_state.json"


def is_complete(ckpt: str | Path) -> bool:
    p = Path(ckpt) / POSITION_FILE
    if not p.exists():
        return False
    try:
        return bool(json.loads(p.read_text()).get("complete"))
    except json.JSONDecodeError:
        return False


def clean_stale_temps(root: str | Path) -> int:
    """Remove temp dirs a killed writer left behind; returns how many."""
    n = 0
    root = Path(root)
    if root.exists():
        for p in root.glob(".*.tmp"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            n += 1
    return n


@dataclass
class RunState:
    """The finished steps of a run, in order, with their checkpoints."""

    run_id: str
    done: list[dict] = field(default_factory=list)  # [{key, checkpoint, summary...}]

    @classmethod
    def load(cls, run_dir: str | Path, run_id: str) -> RunState:
        p = Path(run_dir) / STATE_FILE
        if not p.exists():
            return cls(run_id)
        data = json.loads(p.read_text())
        if data.get("run_id") != run_id:
            raise ValueError(f"{p} belongs to run {data.get('run_id')!r}, not {run_id!r}: the "
                             "config changed; use a new output_dir or delete the old run")
        return cls(run_id, data.get("done", []))

    def save(self, run_dir: str | Path) -> None:
        atomic_write_text(Path(run_dir) / STATE_FILE,
                          json.dumps({"run_id": self.run_id, "done": self.done}, indent=1,
                                     default=str))

    def finished(self, key: str) -> dict | None:
        return next((d for d in self.done if d["key"] == key), None)

    def last_checkpoint(self) -> str | None:
        return self.done[-1]["checkpoint"] if self.done else None
