"""Mitigating linguistic forgetting at one scale (Srivastava et al., Fig. 3a; App. A.6.2–A.6.3,
Tables 2 and 3).

Launch on a Ray cluster (paper preset: Pythia-160M deduped + CLIP ViT-L/14-336, the LLaVA
recipe, every method; layout of --data-root in docs/data.md):

    ray job submit --working-dir . -- python studies/mitigation.py --preset paper --data-root /data

    # Table 2 (LoRA variants) and Table 3 (Soft Targets α) as well:
    ray job submit --working-dir . -- python studies/mitigation.py --preset paper \\
        --data-root /data --variants all

On a laptop with no GPU (micro preset, the default there):

    python studies/mitigation.py                      # every method, LLaVA recipe, micro-s
    python studies/mitigation.py --variants lora      # Table 2 on the micro world
    python studies/mitigation.py --preset paper --data-root /data --dry-run   # check only

What runs (one run per method configuration × seed × recipe, as Ray Tune trials):

- ``--variants methods`` (Fig. 3a): every registered method with the paper's settings
  (naive, linear, lora, soft_targets, msgm, moelora, rehearsal, ewc, lwf, msgm+rehearsal).
  With the LLaVA recipe (alignment, then the whole mixture once) there is no finished
  task to rehearse, anchor or distil, so rehearsal, ewc, lwf and msgm+rehearsal would
  equal naive / msgm: they are skipped there (with a note) and run with
  ``--recipes continual``.
- ``--variants lora`` (Table 2): naive ("Original LLaVA") and the six LoRA rows:
  1/2 full rank + higher α (16), 1/2 + rsLoRA (α 8: the default, best row), 1/4 full
  rank, 1/4 + higher α, 1/2 full rank, 1/2 + rsLoRA + K/Q/V targets only. "Full rank" is
  the LLM hidden size (``rank: 0.5`` / ``0.25`` in method.params.lora).
- ``--variants alpha`` (Table 3): naive and Soft Targets with α in ``--alphas``
  (default 0.001, 0.01, 0.1).
- ``--variants all``: the union (identical configurations run once).

Each run is evaluated on the NL suite (task 1 = the base LLM) and the VL sets; the report
(OUT/mitigation-report.html) shows Fig. 2a/3a (NL Δ vs VL accuracy) per method config.
Runs of the continual recipe are recorded under study ``mitigation-continual`` so that
the report never pools them with LLaVA-recipe runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mllmcl_ray.study import (apply_cli_overrides, default_preset, dry_run, finish_study,
                              run_study, study_arg_parser)

STUDY = "mitigation"


def lora(rank: float = 0.5, alpha: float = 8.0, rslora: bool = True,
         target: str = "all_linear") -> dict:
    return {"rank": rank, "alpha": alpha, "use_rslora": rslora, "target": target}


ST = {"alpha": 0.01}  # Soft Targets' chosen α (Table 3)
METHODS: dict[str, dict] = {
    "naive": {"name": "naive", "params": {}},
    "linear": {"name": "linear", "params": {}},
    "lora": {"name": "lora", "params": {"lora": lora()}},
    "soft_targets": {"name": "soft_targets", "params": {"soft_targets": dict(ST)}},
    "msgm": {"name": "msgm", "params": {"soft_targets": dict(ST), "lora": lora()}},
    "moelora": {"name": "moelora", "params": {}},
    "rehearsal": {"name": "rehearsal", "params": {"rehearsal": {"fraction": 0.01}}},
    "ewc": {"name": "ewc", "params": {}},
    "lwf": {"name": "lwf", "params": {}},
    "msgm+rehearsal": {"name": "msgm+rehearsal",
                       "params": {"soft_targets": dict(ST), "lora": lora(),
                                  "rehearsal": {"fraction": 0.01}}},
}
FIG3A = ("naive", "lora", "msgm", "soft_targets")
# methods that only act on finished tasks: identical to naive (msgm) under the LLaVA recipe
NEEDS_PREVIOUS = {"rehearsal", "ewc", "lwf", "msgm+rehearsal"}

# Srivastava Table 2 rows -> method.params.lora
LORA_VARIANTS: dict[str, dict] = {
    "1/2 full rank, higher alpha": lora(0.5, 16.0, False),
    "1/2 full rank, rsLoRA": lora(0.5, 8.0, True),
    "1/4 full rank": lora(0.25, 8.0, False),
    "1/4 full rank, higher alpha": lora(0.25, 16.0, False),
    "1/2 full rank": lora(0.5, 8.0, False),
    "1/2 full rank, rsLoRA, KQV target": lora(0.5, 8.0, True, "attention_qkv"),
}
ALPHAS = (0.001, 0.01, 0.1)  # Srivastava Table 3
VARIANTS = ("methods", "lora", "alpha")


def parse_args(argv=None):
    ap = study_arg_parser(__doc__, default_out="runs/mitigation")
    ap.add_argument("--variants", default="methods",
                    help="comma-separated among methods (Fig. 3a), lora (Table 2), alpha "
                         "(Table 3), or all (default methods)")
    ap.add_argument("--methods", default="all",
                    help=f"--variants methods: comma-separated among {', '.join(METHODS)}; "
                         f"'all' (default) or 'fig3a' ({', '.join(FIG3A)})")
    ap.add_argument("--alphas", default=",".join(str(a) for a in ALPHAS),
                    help="--variants alpha: Soft Targets α values (default 0.001,0.01,0.1)")
    ap.add_argument("--model", default=None,
                    help="the one scale (micro default micro-s; paper default pythia-160m)")
    ap.add_argument("--recipes", default="llava",
                    help="llava (default: alignment then the whole mixture, as Fig. 3a) and/or "
                         "continual (comma-separated)")
    ap.add_argument("--world-size", default="micro", help="micro preset: world size (micro or tiny)")
    return ap.parse_args(argv)


def method_grid(variants: list[str], methods: list[str], alphas: list[float]) -> list[tuple[str, dict]]:
    """(label, method config) per configuration, identical configurations once."""
    out: list[tuple[str, dict]] = []
    if "methods" in variants:
        out += [(m, METHODS[m]) for m in methods]
    if "lora" in variants:
        out.append(("naive", METHODS["naive"]))
        out += [(f"lora ({k})", {"name": "lora", "params": {"lora": v}})
                for k, v in LORA_VARIANTS.items()]
    if "alpha" in variants:
        out.append(("naive", METHODS["naive"]))
        out += [(f"soft_targets (α={a:g})",
                 {"name": "soft_targets", "params": {"soft_targets": {"alpha": float(a)}}})
                for a in alphas]
    seen, uniq = set(), []
    for label, m in out:
        key = json.dumps(m, sort_keys=True)
        if key not in seen:
            seen.add(key)
            uniq.append((label, m))
    return uniq



def main(argv=None) -> int:
    args = parse_args(argv)
    preset = args.preset or default_preset()
    variants = [v for v in args.variants.split(",") if v]
    if "all" in variants:
        variants = list(VARIANTS)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        print(f"unknown variant(s) {bad}; choose among {', '.join(VARIANTS)} or all", file=sys.stderr)
        return 2
    methods = {"all": list(METHODS), "fig3a": list(FIG3A)}.get(
        args.methods, [m for m in args.methods.split(",") if m])
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"unknown method(s) {unknown}; choose among {list(METHODS)}", file=sys.stderr)
        return 2
    try:
        alphas = [float(a) for a in args.alphas.split(",") if a]
    except ValueError:
        print(f"--alphas {args.alphas!r} must be comma-separated numbers", file=sys.stderr)
        return 2
    recipes = [r for r in args.recipes.split(",") if r]
    if any(r not in ("llava", "continual") for r in recipes):
        print(f"--recipes {args.recipes!r}: choose llava and/or continual", file=sys.stderr)
        return 2
    seeds = [int(s) for s in (args.seeds or "0").split(",")]

    # --- setup: the base model and the base run config -----------------------------------
    if preset == "micro":
        from mllmcl_ray.data.micro.pretrain import LLM_SIZES
        from mllmcl_ray.study import micro_run_config, prepare_micro

        model = args.model or "micro-s"
        if model not in LLM_SIZES:
            print(f"unknown micro scale {model!r}; choose among {list(LLM_SIZES)}", file=sys.stderr)
            return 2
        prep = prepare_micro(Path(args.out), sizes=[model], world_size=args.world_size,
                             progress=not args.quiet)
        print(prep.skill_text())
        base = micro_run_config(prep, model, "naive", seeds[0], out=args.out, study=STUDY,
                                recipe="llava", eval_samples=args.eval_samples or 200)
    else:
        from mllmcl_ray.presets import PAPER_MODELS, paper_run_config

        if not args.data_root:
            print("--preset paper needs --data-root (layout: docs/data.md)", file=sys.stderr)
            return 2
        model = args.model or "pythia-160m"
        if model not in PAPER_MODELS:
            print(f"unknown paper model {model!r}; choose among {list(PAPER_MODELS)}", file=sys.stderr)
            return 2
        workers = 8 if args.workers is None else args.workers
        base = paper_run_config(model, "naive", seeds[0], args.data_root, workers=workers,
                                recipe="llava", out=args.out, model_root=args.model_root,
                                study=STUDY)
        if args.eval_samples:
            for t in base.tasks:
                for e in t.eval:
                    e.max_samples = args.eval_samples
    base = apply_cli_overrides(base, args)
    base.name = STUDY
    grid = method_grid(variants, methods, alphas)
    print(f"[{STUDY}] {model}: {len(grid)} method configuration(s): "
          + "; ".join(label for label, _ in grid))

    plans = []  # (study name, space) per recipe
    for recipe in recipes:
        ms = grid
        if recipe == "llava":
            skipped = [label for label, m in grid if m["name"] in NEEDS_PREVIOUS]
            if skipped:
                print(f"[{STUDY}] llava recipe: skipping {', '.join(skipped)} (no finished task "
                      "to use there; add --recipes continual)")
            ms = [(label, m) for label, m in grid if m["name"] not in NEEDS_PREVIOUS]
        if not ms:
            continue
        study = STUDY if recipe == "llava" else f"{STUDY}-{recipe}"
        plans.append((study, {"method": [m for _, m in ms], "seed": seeds, "recipe": [recipe]}))

    if args.dry_run:
        return max([dry_run(base, space, study) for study, space in plans] or [0])
    # --- train + evaluate: one run per method configuration × seed ---------------------
    for study, space in plans:
        run_study(base, space, study=study, use_tune=not args.no_tune,
                  max_concurrent=args.max_concurrent, progress=not args.quiet)
    # --- report --------------------------------------------------------------------------
    finish_study(base, STUDY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
