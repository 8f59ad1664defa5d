"""`StudySpec`: a study as data — its base config, its grid, its named reproductions.

A study file (studies/*.py) declares one `StudySpec` and calls `SPEC.main()`; the generic
command line (study/cli.py) parses the shared options plus the spec's own `args`, picks
the preset and the reproduction, builds the runs through the spec's functions, runs them
as Ray Tune trials and prints the summary. A spec's functions see a `StudyContext`: the
resolved arguments, the preset (never branch on which one unless the data differ), seeds.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError, RunConfig


@dataclass(frozen=True)
class PerPreset:
    """A value that differs by preset (e.g. the models of a reproduction)."""

    micro: Any  # value on the micro preset
    paper: Any  # value on the paper preset

    def get(self, preset: str) -> Any:
        return getattr(self, preset)


@dataclass(frozen=True)
class Arg:
    """A study-specific command-line option (`--flag`); its value reaches the spec's
    functions as `ctx.args.<dest>` (the flag without dashes, '-' as '_')."""

    flag: str  # e.g. "--scales"
    help: str  # one line for --help
    default: Any = None  # used when neither the user nor the reproduction sets it (may be PerPreset)
    type: Callable | None = None  # argparse type (None: str; ignored for flags)
    flag_only: bool = False  # a switch (store_true): True when given

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Reproduction:
    """A named recipe of the paper (`--reproduce NAME`): argument values that reproduce one
    figure or table. The user's own flags win over these; values may be PerPreset."""

    name: str  # e.g. "fig3b"
    doc: str  # what it reproduces (paper, figure/table, recipe, methods, scales)
    values: dict[str, Any] = field(default_factory=dict)  # argument dest -> value ("seeds" too)


@dataclass
class Plan:
    """One grid of runs recorded under one study name (a study may run several, e.g. one
    per recipe or per CoIN level, so that the report never pools them)."""

    study: str  # the result rows' study name
    base: RunConfig  # the config every run starts from
    space: dict[str, list]  # dotted RunConfig key -> values (every combination runs)
    before: Callable[[RunConfig], None] | None = None  # work on `base` before running (not in a dry run)
    note: str = ""  # what a dry run prints about work it skips


@dataclass
class StudyContext:
    """What a spec's functions see."""

    spec: "StudySpec"  # the study
    args: argparse.Namespace  # every option, study ones resolved (user > reproduction > default)
    preset: Any  # presets.base.Preset: models, run configs, tasks of the chosen preset
    reproduction: Reproduction  # the chosen named reproduction
    seeds: list[int]  # --seeds (or the reproduction's)
    overrides: tuple[str, ...] = ()  # the user's flags that change the reproduction ("--methods x")
    dry_run: bool = False  # --dry-run: validate only
    log: Callable[[str], None] = print  # where progress lines go

    @property
    def micro(self) -> bool:
        return self.preset.name == "micro"

    @property
    def out(self) -> Path:
        return Path(self.args.out)

    def list(self, dest: str, allowed=None) -> list[str]:
        """A comma-separated option as a list; with `allowed`, unknown items raise ConfigError."""
        raw = getattr(self.args, dest)
        items = [x.strip() for x in str(raw).split(",") if x.strip()] if raw is not None else []
        flag = "--" + dest.replace("_", "-")
        if not items:
            raise ConfigError(f"{flag} is empty: give at least one value")
        if allowed is not None:
            bad = [x for x in items if x not in allowed]
            if bad:
                raise ConfigError(f"{flag}: unknown value(s) {', '.join(bad)}; choose among "
                                  f"{', '.join(map(str, allowed))}")
        return items

    def numbers(self, dest: str, kind: type = float) -> list:
        """A comma-separated numeric option (ConfigError when an item is not a number)."""
        items = self.list(dest)
        try:
            return [kind(x) for x in items]
        except ValueError:
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(f"{flag} {getattr(self.args, dest)!r}: expected comma-separated "
                              f"{'integers' if kind is int else 'numbers'}") from None


    def order(self, dest: str, names: list[str]) -> list[str]:
        """A task-order option: "paper" (`names` as given), "alphabet" (sorted, case-blind,
        as CoIN Tab. 5) or comma-separated distinct names among `names` (any case)."""
        raw = getattr(self.args, dest)
        if raw in ("paper", "alphabet"):
            return list(names) if raw == "paper" else sorted(names, key=str.lower)
        lookup, wanted = {n.lower(): n for n in names}, [t.lower() for t in self.list(dest)]
        if any(t not in lookup for t in wanted) or len(set(wanted)) != len(wanted):
            raise ConfigError(f"--{dest.replace('_', '-')} {raw!r}: tasks must be distinct names "
                              f"among {', '.join(names)}")
        return [lookup[t] for t in wanted]


BaseFn = Callable[[StudyContext], RunConfig]
GridFn = Callable[[StudyContext], dict]
PlansFn = Callable[[StudyContext, RunConfig, dict], list]
SummaryFn = Callable[[StudyContext, list], str]


@dataclass
class StudySpec:
    """A study, declared: see the module docstring and docs/architecture.md."""

    name: str  # study name: result rows, OUT/<name>-report.html, default --out runs/<name>
    doc: str  # --help text (the study file's docstring)
    base: BaseFn  # the base RunConfig from the context (through ctx.preset: no preset branching)
    grid: GridFn  # dotted RunConfig key -> values; every combination is one run
    reproductions: tuple[Reproduction, ...]  # named recipes; the FIRST is the default
    args: tuple[Arg, ...] = ()  # study-specific options
    seeds: str = "0"  # default --seeds when the reproduction names none
    plans: PlansFn | None = None  # split (ctx, base, grid) into several Plans (default: one)
    before_runs: Callable[[StudyContext, list], None] | None = None  # once, before any run (not in a dry run)
    summary: SummaryFn | None = None  # text printed and saved as OUT/<name>-summary.md (default: Δ/MAA/BWT per run)

    def __post_init__(self):
        if not self.reproductions:
            raise ConfigError(f"study {self.name!r} declares no reproduction")
        names = [r.name for r in self.reproductions]
        if len(set(names)) != len(names):
            raise ConfigError(f"study {self.name!r}: reproduction names repeat: {names}")
        dests = {a.dest for a in self.args}
        for r in self.reproductions:
            unknown = set(r.values) - dests - {"seeds"}
            if unknown:
                raise ConfigError(f"study {self.name!r}: reproduction {r.name!r} sets unknown "
                                  f"option(s) {sorted(unknown)}")

    def reproduction(self, name: str | None) -> Reproduction:
        if name is None:
            return self.reproductions[0]
        for r in self.reproductions:
            if r.name == name:
                return r
        raise ConfigError(f"--reproduce {name!r}: {self.name} reproduces "
                          f"{', '.join(r.name for r in self.reproductions)}")

    # the command line lives in study/cli.py; these are its entry points
    def parser(self) -> argparse.ArgumentParser:
        from .cli import build_parser

        return build_parser(self)

    def parse_args(self, argv=None) -> argparse.Namespace:
        return self.parser().parse_args(argv)

    def main(self, argv=None) -> int:
        from .cli import main

        return main(self, argv)
