"""`mllmcl`: the command line.

    mllmcl micro      run the micro continual study on this machine (CPU, minutes)
    mllmcl run        run one continual run from a YAML config (+ --set overrides)
    mllmcl validate   load and validate a YAML config without running it
    mllmcl world      write the synthetic micro world
    mllmcl bases      pretrain (or show) the micro base models
    mllmcl methods    list the named method configurations
    mllmcl results    print a summary table of a results directory
    mllmcl report     build the interactive HTML report of a results directory
    mllmcl data       prepare the paper presets' data (`data prepare`) and check it (`data check`)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/micro", help="output directory (default: runs/micro)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def check_micro_args(method: str, size: str, tasks: str, workers: int) -> None:
    """`mllmcl micro`'s choices, checked before the world is written or a model trained."""
    from .config import ConfigError, MethodConfig
    from .presets.micro_pretrain import LLM_SIZES
    from .data.micro.world import VL_TASKS
    from .methods.base import build_methods

    build_methods(MethodConfig(name=method))
    if size not in LLM_SIZES:
        raise ConfigError(f"--size {size!r} is not a micro LLM size; choose one of "
                          f"{', '.join(LLM_SIZES)}")
    names = [t for t in tasks.split(",") if t]
    bad = [t for t in names if t not in VL_TASKS or t == "caption"]
    if not names or bad:
        raise ConfigError(f"--tasks {tasks!r}: {bad or 'no tasks'} not micro VL tasks; choose "
                          f"among {', '.join(t for t in VL_TASKS if t != 'caption')}")
    if workers < 0:
        raise ConfigError(f"--workers {workers} must be ≥ 0 (0: in-process loop)")


def cmd_micro(args) -> int:
    from .study.quickstart import micro_quickstart

    check_micro_args(args.method, args.size, args.tasks, args.workers)

    report = micro_quickstart(out=Path(args.out), method=args.method, seed=args.seed,
                              size=args.size, tasks=args.tasks, workers=args.workers,
                              progress=not args.quiet)
    print(f"report: {report}")
    return 0


def cmd_run(args) -> int:
    from .runner import run_and_evaluate
    from .sweep import load_run_config

    cfg = load_run_config(args.config, args.set)
    run_and_evaluate(cfg, progress=not args.quiet)  # validates the whole run first
    return 0


def cmd_validate(args) -> int:
    from .sweep import load_run_config
    from .validate import validate_run_config

    cfg = load_run_config(args.config, args.set)
    for line in validate_run_config(cfg):
        print(line)
    print("config OK")
    return 0


def cmd_world(args) -> int:
    from .config import ConfigError
    from .data.micro.world import WORLD_SIZES, generate_world

    if args.size not in WORLD_SIZES:
        raise ConfigError(f"--size {args.size!r} is not a world size; choose one of "
                          f"{', '.join(WORLD_SIZES)}")

    m = generate_world(args.dir, seed=args.seed, size=args.size)
    print(f"micro world ({args.size}, seed {args.seed}) at {args.dir}")
    print(m)
    return 0


def cmd_bases(args) -> int:
    from .config import ConfigError
    from .presets.micro_pretrain import LLM_SIZES
    from .presets.micro import prepare_micro

    bad = [z for z in args.sizes.split(",") if z not in LLM_SIZES]
    if bad:
        raise ConfigError(f"--sizes: {bad} not micro LLM sizes; choose among {', '.join(LLM_SIZES)}")

    prep = prepare_micro(Path(args.out), sizes=args.sizes.split(","), progress=not args.quiet)
    for name, spec in prep.specs.items():
        print(f"{name}: llm={spec.llm} vision={spec.vision}")
    print(prep.skill_text())
    return 0


def cmd_methods(args) -> int:
    from .presets.methods import methods_table

    print(methods_table())
    return 0


def cmd_results(args) -> int:
    from .errors import ResultsError
    from .results import PredictionStore, ResultStore, summary_table

    if not Path(args.dir).is_dir():
        raise ResultsError(f"results directory {args.dir} does not exist")
    store = ResultStore(args.dir)
    if args.repair:
        moved = store.repair() + PredictionStore(args.dir).repair()
        for src, dst, why in moved:
            print(f"moved unreadable part {src} → {dst} ({why})", file=sys.stderr)
        print(f"repair: {len(moved)} unreadable part(s) moved aside; a rerun recomputes "
              "their keys", file=sys.stderr)
    df = store.read()
    if df.empty:
        print(f"no results in {args.dir}", file=sys.stderr)
        return 1
    if args.claims:
        from .report.claims import claims_markdown

        print(claims_markdown(df))
        return 0
    import pandas as pd

    with pd.option_context("display.max_columns", 50, "display.width", 200,
                           "display.max_colwidth", 40):
        print(summary_table(df).to_string())
    return 0


def cmd_report(args) -> int:
    from .report import build_report

    from .errors import ResultsError

    if not Path(args.dir).is_dir():
        raise ResultsError(f"results directory {args.dir} does not exist")
    check_output_file(args.output, "-o/--output")
    from .report.html import NoResultsError

    try:
        out = build_report(args.dir, args.output, title=args.title)
    except NoResultsError as e:
        raise ResultsError(str(e)) from e
    print(out)
    return 0


def check_output_file(path: str | Path, what: str) -> None:
    """An output file path: not a directory, its directory exists and is writable."""
    import os

    from .errors import ResultsError

    p = Path(path)
    if p.is_dir():
        raise ResultsError(f"{what} {p} is a directory; give a file name such as {p / 'report.html'}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ResultsError(f"{what} {p}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ResultsError(f"{what} {p} is not writable; choose another path")
    import tempfile

    try:  # the report is written as a temp file in that directory, then renamed
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".mllmcl-probe-"):
            pass
    except OSError as e:
        raise ResultsError(f"{what} {p} is not writable ({e.strerror}); choose another path") from None


def cmd_data_prepare(args) -> int:
    from .data.prepare import parse_sources, prepare_data

    if args.quiet:
        import datasets

        datasets.disable_progress_bars()
    results = prepare_data(args.part, args.root, sources=parse_sources(args.source),
                           images=args.images, fixtures=args.fixtures, progress=not args.quiet)
    done = sum(not r.skipped for r in results)
    print(f"data prepare {args.part}: {done} dataset(s) written, {len(results) - done} already "
          f"done, under {args.root}")
    return 0


def cmd_data_check(args) -> int:
    from .presets.data_check import check_study_data

    report = check_study_data(args.study, args.root, decode=not args.no_decode,
                              progress=not args.quiet)
    print(report.text())
    return 0 if report.ok else 1


def _add_data_parser(sub) -> None:
    from .presets.data_check import STUDY_LAYOUTS

    p = sub.add_parser("data", help="prepare the paper presets' data from the public releases "
                       "and check a data root (docs/data.md)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("prepare", help="download (or read local copies), convert and write the "
                        "layout of docs/data.md; resumable, with a manifest.json per part")
    q.add_argument("part", choices=["all", "nl", "srivastava", "vl-eval", "coin", "emt"],
                   help="which layout: nl (nl/*.jsonl), srivastava (continual/*.json), vl-eval "
                   "(eval/*_slim.json), coin (Instructions/), emt (emt/), or all")
    q.add_argument("--root", required=True, help="data root to write (the studies' --data-root)")
    q.add_argument("--source", action="append", default=[], metavar="KEY=DIR_OR_HUB_ID",
                   help="use a local copy or another hub id for one source, e.g. "
                   "lambada=/copies/lambada, llava_mix=/copies/LLaVA-Instruct-150K, "
                   "miniimagenet=/data/miniimagenet (keys: docs/data.md); repeatable")
    q.add_argument("--images", default=None, help="directory holding the source image trees "
                   "(coco/, gqa/, ocr_vqa/, textvqa/, vg/, llava_pretrain/, CoIN's COCO2014/ ...); "
                   "linked into ROOT/images")
    q.add_argument("--fixtures", action="store_true", help="build from small schema-exact "
                   "fixtures instead of the releases (demos and tests; no network)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_data_prepare)
    q = dsub.add_parser("check", help="check that a data root holds every file a study's paper "
                        "preset reads, with the recorded counts and every image; exit 1 if not")
    q.add_argument("study", choices=sorted(STUDY_LAYOUTS), help="the study whose files to check")
    q.add_argument("--root", required=True, help="data root (the study's --data-root)")
    q.add_argument("--no-decode", action="store_true",
                   help="only check that images exist (skip decoding each one)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_data_check)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mllmcl", description="Scaling studies of continual learning in multimodal LLMs "
        "(Ray Train / Tune, vLLM or transformers evaluation, plotly reports).")
    ap.add_argument("--debug", action="store_true",
                    help="show the traceback of a user error (otherwise one line, exit code 2)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("micro", help="run the micro continual study here (CPU, minutes)")
    _add_common(p)
    p.add_argument("--method", default="naive", help="a method of the table (`mllmcl methods`), "
                   "e.g. naive, soft_targets, msgm+rehearsal (default: naive)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="micro-s", help="micro LLM size (micro-xs, micro-s, micro-m)")
    p.add_argument("--tasks", default="instruct,vqa,ocr,grounding",
                   help="VL task sequence (Srivastava Table 4 order by default)")
    p.add_argument("--workers", type=int, default=0,
                   help="Ray Train workers (0: plain in-process loop, default)")
    p.set_defaults(func=cmd_micro)

    p = sub.add_parser("run", help="run one continual run from a YAML config")
    p.add_argument("config", help="YAML file with RunConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set method.name=soft_targets")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="load and validate a YAML run config")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("world", help="write the synthetic micro world")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="micro", help="tiny or micro")
    p.set_defaults(func=cmd_world)

    p = sub.add_parser("bases", help="pretrain (or reuse) the micro base models")
    _add_common(p)
    p.add_argument("--sizes", default="micro-s", help="comma-separated micro LLM sizes")
    p.set_defaults(func=cmd_bases)

    p = sub.add_parser("methods", help="list the named method configurations (presets/methods.py)")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("results", help="print a summary table of a results directory")
    p.add_argument("dir")
    p.add_argument("--repair", action="store_true",
                   help="move unreadable (corrupt or empty) Parquet parts aside into "
                        "<dir>/quarantine/; a rerun of the run recomputes their keys")
    p.add_argument("--claims", action="store_true",
                   help="print the paper-claims table instead (claim, paper's numbers, this "
                        "run's with seed spread, holds / does not hold / not enough seeds)")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("report", help="build the interactive HTML report")
    p.add_argument("dir")
    p.add_argument("-o", "--output", default="report.html")
    p.add_argument("--title", default=None)
    p.set_defaults(func=cmd_report)

    _add_data_parser(sub)
    for sp in sub.choices.values():  # `mllmcl run cfg.yaml --debug` works too
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of a user error")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Every user error (`errors.ConfigError` family) ends in one line and exit code 2
    (`--debug`: with its traceback); see `errors.main_guard`."""
    import warnings

    from .errors import main_guard
    from .results import UnreadablePartWarning

    args = build_parser().parse_args(argv)
    prog = f"mllmcl {args.command}"
    with warnings.catch_warnings():
        if not args.debug:  # skipped result parts: one line each, naming the file
            show = warnings.showwarning

            def one_line_warning(message, category, filename, lineno, file=None, line=None):
                if issubclass(category, UnreadablePartWarning):
                    print(f"{prog}: warning: {message}", file=sys.stderr)
                else:
                    show(message, category, filename, lineno, file, line)

            warnings.showwarning = one_line_warning
        return main_guard(lambda: args.func(args), prog=prog, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
