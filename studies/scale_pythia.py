"""Linguistic forgetting across Pythia scales (Srivastava et al., Fig. 2b, 3b, 4, 5; Table 1).

Each run: alignment, then the LLaVA recipe (the whole mixture once) or the continual
recipe (Table 4: instruct → VQA → OCR → grounding), the NL suite and the VL sets scored
after every task. One run per scale × method × seed × recipe, as Ray Tune trials.

    ray job submit --working-dir . -- python studies/scale_pythia.py --preset paper --data-root /data
    python studies/scale_pythia.py                          # micro preset, Fig. 3b/4 (default)
    python studies/scale_pythia.py --reproduce fig5         # mSGM + Rehearsal vs naive, continual
    python studies/scale_pythia.py --reproduce table1 --preset paper --data-root /data --dry-run
"""
import sys

from mllmcl_ray.presets import METHODS, method_configs
from mllmcl_ray.presets.paper import PAPER_MODELS, PYTHIA_SCALES
from mllmcl_ray.study import Arg, PerPreset, Reproduction, StudySpec
from mllmcl_ray.sweep import model_scale_space

MICRO_SCALES = "micro-xs,micro-s"
TABLE1 = "naive,soft_targets,lora,msgm,rehearsal,msgm+rehearsal"  # Srivastava Table 1 rows

REPRODUCTIONS = (
    Reproduction("fig3b", "Fig. 3b / 4: naive vs Soft Targets, LLaVA recipe, Pythia 160M–2.8B",
                 {"methods": "naive,soft_targets", "recipes": "llava",
                  "scales": PerPreset(MICRO_SCALES, ",".join(PYTHIA_SCALES)), "seeds": "0,1"}),
    Reproduction("fig4", "Fig. 4: VL accuracy and NL Δ vs scale (the runs of Fig. 3b)",
                 {"methods": "naive,soft_targets", "recipes": "llava",
                  "scales": PerPreset(MICRO_SCALES, ",".join(PYTHIA_SCALES)), "seeds": "0,1"}),
    Reproduction("fig5", "Fig. 5: naive vs mSGM + Rehearsal 1 %, continual recipe, Pythia 160M–1.4B",
                 {"methods": "naive,msgm+rehearsal", "recipes": "continual",
                  "scales": PerPreset(MICRO_SCALES, ",".join(PYTHIA_SCALES[:4])), "seeds": "0,1"}),
    Reproduction("table1", "Table 1: the six methods, continual recipe, Pythia 410M",
                 {"methods": TABLE1, "recipes": "continual",
                  "scales": PerPreset("micro-s", "pythia-410m"), "seeds": "0,1"}),
    Reproduction("fig2b", "Fig. 2b / 6: NLU vs NLG forgetting of the 9 LLMs, naive, LLaVA recipe",
                 {"methods": "naive", "recipes": "llava",
                  "scales": PerPreset(MICRO_SCALES + ",micro-m", ",".join(PAPER_MODELS)), "seeds": "0"}),
)


def base(ctx):
    first = ctx.preset.models(ctx.list("scales"))[0]  # every scale made/checked up front
    cfg = ctx.preset.run_config(first.name, study=SPEC.name)
    cfg.eval.zero_shot = True  # VL sets scored after alignment too (the zero-shot model)
    return cfg


def grid(ctx):
    return {**model_scale_space(ctx.preset.models(ctx.list("scales"))),
            "method": method_configs(ctx.list("methods", METHODS), ctx.preset.name),
            "seed": ctx.seeds, "recipe": ctx.list("recipes", ("continual", "llava"))}


SPEC = StudySpec(
    name="scale_pythia", doc=__doc__, base=base, grid=grid, reproductions=REPRODUCTIONS,
    args=(Arg("--scales", "comma-separated model names (micro: micro-xs, micro-s, micro-m; paper: "
                          "pythia-160m … pythia-2.8b, pythia-1.4b-instruct, phi-2, llama-2-7b, vicuna-1.5-7b)"),
          Arg("--methods", "comma-separated names of the method table (`mllmcl methods`)"),
          Arg("--recipes", "continual and/or llava (comma-separated)")),
    seeds="0,1")

if __name__ == "__main__":
    sys.exit(SPEC.main())
