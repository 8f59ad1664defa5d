"""Where an EMT study starts (Zhai et al. §5 fine-tunes LLaVA, an instruction-tuned MLLM).

``studies/emt.py --start``:

- ``instruct`` (default): the preset's instruction-tuned MLLM of ``--model``
  (`Preset.instruct_start`): on the micro preset the LLaVA recipe's output (alignment on
  the caption task + one instruction fine-tune on the world's ``instruct`` task), made
  once before the runs by `make_start` and reused; on the paper preset the public
  llava-hf LLaVA-1.5 (``vicuna-1.5-7b`` → ``llava-hf/llava-1.5-7b-hf``). ``--init
  CHECKPOINT`` names another instruction-tuned LLaVA-format checkpoint instead.
- ``aligned``: the preset's LLM after the alignment stage only, aligned in each run.

Every EMT run then starts from ``model.init`` with no alignment of its own; its
"before fine-tuning" rows (trained_task_index 1, ``zero_shot``) are EMT of that start
(runner.eval_jobs: the base model's evaluation with ``eval.zero_shot``).
"""
from __future__ import annotations

from pathlib import Path

from ..config import ConfigError
from ..presets.base import InstructStart

STARTS = ("instruct", "aligned")  # --start choices


def resolve_start(preset, model: str, start: str, init: str | None) -> InstructStart | None:
    """The instruction-tuned start of an EMT study, or None for ``--start aligned``."""
    if start not in STARTS:
        raise ConfigError(f"--start {start!r}: choose among {', '.join(STARTS)} (another "
                          "instruction-tuned checkpoint: --init CHECKPOINT)")
    if start == "aligned":
        if init:
            raise ConfigError(f"--init {init!r} names an instruction-tuned start but --start is "
                              "aligned: drop one of them")
        return None
    if init:
        return InstructStart(init, f"{init} (--init)")
    return preset.instruct_start(model)


def make_start(start: InstructStart, *, progress: bool = True, log=print) -> str:
    """Make the start where it is made here (``start.recipe``: trained with the project's
    own run driver, no evaluation, each step's checkpoint written atomically), or reuse
    it when an earlier call made it; returns ``start.init``."""
    if start.recipe is None:
        return start.init
    from ..train.checkpoint import is_complete

    if is_complete(Path(start.init).parent):
        log(f"[emt] start: reusing {start.init}")
        return start.init
    from ..runner import quiet_libraries
    from ..train.continual import ContinualRun, LocalBackend
    from ..validate import validate_run_config

    cfg = start.recipe
    validate_run_config(cfg)
    quiet_libraries()
    if cfg.trainer.num_workers >= 1:
        from ..train.ray_trainer import RayBackend

        backend = RayBackend()
    else:
        backend = LocalBackend(progress=progress)
    log(f"[emt] start: making {start.source}")
    ContinualRun(cfg, backend=backend, evaluate=None, log=log).run()
    if not is_complete(Path(start.init).parent):
        raise RuntimeError(f"the LLaVA-recipe run finished without its checkpoint {start.init}")
    return start.init
