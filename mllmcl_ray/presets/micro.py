"""The micro preset: the synthetic world and the base models made on this machine.

- `prepare_micro`: the micro world + its base models (tokenizer, GPT-NeoX LLMs per size,
  CLIP; pretraining in `micro_pretrain.py`), generated/pretrained once and cached.
- `micro_run_config`: Srivastava's run on the micro world for a model, a method, a seed.
- `MicroPreset`: the `Preset` the studies use (models by size name, world tasks).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import (ConfigError, DataSource, EvalSet, MethodConfig, ModelSpec, RunConfig,
                      StageConfig, StagesConfig, TaskSpec, TrainerConfig)
from ..runner import quiet_libraries
from .base import SRIVASTAVA_TASKS, InstructStart, Preset

# the micro world's analogues of CoIN's tasks, in the order of the tasks they stand for:
# name -> (eval kind, CoIN task whose App. H templates rewrite its prompts, None: kept).
# instruct: ScienceQA's slot (its option-letter templates do not fit); digits: a second
# classification set (VizWiz, VQAv2 and OCR-VQA have no new micro analogue).
COIN_TASKS = {"instruct": ("exact", None), "ocr": ("exact", "TextVQA"), "shapes": ("exact", "ImageNet"),
              "vqa": ("vqa_norm", "GQA"), "grounding": ("grounding", "Grounding"), "digits": ("exact", "ImageNet")}
EMT_SETS = ("digits", "shapes")  # EMT's classification sets: digits ~ MNIST, shapes ~ CIFAR
MICRO_EVAL_SAMPLES = 200  # samples per eval set on the micro world (--eval-samples overrides)


# ---------------------------------------------------------------------------------------
# the micro world and its base models
# ---------------------------------------------------------------------------------------
@dataclass
class MicroPrep:
    world_dir: Path
    manifest: dict  # manifest.json of the world
    specs: dict[str, ModelSpec]  # LLM size name -> ModelSpec of the MLLM built from the bases
    skill: dict = field(default_factory=dict)  # base-model skill figures

    def skill_text(self) -> str:
        lines = []
        for k, v in self.skill.items():
            lines.append(f"  {k}: " + ", ".join(f"{a}={b:.3f}" if isinstance(b, float) else f"{a}={b}"
                                               for a, b in v.items()))
        return "base models:\n" + "\n".join(lines)

    def vl_task(self, name: str) -> dict:
        try:
            return self.manifest["vl"][name]
        except KeyError:
            raise ConfigError(f"micro world has no VL task {name!r}; it has "
                              f"{sorted(self.manifest['vl'])}") from None


def _world_path(world_dir: Path, rel: str) -> str:
    p = Path(rel)
    return str(p if p.is_absolute() else world_dir / p)


def prepare_micro(out: Path, sizes: list[str] | tuple[str, ...] = ("micro-s",), seed: int = 0,
                  world_size: str = "micro", clip_size: str | None = None, progress: bool = True,
                  log=print) -> MicroPrep:
    """Generate the world and pretrain (or reuse) the base models; returns MLLM specs.

    `clip_size` defaults to "nano" for the tiny world (smoke runs) and "micro" otherwise."""
    clip_size = clip_size or ("nano" if world_size == "tiny" else "micro")
    from ..data.micro.world import generate_world
    from . import micro_pretrain as P

    quiet_libraries()
    out = Path(out)
    cache = out / "bases"
    world_dir = out / f"world-{world_size}-s{seed}"
    generate_world(world_dir, seed=seed, size=world_size)
    manifest = json.loads((world_dir / "manifest.json").read_text())
    key = f"{manifest.get('content_hash', 'nohash')[:12]}"
    tok_dir = cache / f"tokenizer-{key}"
    vl_jsons = [Path(_world_path(world_dir, t["train"])) for t in manifest["vl"].values()]
    corpus = Path(_world_path(world_dir, manifest["corpus"]["train"]))
    if not (tok_dir / "tokenizer.json").exists():
        log(f"training the micro tokenizer → {tok_dir}")
        P.train_tokenizer(corpus, vl_jsons, tok_dir)
    from ..models.tokenizers import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    skill: dict[str, dict] = {}
    csize = P.CLIP_SIZES[clip_size]
    clip_dir = cache / f"clip-{clip_size}-{key}-d{P.CLIP_DATA_VERSION}-{P.settings_key(csize)}"
    caption_json = Path(_world_path(world_dir, manifest["vl"]["caption"]["train"]))
    if not (clip_dir / "config.json").exists():
        log(f"pretraining the micro CLIP ({clip_size}) → {clip_dir}")
        images = Path(_world_path(world_dir, manifest["images_dir"]))
        ocr = manifest["vl"].get("ocr")
        pairs = P.clip_pairs(caption_json, Path(_world_path(world_dir, ocr["train"]))
                             if ocr else None, images,
                             Path(_world_path(world_dir, manifest["scenes"])))
        info = P.pretrain_clip(tok, pairs, csize, clip_dir, seed=seed, progress=progress)
        info.update(P.clip_retrieval_accuracy(
            clip_dir, Path(_world_path(world_dir, manifest["vl"]["caption"]["test"])), images))
        if ocr:
            info.update(P.clip_ocr_accuracy(clip_dir, Path(_world_path(world_dir, ocr["test"])),
                                            images))
        (clip_dir / "skill.json").write_text(json.dumps(info, indent=1))
    skill["clip"] = json.loads((clip_dir / "skill.json").read_text())
    specs: dict[str, ModelSpec] = {}
    for size_name in sizes:
        if size_name not in P.LLM_SIZES:
            raise ConfigError(f"unknown micro LLM size {size_name!r}; known: {sorted(P.LLM_SIZES)}")
        size = P.LLM_SIZES[size_name]
        llm_dir = cache / f"llm-{size_name}-{key}-{P.settings_key(size)}"
        if not (llm_dir / "config.json").exists():
            log(f"pretraining the micro LLM {size_name} → {llm_dir}")
            info = P.pretrain_llm(tok, corpus, size, llm_dir, seed=seed, progress=progress)
            info.update(base_nl_skill(llm_dir, world_dir, manifest))
            (llm_dir / "skill.json").write_text(json.dumps(info, indent=1))
        skill[size_name] = json.loads((llm_dir / "skill.json").read_text())
        specs[size_name] = ModelSpec(
            name=size_name, family="gpt_neox", llm=str(llm_dir), vision=str(clip_dir),
            tokenizer=str(tok_dir), template="micro", max_seq_len=256,
            scale=float(skill[size_name]["params"]))
    return MicroPrep(world_dir, manifest, specs, skill)


def nl_sets_from_manifest(world_dir: Path, manifest: dict, max_samples: int | None = None
                          ) -> list[EvalSet]:
    return [EvalSet(name=name, path=_world_path(world_dir, d["path"]), kind=name,
                    max_samples=max_samples)
            for name, d in manifest["nl"].items()]


def base_nl_skill(llm_dir: Path, world_dir: Path, manifest: dict) -> dict:
    """NL-suite accuracy of a pretrained micro LLM (text only), with chance levels."""
    from ..eval.engine.hf import HFEngine
    from ..eval.suites.nl import run_nl_set

    engine = HFEngine(str(llm_dir), batch_size=32, device="cpu")
    out = {}
    for s in nl_sets_from_manifest(world_dir, manifest, max_samples=300):
        res = run_nl_set(engine, s, max_samples=300, seed=0)
        out[f"{s.name}_acc"] = float(res.metrics["accuracy"])
    return out


# ---------------------------------------------------------------------------------------
# run configs
# ---------------------------------------------------------------------------------------
# Passes over each micro VL task in the continual recipe. The paper's tasks hold 48K–558K
# records and are trained once; a micro task holds 3,000, and is learned (≥ 0.5 right after
# its own training) only after several passes: OCR (reading words through the frozen micro
# CLIP) is the slowest, 0.50 at 5 passes and 0.65 at 8 (VQA → OCR probes, seed 0;
# calibration in the README). The LLaVA recipe's mixture keeps one pass, as in the paper.
MICRO_TASK_EPOCHS = 8.0


def micro_stages() -> StagesConfig:
    """The LLaVA recipe's stages at micro scale: the papers' schedules and lrs, with the
    fine-tune lr following the scale rule (scale.finetune_lr) and small global batches;
    each continual task is trained for MICRO_TASK_EPOCHS passes."""
    return StagesConfig(
        align=StageConfig(lr=1e-3, warmup_ratio=0.03, global_batch_size=32, per_device_batch_size=16,
                          train="projector", parallel="shard_grad_op", epochs=1.0),
        finetune=StageConfig(lr=1e-4, lr_rule="scaled", warmup_ratio=0.03, global_batch_size=32,
                             per_device_batch_size=16, parallel="full_shard", epochs=1.0,
                             task_epochs=MICRO_TASK_EPOCHS))


def micro_run_config(prep: MicroPrep, size: str, method: str = "naive", seed: int = 0, *,
                     tasks: tuple[str, ...] | list[str] = SRIVASTAVA_TASKS, recipe: str = "continual",
                     out: str | Path = "runs/micro", method_params: dict | None = None,
                     workers: int = 0, study: str = "micro", max_train: int | None = None,
                     eval_samples: int | None = 200) -> RunConfig:
    w = prep.world_dir
    images = _world_path(w, prep.manifest["images_dir"])
    task_specs = []
    for t in tasks:
        d = prep.vl_task(t)
        evals = [] if t == "instruct" else [EvalSet(
            name=t, path=_world_path(w, d["test"]), image_root=images, kind=d["eval"],
            max_samples=eval_samples,
            max_new_tokens=d.get("max_new_tokens", 16))]
        task_specs.append(TaskSpec(name=t, train=[DataSource(path=_world_path(w, d["train"]),
                                                             image_root=images)],
                                   eval=evals))
    cap = prep.vl_task("caption")
    return RunConfig(
        name=f"{study}-{size}-{method.replace('+', '_')}-s{seed}", seed=seed, recipe=recipe,
        model=copy.deepcopy(prep.specs[size]), stages=micro_stages(),
        align=[DataSource(path=_world_path(w, cap["train"]), image_root=images)], tasks=task_specs,
        method=MethodConfig(name=method, params=dict(method_params or {})),
        trainer=TrainerConfig(num_workers=workers, log_every=10),
        output_dir=str(out), nl_sets=nl_sets_from_manifest(w, prep.manifest, eval_samples))


LLAVA_START_STUDY = "llava-start"  # run name prefix of the instruction-tuned starts (EMT)


def llava_start(cfg: RunConfig) -> InstructStart:
    """The instruction-tuned MLLM the LLaVA-recipe run `cfg` makes: the model of its last
    step's checkpoint, under ``<output_dir>/runs/<run id>/``. The run id hashes everything
    that changes what is learned (base model, world data, stages, seed), so a rerun finds
    the same checkpoint and a changed setting makes a new one."""
    from ..train.continual import ContinualRun
    from ..train.task import plan_steps

    run = ContinualRun(cfg)
    model_dir = run.checkpoint_dir(plan_steps(cfg)[-1]) / "model"
    tasks = ", ".join(t.name for t in cfg.tasks)
    align = ", ".join(f"{Path(a.path).parent.name}/{Path(a.path).name}" for a in cfg.align) or "nothing"
    return InstructStart(str(model_dir), f"{model_dir}: {cfg.model.name} after the LLaVA recipe "
                         f"(alignment on {align}, then one instruction fine-tune on {tasks}), "
                         "made here once and reused", recipe=cfg)


class MicroPreset(Preset):
    """The micro world on this machine: models are micro LLM sizes (micro_pretrain.LLM_SIZES)
    pretrained here once and cached under <out>/bases; tasks are the world's VL tasks."""

    name = "micro"
    default_workers = 0

    def __init__(self, *, world_size: str = "micro", seed: int = 0, **kw):
        super().__init__(**kw)
        self.world_size = world_size
        self.seed = seed
        self.prep: MicroPrep | None = None

    def model_names(self) -> list[str]:
        from .micro_pretrain import LLM_SIZES

        return list(LLM_SIZES)

    def prepare(self, names: list[str]) -> MicroPrep:
        """The world and the base models `names` (checked first, then made or reused)."""
        known = self.model_names()
        bad = [n for n in names if n not in known]
        if bad:
            raise ConfigError(f"unknown micro model(s) {', '.join(bad)}; known: {', '.join(known)}")
        have = set(self.prep.specs) if self.prep else set()
        if self.prep is None or not set(names) <= have:
            sizes = list(dict.fromkeys([*have, *names]))
            self.prep = prepare_micro(Path(self.out), sizes=sizes, seed=self.seed,
                                      world_size=self.world_size, progress=self.progress, log=self.log)
            self.log(self.prep.skill_text())
        return self.prep

    def model(self, name: str) -> ModelSpec:
        return self.prepare([name]).specs[name]

    def models(self, names: list[str]) -> list[ModelSpec]:
        prep = self.prepare(list(names))
        return [prep.specs[n] for n in names]

    def run_config(self, model: str, *, recipe: str = "continual", tasks=SRIVASTAVA_TASKS,
                   study: str = "study") -> RunConfig:
        return micro_run_config(self.prepare([model]), model, "naive", 0, tasks=list(tasks),
                                recipe=recipe, out=self.out, workers=self.workers, study=study,
                                eval_samples=self.vl_max_samples(MICRO_EVAL_SAMPLES))

    def instruct_start(self, model: str) -> InstructStart:
        """The LLaVA recipe's output for `model` on this world (`llava_start`): alignment
        on the caption task, then one fine-tune on the world's ``instruct`` task; seed 0,
        no evaluation (no NL suite: its sizes stay out of the run's key)."""
        cfg = self.run_config(model, recipe="llava", tasks=["instruct"], study=LLAVA_START_STUDY)
        cfg.nl_sets = []
        return llava_start(cfg)

    def emt_sets(self) -> tuple[str, ...]:
        return EMT_SETS

    def coin_tasks(self) -> dict[str, str | None]:
        return {n: t for n, (_, t) in COIN_TASKS.items()}

    def coin_task(self, name: str) -> TaskSpec:
        """The world task standing in for a CoIN task (COIN_TASKS)."""
        return self.task(name, COIN_TASKS[name][0])

    def task(self, name: str, kind: str, *, train: str | None = None, test: str | None = None,
             max_new_tokens: int | None = None) -> TaskSpec:
        prep = self.prep or self.prepare([])
        w, d = prep.world_dir, prep.vl_task(name)
        images = _world_path(w, prep.manifest["images_dir"])
        return TaskSpec(name=name, train=[DataSource(path=_world_path(w, d["train"]), image_root=images)],
                        eval=[EvalSet(name=name, path=_world_path(w, d["test"]), image_root=images,
                                      kind=kind, max_samples=self.vl_max_samples(MICRO_EVAL_SAMPLES),
                                      max_new_tokens=max_new_tokens or d.get("max_new_tokens", 16))])
