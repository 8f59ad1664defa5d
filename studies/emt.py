"""EMT: the MLLM as an image classifier vs its own vision tower (Zhai et al., Fig. 4–7).

    ray job submit --working-dir . -- python studies/emt.py --preset paper --data-root /data
    python studies/emt.py --train-set shapes --epochs 2     # micro (digits ~ MNIST, shapes ~ CIFAR)
    python studies/emt.py --models llava-hf/llava-1.5-7b-hf,DIR --preset paper --data-root /data

1. CLIP zero-shot: the vision tower's own accuracy on every classification set (metric
   ``clip_zero_shot``, trained_task_index 1; ``--clip-prompt``; ``--no-clip`` skips it).
2. Per method (``--methods linear,lora``) and seed: the starting MLLM, EMT of it on every
   set (trained_task_index 1), then ``--epochs`` epochs of fine-tuning on
   ``--train-set`` as ONE task (one lr schedule, one optimizer, one adapter) evaluated on
   every set after each epoch (``TaskSpec.eval_every_epoch``: rows carry ``epoch``).
   Paper data: <data_root>/emt/<set>/{train,test}.json; several --train-set values are one
   study each (emt-<set>).
   Start (``--start``, mllmcl_ray/emt/start.py): ``instruct`` (default; EMT §5 fine-tunes
   LLaVA) an instruction-tuned MLLM, no alignment in the runs: micro, the LLaVA recipe's
   output for --model (caption alignment + the world's instruct task), made once before
   the runs and reused; paper, the public llava-hf LLaVA-1.5 (vicuna-1.5-7b ->
   llava-hf/llava-1.5-7b-hf); ``--init CHECKPOINT`` another one. ``aligned``: the LLM
   after alignment only, aligned in each run.
3. ``--models A,B``: EMT of LLaVA-format checkpoints as they are (§4.1, Fig. 4; hub ids or
   dirs with their own processor and chat template; no training) beside the CLIP zero-shot
   accuracy of each one's vision tower (mllmcl_ray/emt/off_the_shelf.py).
Details: docs/studies.md; report: OUT/emt-report.html. §3 (vision encoders): studies/emt_vision.py.
"""
import copy
import sys

from mllmcl_ray.config import ConfigError, DataSource, EvalSet, TaskSpec
from mllmcl_ray.emt.off_the_shelf import emt_before_runs, emt_study_main
from mllmcl_ray.emt.start import STARTS, resolve_start
from mllmcl_ray.presets import method_config
from mllmcl_ray.study import Arg, PerPreset, Plan, Reproduction, StudySpec

METHODS = {"linear": "linear", "lora": "emt-lora"}  # --methods -> method table

REPRODUCTIONS = (
    Reproduction("fig4", "Fig. 4–7: linear vs LoRA fine-tuning on MNIST (micro: digits), EMT "
                         "after each epoch, CLIP zero-shot reference", {}),
    Reproduction("all-sets", "as fig4, fine-tuning on each classification set in turn",
                 {"train_set": PerPreset("digits,shapes", "mnist,cifar10,cifar100,miniimagenet")}),
)


def finetune_task(train: DataSource, sets: list[EvalSet]) -> TaskSpec:
    """The training set as one task evaluated on every set after each of its epochs."""
    return TaskSpec(name="finetune", train=[copy.deepcopy(train)], eval=list(sets),
                    eval_every_epoch=True)


def base(ctx):
    if ctx.args.epochs < 1:
        raise ConfigError(f"--epochs must be ≥ 1, got {ctx.args.epochs}")
    if "{label}" not in ctx.args.clip_prompt:
        raise ConfigError(f"--clip-prompt {ctx.args.clip_prompt!r} must contain {{label}}")
    sets = ctx.list("sets", ctx.preset.emt_sets())
    tasks = {s: ctx.preset.emt_task(s) for s in sets}
    cfg = ctx.preset.run_config(ctx.args.model, tasks=[], study=SPEC.name)
    cfg.stages.finetune.lr, cfg.stages.finetune.lr_rule = (1e-3 if ctx.micro else 2e-4), "fixed"
    if ctx.args.align:
        cfg.align = [ctx.preset.data(ctx.args.align)]
    cfg.nl_sets = []  # EMT is about the VL classifier; the NL suite is scale_pythia's
    cfg.eval.zero_shot = True  # EMT of the start before fine-tuning (task 1 rows)
    cfg.stages.finetune.epochs, cfg.stages.finetune.task_epochs = float(ctx.args.epochs), None
    train = ctx.list("train_set", sets)[0]
    cfg.tasks = [finetune_task(tasks[train].train[0], [t.eval[0] for t in tasks.values()])]
    start = resolve_start(ctx.preset, ctx.args.model, ctx.args.start, ctx.args.init)
    if start is None:
        ctx.log(f"[{SPEC.name}] start: {cfg.model.name} aligned on the caption task in each run "
                "(--start aligned)")
    else:  # EMT §5 fine-tunes an instruction-tuned MLLM: no alignment in the runs
        if ctx.args.align:
            raise ConfigError(f"--align {ctx.args.align!r} aligns the LLM in each run: it needs "
                              "--start aligned (an instruction-tuned start is not aligned again)")
        cfg.model.init, cfg.align = start.init, []
        ctx.log(f"[{SPEC.name}] start: {start.source}")
    return cfg


def grid(ctx):
    return {"method": [method_config(METHODS[m], ctx.preset.name) for m in ctx.list("methods", METHODS)],
            "seed": ctx.seeds}


def plans(ctx, base, grid):
    """One study per training set (``emt`` for a single one)."""
    train_sets = ctx.list("train_set", ctx.list("sets"))
    out = []
    for ts in train_sets:
        cfg = copy.deepcopy(base)
        for t in cfg.tasks:
            t.train = [copy.deepcopy(ctx.preset.emt_task(ts).train[0])]
        out.append(Plan(SPEC.name if len(train_sets) == 1 else f"{SPEC.name}-{ts}", cfg, grid))
    notes = []
    start = resolve_start(ctx.preset, ctx.args.model, ctx.args.start, ctx.args.init)
    if start is not None and start.recipe is not None:
        notes.append(f"would make (or reuse) the instruction-tuned start {start.init} with the "
                     f"LLaVA recipe before the runs")
    if not ctx.args.no_clip:
        notes.append(f"would compute CLIP zero-shot accuracy with {base.model.vision} (prompt "
                     f"{ctx.args.clip_prompt!r}) on {', '.join(ctx.list('sets'))}")
    out[0].note = "; ".join(notes)
    return out


SPEC = StudySpec(
    name="emt", doc=__doc__, base=base, grid=grid, plans=plans, before_runs=emt_before_runs,
    reproductions=REPRODUCTIONS,
    args=(Arg("--model", "the MLLM's LLM", default=PerPreset("micro-s", "vicuna-1.5-7b")),
          Arg("--sets", "classification sets evaluated", default=PerPreset("digits,shapes",
                                                                           "mnist,cifar10,cifar100,miniimagenet")),
          Arg("--train-set", "set(s) fine-tuned on, comma-separated: one study each",
              default=PerPreset("digits", "mnist")),
          Arg("--epochs", "fine-tuning epochs (1-3 in Zhai)", default=3, type=int),
          Arg("--methods", "comma-separated among linear, lora", default="linear,lora"),
          Arg("--clip-prompt", "CLIP zero-shot prompt with {label}",
              default=PerPreset("a {label}", "a photo of a {label}")),
          Arg("--no-clip", "skip the CLIP zero-shot rows", flag_only=True),
          Arg("--align", "paper preset, --start aligned: alignment JSON under the data root "
                         "(default continual/align.json)"),
          Arg("--start", f"what EMT fine-tunes: {' or '.join(STARTS)} (instruct: the instruction-tuned "
                         "MLLM of --model, EMT §5; micro: the LLaVA recipe's output, made once and "
                         "reused; paper: the public llava-hf LLaVA-1.5; aligned: the LLM after "
                         "alignment only, aligned in each run)", default="instruct"),
          Arg("--init", "start from this instruction-tuned LLaVA-format checkpoint instead (a project "
                        "LLaVA-recipe checkpoint, or a llava-hf one with --set model.template=...)"),
          Arg("--models", "EMT of these LLaVA-format checkpoints as they are (hub ids or dirs, "
                          "comma-separated; no training) beside their towers' CLIP zero-shot accuracy"),
          Arg("--clip", "with --models: [MODEL=]CLIP checkpoint of a model's vision tower, comma-separated "
                        "(default: known llava-hf models and tower shapes, models/towers.py)"),
          Arg("--judge", "with --models: LLM judge (dir or hub id) for emt_judge")))


def main(argv=None) -> int:
    return emt_study_main(SPEC, argv)  # --models: checkpoints as they are; else the study


if __name__ == "__main__":
    sys.exit(main())
