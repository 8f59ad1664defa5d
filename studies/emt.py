"""EMT: the MLLM as an image classifier vs its own vision tower (Zhai et al., Fig. 4–7).

    ray job submit --working-dir . -- python studies/emt.py --preset paper --data-root /data
    python studies/emt.py --train-set shapes --epochs 2     # micro (digits ~ MNIST, shapes ~ CIFAR)

1. CLIP zero-shot: the vision tower's own accuracy on every classification set (metric
   ``clip_zero_shot``, trained_task_index 1; ``--clip-prompt``; ``--no-clip`` skips it).
2. Per method (``--methods linear,lora``) and seed: alignment, EMT of the aligned MLLM on
   every set (trained_task_index 1, "zero_shot"), then ``--epochs`` epochs on ``--train-set``
   as tasks ``epoch-1`` … ``epoch-N`` (trained task index 2 … N+1, EMT on every set after
   each; the lr schedule restarts each epoch, LoRA merges after each). Paper data:
   <data_root>/emt/<set>/{train,test}.json; several --train-set values are one study each
   (emt-<set>). Details: docs/studies.md; report: OUT/emt-report.html.
"""
import copy
import hashlib
import sys

from mllmcl_ray.config import ConfigError, DataSource, EvalSet, TaskSpec
from mllmcl_ray.presets import method_config
from mllmcl_ray.study import Arg, PerPreset, Plan, Reproduction, StudySpec

METHODS = {"linear": "linear", "lora": "emt-lora"}  # --methods -> method table

REPRODUCTIONS = (
    Reproduction("fig4", "Fig. 4–7: linear vs LoRA fine-tuning on MNIST (micro: digits), EMT "
                         "after each epoch, CLIP zero-shot reference", {}),
    Reproduction("all-sets", "as fig4, fine-tuning on each classification set in turn",
                 {"train_set": PerPreset("digits,shapes", "mnist,cifar10,cifar100,miniimagenet")}),
)


def epoch_tasks(train: DataSource, sets: list[EvalSet], epochs: int) -> list[TaskSpec]:
    """The training set repeated, one epoch per task; every set evaluated after each."""
    return [TaskSpec(name=f"epoch-{e}", train=[copy.deepcopy(train)], eval=list(sets) if e == 1 else [])
            for e in range(1, epochs + 1)]


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
    cfg.eval.zero_shot = True  # EMT of the aligned MLLM before fine-tuning (task 1 rows)
    train = ctx.list("train_set", sets)[0]
    cfg.tasks = epoch_tasks(tasks[train].train[0], [t.eval[0] for t in tasks.values()], ctx.args.epochs)
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
    if not ctx.args.no_clip:
        out[0].note = (f"would compute CLIP zero-shot accuracy with {base.model.vision} (prompt "
                       f"{ctx.args.clip_prompt!r}) on {', '.join(ctx.list('sets'))}")
    return out


def clip_meta(model: str, scale: float | None, clip: str, prompt: str) -> dict:
    key = hashlib.sha256(f"{clip}\x00{prompt}".encode()).hexdigest()[:12]
    return {"run_id": f"{SPEC.name}-clip-{model}-{key}", "study": SPEC.name, "model": model,
            "scale": float(scale or 0.0), "method": "clip_zero_shot", "method_params": "{}", "seed": 0}


def clip_zero_shot(ctx, plans):
    """The vision tower's own zero-shot accuracy on every set (before any run)."""
    if ctx.args.no_clip:
        return
    import torch

    from mllmcl_ray.eval.clip_zero_shot import evaluate_clip_zero_shot
    from mllmcl_ray.results import ResultStore

    cfg = plans[0].base
    evaluate_clip_zero_shot(cfg.model.vision, cfg.tasks[0].eval, ResultStore(ctx.out / "results"),
                            clip_meta(cfg.model.name, cfg.model.scale, cfg.model.vision, ctx.args.clip_prompt),
                            prompt=ctx.args.clip_prompt, seed=cfg.eval.seed,
                            device="cuda" if torch.cuda.is_available() else "cpu")


SPEC = StudySpec(
    name="emt", doc=__doc__, base=base, grid=grid, plans=plans, before_runs=clip_zero_shot,
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
          Arg("--align", "paper preset: alignment JSON under the data root (default continual/align.json)")))

if __name__ == "__main__":
    sys.exit(SPEC.main())
