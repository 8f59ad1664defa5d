"""CoIN: continual instruction tuning of an MLLM over 8 tasks (Chen et al., Tables 2–9, 12–14).

Launch on a Ray cluster (paper preset: Vicuna-7B-v1.5 + CLIP ViT-L/14-336, LLaVA-1.5
alignment, then CoIN's task sequence with CoIN's LoRA; data layout in docs/data.md):

    ray job submit --working-dir . -- python studies/coin.py --preset paper --data-root /data

    # Tab. 5 (task order), 6 (instructions), 7 (volume), 8 (MoELoRA experts), 9 (EWC, LwF):
    ... studies/coin.py --preset paper --data-root /data --order alphabet
    ... studies/coin.py --preset paper --data-root /data --instructions original,diverse,10type
    ... studies/coin.py --preset paper --data-root /data --volumes 0.1,0.2,0.4,0.6,0.8,1.0
    ... studies/coin.py --preset paper --data-root /data --methods moelora --experts 1,2,4,8
    ... studies/coin.py --preset paper --data-root /data --methods lora,ewc,lwf --volumes 0.4
    # Reasoning Capability (LLM judge; CoIN: Qwen-1.5-32B-Chat), on a local copy:
    ... studies/coin.py --preset paper --data-root /data --judge /models/Qwen1.5-32B-Chat

On a laptop with no GPU (micro preset, the default there):

    python studies/coin.py
    python studies/coin.py --instructions 10type --methods lora,moelora --experts 2
    python studies/coin.py --preset paper --data-root /data --dry-run     # check only

Task sequence. Paper preset: CoIN's random order ScienceQA, TextVQA, ImageNet, GQA,
VizWiz, Grounding, VQAv2, OCR-VQA, read from ``<data_root>/Instructions/<Task>/{train,test}.json``
(images under ``<data_root>/images``; alignment data ``<data_root>/continual/align.json``
or ``--align``). ``--order alphabet`` is Tab. 5's GQA, Grounding, ImageNet, OCR-VQA,
ScienceQA, TextVQA, VizWiz, VQAv2; ``--order A,B,...`` any list of task names. Micro
preset: the micro world's tasks in the order of their CoIN analogues —

    instruct (ScienceQA: questions answered in sentences), ocr (TextVQA), shapes (ImageNet,
    scored by exact match as CoIN scores ImageNet), vqa (GQA), grounding (Grounding),
    digits (a second classification set; VizWiz, VQAv2 and OCR-VQA have no new micro
    analogue, vqa and ocr would only repeat)

— and ``--order alphabet`` sorts them (digits, grounding, instruct, ocr, shapes, vqa).

Methods (``--methods``; CoIN trains LoRA adapters only, the LLM and CLIP stay frozen, rank
128, α 256; the micro preset uses rank 32, α 64, the same α/r):

- ``lora``: CoIN's LoRA, one adapter trained through all tasks (= ``moelora`` with one
  expert, docs/methods.md); ``lora-merged``: LoRA merged into the LLM after each task
  (Srivastava's practice, a fresh adapter per task);
- ``moelora``: MoELoRA with E experts per ``--experts`` (Tab. 8: 1, 2, 4, 8; E = 1 is
  ``lora``);
- ``ewc`` / ``lwf``: EWC (Fisher on 1000 samples per task, λ 0.1; micro 200 samples) and
  LwF (100 samples per task, λ 0.1) on CoIN's LoRA (``moelora+ewc`` / ``moelora+lwf``
  with one expert), as Tab. 9;
- ``naive``: full fine-tuning of projector + LLM (not a CoIN row; for comparison).

Fine-tuning lr: 2e-4 (LLaVA-1.5's LoRA recipe; micro 1e-3), cosine, warm-up 3 %, 1 epoch
per task; change with ``--set stages.finetune.lr=...``.

Factors. ``--instructions`` (comma-separated among original, diverse, 10type): prompts
rewritten with CoIN's App. H templates (mllmcl_ray/data/instructions.py; seeded per
record by ``--instruction-seed``; copies written once under OUT/cache/instructions).
``--volumes``: fraction of every task's training set (seeded sub-sample, DataSource
.fraction). Each (order, instructions, volume) level is recorded as its own study
(``coin``, ``coin-alphabet``, ``coin-10type-vol0.4``, ...) so the report never pools them.

Baselines (``--baselines``, default multitask,zeroshot): one run of the LLaVA recipe
(alignment, then all tasks mixed once) with CoIN's LoRA — the multi-task row (trained
task 2) — that also evaluates every task right after alignment — the zero-shot row
(``eval.zero_shot``: rows at trained task 1, trained_task "zero_shot"); recorded as
study ``coin-baselines``. With zeroshot but not multitask, the main runs carry the
zero-shot rows instead.

Reasoning Capability: ``--judge`` names the judge LLM (dir or hub id, loaded offline from
the hub cache); every VL answer is then graded 0–10 (metric judge_score). The micro preset
has no judge by default; ``--judge self`` uses the run's own micro base LLM, which is not
instruction-tuned: a plumbing check of the judge path, not a meaningful grade.

Outputs: Parquet rows under OUT/results; OUT/coin-report.html (accuracy matrices and
CoIN's table layout with MAA and BWT: table_cl_metrics); OUT/coin-summary.md (MAA and BWT
per run for accuracy and judge score, BWT both as GEM's 1/(T−1) and CoIN's printed 1/T,
and the baselines' per-task rows).
"""
from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path

from mllmcl_ray.config import DataSource, EvalSet, TaskSpec
from mllmcl_ray.study import (apply_cli_overrides, default_preset, dry_run, finish_study,
                              results_dir, run_study, study_arg_parser)

STUDY = "coin"
BASELINES_STUDY = "coin-baselines"

# CoIN tasks: (eval kind, max new tokens); order = CoIN's random order (Sec. 4 Setup).
PAPER_TASKS: dict[str, tuple[str, int]] = {
    "ScienceQA": ("option", 8),
    "TextVQA": ("vqa", 32),
    "ImageNet": ("exact", 32),
    "GQA": ("exact", 32),
    "VizWiz": ("vqa", 32),
    "Grounding": ("grounding", 48),
    "VQAv2": ("vqa", 32),
    "OCR-VQA": ("exact", 48),
}
# micro analogues, in the order of the CoIN tasks they stand for; value: CoIN task type
# whose App. H templates rewrite the task's prompts (None: prompts kept)
MICRO_TASKS: dict[str, str | None] = {
    "instruct": None,  # ScienceQA's slot; its option-letter templates do not fit
    "ocr": "TextVQA",
    "shapes": "ImageNet",
    "vqa": "GQA",
    "grounding": "Grounding",
    "digits": "ImageNet",
}
MICRO_KINDS = {"instruct": "exact", "ocr": "exact", "shapes": "exact", "vqa": "vqa_norm",
               "grounding": "grounding", "digits": "exact"}
METHOD_NAMES = ("lora", "lora-merged", "moelora", "ewc", "lwf", "naive")


def parse_args(argv=None):
    ap = study_arg_parser(__doc__, default_out="runs/coin")
    ap.add_argument("--model", default=None,
                    help="micro default micro-s; paper default vicuna-1.5-7b (LLaVA-1.5's LLM)")
    ap.add_argument("--order", default="paper",
                    help="paper (CoIN's order; micro: the analogues' order), alphabet, or a "
                         "comma-separated list of task names")
    ap.add_argument("--instructions", default="original",
                    help="comma-separated among original, diverse, 10type (CoIN App. H)")
    ap.add_argument("--instruction-seed", type=int, default=0,
                    help="seed of the per-record template choice (default 0)")
    ap.add_argument("--volumes", default="1.0",
                    help="comma-separated training-data fractions, e.g. 0.2,0.4,0.6,0.8,1.0")
    ap.add_argument("--methods", default="lora",
                    help=f"comma-separated among {', '.join(METHOD_NAMES)} (default lora)")
    ap.add_argument("--experts", default="8",
                    help="moelora: comma-separated expert counts (CoIN Tab. 8: 1,2,4,8; default 8)")
    ap.add_argument("--baselines", default="multitask,zeroshot",
                    help="multitask and/or zeroshot, or none (default multitask,zeroshot)")
    ap.add_argument("--judge", default=None,
                    help="judge LLM dir / hub id for Reasoning Capability (micro: 'self' = the "
                         "run's base LLM); default none")
    ap.add_argument("--align", default=None,
                    help="paper preset: alignment JSON (default <data_root>/continual/align.json)")
    ap.add_argument("--nl", action="store_true",
                    help="also evaluate the NL suite (paper: <data_root>/nl/*.jsonl)")
    ap.add_argument("--world-size", default="micro", help="micro preset: world size (micro or tiny)")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------
def resolve_order(order: str, names: list[str]) -> list[str]:
    if order == "paper":
        return list(names)
    if order == "alphabet":
        return sorted(names, key=str.lower)
    wanted = [t.strip() for t in order.split(",") if t.strip()]
    lookup = {n.lower(): n for n in names}
    bad = [t for t in wanted if t.lower() not in lookup]
    if bad or len(set(w.lower() for w in wanted)) != len(wanted) or not wanted:
        raise ValueError(f"--order {order!r}: tasks must be distinct names among "
                         f"{', '.join(names)} (unknown: {bad})")
    return [lookup[t.lower()] for t in wanted]


def paper_tasks(root: Path, order: list[str], eval_samples: int | None) -> list[TaskSpec]:
    images = str(root / "images")
    out = []
    for name in order:
        kind, max_new = PAPER_TASKS[name]
        d = root / "Instructions" / name
        out.append(TaskSpec(name=name, train=[DataSource(path=str(d / "train.json"), image_root=images)],
                            eval=[EvalSet(name=name, path=str(d / "test.json"), image_root=images,
                                          kind=kind, max_samples=eval_samples,
                                          max_new_tokens=max_new)]))
    return out


def micro_tasks(prep, order: list[str], eval_samples: int | None) -> list[TaskSpec]:
    def path(rel):
        p = Path(rel)
        return str(p if p.is_absolute() else Path(prep.world_dir) / p)

    images = path(prep.manifest["images_dir"])
    out = []
    for name in order:
        d = prep.vl_task(name)
        out.append(TaskSpec(name=name, train=[DataSource(path=path(d["train"]), image_root=images)],
                            eval=[EvalSet(name=name, path=path(d["test"]), image_root=images,
                                          kind=MICRO_KINDS[name], max_samples=eval_samples,
                                          max_new_tokens=d.get("max_new_tokens", 16))]))
    return out


def with_volume(tasks: list[TaskSpec], volume: float) -> list[TaskSpec]:
    tasks = copy.deepcopy(tasks)
    for t in tasks:
        for s in t.train:
            s.fraction = float(volume)
    return tasks


def level_study(order: str, instructions: str, volume: float) -> str:
    parts = []
    if order != "paper":
        parts.append(order if order == "alphabet"
                     else "order" + hashlib.sha256(order.encode()).hexdigest()[:6])
    if instructions != "original":
        parts.append(instructions)
    if volume != 1.0:
        parts.append(f"vol{volume:g}")
    return "-".join([STUDY] + parts)


# ---------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------
def method_configs(names: list[str], experts: list[int], rank: int, fisher: int) -> list[dict]:
    def moe(e):
        return {"num_experts": int(e), "rank": rank, "alpha": 2.0 * rank, "use_rslora": False,
                "train_projector": False}

    out = []
    for n in names:
        if n == "lora":
            out.append({"name": "moelora", "params": {"moelora": moe(1)}})
        elif n == "lora-merged":
            out.append({"name": "lora", "params": {"lora": {
                "rank": rank, "alpha": 2.0 * rank, "use_rslora": False, "train_projector": False}}})
        elif n == "moelora":
            out += [{"name": "moelora", "params": {"moelora": moe(e)}} for e in experts]
        elif n == "ewc":
            out.append({"name": "moelora+ewc", "params": {
                "moelora": moe(1), "ewc": {"lam": 0.1, "fisher_samples": fisher}}})
        elif n == "lwf":
            out.append({"name": "moelora+lwf", "params": {
                "moelora": moe(1), "lwf": {"lam": 0.1, "samples_per_task": 100}}})
        elif n == "naive":
            out.append({"name": "naive", "params": {}})
    seen, uniq = set(), []
    for m in out:
        k = json.dumps(m, sort_keys=True)
        if k not in seen:
            seen.add(k)
            uniq.append(m)
    return uniq


# ---------------------------------------------------------------------------------------
# summary (CoIN's numbers beside the HTML report)
# ---------------------------------------------------------------------------------------
def summarize(results: Path, out_md: Path) -> str:
    """MAA / BWT per run (accuracy and judge score) and the baselines' per-task rows."""
    import numpy as np

    from mllmcl_ray import metrics as M
    from mllmcl_ray.results import ResultStore

    df = ResultStore(results).read()
    if df.empty:
        return ""
    df = df[df["study"].astype(str).str.startswith(STUDY)]
    lines = ["# CoIN summary", ""]
    for metric, title in (("accuracy", "Truth Alignment"), ("judge_score", "Reasoning Capability")):
        sub = df[(df["metric"] == metric) & (df["study"] != BASELINES_STUDY)]
        if sub.empty:
            continue
        summ = M.cl_summary(sub, metric=metric)
        if summ.empty:
            continue
        lines += [f"## {title} ({metric}, %)", "",
                  "| study | method | params | seed | tasks | MAA | BWT (1/(T-1)) | BWT (CoIN, 1/T) |",
                  "|---|---|---|---|---|---|---|---|"]
        params = sub.drop_duplicates("run_id").set_index("run_id")["method_params"]
        for r in summ.itertuples():
            _, m = M.accuracy_matrix(sub, r.run_id, metric, exclude=("nl",))
            m = m[:r.n_tasks, :r.n_tasks]
            bwt_t = M.bwt(m, divide_by="T") if r.n_tasks > 1 else float("nan")
            lines.append(f"| {r.study} | {r.method} | {params.get(r.run_id, '')} | {r.seed} | "
                         f"{r.n_tasks} | {100 * r.maa:.2f} | {100 * r.bwt:.2f} | {100 * bwt_t:.2f} |")
        lines.append("")
    base = df[(df["study"] == BASELINES_STUDY) & (df["split"] == "vl") & (df["metric"] == "accuracy")]
    if not base.empty:
        tasks = list(dict.fromkeys(base.sort_values("eval_task_index")["eval_task"].astype(str)))
        lines += ["## Baselines (accuracy, %; MAA = mean over tasks, as CoIN Tab. 2)", "",
                  "| baseline | seed | " + " | ".join(tasks) + " | MAA |",
                  "|---|---|" + "---|" * (len(tasks) + 1)]
        for (k, seed), g in base.groupby(["trained_task_index", "seed"]):
            name = "zero-shot" if int(k) == 1 else "multi-task"
            vals = [M.omega(g[g["eval_task"] == t]["value"].to_numpy(dtype=float))
                    if (g["eval_task"] == t).any() else float("nan") for t in tasks]
            maa = float(np.nanmean(vals)) if len(vals) else float("nan")
            lines.append(f"| {name} | {seed} | " + " | ".join(f"{100 * v:.2f}" for v in vals)
                         + f" | {100 * maa:.2f} |")
        lines.append("")
    text = "\n".join(lines)
    out_md.write_text(text)
    return text



# ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    preset = args.preset or default_preset()
    from mllmcl_ray.data.instructions import VARIANTS, apply_instruction_variant

    methods = [m for m in args.methods.split(",") if m]
    instructions = [v for v in args.instructions.split(",") if v]
    baselines = [b for b in args.baselines.split(",") if b and b != "none"]
    try:
        volumes = [float(v) for v in args.volumes.split(",") if v]
        experts = [int(e) for e in args.experts.split(",") if e]
    except ValueError as e:
        print(f"--volumes / --experts: {e}", file=sys.stderr)
        return 2
    for what, vals, ok in (("method", methods, METHOD_NAMES), ("instructions", instructions, VARIANTS),
                           ("baseline", baselines, ("multitask", "zeroshot"))):
        bad = [v for v in vals if v not in ok]
        if bad:
            print(f"unknown {what}(s) {bad}; choose among {', '.join(ok)}", file=sys.stderr)
            return 2
    if not methods or not instructions or not volumes or any(not 0 < v <= 1 for v in volumes):
        print("need at least one method, instruction variant and volume in (0, 1]", file=sys.stderr)
        return 2
    seeds = [int(s) for s in (args.seeds or "0").split(",")]
    eval_samples = args.eval_samples

    # --- setup: base model, base run config, task list ------------------------------------
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
        eval_samples = 200 if eval_samples is None else eval_samples
        base = micro_run_config(prep, model, "naive", seeds[0], out=args.out, study=STUDY,
                                tasks=["vqa"], eval_samples=eval_samples)
        base.stages.finetune.lr, base.stages.finetune.lr_rule = 1e-3, "fixed"
        if not args.nl:
            base.nl_sets = []
        names, types = list(MICRO_TASKS), dict(MICRO_TASKS)
        rank, fisher = 32, 200
        judge = prep.specs[model].llm if args.judge == "self" else args.judge

        def build_tasks(order, n):
            return micro_tasks(prep, order, n)
    else:
        from mllmcl_ray.presets import PAPER_MODELS, paper_run_config

        if not args.data_root:
            print("--preset paper needs --data-root (layout: docs/data.md)", file=sys.stderr)
            return 2
        model = args.model or "vicuna-1.5-7b"
        if model not in PAPER_MODELS:
            print(f"unknown paper model {model!r}; choose among {list(PAPER_MODELS)}", file=sys.stderr)
            return 2
        root = Path(args.data_root)
        workers = 8 if args.workers is None else args.workers
        base = paper_run_config(model, "naive", seeds[0], root, tasks=(), workers=workers,
                                out=args.out, model_root=args.model_root, study=STUDY)
        base.stages.finetune.lr = 2e-4
        if args.align:
            base.align = [DataSource(path=args.align, image_root=str(root / "images"))]
        if not args.nl:
            base.nl_sets = []
        eval_samples = 1024 if eval_samples is None else eval_samples
        names, types = list(PAPER_TASKS), {t: t for t in PAPER_TASKS}
        rank, fisher = 128, 1000
        judge = args.judge

        def build_tasks(order, n):
            return paper_tasks(root, order, n)
    try:
        order = resolve_order(args.order, names)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    n_eval = None if eval_samples is not None and eval_samples <= 0 else eval_samples
    base.tasks = build_tasks(order, n_eval)
    base = apply_cli_overrides(base, args)
    base.name = STUDY
    if judge:
        base.eval.judge = judge
    method_list = method_configs(methods, experts, rank, fisher)
    cache = Path(args.out) / "cache" / "instructions"
    print(f"[{STUDY}] {model}; tasks: {', '.join(order)}; methods: "
          + "; ".join(f"{m['name']} {json.dumps(m['params'], sort_keys=True)}" for m in method_list))

    # one study per (instructions, volume) level: (study, base config, instruction variant)
    levels = []
    for variant in instructions:
        for vol in volumes:
            cfg = copy.deepcopy(base)
            cfg.tasks = with_volume(base.tasks, vol)
            cfg.eval.zero_shot = "zeroshot" in baselines and "multitask" not in baselines
            levels.append((level_study(args.order, variant, vol), cfg, variant))
    space = {"method": method_list, "seed": seeds}
    plans = [(study, cfg, variant, space) for study, cfg, variant in levels]
    if baselines:
        first = copy.deepcopy(levels[0][1])
        first.recipe = "llava"
        first.eval.zero_shot = "zeroshot" in baselines
        plans.append((BASELINES_STUDY, first, levels[0][2],
                      {"method": method_configs(["lora"], [], rank, fisher), "seed": seeds}))

    if args.dry_run:
        status = 0
        for study, cfg, variant, sp in plans:
            if variant != "original":
                print(f"[{study}] instructions {variant}: would rewrite the prompts of "
                      f"{', '.join(t.name for t in cfg.tasks if types.get(t.name))} into {cache} "
                      "(validated here against the original files)")
            status = max(status, dry_run(cfg, sp, study))
        return status
    # --- train + evaluate -------------------------------------------------------------
    for study, cfg, variant, sp in plans:
        apply_instruction_variant(cfg, types, variant, args.instruction_seed, cache)
        run_study(cfg, sp, study=study, use_tune=not args.no_tune,
                  max_concurrent=args.max_concurrent, progress=not args.quiet)
    # --- report ----------------------------------------------------------------------
    text = summarize(results_dir(base), Path(args.out) / "coin-summary.md")
    if text:
        print(text)
    finish_study(base, STUDY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
