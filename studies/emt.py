"""EMT: the MLLM as an image classifier vs its own vision tower (Zhai et al., Fig. 4–7).

Launch on a Ray cluster (paper preset: Vicuna-7B-v1.5 + CLIP ViT-L/14-336 aligned as
LLaVA-1.5, classification sets MNIST, CIFAR-10, CIFAR-100, miniImagenet; layout below and
in docs/data.md):

    ray job submit --working-dir . -- python studies/emt.py --preset paper --data-root /data
    ray job submit --working-dir . -- python studies/emt.py --preset paper --data-root /data \\
        --train-set mnist,cifar10,cifar100,miniimagenet            # Zhai fine-tunes on each

EMT of checkpoints as they are (Zhai §4.1, Fig. 4; study ``emt_models``): any HF
LLaVA-format checkpoint (hub id or dir, with its own processor and chat template) beside
its vision tower's CLIP zero-shot accuracy:

    python studies/emt.py --preset paper --data-root /data \
        --models llava-hf/llava-1.5-7b-hf,llava-hf/llava-1.5-13b-hf
    python studies/emt.py --models runs/scale/.../checkpoint --preset micro

On a laptop with no GPU (micro preset, the default there: digits = MNIST, shapes = CIFAR):

    python studies/emt.py
    python studies/emt.py --train-set shapes --epochs 2
    python studies/emt.py --preset paper --data-root /data --dry-run       # check only

What runs:

1. CLIP zero-shot (Fig. 4's reference): the vision tower's own zero-shot accuracy on every
   classification set (mllmcl_ray/eval/clip_zero_shot.py: one text prompt per class,
   ``--clip-prompt``, default "a photo of a {label}"; micro "a {label}", the form of the
   micro CLIP's captions) with the CLIP text tower of the model's vision checkpoint (the
   paper's ``openai/clip-vit-large-patch14-336`` holds both towers, as does the micro
   CLIP dir). Rows: metric ``clip_zero_shot``, split ``emt``, trained_task_index 1.
2. For each method (``--methods``, default linear,lora) and seed: alignment (LLaVA stage 1,
   projector only), then the EMT zero-shot evaluation of the aligned MLLM on every
   classification set (``eval.zero_shot``: rows at trained_task_index 1, trained_task
   "zero_shot"), then ``--epochs`` epochs of fine-tuning on ``--train-set``, evaluating
   EMT on ALL classification sets after every epoch.

Epochs as tasks: the run's task sequence is the training set repeated, one epoch per
task, named ``epoch-1`` … ``epoch-N``; so every epoch has a checkpoint and result rows
and an interrupted run resumes at the last finished epoch. Epoch e is trained task
index e + 1 (task 1 = before fine-tuning: the zero-shot and CLIP rows). The report's
EMT figure (fig_emt) puts trained_task_index on x with ticks "1: zero_shot",
"2: epoch-1", "3: epoch-2", ... and the CLIP accuracy as a flat dashed line. The
classification sets hang off task ``epoch-1`` (eval_task "epoch-1", eval_task_index 2;
the dataset column names the set). Because each epoch is a task, the lr schedule
(warm-up + cosine) restarts every epoch and the optimizer state does not carry over;
LoRA is merged into the LLM after each epoch and a fresh adapter continues.

Methods (Zhai §5.1): ``linear`` trains the projector only; ``lora`` trains the projector
and LoRA adapters on every linear layer of the LLM (paper: rank 128, α 256, LLaVA-1.5's
LoRA setting; micro: rank 32, α 64). Fine-tuning lr 2e-4 (micro 1e-3) for both.

Classification data (paper preset): ``<data_root>/emt/<set>/{train,test}.json`` for the sets
in ``--sets`` (LLaVA JSON with ``label`` and ``labels``; images under
``<data_root>/images``), alignment ``<data_root>/continual/align.json`` (``--align``).

Several ``--train-set`` values give one study per set (``emt-<set>``), so the report keeps
them apart; a single set is study ``emt``. The report is OUT/emt-report.html.
"""
from __future__ import annotations

import copy
import hashlib
import sys
from pathlib import Path

from mllmcl_ray.config import DataSource, EvalSet, TaskSpec
from mllmcl_ray.study import (apply_cli_overrides, default_preset, dry_run, finish_study,
                              results_dir, run_study, study_arg_parser)

STUDY = "emt"
PAPER_SETS = ("mnist", "cifar10", "cifar100", "miniimagenet")
MICRO_SETS = ("digits", "shapes")
METHOD_NAMES = ("linear", "lora")


def parse_args(argv=None):
    ap = study_arg_parser(__doc__, default_out="runs/emt")
    ap.add_argument("--model", default=None,
                    help="micro default micro-s; paper default vicuna-1.5-7b (LLaVA's LLM)")
    ap.add_argument("--sets", default=None,
                    help="classification sets evaluated (paper default "
                         f"{','.join(PAPER_SETS)}; micro {','.join(MICRO_SETS)})")
    ap.add_argument("--train-set", default=None,
                    help="set(s) fine-tuned on, comma-separated: one study each "
                         "(paper default mnist; micro digits)")
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs, 1-3 in Zhai (default 3)")
    ap.add_argument("--methods", default="linear,lora",
                    help="comma-separated among linear, lora (default both)")
    ap.add_argument("--clip-prompt", default=None,
                    help="CLIP zero-shot text prompt with {label} (paper default "
                         "'a photo of a {label}'; micro 'a {label}')")
    ap.add_argument("--no-clip", action="store_true", help="skip the CLIP zero-shot rows")
    ap.add_argument("--align", default=None,
                    help="paper preset: alignment JSON (default <data_root>/continual/align.json)")
    ap.add_argument("--world-size", default="micro", help="micro preset: world size (micro or tiny)")
    # --- EMT of checkpoints as they are (Zhai §4.1, Fig. 4): mllmcl_ray/emt/off_the_shelf.py
    ap.add_argument("--models", default=None,
                    help="comma-separated hub ids or dirs of LLaVA-format checkpoints (e.g. "
                         "llava-hf/llava-1.5-7b-hf, or a checkpoint this project saved): EMT of "
                         "each as it is, beside its vision tower's CLIP zero-shot accuracy; "
                         "no training")
    ap.add_argument("--clip", action="append", default=[], metavar="[MODEL=]CLIP",
                    help="with --models: the full CLIP checkpoint of a model's vision tower "
                         "(default: known llava-hf models and tower shapes, models/towers.py)")
    ap.add_argument("--judge", default=None, help="with --models: LLM judge for emt_judge")
    ap.add_argument("--init", default=None,
                    help="fine-tune from this instruction-tuned LLaVA-format checkpoint (EMT §5: "
                         "the released LLaVA; a project LLaVA-recipe checkpoint or a llava-hf "
                         "one, then also --set model.template=...) instead of aligning the "
                         "preset's LLM: no alignment; its zero-shot EMT rows come from "
                         "mllmcl_ray/emt/off_the_shelf.py")
    return ap.parse_args(argv)


def epoch_tasks(train: DataSource, sets: list[EvalSet], epochs: int) -> list[TaskSpec]:
    """The training set repeated, one epoch per task; every set evaluated after each."""
    return [TaskSpec(name=f"epoch-{e}", train=[copy.deepcopy(train)],
                     eval=list(sets) if e == 1 else [])
            for e in range(1, epochs + 1)]


def method_configs(names: list[str], rank: int) -> list[dict]:
    out = []
    for n in names:
        if n == "linear":
            out.append({"name": "linear", "params": {}})
        else:
            out.append({"name": "lora", "params": {"lora": {
                "rank": rank, "alpha": 2.0 * rank, "use_rslora": False, "train_projector": True}}})
    return out


def clip_meta(model: str, scale: float | None, clip: str, prompt: str) -> dict:
    key = hashlib.sha256(f"{clip}\x00{prompt}".encode()).hexdigest()[:12]
    return {"run_id": f"{STUDY}-clip-{model}-{key}", "study": STUDY, "model": model,
            "scale": float(scale or 0.0), "method": "clip_zero_shot", "method_params": "{}",
            "seed": 0}



def main(argv=None) -> int:
    args = parse_args(argv)
    preset = args.preset or default_preset()
    if args.models:  # off-the-shelf checkpoints as they are (no training)
        from mllmcl_ray.emt.off_the_shelf import main_models

        return main_models(args, preset)
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHOD_NAMES]
    if bad or not methods:
        print(f"unknown method(s) {bad}; choose among {', '.join(METHOD_NAMES)}", file=sys.stderr)
        return 2
    if args.epochs < 1:
        print("--epochs must be >= 1", file=sys.stderr)
        return 2
    seeds = [int(s) for s in (args.seeds or "0").split(",")]

    # --- setup: base model, classification sets, base config ---------------------------
    if preset == "micro":
        from mllmcl_ray.data.micro.pretrain import LLM_SIZES
        from mllmcl_ray.study import micro_run_config, prepare_micro

        model = args.model or "micro-s"
        if model not in LLM_SIZES:
            print(f"unknown micro scale {model!r}; choose among {list(LLM_SIZES)}", file=sys.stderr)
            return 2
        sets = (args.sets or ",".join(MICRO_SETS)).split(",")
        train_sets = (args.train_set or "digits").split(",")
        if any(s not in MICRO_SETS for s in sets + train_sets):
            print(f"micro classification sets are {', '.join(MICRO_SETS)}", file=sys.stderr)
            return 2
        prep = prepare_micro(Path(args.out), sizes=[model], world_size=args.world_size,
                             progress=not args.quiet)
        print(prep.skill_text())
        n_eval = 200 if args.eval_samples is None else args.eval_samples
        base = micro_run_config(prep, model, "linear", seeds[0], out=args.out, study=STUDY,
                                tasks=list(sets), eval_samples=n_eval)
        base.stages.finetune.lr, base.stages.finetune.lr_rule = 1e-3, "fixed"
        # micro_run_config made one task per set with its test set and train source
        evals = {t.name: t.eval[0] for t in base.tasks}
        trains = {t.name: t.train[0] for t in base.tasks}
        prompt = args.clip_prompt or "a {label}"
        rank = 32
    else:
        from mllmcl_ray.presets import PAPER_MODELS, paper_run_config

        if not args.data_root:
            print("--preset paper needs --data-root (layout: docs/data.md)", file=sys.stderr)
            return 2
        model = args.model or "vicuna-1.5-7b"
        if model not in PAPER_MODELS:
            print(f"unknown paper model {model!r}; choose among {list(PAPER_MODELS)}", file=sys.stderr)
            return 2
        sets = (args.sets or ",".join(PAPER_SETS)).split(",")
        train_sets = (args.train_set or "mnist").split(",")
        if any(s not in sets for s in train_sets):
            print(f"--train-set {train_sets} must be among --sets {sets}", file=sys.stderr)
            return 2
        root = Path(args.data_root)
        images = str(root / "images")
        n_eval = 1024 if args.eval_samples is None else args.eval_samples
        workers = 8 if args.workers is None else args.workers
        base = paper_run_config(model, "linear", seeds[0], root, tasks=(), workers=workers,
                                out=args.out, model_root=args.model_root, study=STUDY)
        base.stages.finetune.lr = 2e-4
        if args.align:
            base.align = [DataSource(path=args.align, image_root=images)]
        evals = {s: EvalSet(name=s, path=str(root / "emt" / s / "test.json"), image_root=images,
                            kind="classification", max_samples=n_eval, max_new_tokens=16)
                 for s in sets}
        trains = {s: DataSource(path=str(root / "emt" / s / "train.json"), image_root=images)
                  for s in sets}
        prompt = args.clip_prompt or "a photo of a {label}"
        rank = 128
    if "{label}" not in prompt:
        print(f"--clip-prompt {prompt!r} must contain {{label}}", file=sys.stderr)
        return 2
    for e in evals.values():
        e.kind = "classification"
        if args.eval_samples is not None and args.eval_samples <= 0:
            e.max_samples = None
    base.nl_sets = []  # EMT is about the VL classifier; the NL suite is scale_pythia's
    base.eval.zero_shot = True  # EMT of the aligned MLLM before fine-tuning (task 1 rows)
    base.tasks = epoch_tasks(trains[train_sets[0]], [evals[s] for s in sets], args.epochs)
    if args.init:  # issue 10 item 6b: start from an instruction-tuned MLLM, not an aligned one
        base.model.init = args.init
        base.align = []
    base = apply_cli_overrides(base, args)
    base.name = STUDY
    space = {"method": method_configs(methods, rank), "seed": seeds}
    plans = []
    for ts in train_sets:
        cfg = copy.deepcopy(base)
        for t in cfg.tasks:
            t.train = [copy.deepcopy(trains[ts])]
        plans.append((STUDY if len(train_sets) == 1 else f"{STUDY}-{ts}", cfg))
    clip = base.model.vision
    print(f"[{STUDY}] {model}: fine-tune on {', '.join(train_sets)} for {args.epochs} epoch(s) "
          f"with {', '.join(methods)}; EMT on {', '.join(sets)}; CLIP zero-shot of {clip}")

    if args.dry_run:
        if not args.no_clip:
            print(f"[{STUDY}] would compute CLIP zero-shot accuracy with {clip} "
                  f"(prompt {prompt!r}) on {', '.join(sets)}")
        return max(dry_run(cfg, space, study) for study, cfg in plans)
    # --- CLIP zero-shot of the vision tower ------------------------------------------
    if not args.no_clip:
        import torch

        from mllmcl_ray.eval.clip_zero_shot import evaluate_clip_zero_shot
        from mllmcl_ray.results import ResultStore

        evaluate_clip_zero_shot(clip, [evals[s] for s in sets], ResultStore(results_dir(base)),
                                clip_meta(model, base.model.scale, clip, prompt), prompt=prompt,
                                seed=base.eval.seed,
                                device="cuda" if torch.cuda.is_available() else "cpu")
    if args.init:  # the starting checkpoint's EMT rows (trained task 1), as Fig. 4's
        from mllmcl_ray.emt.off_the_shelf import OffTheShelfConfig, evaluate_models

        evaluate_models(OffTheShelfConfig(models=[args.init], sets=[evals[s] for s in sets],
                                          results=str(results_dir(base)), clip={args.init: clip},
                                          no_clip=True, seed=base.eval.seed))
    # --- align → zero-shot EMT → epochs, EMT after each ----------------------------------
    for study, cfg in plans:
        run_study(cfg, space, study=study, use_tune=not args.no_tune,
                  max_concurrent=args.max_concurrent, progress=not args.quiet)
    # --- report ----------------------------------------------------------------------
    finish_study(base, STUDY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
