"""The one study command line, built from a `StudySpec`.

    python studies/<study>.py [--preset micro|paper] [--reproduce NAME] [options]

Flow: parse → choose preset and reproduction → resolve the study's own options (the
user's flags, else the reproduction's values, else the option's default) → base config
(`spec.base`) with --config/--set/--workers over it → grid (`spec.grid`) → plans →
either validate them (--dry-run) or run them (Ray Tune trials) → summary + report.

Every error a user can cause is a `ConfigError` (or `DataError`), printed here as one line
with exit status 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError
from .spec import Arg, Plan, StudyContext, StudySpec


def build_parser(spec: StudySpec) -> argparse.ArgumentParser:
    repros = "\n".join(f"  {r.name:10s} {r.doc}" + (" (default)" if i == 0 else "")
                       for i, r in enumerate(spec.reproductions))
    ap = argparse.ArgumentParser(
        prog=f"studies/{spec.name}.py", description=spec.doc,
        epilog=f"named reproductions (--reproduce):\n{repros}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("common study options")
    g.add_argument("--preset", choices=["micro", "paper"], default=None,
                   help="micro: the synthetic world on this machine (default without a GPU); "
                        "paper: the papers' models and data (default with a GPU)")
    g.add_argument("--reproduce", choices=[r.name for r in spec.reproductions], default=None,
                   help=f"which figure/table to reproduce (default {spec.reproductions[0].name}; "
                        "list below); your own flags override its values")
    g.add_argument("--config", default=None,
                   help="YAML mapping of RunConfig fields merged over the preset's base config")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one base-config value (repeatable), e.g. --set stages.finetune.lr=1e-4")
    g.add_argument("--out", default=f"runs/{spec.name}", help=f"output directory (default runs/{spec.name})")
    g.add_argument("--seeds", default=None, help=f"comma-separated seeds (default: the reproduction's, else {spec.seeds})")
    g.add_argument("--workers", type=int, default=None,
                   help="Ray Train workers per run (0: in-process loop; micro default 0, paper 8)")
    g.add_argument("--max-concurrent", type=int, default=2, help="runs (Ray Tune trials) at a time (default 2)")
    g.add_argument("--no-tune", action="store_true", help="run the grid sequentially, without Ray Tune")
    g.add_argument("--tracker", choices=["tensorboard", "wandb", "mlflow"], default=None,
                   help="also log every trial through Ray Tune's logger callback for this tracker "
                        "(offline; per-task metrics and final Δ/MAA/BWT)")
    g.add_argument("--data-root", default=None, help="paper preset: data root (layout: docs/data.md)")
    g.add_argument("--model-root", default=None,
                   help="paper preset: directory of local model copies (default: hub ids)")
    g.add_argument("--world-size", default="micro", help="micro preset: world size (micro or tiny)")
    g.add_argument("--eval-samples", type=int, default=None,
                   help="samples per eval set (micro default 200; paper: the papers' sets in full, "
                        "Srivastava's slim sets 1024); ≤ 0: all")
    g.add_argument("--dry-run", action="store_true",
                   help="validate every run config (models and data named, batches reachable) and stop")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    if spec.args:
        s = ap.add_argument_group(f"{spec.name} options")
        for a in spec.args:
            if a.flag_only:
                s.add_argument(a.flag, action="store_true", default=None, help=a.help)
            else:
                s.add_argument(a.flag, default=None, type=a.type, help=a.help + _default_text(a))
    return ap


def _default_text(a: Arg) -> str:
    from .spec import PerPreset

    if a.default is None:
        return ""
    if isinstance(a.default, PerPreset):
        return f" (default micro {a.default.micro}, paper {a.default.paper})"
    return f" (default {a.default})"


def resolve(spec: StudySpec, args: argparse.Namespace, preset: str):
    """Fill the study's options the user left out from the reproduction, then defaults.
    Returns the reproduction, the seeds, and the user's flags that differ from it."""
    from .spec import PerPreset

    repro = spec.reproduction(args.reproduce)
    overrides = []
    for a in spec.args:
        v = repro.values.get(a.dest, a.default)
        v = v.get(preset) if isinstance(v, PerPreset) else v
        v = False if a.flag_only and v is None else v
        given = getattr(args, a.dest)
        if given is None:
            setattr(args, a.dest, v)
        elif str(given) != str(v):
            overrides.append(a.flag if a.flag_only else f"{a.flag} {given}")
    repro_seeds = repro.values.get("seeds") or spec.seeds
    repro_seeds = repro_seeds.get(preset) if isinstance(repro_seeds, PerPreset) else repro_seeds
    seeds = args.seeds or repro_seeds
    if args.seeds and str(args.seeds) != str(repro_seeds):
        overrides.append(f"--seeds {args.seeds}")
    try:
        seed_list = [int(s) for s in str(seeds).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: expected comma-separated integers") from None
    if not seed_list:
        raise ConfigError("--seeds is empty: give at least one seed")
    return repro, seed_list, tuple(overrides)


def make_context(spec: StudySpec, args: argparse.Namespace, log=print) -> StudyContext:
    from ..presets import default_preset, make_preset

    preset_name = args.preset or default_preset()
    repro, seeds, overrides = resolve(spec, args, preset_name)
    if args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be ≥ 1, got {args.max_concurrent}")
    if args.tracker and args.no_tune:
        raise ConfigError("--tracker logs through Ray Tune's callbacks: drop --no-tune")
    preset = make_preset(preset_name, data_root=args.data_root, model_root=args.model_root,
                         world_size=args.world_size, workers=args.workers,
                         eval_samples=args.eval_samples, out=args.out, log=log,
                         progress=not args.quiet)
    return StudyContext(spec=spec, args=args, preset=preset, reproduction=repro, seeds=seeds,
                        overrides=overrides,
                        dry_run=args.dry_run, log=log)


def build_plans(ctx: StudyContext) -> list[Plan]:
    """The study's plans: base config (+ --config/--set/--workers), grid, split."""
    from ..sweep import apply_config_overrides

    spec, args = ctx.spec, ctx.args
    base = spec.base(ctx)
    base = apply_config_overrides(base, args.config, args.set, args.workers)
    base.name = spec.name
    grid = dict(spec.grid(ctx))
    plans = spec.plans(ctx, base, grid) if spec.plans else [Plan(spec.name, base, grid)]
    if not plans:
        raise ConfigError(f"{spec.name}: the chosen options leave no run to do")
    return plans


def preflight(ctx: StudyContext, plans: list[Plan]) -> int:
    """Checks a dry run makes beyond validating each run config; returns an exit status.

    The single call site for study-wide pre-flight checks: on the paper preset the data
    root's check (`mllmcl data check STUDY`, images not decoded) and the cost estimate
    (tokens / FLOPs / GPU memory / GPU-hours per run and in total)."""
    status = 0
    if not ctx.micro:  # the paper preset reads a prepared data root: is it complete?
        from ..presets.data_check import STUDY_LAYOUTS, check_study_data

        if ctx.spec.name not in STUDY_LAYOUTS:
            ctx.log(f"[{ctx.spec.name}] no data layout is registered for this study in "
                    "presets/data_check.py: its data root was not checked")
            return status
        report = check_study_data(ctx.spec.name, ctx.args.data_root, decode=False,
                                  progress=not ctx.args.quiet)
        ctx.log(report.text())
        status = max(status, 0 if report.ok else 1)
    if status == 0:
        ctx.log(study_cost(plans, ctx.log))
    return status


def study_cost(plans: list[Plan], log=print, sample_records: int = 200) -> str:
    """The cost table (cost.py: tokens, FLOPs, GPU memory per worker, GPU-hours) of every
    run of the plans, token lengths from up to `sample_records` records per stage. A run
    whose cost cannot be known offline (no model config here) is named, not fatal."""
    from ..cost import estimate_run_cost, format_cost_table
    from ..sweep import apply_overrides, expand_grid

    costs, skipped = [], []
    for p in plans:
        for combo in expand_grid(p.space):
            cfg = apply_overrides(p.base, combo)
            try:
                costs.append(estimate_run_cost(cfg, sample_records=sample_records))
            except (ConfigError, OSError, ValueError) as e:  # e.g. no tokenizer here offline
                skipped.append(f"{cfg.model.name} {cfg.method.name}: {str(e).splitlines()[0]}")
    text = format_cost_table(costs) if costs else "no run's cost could be estimated"
    if skipped:
        text += f"\ncost not estimated for {len(skipped)} run(s): " + "; ".join(skipped[:3])
    return text


def dry_run_plans(ctx: StudyContext, plans: list[Plan]) -> int:
    from ..sweep import dry_run, tracker_callbacks

    if ctx.args.tracker:  # a missing tracker package shows now, not after the first run
        tracker_callbacks(ctx.args.tracker, ctx.out / "tune", ctx.spec.name)
    status = 0
    for p in plans:
        if p.note:
            ctx.log(f"[{p.study}] {p.note}")
        status = max(status, dry_run(p.base, p.space, p.study, log=ctx.log))
    return max(status, preflight(ctx, plans))


def run_plans(ctx: StudyContext, plans: list[Plan]) -> None:
    from ..sweep import run_study

    args = ctx.args
    if ctx.spec.before_runs:
        ctx.spec.before_runs(ctx, plans)
    for p in plans:
        if p.before:
            p.before(p.base)
        run_study(p.base, p.space, study=p.study, use_tune=not args.no_tune,
                  max_concurrent=args.max_concurrent, progress=not args.quiet, log=ctx.log,
                  tracker=args.tracker)


def finish(ctx: StudyContext, plans: list[Plan]) -> Path:
    """Print (and save) the study's summary, then write its HTML report."""
    from ..report import build_report
    from ..runner import results_dir
    from .summary import atomic_write_text, default_summary

    spec = ctx.spec
    base = plans[0].base
    text = (spec.summary or default_summary)(ctx, plans)
    if text:
        ctx.log(text)
        atomic_write_text(Path(base.output_dir) / f"{spec.name}-summary.md", text)
    out = Path(base.output_dir) / f"{spec.name}-report.html"
    path = build_report(results_dir(base), out, title=f"mllmcl-ray: {spec.name}")
    ctx.log(f"report: {path}")
    return path


def run(spec: StudySpec, args: argparse.Namespace, log=print) -> int:
    ctx = make_context(spec, args, log)
    repro = ctx.reproduction
    log(f"[{spec.name}] {repro.name}: {repro.doc} — preset {ctx.preset.name}, seeds "
        f"{','.join(map(str, ctx.seeds))}")
    plans = build_plans(ctx)
    if args.dry_run:
        return dry_run_plans(ctx, plans)
    run_plans(ctx, plans)
    finish(ctx, plans)
    return 0


def main(spec: StudySpec, argv=None) -> int:
    """Parse, run, and turn every user error into one line on stderr with exit status 2
    (`errors.main_guard`; `--debug` shows the traceback)."""
    from ..errors import main_guard

    args = build_parser(spec).parse_args(argv)
    return main_guard(lambda: run(spec, args), prog=spec.name, debug=args.debug)
