"""`mllmcl data prepare`: build the data layouts the paper presets read (docs/data.md)
from the public releases, through `datasets` / `huggingface_hub`.

    prepare_data("all", "/data")                                     # download + convert
    prepare_data("nl", "/data", sources={"lambada": "/copies/lambada"})  # local copy
    prepare_data("all", "/tmp/r", fixtures=True)                     # schema-exact fixtures

Parts (registry `PARTS`): ``nl`` (nl/*.jsonl), ``srivastava`` (continual/*.json),
``vl-eval`` (eval/*_slim.json), ``coin`` (Instructions/<Task>/*.json), ``emt``
(emt/<set>/*.json); ``all`` runs them in that order. Each writes ``manifest.json`` in its
directory and skips what a previous run finished.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...config import ConfigError
from .base import DatasetResult, PrepareContext, SourceError, clean_temps
from .coin import prepare_coin
from .emt import prepare_emt
from .nl import prepare_nl
from .srivastava import prepare_srivastava
from .vl_eval import prepare_vl_eval

PARTS: dict[str, Callable[[PrepareContext], list[DatasetResult]]] = {
    "nl": prepare_nl,
    "srivastava": prepare_srivastava,
    "vl-eval": prepare_vl_eval,
    "coin": prepare_coin,
    "emt": prepare_emt,
}
def parse_sources(items: list[str] | None) -> dict[str, str]:
    """``KEY=DIR_OR_HUB_ID`` strings (``--source``) as a dict."""
    out = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key or not val:
            raise ConfigError(f"--source {item!r} must be KEY=DIR_OR_HUB_ID (e.g. "
                              "lambada=/copies/lambada or vqav2=lmms-lab/VQAv2)")
        out[key.strip()] = val.strip()
    return out


def prepare_data(part: str, root: str | Path, *, sources: dict[str, str] | None = None,
                 images: str | Path | None = None, fixtures: bool = False,
                 progress: bool = True, log=print) -> list[DatasetResult]:
    """Run one part (or ``all``) into `root`; returns what each dataset did."""
    if part != "all" and part not in PARTS:
        raise ConfigError(f"unknown data part {part!r}; choose among all, {', '.join(PARTS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    removed = clean_temps(root)
    if removed:
        log(f"removed {removed} temp file(s) a killed run left under {root}")
    sources = dict(sources or {})
    if fixtures:
        from .fixtures import build_fixture_sources

        fx_sources, fx_images = build_fixture_sources(root / ".fixtures-src")
        sources = {**fx_sources, **sources}
        images = images or fx_images
    ctx = PrepareContext(root=root, sources=sources, images=str(images) if images else None,
                         progress=progress, fixtures=fixtures, log=log)
    results = []
    for name in (PARTS if part == "all" else [part]):
        results += PARTS[name](ctx)
    return results


__all__ = ["PARTS", "PrepareContext", "SourceError", "parse_sources",
           "prepare_data"]
