"""Presets: where a study's models, data and method settings come from.

- `base.py`: the `Preset` contract (models, Srivastava's run config, one more VL task).
- `paper.py`: the papers' models (hub ids) and the data layout (docs/data.md).
- `micro.py` + `micro_pretrain.py`: the synthetic world and its base models, made here.
- `methods.py`: the one table of named method configurations.

`make_preset("micro" | "paper", ...)` builds one; imports stay light (the micro preset
loads torch only when it makes its models).
"""
from __future__ import annotations

from ..config import ConfigError
from .base import SRIVASTAVA_TASKS, Preset
from .methods import METHODS, method_config, method_configs, named_method

PRESETS = ("micro", "paper")


def make_preset(name: str, *, data_root: str | None = None, model_root: str | None = None,
                world_size: str = "micro", **kw) -> Preset:
    """The preset `name` (ConfigError for an unknown one); `kw`: workers, eval_samples,
    out, log, progress (see `Preset`)."""
    if name == "micro":
        from .micro import MicroPreset

        return MicroPreset(world_size=world_size, **kw)
    if name == "paper":
        from .paper import PaperPreset

        return PaperPreset(data_root, model_root, **kw)
    raise ConfigError(f"unknown preset {name!r}; choose among {', '.join(PRESETS)}")


def default_preset() -> str:
    """`paper` on a machine with a CUDA GPU, else `micro`."""
    try:
        import torch

        return "paper" if torch.cuda.is_available() else "micro"
    except Exception:  # pragma: no cover
        return "micro"


__all__ = ["PRESETS", "SRIVASTAVA_TASKS", "METHODS", "Preset", "make_preset", "default_preset",
           "method_config", "method_configs", "named_method"]
