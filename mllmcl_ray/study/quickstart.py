"""`mllmcl micro`: the micro world → base models → one continual run → report."""
from __future__ import annotations

import time
from pathlib import Path

from ..presets.base import SRIVASTAVA_TASKS


def micro_quickstart(out: Path, method: str = "naive", seed: int = 0, size: str = "micro-s",
                     tasks: str = ",".join(SRIVASTAVA_TASKS), workers: int = 0,
                     progress: bool = True, log=print) -> Path:
    """One run of the micro preset; `method` is a label of the method table
    (presets/methods.py) or any registered method name(s) with their default params."""
    from ..config import MethodConfig, from_dict
    from ..presets.methods import METHODS, method_config
    from ..presets.micro import micro_run_config, prepare_micro
    from ..report import build_report
    from ..runner import results_dir, run_and_evaluate

    t0 = time.perf_counter()
    prep = prepare_micro(out, sizes=[size], seed=0, progress=progress, log=log)
    log(prep.skill_text())
    cfg = micro_run_config(prep, size, method, seed, tasks=[t for t in tasks.split(",") if t],
                           out=out, workers=workers, study="micro")
    if method in METHODS:
        cfg.method = from_dict(MethodConfig, method_config(method, "micro"))
    run_and_evaluate(cfg, progress=progress, study="micro", log=log)
    report = build_report(results_dir(cfg), Path(out) / "report.html", title="mllmcl-ray micro run")
    log(f"done in {time.perf_counter() - t0:.0f} s; results: {results_dir(cfg)}")
    return report
