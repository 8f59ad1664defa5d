"""EMT on any HF LLaVA-format checkpoint beside its vision tower's CLIP zero-shot accuracy
(Zhai et al. §4.1, Fig. 4).

`evaluate_models` takes hub ids or directories — off-the-shelf llava-hf checkpoints (their
own processor, image preprocessing and chat template) or checkpoints the project saved
(its template; the same llava-hf layout) — and, for each, through the one transformers
engine (`eval.engine.hf.HFEngine`):

1. EMT on every classification set (`eval.suites.emt`: EMT's prompt, the name decider
   with the hallucination shares, the CLIP-text nearest-label decider, and the judge when
   one is given): rows at trained_task_index 1, trained_task ``zero_shot``;
2. the zero-shot accuracy of the model's own vision tower as a CLIP classifier
   (`eval.clip_zero_shot`, text tower of the matching full CLIP checkpoint,
   `models.towers.clip_for_tower`; EMT's label texts in ``clip_prompt``): metric
   ``clip_zero_shot``, one run per (CLIP, prompt), shared by every model on that tower.

Rows go to the study's Parquet store (study ``emt_models``); ``method_params`` holds the
vision tower's name (``{"vision_tower": ...}``) so the report groups models by encoder as
Fig. 4 does (`report.figures.fig_emt_models`).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import EvalConfig, EvalSet

STUDY = "emt_models"
METHOD = "off_the_shelf"


@dataclass
class OffTheShelfConfig:
    """What `evaluate_models` runs."""

    models: list[str]  # hub ids or dirs of LLaVA-format checkpoints
    sets: list[EvalSet]  # classification sets (kind "classification", records with label/labels)
    results: str  # result store directory (Parquet)
    clip: dict[str, str] = field(default_factory=dict)  # model -> CLIP checkpoint override
    clip_prompt: str = "a photo of a {label}"  # CLIP zero-shot text per class
    batch_size: int = 16  # generation batch
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda"
    judge: str | None = None  # LLM judge for emt_judge (None: the name and CLIP deciders only)
    seed: int = 0  # subset seed (EvalSet.max_samples)
    no_clip: bool = False  # skip the towers' CLIP zero-shot rows


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_")[-80:]


def run_meta(model: str, tower: str, clip: str | None, scale: float) -> dict:
    return {"run_id": f"{STUDY}-{slug(model)}", "study": STUDY, "model": str(model),
            "scale": float(scale), "method": METHOD,
            "method_params": json.dumps({"vision_tower": tower, "clip": clip}, sort_keys=True),
            "seed": 0}


def clip_run_meta(clip: str, tower: str, prompt: str) -> dict:
    key = hashlib.sha256(f"{clip}\x00{prompt}".encode()).hexdigest()[:12]
    return {"run_id": f"{STUDY}-clip-{slug(clip)}-{key}", "study": STUDY, "model": str(clip),
            "scale": 0.0, "method": "clip_zero_shot",
            "method_params": json.dumps({"vision_tower": tower, "clip": clip}, sort_keys=True),
            "seed": 0}


def evaluate_models(cfg: OffTheShelfConfig, log=print) -> list[dict]:
    """EMT rows and tower CLIP rows for every model (see the module doc); returns the
    summary per model (model, tower, clip, per-set EMT accuracy and CLIP accuracy)."""
    import torch

    from ..eval.clip_zero_shot import evaluate_clip_zero_shot
    from ..eval.engine.hf import HFEngine
    from ..eval.evaluator import Evaluator
    from ..models.build import llm_parameter_count
    from ..models.towers import tower_name
    from ..results import PredictionStore, ResultStore

    from ..eval.engine.base import engine_factory

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    judge_factory = engine_factory("transformers", batch_size=cfg.batch_size, device=device)
    store = ResultStore(cfg.results)
    preds = PredictionStore(cfg.results)
    summary = []
    done_clip: set[str] = set()
    for model in cfg.models:
        engine = HFEngine(model, batch_size=cfg.batch_size, device=device, model_id=str(model),
                          clip=cfg.clip.get(model))
        if engine.mllm is None:
            from ..config import ConfigError

            raise ConfigError(f"--models {model!r} is a text-only LM, not a LLaVA-format MLLM")
        vcfg = engine.mllm.llava_config.vision_config
        tower = tower_name(vcfg)
        clip = engine.clip_source
        meta = run_meta(model, tower, clip, llm_parameter_count(engine.model))
        def factory(m, e=engine, model=model):  # this model's engine; a judge gets its own
            return e if str(m) == str(model) else judge_factory(m)

        ev = Evaluator(factory, store, preds,
                       EvalConfig(nl=False, vl=False, judge=cfg.judge, seed=cfg.seed,
                                  batch_size=cfg.batch_size))
        log(f"[{STUDY}] {model}: tower {tower}, CLIP {clip or 'unknown (no CLIP row, no nearest)'}")
        ev.evaluate(model, run_meta=meta, trained_task_index=1, trained_task="zero_shot",
                    emt_tasks=[(1, "zero_shot", list(cfg.sets))])
        engine.close()
        if clip and not cfg.no_clip and clip not in done_clip:
            evaluate_clip_zero_shot(clip, cfg.sets, store, clip_run_meta(clip, tower, cfg.clip_prompt),
                                    prompt=cfg.clip_prompt, seed=cfg.seed, device=device, log=log)
            done_clip.add(clip)
        df = store.read()
        mine = df[df.run_id == meta["run_id"]]
        row = {"model": model, "tower": tower, "clip": clip}
        for es in cfg.sets:
            v = mine[(mine.dataset == es.name) & (mine.metric == "emt_exact")].value
            row[f"emt:{es.name}"] = float(v.iloc[-1]) if len(v) else float("nan")
            if clip:
                c = df[(df.run_id == clip_run_meta(clip, tower, cfg.clip_prompt)["run_id"])
                       & (df.dataset == es.name)].value
                row[f"clip:{es.name}"] = float(c.iloc[-1]) if len(c) else float("nan")
        summary.append(row)
        log(f"[{STUDY}] " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in row.items()))
    return summary


def classification_sets(preset: str, names: Sequence[str], *, data_root: str | None = None,
                        world_dir: str | None = None, max_samples: int | None = None
                        ) -> list[EvalSet]:
    """EvalSets of EMT's classification sets: paper ``<data_root>/emt/<set>/test.json``
    (images under ``<data_root>/images``); micro: the micro world's digits/shapes tests."""
    from ..config import ConfigError

    out = []
    if preset == "micro":
        manifest = json.loads((Path(world_dir) / "manifest.json").read_text())
        for n in names:
            if n not in manifest["vl"] or manifest["vl"][n].get("eval") != "classification":
                raise ConfigError(f"micro world has no classification set {n!r}")
            t = manifest["vl"][n]
            out.append(EvalSet(name=n, path=str(Path(world_dir) / t["test"]),
                               image_root=str(Path(world_dir) / manifest["images_dir"]),
                               kind="classification", max_samples=max_samples,
                               max_new_tokens=int(t.get("max_new_tokens", 16))))
        return out
    if not data_root:
        raise ConfigError("--preset paper needs --data-root (layout: docs/data.md)")
    root = Path(data_root)
    for n in names:
        out.append(EvalSet(name=n, path=str(root / "emt" / n / "test.json"),
                           image_root=str(root / "images"), kind="classification",
                           max_samples=max_samples, max_new_tokens=16))
    return out


def parse_clip_overrides(values: Sequence[str], models: Sequence[str]) -> dict[str, str]:
    """``--clip`` values: ``MODEL=CLIP`` for one model, or a bare ``CLIP`` for all."""
    out: dict[str, str] = {}
    for v in values:
        if "=" in v and v.split("=", 1)[0] in models:
            m, c = v.split("=", 1)
            out[m] = c
        else:
            out.update({m: v for m in models if m not in out})
    return out


def main_models(args, preset: str, log=print) -> int:
    """`studies/emt.py --models ...`: EMT of off-the-shelf (or project) LLaVA-format
    checkpoints beside their towers' CLIP zero-shot accuracy, then the report."""
    from ..config import ConfigError

    models = [m for m in args.models.split(",") if m]
    if preset == "micro":
        from ..data.micro.world import generate_world

        world = Path(args.out) / f"world-{args.world_size}-s0"
        generate_world(world, seed=0, size=args.world_size)
        names = (args.sets or "digits,shapes").split(",")
        n = 200 if args.eval_samples is None else args.eval_samples
        sets = classification_sets("micro", names, world_dir=str(world), max_samples=n)
        prompt = args.clip_prompt or "a {label}"
    else:
        names = (args.sets or "mnist,cifar10,cifar100,miniimagenet").split(",")
        n = 1024 if args.eval_samples is None else args.eval_samples
        sets = classification_sets("paper", names, data_root=args.data_root, max_samples=n)
        prompt = args.clip_prompt or "a photo of a {label}"
    if args.eval_samples is not None and args.eval_samples <= 0:
        for s in sets:
            s.max_samples = None
    if "{label}" not in prompt:
        raise ConfigError(f"--clip-prompt {prompt!r} must contain {{label}}")
    results = Path(args.out) / "results"
    cfg = OffTheShelfConfig(models=models, sets=sets, results=str(results),
                            clip=parse_clip_overrides(args.clip or [], models),
                            clip_prompt=prompt, no_clip=args.no_clip, judge=args.judge)
    log(f"[{STUDY}] EMT of {', '.join(models)} on {', '.join(names)}")
    if args.dry_run:
        missing = [s.path for s in sets if not Path(s.path).exists()]
        for m in missing:
            log(f"    MISSING {m}")
        return 1 if missing else 0
    evaluate_models(cfg, log=log)
    from ..report import build_report

    out = build_report(results, Path(args.out) / f"{STUDY}-report.html",
                       title=f"mllmcl-ray: {STUDY}")
    log(f"report: {out}")
    return 0


# ---------------------------------------------------------------------------------------
# what studies/emt.py runs around its fine-tuning grid
# ---------------------------------------------------------------------------------------
def study_clip_meta(study: str, model: str, scale: float | None, clip: str, prompt: str) -> dict:
    """Run metadata of an EMT study's CLIP zero-shot rows (one run per model, CLIP, prompt)."""
    key = hashlib.sha256(f"{clip}\x00{prompt}".encode()).hexdigest()[:12]
    return {"run_id": f"{study}-clip-{model}-{key}", "study": study, "model": model,
            "scale": float(scale or 0.0), "method": "clip_zero_shot", "method_params": "{}",
            "seed": 0}


def emt_before_runs(ctx, plans) -> None:
    """Before an EMT study's runs: the instruction-tuned start where it is made here
    (`emt.start.make_start`: micro, the LLaVA recipe's output, once; its EMT rows are each
    run's task-1 rows); unless ``--no-clip``, the vision tower's CLIP zero-shot accuracy on
    every set (Fig. 4's reference line)."""
    from .start import make_start, resolve_start

    cfg = plans[0].base
    sets = cfg.tasks[0].eval
    start = resolve_start(ctx.preset, ctx.args.model, ctx.args.start, ctx.args.init)
    if start is not None and start.init == cfg.model.init:
        make_start(start, progress=not ctx.args.quiet, log=ctx.log)
    if ctx.args.no_clip:
        return
    import torch

    from ..eval.clip_zero_shot import evaluate_clip_zero_shot
    from ..results import ResultStore

    meta = study_clip_meta(ctx.spec.name, cfg.model.name, cfg.model.scale, cfg.model.vision,
                         ctx.args.clip_prompt)
    evaluate_clip_zero_shot(cfg.model.vision, sets, ResultStore(ctx.out / "results"), meta,
                            prompt=ctx.args.clip_prompt, seed=cfg.eval.seed,
                            device="cuda" if torch.cuda.is_available() else "cpu")


def emt_study_main(spec, argv=None) -> int:
    """`studies/emt.py`: with ``--models``, EMT of those checkpoints as they are
    (`main_models`); otherwise the spec's fine-tuning study."""
    from ..errors import main_guard
    from ..presets import default_preset
    from ..study.cli import build_parser

    args = build_parser(spec).parse_args(argv)
    if not args.models:
        return spec.main(argv)
    args.clip = [c for c in (args.clip or "").split(",") if c]
    return main_guard(lambda: main_models(args, args.preset or default_preset()), prog=spec.name,
                      debug=args.debug)
