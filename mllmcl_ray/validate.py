"""Up-front validation of a whole run: everything knowable before any work starts.

`validate_run_config` is what `mllmcl validate`, `mllmcl run`, every study's dry run and
every Ray Tune trial call before training."""
from __future__ import annotations

from pathlib import Path

from .config import ConfigError, RunConfig


def validate_run_config(cfg: RunConfig, check_paths: bool = True) -> list[str]:
    """Check a config without downloading anything; returns a list of findings (raises on
    errors): methods exist and take their params, batch sizes are reachable for the worker
    count, strategies exist, data files and local model dirs exist."""
    from .methods.base import build_methods
    from .models.families import get_family
    from .models.templates import get_template
    from .train.schedule import accumulation_steps
    from .train.strategies.base import check_strategy_name

    notes = []
    build_methods(cfg.method)
    get_family(cfg.model.family)
    get_template(cfg.model.template)
    world = max(1, cfg.trainer.num_workers)
    for name in ("align", "finetune"):
        st = getattr(cfg.stages, name)
        acc = accumulation_steps(st, world, name)
        check_strategy_name(st.parallel)
        notes.append(f"stages.{name}: global batch {st.global_batch_size} = {st.per_device_batch_size}"
                     f" × {world} worker(s) × {acc} accumulation step(s)")
    if not cfg.tasks:
        raise ConfigError("tasks is empty: a run needs at least one VL task")
    for label, ref in (("model.llm", cfg.model.llm), ("model.vision", cfg.model.vision),
                       ("model.tokenizer", cfg.model.tokenizer)):
        if ref:
            local = Path(ref).exists()
            notes.append(f"{label}: {ref} ({'local dir' if local else 'hub id: fetched at run time'})")
    if check_paths:
        missing = []
        for src in cfg.align + [s for t in cfg.tasks for s in t.train]:
            if not Path(src.path).exists():
                missing.append(src.path)
        for es in cfg.nl_sets + [e for t in cfg.tasks for e in t.eval]:
            if not Path(es.path).exists():
                missing.append(es.path)
        if missing:
            notes.append(f"MISSING data files ({len(missing)}): " + ", ".join(missing[:5]) +
                         (" …" if len(missing) > 5 else ""))
    return notes
