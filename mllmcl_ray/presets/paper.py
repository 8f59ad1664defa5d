"""The paper preset: the papers' models and the data layout the studies expect.

Nothing here downloads anything: models are hub ids (or local dirs if you point
`--model-root` at a directory holding them) and data are paths under a data root whose
layout is documented in docs/data.md and checked by `--dry-run`.

Evaluation as the papers do it: the NL suite on the full lm-eval sets (no sample cap),
Srivastava's VL sets are the 1024-sample slim sets of vlm-evaluation, CoIN's test sets in
full; every set is scored by the eval kind docs/evaluation.md names (vqa, gqa, textvqa, grounding,
...) with that kind's default generation budget (`max_new_tokens` left unset).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import scale as scale_rules
from ..config import (ConfigError, DataSource, EvalConfig, EvalSet, MethodConfig, ModelSpec,
                      RunConfig, StageConfig, StagesConfig, TaskSpec, TrainerConfig)
from .base import SRIVASTAVA_TASKS, InstructStart, Preset

CLIP_L14_336 = "openai/clip-vit-large-patch14-336"


@dataclass(frozen=True)
class PaperModel:
    """A base LLM of the papers."""

    name: str  # the name in results and on the command line
    hub_id: str  # Hugging Face hub id (or the dir name under --model-root)
    family: str  # models/families.py: gpt_neox, phi, llama
    template: str  # models/templates.py conversation template
    params: float  # LLM parameters (Srivastava Fig. 2b scale column)


# Srivastava A.3 / C.4: the 9 LLMs (6 Pythia incl. the instruction-tuned 1.4B, Phi-2,
# LLaMA-2 and Vicuna-1.5); hub ids as TRI's prismatic-vlms (the paper's code base) has them.
PAPER_MODELS: dict[str, PaperModel] = {m.name: m for m in (
    PaperModel("pythia-160m", "EleutherAI/pythia-160m-deduped", "gpt_neox", "pythia", 0.16e9),
    PaperModel("pythia-410m", "EleutherAI/pythia-410m-deduped", "gpt_neox", "pythia", 0.41e9),
    PaperModel("pythia-1b", "EleutherAI/pythia-1b-deduped", "gpt_neox", "pythia", 1.0e9),
    PaperModel("pythia-1.4b", "EleutherAI/pythia-1.4b-deduped", "gpt_neox", "pythia", 1.4e9),
    PaperModel("pythia-1.4b-instruct", "lambdalabs/pythia-1.4b-deduped-synthetic-instruct",
               "gpt_neox", "pythia", 1.4e9),
    PaperModel("pythia-2.8b", "EleutherAI/pythia-2.8b-deduped", "gpt_neox", "pythia", 2.8e9),
    PaperModel("phi-2", "microsoft/phi-2", "phi", "pythia", 2.7e9),
    PaperModel("llama-2-7b", "meta-llama/Llama-2-7b-hf", "llama", "vicuna_v1", 6.7e9),
    PaperModel("vicuna-1.5-7b", "lmsys/vicuna-7b-v1.5", "llama", "vicuna_v1", 6.7e9),
)}
# the public instruction-tuned LLaVA-1.5 (LLaVA recipe: alignment + instruction fine-tune)
# of a paper LLM, in the llava-hf layout: what EMT (Zhai et al. §5) fine-tunes by default
LLAVA_HF: dict[str, str] = {"vicuna-1.5-7b": "llava-hf/llava-1.5-7b-hf"}
PYTHIA_SCALES = ("pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b", "pythia-2.8b")

# Srivastava Table 4 task groups (tasks 2..5): training files under <root>/continual and
# their evaluation sets (B.2/B.3: vlm-evaluation's slim sets) as (name, eval kind).
PAPER_TASKS: dict[str, dict] = {
    "instruct": {"train": ["instruct.json"], "eval": []},
    "vqa": {"train": ["vqa.json"], "eval": [("vqav2", "vqa"), ("gqa", "gqa")]},
    # TextVQA "OCR" and "Pure": the same records with and without OCR tokens in the prompt
    "ocr": {"train": ["ocr.json"], "eval": [("textvqa_ocr", "textvqa"), ("textvqa_pure", "textvqa")]},
    "grounding": {"train": ["ref.json"], "eval": [("refcoco", "grounding")]},
}
# CoIN (Chen et al.): the 8 tasks in CoIN's order, each scored as CoIN's released evaluation
# does (docs/evaluation.md); data at <root>/Instructions/<Task>/{train,test}.json.
COIN_TASKS = {"ScienceQA": "option", "TextVQA": "textvqa", "ImageNet": "label_contain", "GQA": "gqa",
              "VizWiz": "exact_ci", "Grounding": "grounding", "VQAv2": "exact_ci", "OCR-VQA": "exact_ci"}
# EMT (Zhai et al.): classification sets at <root>/emt/<set>/{train,test}.json
EMT_SETS = ("mnist", "cifar10", "cifar100", "miniimagenet")
SLIM_SAMPLES = 1024  # vlm-evaluation's slim sets (Srivastava B.2)
# slim files holding several 1024-subsets (vlm-evaluation's RefCOCO: RefCOCO, RefCOCO+, RefCOCOg)
SLIM_SUBSETS = {"refcoco": 3}
PAPER_NL = ("lambada", "arc_easy", "arc_challenge", "winogrande", "wsc")


def resolve_model(name: str, model_root: str | None = None) -> ModelSpec:
    """A paper model as a ModelSpec; with `model_root`, local dirs named like the hub ids."""
    try:
        m = PAPER_MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown paper model {name!r}; known: {', '.join(PAPER_MODELS)}") from None
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
    while per_dev > 1 and (128 % (per_dev * max(1, workers))):
        per_dev //= 2
    return StagesConfig(
        align=StageConfig(lr=1e-3, warmup_ratio=0.03, global_batch_size=256,
                          per_device_batch_size=per_dev, train="projector", parallel="shard_grad_op"),
        finetune=StageConfig(lr=2e-5, warmup_ratio=0.03, global_batch_size=128,
                             per_device_batch_size=per_dev, parallel="full_shard"))


def paper_run_config(model: str, method: str, seed: int, data_root: str | Path, *,
                     recipe: str = "continual", tasks=SRIVASTAVA_TASKS, workers: int = 8,
                     out: str = "runs/paper", model_root: str | None = None,
                     method_params: dict | None = None, study: str = "paper",
                     vl_max_samples: int | None = SLIM_SAMPLES) -> RunConfig:
    root = Path(data_root)
    spec = resolve_model(model, model_root)
    images = str(root / "images")
    task_specs = []
    for t in tasks:
        if t not in PAPER_TASKS:
            raise ConfigError(f"unknown Srivastava task {t!r}; known: {', '.join(PAPER_TASKS)}")
        d = PAPER_TASKS[t]
        task_specs.append(TaskSpec(
            name=t, train=[DataSource(path=str(root / "continual" / f), image_root=images)
                           for f in d["train"]],
            eval=[EvalSet(name=n, path=str(root / "eval" / f"{n.split('_')[0]}_slim.json"),
                          image_root=images, kind=k,
                          max_samples=(vl_max_samples * SLIM_SUBSETS.get(n, 1)
                                       if vl_max_samples else vl_max_samples),
                          ocr_tokens=n.endswith("_ocr") if n.startswith("textvqa") else None)
                  for n, k in d["eval"]]))
    return RunConfig(
        name=f"{study}-{model}-{method.replace('+', '_')}-s{seed}", seed=seed, recipe=recipe,
        model=spec, stages=paper_stages(spec.scale or 1e9, workers),
        align=[DataSource(path=str(root / "continual" / "align.json"), image_root=images)],
        tasks=task_specs, method=MethodConfig(name=method, params=dict(method_params or {})),
        trainer=TrainerConfig(num_workers=workers, use_gpu=True, checkpoint_every=500),
        # the full lm-eval sets, scored by lm-evaluation-harness itself (its task definitions
        # lambada_standard, arc_easy, arc_challenge, winogrande, wsc273): comparable numbers
        eval=EvalConfig(nl_max_samples=None, nl_backend="lm_eval"),
        output_dir=out,
        nl_sets=[EvalSet(name=n, path=str(root / "nl" / f"{n}.jsonl"), kind=n, max_samples=None)
                 for n in PAPER_NL])


class PaperPreset(Preset):
    """The papers' models (hub ids or --model-root dirs) and data under --data-root."""

    name = "paper"
    default_workers = 8

    def __init__(self, data_root: str | None, model_root: str | None = None, **kw):
        super().__init__(**kw)
        if not data_root:
            raise ConfigError("--preset paper needs --data-root DIR (its layout: docs/data.md)")
        self.root = Path(data_root)
        self.model_root = model_root

    def model_names(self) -> list[str]:
        return list(PAPER_MODELS)

    def model(self, name: str) -> ModelSpec:
        return resolve_model(name, self.model_root)

    def run_config(self, model: str, *, recipe: str = "continual", tasks=SRIVASTAVA_TASKS,
                   study: str = "study") -> RunConfig:
        return paper_run_config(model, "naive", 0, self.root, recipe=recipe, tasks=tuple(tasks),
                                workers=self.workers, out=self.out, model_root=self.model_root,
                                study=study, vl_max_samples=self.vl_max_samples(SLIM_SAMPLES))

    def instruct_start(self, model: str) -> InstructStart:
        """The public llava-hf LLaVA-1.5 of `model` (LLAVA_HF; with --model-root, the dir
        named like its hub id there), prompted with the model's template (vicuna_v1)."""
        self.model(model)  # an unknown model name fails first
        if model not in LLAVA_HF:
            return super().instruct_start(model)
        hub = LLAVA_HF[model]
        init = str(Path(self.model_root) / hub.split("/")[-1]) if self.model_root else hub
        return InstructStart(init, f"{init}: the public instruction-tuned LLaVA-1.5 of {model} "
                                   "(llava-hf layout; loaded when the runs start)")

    def task(self, name: str, kind: str, *, train: str | None = None, test: str | None = None,
             max_new_tokens: int | None = None) -> TaskSpec:
        if not train or not test:
            raise ConfigError(f"paper task {name!r} needs its train and test paths under the data root")
        images = str(self.root / "images")
        extra = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        return TaskSpec(name=name, train=[DataSource(path=str(self.root / train), image_root=images)],
                        eval=[EvalSet(name=name, path=str(self.root / test), image_root=images,
                                      kind=kind, max_samples=self.vl_max_samples(None), **extra)])

    def emt_sets(self) -> tuple[str, ...]:
        return EMT_SETS

    def coin_tasks(self) -> dict[str, str | None]:
        return {n: n for n in COIN_TASKS}

    def coin_task(self, name: str) -> TaskSpec:
        """A CoIN task (COIN_TASKS) from <root>/Instructions/<name>/, scored by its kind."""
        return self.task(name, COIN_TASKS[name], train=f"Instructions/{name}/train.json",
                         test=f"Instructions/{name}/test.json")

    def data(self, rel: str) -> DataSource:
        """A training source under the data root (images under <root>/images)."""
        return DataSource(path=str(self.root / rel), image_root=str(self.root / "images"))
