"""Paper presets: the real models and the data layout the studies expect.

Nothing here downloads anything: models are hub ids (or local dirs if you point
`--model-root` at a directory holding them) and data are paths under a data root whose
layout is documented in docs/data.md and checked by `--dry-run`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import (DataSource, EvalSet, MethodConfig, ModelSpec, RunConfig, StageConfig,
                     StagesConfig, TaskSpec, TrainerConfig)
from . import scale as scale_rules

CLIP_L14_336 = "openai/clip-vit-large-patch14-336"


@dataclass(frozen=True)
class PaperModel:
    name: str
    hub_id: str
    family: str
    template: str
    params: float  # LLM parameters (Srivastava Fig. 2b scale column)


PAPER_MODELS: dict[str, PaperModel] = {m.name: m for m in (
    PaperModel("pythia-160m", "EleutherAI/pythia-160m-deduped", "gpt_neox", "pythia", 0.16e9),
    PaperModel("pythia-410m", "EleutherAI/pythia-410m-deduped", "gpt_neox", "pythia", 0.41e9),
    PaperModel("pythia-1b", "EleutherAI/pythia-1b-deduped", "gpt_neox", "pythia", 1.0e9),
    PaperModel("pythia-1.4b", "EleutherAI/pythia-1.4b-deduped", "gpt_neox", "pythia", 1.4e9),
    PaperModel("pythia-2.8b", "EleutherAI/pythia-2.8b-deduped", "gpt_neox", "pythia", 2.8e9),
    PaperModel("phi-2", "microsoft/phi-2", "phi", "pythia", 2.7e9),
    PaperModel("llama-2-7b", "meta-llama/Llama-2-7b-hf", "llama", "vicuna_v1", 6.7e9),
    PaperModel("vicuna-1.5-7b", "lmsys/vicuna-7b-v1.5", "llama", "vicuna_v1", 6.7e9),
)}
PYTHIA_SCALES = ("pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b", "pythia-2.8b")

# Srivastava Table 4 task groups (tasks 2..5) and their evaluation sets (B.2/B.3).
PAPER_TASKS: dict[str, dict] = {
    "instruct": {"train": ["instruct.json"], "eval": []},
    "vqa": {"train": ["vqa.json"], "eval": [("vqav2", "vqa"), ("gqa", "exact")]},
    # TextVQA "OCR" and "Pure": the same records with and without OCR tokens in the prompt
    "ocr": {"train": ["ocr.json"], "eval": [("textvqa_ocr", "exact"), ("textvqa_pure", "exact")]},
    "ref": {"train": ["ref.json"], "eval": [("refcoco", "grounding")]},
}
PAPER_NL = ("lambada", "arc_easy", "arc_challenge", "winogrande", "wsc")


def resolve_model(name: str, model_root: str | None = None) -> ModelSpec:
    """A paper model as a ModelSpec; with `model_root`, local dirs named like the hub ids."""
    try:
        m = PAPER_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown paper model {name!r}; known: {', '.join(PAPER_MODELS)}") from None
    llm, vision = m.hub_id, CLIP_L14_336
    if model_root:
        llm = str(Path(model_root) / m.hub_id.split("/")[-1])
        vision = str(Path(model_root) / CLIP_L14_336.split("/")[-1])
    return ModelSpec(name=m.name, family=m.family, llm=llm, vision=vision, template=m.template,
                     dtype="bfloat16", max_seq_len=2048, scale=m.params)


def paper_stages(n_params: float, workers: int) -> StagesConfig:
    """Srivastava A.3: alignment lr 1e-3, global batch 256; fine-tune lr 2e-5, warm-up 0.03,
    global batch 128; per-device 16 (smaller for 7B); 1 epoch each."""
    per_dev = scale_rules.per_device_batch(int(n_params))
    while per_dev > 1 and (128 % (per_dev * workers)):
        per_dev //= 2
    return StagesConfig(
        align=StageConfig(lr=1e-3, warmup_ratio=0.03, global_batch_size=256,
                          per_device_batch_size=per_dev, train="projector", parallel="shard_grad_op"),
        finetune=StageConfig(lr=2e-5, warmup_ratio=0.03, global_batch_size=128,
                             per_device_batch_size=per_dev, parallel="full_shard"))


def paper_run_config(model: str, method: str, seed: int, data_root: str | Path, *,
                     recipe: str = "continual", tasks=tuple(PAPER_TASKS), workers: int = 8,
                     out: str = "runs/paper", model_root: str | None = None,
                     method_params: dict | None = None, study: str = "paper") -> RunConfig:
    root = Path(data_root)
    spec = resolve_model(model, model_root)
    images = str(root / "images")
    task_specs = []
    for t in tasks:
        d = PAPER_TASKS[t]
        task_specs.append(TaskSpec(
            name=t, train=[DataSource(path=str(root / "continual" / f), image_root=images)
                           for f in d["train"]],
            eval=[EvalSet(name=n, path=str(root / "eval" / f"{n.split('_')[0]}_slim.json"),
                          image_root=images, kind=k, max_samples=1024,
                          ocr_tokens=n.endswith("_ocr") if n.startswith("textvqa") else None)
                  for n, k in d["eval"]]))
    return RunConfig(
        name=f"{study}-{model}-{method.replace('+', '_')}-s{seed}", seed=seed, recipe=recipe,
        model=spec, stages=paper_stages(spec.scale or 1e9, workers),
        align=[DataSource(path=str(root / "continual" / "align.json"), image_root=images)],
        tasks=task_specs, method=MethodConfig(name=method, params=dict(method_params or {})),
        trainer=TrainerConfig(num_workers=workers, use_gpu=True, checkpoint_every=500),
        output_dir=out,
        nl_sets=[EvalSet(name=n, path=str(root / "nl" / f"{n}.jsonl"), kind=n, max_samples=None)
                 for n in PAPER_NL])
