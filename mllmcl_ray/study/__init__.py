"""The study layer: declarative studies and the one command line they share.

- `spec.py`: `StudySpec` (base config, grid, named reproductions, options, summary),
  `Reproduction`, `Arg`, `PerPreset`, `Plan`, `StudyContext`.
- `cli.py`: the generic study command line built from a StudySpec (dry run, Tune, report).
- `summary.py`: the default summary (Δ / MAA / BWT per run).
- `quickstart.py`: `mllmcl micro` (one micro run, end to end).

Below it: `presets/` (models, data, the method table), `sweep.py` (grids, Ray Tune, dry
runs), `runner.py` (one run + evaluation). Nothing below imports this package.
"""
from .spec import Arg, PerPreset, Plan, Reproduction, StudyContext, StudySpec

__all__ = ["Arg", "PerPreset", "Plan", "Reproduction", "StudyContext", "StudySpec"]
