"""Mitigating linguistic forgetting at one scale (Srivastava et al., Fig. 3a; App. A.6.2–A.6.3,
Tables 2 and 3).

    ray job submit --working-dir . -- python studies/mitigation.py --preset paper --data-root /data
    python studies/mitigation.py                            # micro preset, Fig. 3a (default)
    python studies/mitigation.py --reproduce table2         # the LoRA variants (Table 2)
    python studies/mitigation.py --variants all --methods all --recipes llava,continual

What runs (one run per method configuration × seed × recipe, as Ray Tune trials):

- ``--variants methods`` (Fig. 3a): ``--methods`` of the method table (``fig3a`` = naive,
  lora, msgm, soft_targets; ``all`` = every Srivastava method). Under the LLaVA recipe
  (alignment, then the whole mixture once) there is no finished task to rehearse, anchor or
  distil: rehearsal, ewc, lwf and msgm+rehearsal are skipped there (with a note) and run
  with ``--recipes continual`` (recorded as study ``mitigation-continual``).
- ``--variants lora`` (Table 2): naive and the six LoRA rows: 1/2 full rank + higher α (16),
  1/2 + rsLoRA (α 8: the default, best row), 1/4 full rank, 1/4 + higher α, 1/2 full rank,
  1/2 + rsLoRA + K/Q/V targets only ("full rank" = the LLM hidden size).
- ``--variants alpha`` (Table 3): naive and Soft Targets with α in ``--alphas``.
- ``--variants all``: the union (identical configurations run once).

The report (OUT/mitigation-report.html) shows Fig. 2a/3a (NL Δ vs VL accuracy) per config.
"""
import sys

from mllmcl_ray.presets import method_config
from mllmcl_ray.presets.methods import srivastava_lora as lora, unique
from mllmcl_ray.study import Arg, PerPreset, Plan, Reproduction, StudySpec

ALL = ("naive", "linear", "lora", "soft_targets", "msgm", "moelora", "rehearsal", "ewc", "lwf",
       "msgm+rehearsal")
FIG3A = ("naive", "lora", "msgm", "soft_targets")
NEEDS_PREVIOUS = {"rehearsal", "ewc", "lwf", "msgm+rehearsal"}  # act on finished tasks only
LORA_VARIANTS = {  # Srivastava Table 2 rows -> method.params.lora
    "1/2 full rank, higher alpha": lora(0.5, 16.0, False),
    "1/2 full rank, rsLoRA": lora(0.5, 8.0, True),
    "1/4 full rank": lora(0.25, 8.0, False),
    "1/4 full rank, higher alpha": lora(0.25, 16.0, False),
    "1/2 full rank": lora(0.5, 8.0, False),
    "1/2 full rank, rsLoRA, KQV target": lora(0.5, 8.0, True, "attention_qkv"),
}
VARIANTS = ("methods", "lora", "alpha")

REPRODUCTIONS = (
    Reproduction("fig3a", "Fig. 3a: naive, LoRA, mSGM, Soft Targets; LLaVA recipe, Pythia 160M",
                 {"variants": "methods", "methods": "fig3a", "recipes": "llava"}),
    Reproduction("table2", "Table 2: naive and the six LoRA variants; LLaVA recipe, Pythia 160M",
                 {"variants": "lora", "recipes": "llava"}),
    Reproduction("table3", "Table 3: naive and Soft Targets α ∈ {0.001, 0.01, 0.1}; LLaVA recipe",
                 {"variants": "alpha", "recipes": "llava"}),
)


def base(ctx):
    return ctx.preset.run_config(ctx.args.model, recipe="llava", study=SPEC.name)


def grid(ctx):
    """The method configurations of the chosen variants, identical ones once."""
    variants = ctx.list("variants", (*VARIANTS, "all"))
    variants = VARIANTS if "all" in variants else variants
    methods = {"all": ALL, "fig3a": FIG3A}.get(ctx.args.methods) or ctx.list("methods", ALL)
    out = [method_config(m, ctx.preset.name) for m in methods] if "methods" in variants else []
    if "lora" in variants:
        out += [method_config("naive")] + [method_config("lora", lora=v) for v in LORA_VARIANTS.values()]
    if "alpha" in variants:
        out += [method_config("naive")] + [method_config("soft_targets", soft_targets={"alpha": a})
                                           for a in ctx.numbers("alphas")]
    return {"method": unique(out), "seed": ctx.seeds}


def plans(ctx, base, grid):
    """One plan per recipe; the LLaVA recipe skips the methods that need a finished task."""
    out = []
    for recipe in ctx.list("recipes", ("llava", "continual")):
        ms = grid["method"]
        if recipe == "llava":
            ms = [m for m in ms if m["name"] not in NEEDS_PREVIOUS]
            if len(ms) < len(grid["method"]):
                ctx.log(f"[{SPEC.name}] llava recipe: skipping rehearsal/ewc/lwf configurations "
                        "(no finished task to use there; add --recipes continual)")
        if ms:
            out.append(Plan(SPEC.name if recipe == "llava" else f"{SPEC.name}-{recipe}", base,
                            {"method": ms, "seed": grid["seed"], "recipe": [recipe]}))
    return out


SPEC = StudySpec(
    name="mitigation", doc=__doc__, base=base, grid=grid, plans=plans, reproductions=REPRODUCTIONS,
    args=(Arg("--variants", "comma-separated among methods (Fig. 3a), lora (Table 2), alpha "
                            "(Table 3), or all"),
          Arg("--methods", f"--variants methods: 'fig3a', 'all' or a list among {', '.join(ALL)}",
              default="all"),
          Arg("--alphas", "--variants alpha: Soft Targets α values", default="0.001,0.01,0.1"),
          Arg("--model", "the one scale", default=PerPreset("micro-s", "pythia-160m")),
          Arg("--recipes", "llava (alignment then the whole mixture, as Fig. 3a) and/or continual",
              default="llava")))

if __name__ == "__main__":
    sys.exit(SPEC.main())
