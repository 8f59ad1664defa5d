"""CoIN: continual instruction tuning of an MLLM over 8 tasks (Chen et al., Tables 2–9, 12–14).

    ray job submit --working-dir . -- python studies/coin.py --preset paper --data-root /data
    python studies/coin.py --reproduce table8               # micro: MoELoRA with 1, 2, 4, 8 experts

CoIN's 8 tasks in CoIN's order (paper: <data_root>/Instructions/<Task>/, full test sets, each
scored as CoIN's released evaluation does; micro: the world's analogues) or ``--order
alphabet|A,B,...``. ``--methods`` picks method-table rows: ``lora`` = coin-lora, CoIN's LoRA,
i.e. MoELoRA with ONE expert; ``lora-merged``, ``moelora`` (``--experts``), ``ewc``, ``lwf``,
``naive``. Each (``--instructions`` original|diverse|10type, ``--volumes``) level is its own
study (coin, coin-alphabet, coin-10type-vol0.4, ...); ``--baselines``: the multi-task and
zero-shot rows (study coin-baselines); ``--judge``: Reasoning Capability. The summary
(OUT/coin-summary.md) gives MAA and BWT per run (BWT as 1/(T−1) and CoIN's printed 1/T).
Details: docs/studies.md.
"""
import copy
import hashlib
import sys

from mllmcl_ray.config import ConfigError
from mllmcl_ray.data.instructions import VARIANTS, apply_instruction_variant
from mllmcl_ray.presets import method_config
from mllmcl_ray.presets.methods import unique
from mllmcl_ray.study import Arg, PerPreset, Plan, Reproduction, StudySpec

METHODS = {"lora": "coin-lora", "lora-merged": "coin-lora-merged", "moelora": "coin-moelora",
           "ewc": "coin-ewc", "lwf": "coin-lwf", "naive": "naive"}  # --methods -> method table

REPRODUCTIONS = (
    Reproduction("table2", "Tab. 2 (and 12–14): CoIN's LoRA over the 8 tasks, multi-task and zero-shot rows", {}),
    Reproduction("table3", "Tab. 3: Reasoning Capability (LLM judge; micro: the run's base LLM)",
                 {"judge": PerPreset("self", "Qwen/Qwen1.5-32B-Chat")}),
    Reproduction("table5", "Tab. 5: alphabetical task order", {"order": "alphabet", "baselines": "none"}),
    Reproduction("table6", "Tab. 6: instruction templates original, diverse, 10type",
                 {"instructions": "original,diverse,10type", "baselines": "none"}),
    Reproduction("table7", "Tab. 7: training-data volume 10–100 %",
                 {"volumes": "0.1,0.2,0.4,0.6,0.8,1.0", "baselines": "none"}),
    Reproduction("table8", "Tab. 8: MoELoRA with 1, 2, 4, 8 experts",
                 {"methods": "moelora", "experts": "1,2,4,8", "baselines": "none"}),
    Reproduction("table9", "Tab. 9: LoRA, EWC, LwF and MoELoRA (8 experts) at 40 % volume",
                 {"methods": "lora,ewc,lwf,moelora", "volumes": "0.4", "baselines": "none"}),
)


def base(ctx):
    cfg = ctx.preset.run_config(ctx.args.model, tasks=[], study=SPEC.name)
    cfg.stages.finetune.lr, cfg.stages.finetune.lr_rule = (1e-3 if ctx.micro else 2e-4), "fixed"
    cfg.tasks = [ctx.preset.coin_task(n) for n in ctx.order("order", list(ctx.preset.coin_tasks()))]
    if ctx.args.align:
        cfg.align = [ctx.preset.data(ctx.args.align)]
    cfg.nl_sets = cfg.nl_sets if ctx.args.nl else []
    judge = ctx.args.judge
    cfg.eval.judge = cfg.model.llm if judge == "self" else judge
    return cfg


def grid(ctx):
    moe = [{"moelora": {"num_experts": e}} for e in ctx.numbers("experts", int)]
    return {"method": unique([method_config(METHODS[m], ctx.preset.name, **p) for m in ctx.list("methods", METHODS)
                              for p in (moe if m == "moelora" else [{}])]), "seed": ctx.seeds}


def level(ctx, variant: str, volume: float) -> str:
    """The study name of an (order, instructions, volume) level: coin, coin-alphabet-10type-vol0.4, ..."""
    o = ctx.args.order
    parts = {"paper": [], "alphabet": ["alphabet"]}.get(o, ["order" + hashlib.sha256(o.encode()).hexdigest()[:6]])
    parts += [variant] if variant != "original" else []
    parts += [f"vol{volume:g}"] if volume != 1.0 else []
    return "-".join([SPEC.name, *parts])


def plans(ctx, base, grid):
    """One plan per (instructions, volume) level, plus the baselines' LLaVA-recipe run."""
    baselines = [b for b in ctx.list("baselines", ("multitask", "zeroshot", "none")) if b != "none"]
    volumes = ctx.numbers("volumes")
    if any(not 0 < v <= 1 for v in volumes):
        raise ConfigError(f"--volumes {ctx.args.volumes!r}: fractions must be in (0, 1]")
    types = ctx.preset.coin_tasks()
    cache, seed = ctx.out / "cache" / "instructions", int(ctx.args.instruction_seed)
    out = []
    for variant in ctx.list("instructions", VARIANTS):
        for vol in volumes:
            cfg = copy.deepcopy(base)
            for s in (s for t in cfg.tasks for s in t.train):
                s.fraction = float(vol)
            cfg.eval.zero_shot = "zeroshot" in baselines and "multitask" not in baselines
            note = "" if variant == "original" else f"instructions {variant}: prompts rewritten into {cache} at run time"
            out.append(Plan(level(ctx, variant, vol), cfg, grid, note=note, before=lambda c, v=variant:
                            apply_instruction_variant(c, types, v, seed, cache)))
    if baselines:
        first = copy.deepcopy(out[0])
        first.base.recipe, first.base.eval.zero_shot = "llava", "zeroshot" in baselines
        out.append(Plan("coin-baselines", first.base, {"method": [method_config("coin-lora", ctx.preset.name)],
                                                       "seed": ctx.seeds}, first.before, first.note))
    return out


def summary(ctx, plans):
    from mllmcl_ray.results import ResultStore
    from mllmcl_ray.study.summary import coin_summary

    return coin_summary(ResultStore(ctx.out / "results").read(), SPEC.name, "coin-baselines")


SPEC = StudySpec(
    name="coin", doc=__doc__, base=base, grid=grid, plans=plans, summary=summary, reproductions=REPRODUCTIONS,
    args=(Arg("--model", "the MLLM's LLM", default=PerPreset("micro-s", "vicuna-1.5-7b")),
          Arg("--order", "paper (CoIN's order), alphabet, or comma-separated task names", default="paper"),
          Arg("--instructions", f"comma-separated among {', '.join(VARIANTS)} (CoIN App. H)", default="original"),
          Arg("--instruction-seed", "seed of the per-record template choice", default=0, type=int),
          Arg("--volumes", "comma-separated training-data fractions", default="1.0"),
          Arg("--methods", f"comma-separated among {', '.join(METHODS)}", default="lora"),
          Arg("--experts", "moelora: comma-separated expert counts (Tab. 8: 1,2,4,8)", default="8"),
          Arg("--baselines", "multitask and/or zeroshot, or none", default="multitask,zeroshot"),
          Arg("--judge", "judge LLM dir / hub id for Reasoning Capability ('self': the run's own LLM)"),
          Arg("--align", "paper preset: alignment JSON under the data root (default continual/align.json)"),
          Arg("--nl", "also evaluate the NL suite", flag_only=True)))

if __name__ == "__main__":
    sys.exit(SPEC.main())
