"""Study building blocks shared by `studies/*.py` and the `mllmcl` CLI.

- `prepare_micro`: the micro world + its base models (tokenizer, GPT-NeoX LLMs per size,
  CLIP), generated/pretrained once and cached.
- `micro_run_config` / `paper_run_config`: RunConfigs for a model, a method and a seed.
- `run_and_evaluate`: one continual run, evaluated after every task into the Parquet
  result store (a rerun resumes and skips finished work and existing rows).
- `load_run_config` / `validate_run_config`: YAML + `--set` overrides, strict.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import (
    ConfigError,
    DataSource,
    EvalSet,
    MethodConfig,
    ModelSpec,
    RunConfig,
    StageConfig,
    StagesConfig,
    TaskSpec,
    TrainerConfig,
    from_dict,
    load_yaml,
    parse_override,
    set_dotted,
    to_dict,
)

# Srivastava Table 4: instruct, VQA, OCR, referential grounding (tasks 2..5).
SRIVASTAVA_TASKS = ("instruct", "vqa", "ocr", "grounding")


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
            return self.manifest["vl_tasks"][name]
        except KeyError:
            raise ConfigError(f"micro world has no VL task {name!r}; it has "
                              f"{sorted(self.manifest['vl_tasks'])}") from None


def _world_path(world_dir: Path, rel: str) -> str:
    p = Path(rel)
    return str(p if p.is_absolute() else world_dir / p)


def prepare_micro(out: Path, sizes: list[str] | tuple[str, ...] = ("micro-s",), seed: int = 0,
                  world_size: str = "micro", clip_size: str = "micro", progress: bool = True,
                  log=print) -> MicroPrep:
    """Generate the world and pretrain (or reuse) the base models; returns MLLM specs."""
    from .data.micro import pretrain as P
    from .data.micro.world import generate_world

    out = Path(out)
    cache = out / "bases"
    world_dir = out / f"world-{world_size}-s{seed}"
    generate_world(world_dir, seed=seed, size=world_size)
    manifest = json.loads((world_dir / "manifest.json").read_text())
    key = f"{manifest.get('content_hash', 'nohash')[:12]}"
    tok_dir = cache / f"tokenizer-{key}"
    vl_jsons = [Path(_world_path(world_dir, t["train"])) for t in manifest["vl_tasks"].values()]
    corpus = Path(_world_path(world_dir, manifest["corpus"]["train"]))
    if not (tok_dir / "tokenizer.json").exists():
        log(f"training the micro tokenizer → {tok_dir}")
        P.train_tokenizer(corpus, vl_jsons, tok_dir)
    from .models.tokenizers import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    skill: dict[str, dict] = {}
    csize = P.CLIP_SIZES[clip_size]
    clip_dir = cache / f"clip-{clip_size}-{key}"
    caption_json = Path(_world_path(world_dir, manifest["vl_tasks"]["caption"]["train"]))
    if not (clip_dir / "config.json").exists():
        log(f"pretraining the micro CLIP ({clip_size}) → {clip_dir}")
        info = P.pretrain_clip(tok, caption_json, csize, clip_dir, seed=seed, progress=progress)
        info.update(P.clip_retrieval_accuracy(
            clip_dir, Path(_world_path(world_dir, manifest["vl_tasks"]["caption"]["test"]))))
        (clip_dir / "skill.json").write_text(json.dumps(info, indent=1))
    skill["clip"] = json.loads((clip_dir / "skill.json").read_text())
    specs: dict[str, ModelSpec] = {}
    for size_name in sizes:
        if size_name not in P.LLM_SIZES:
            raise ConfigError(f"unknown micro LLM size {size_name!r}; known: {sorted(P.LLM_SIZES)}")
        size = P.LLM_SIZES[size_name]
        llm_dir = cache / f"llm-{size_name}-{key}"
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
    return [EvalSet(name=name, path=_world_path(world_dir, d["path"]), kind=d["kind"],
                    max_samples=max_samples)
            for name, d in manifest["nl"].items()]


def base_nl_skill(llm_dir: Path, world_dir: Path, manifest: dict) -> dict:
    """NL-suite accuracy of a pretrained micro LLM (text only), with chance levels."""
    from .eval.engine.hf import HFEngine
    from .eval.suites.nl import run_nl_set

    engine = HFEngine(str(llm_dir), batch_size=32, device="cpu")
    out = {}
    for s in nl_sets_from_manifest(world_dir, manifest, max_samples=300):
        res = run_nl_set(engine, s, max_samples=300, seed=0)
        out[f"{s.name}_acc"] = float(res.metrics["accuracy"])
    return out


# ---------------------------------------------------------------------------------------
# run configs
# ---------------------------------------------------------------------------------------
def micro_stages() -> StagesConfig:
    """The LLaVA recipe's stages at micro scale: the papers' schedules and lrs, with the
    fine-tune lr following the scale rule (scale.finetune_lr) and small global batches."""
    return StagesConfig(
        align=StageConfig(lr=1e-3, warmup_ratio=0.03, global_batch_size=32, per_device_batch_size=16,
                          train="projector", parallel="shard_grad_op", epochs=1.0),
        finetune=StageConfig(lr=1e-4, lr_rule="scaled", warmup_ratio=0.03, global_batch_size=32,
                             per_device_batch_size=16, parallel="full_shard", epochs=1.0))


def micro_run_config(prep: MicroPrep, size: str, method: str = "naive", seed: int = 0, *,
                     tasks: tuple[str, ...] | list[str] = SRIVASTAVA_TASKS, recipe: str = "continual",
                     out: str | Path = "runs/micro", method_params: dict | None = None,
                     workers: int = 0, study: str = "micro", max_train: int | None = None,
                     eval_samples: int | None = 200) -> RunConfig:
    w = prep.world_dir
    task_specs = []
    for t in tasks:
        d = prep.vl_task(t)
        evals = [] if t == "instruct" else [EvalSet(
            name=t, path=_world_path(w, d["test"]), kind=d["kind"], max_samples=eval_samples,
            max_new_tokens=d.get("max_new_tokens", 16))]
        task_specs.append(TaskSpec(name=t, train=[DataSource(path=_world_path(w, d["train"]))],
                                   eval=evals))
    cap = prep.vl_task("caption")
    return RunConfig(
        name=f"{study}-{size}-{method.replace('+', '_')}-s{seed}", seed=seed, recipe=recipe,
        model=prep.specs[size], stages=micro_stages(),
        align=[DataSource(path=_world_path(w, cap["train"]))], tasks=task_specs,
        method=MethodConfig(name=method, params=dict(method_params or {})),
        trainer=TrainerConfig(num_workers=workers, log_every=10),
        output_dir=str(out), nl_sets=nl_sets_from_manifest(w, prep.manifest, eval_samples))


def load_run_config(path: str | Path, sets: list[str] | None = None) -> RunConfig:
    data = load_yaml(path)
    for s in sets or []:
        k, v = parse_override(s)
        set_dotted(data, k, v)
    return from_dict(RunConfig, data)


def validate_run_config(cfg: RunConfig, check_paths: bool = True) -> list[str]:
    """Check a config without downloading anything; returns a list of findings (raises on
    errors): methods exist and take their params, batch sizes are reachable for the worker
    count, strategies exist, data files and local model dirs exist."""
    from .methods.base import build_methods
    from .models.families import get_family
    from .models.templates import get_template
    from .train.schedule import accumulation_steps
    from .train.strategies.base import check_strategy_name

    notes = []
    build_methods(cfg.method)
    get_family(cfg.model.family)
    get_template(cfg.model.template)
    world = max(1, cfg.trainer.num_workers)
    for name in ("align", "finetune"):
        st = getattr(cfg.stages, name)
        acc = accumulation_steps(st, world, name)
        check_strategy_name(st.parallel)
        notes.append(f"stages.{name}: global batch {st.global_batch_size} = {st.per_device_batch_size}"
                     f" × {world} worker(s) × {acc} accumulation step(s)")
    if not cfg.tasks:
        raise ConfigError("tasks is empty: a run needs at least one VL task")
    for label, ref in (("model.llm", cfg.model.llm), ("model.vision", cfg.model.vision),
                       ("model.tokenizer", cfg.model.tokenizer)):
        if ref:
            local = Path(ref).exists()
            notes.append(f"{label}: {ref} ({'local dir' if local else 'hub id: fetched at run time'})")
    if check_paths:
        missing = []
        for src in cfg.align + [s for t in cfg.tasks for s in t.train]:
            if not Path(src.path).exists():
                missing.append(src.path)
        for es in cfg.nl_sets + [e for t in cfg.tasks for e in t.eval]:
            if not Path(es.path).exists():
                missing.append(es.path)
        if missing:
            notes.append(f"MISSING data files ({len(missing)}): " + ", ".join(missing[:5]) +
                         (" …" if len(missing) > 5 else ""))
    return notes
