"""Linguistic forgetting across Pythia scales (Srivastava et al., Fig. 2b, 3b, 4, 5; Table 1).

Launch on a Ray cluster (paper preset: Pythia 160M–2.8B deduped + CLIP ViT-L/14-336):

    ray job submit --working-dir . -- python studies/scale_pythia.py --preset paper --data-root /data

On a laptop with no GPU (micro preset, the default there; minutes on 2 cores):

    python studies/scale_pythia.py

For each scale × method × seed it runs (a) the continual recipe (alignment, then the
Table 4 sequence instruct → VQA → OCR → grounding, evaluating NL and VL after each task)
and, with `--recipes continual,llava`, (b) the LLaVA recipe (alignment, then the whole
mixture). Runs are Ray Tune trials (two at a time by default); results are Parquet rows
under OUT/results and the study ends by writing OUT/scale_pythia-report.html.
"""
from __future__ import annotations

import sys
from pathlib import Path

from mllmcl_ray.config import to_dict
from mllmcl_ray.study import (apply_cli_overrides, default_preset, dry_run, finish_study,
                              run_study, study_arg_parser)

STUDY = "scale_pythia"
METHODS = {
    "naive": {"name": "naive", "params": {}},
    "soft_targets": {"name": "soft_targets", "params": {"soft_targets": {"alpha": 0.01}}},
    "msgm+rehearsal": {"name": "msgm+rehearsal",
                       "params": {"soft_targets": {"alpha": 0.01}, "rehearsal": {"fraction": 0.01}}},
}


def parse_args(argv=None):
    ap = study_arg_parser(__doc__, default_out="runs/scale_pythia")
    ap.add_argument("--scales", default=None,
                    help="comma-separated model names (micro default: micro-xs,micro-s; paper "
                         "default: pythia-160m,pythia-410m,pythia-1b,pythia-1.4b,pythia-2.8b)")
    ap.add_argument("--methods", default="naive,soft_targets",
                    help=f"comma-separated methods among {', '.join(METHODS)} (default naive,soft_targets)")
    ap.add_argument("--recipes", default="continual", help="continual and/or llava (comma-separated)")
    ap.add_argument("--world-size", default="micro", help="micro preset: world size (micro or tiny)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    preset = args.preset or default_preset()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"unknown method(s) {unknown}; choose among {list(METHODS)}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in (args.seeds or "0,1").split(",")]
    recipes = [r for r in args.recipes.split(",") if r]

    # --- setup: base models and the base run config --------------------------------------
    if preset == "micro":
        from mllmcl_ray.data.micro.pretrain import LLM_SIZES
        from mllmcl_ray.study import micro_run_config, prepare_micro

        scales = (args.scales or "micro-xs,micro-s").split(",")
        bad = [s for s in scales if s not in LLM_SIZES]
        if bad:
            print(f"unknown micro scale(s) {bad}; choose among {list(LLM_SIZES)}", file=sys.stderr)
            return 2
        if args.dry_run:
            print(f"[{STUDY}] micro preset: would build the world and base models {scales} under "
                  f"{args.out}; validating configs against them")
        prep = prepare_micro(Path(args.out), sizes=scales, world_size=args.world_size,
                             progress=not args.quiet)
        print(prep.skill_text())
        base = micro_run_config(prep, scales[0], "naive", seeds[0], out=args.out, study=STUDY,
                                eval_samples=args.eval_samples or 200)
        base.eval.zero_shot = True  # VL tasks scored after alignment too (the zero-shot model)
        models = [to_dict(prep.specs[s]) for s in scales]
    else:
        from mllmcl_ray.presets import PYTHIA_SCALES, paper_run_config, resolve_model

        if not args.data_root:
            print("--preset paper needs --data-root (layout: docs/data.md)", file=sys.stderr)
            return 2
        scales = (args.scales or ",".join(PYTHIA_SCALES)).split(",")
        workers = 8 if args.workers is None else args.workers
        base = paper_run_config(scales[0], "naive", seeds[0], args.data_root, workers=workers,
                                out=args.out, model_root=args.model_root, study=STUDY)
        models = [to_dict(resolve_model(s, args.model_root)) for s in scales]
    base = apply_cli_overrides(base, args)
    base.name = STUDY
    space = {"model": models, "method": [METHODS[m] for m in methods], "seed": seeds,
             "recipe": recipes}

    if args.dry_run:
        return dry_run(base, space, STUDY)
    # --- train + evaluate: one continual run per combination -----------------------------
    run_study(base, space, study=STUDY, use_tune=not args.no_tune,
              max_concurrent=args.max_concurrent, progress=not args.quiet)
    # --- report --------------------------------------------------------------------------
    finish_study(base, STUDY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
