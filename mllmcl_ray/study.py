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
from dataclasses import dataclass, field
from pathlib import Path

from .config import (
    ConfigError,
    apply_sets,
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
from .runner import quiet_libraries, results_dir, run_and_evaluate
from .validate import validate_run_config

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
    from .data.micro import pretrain as P
    from .data.micro.world import generate_world

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
    from .models.tokenizers import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    skill: dict[str, dict] = {}
    csize = P.CLIP_SIZES[clip_size]
    clip_dir = cache / f"clip-{clip_size}-{key}"
    caption_json = Path(_world_path(world_dir, manifest["vl"]["caption"]["train"]))
    if not (clip_dir / "config.json").exists():
        log(f"pretraining the micro CLIP ({clip_size}) → {clip_dir}")
        images = Path(_world_path(world_dir, manifest["images_dir"]))
        info = P.pretrain_clip(tok, caption_json, images, csize, clip_dir, seed=seed,
                               progress=progress)
        info.update(P.clip_retrieval_accuracy(
            clip_dir, Path(_world_path(world_dir, manifest["vl"]["caption"]["test"])), images))
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
    return [EvalSet(name=name, path=_world_path(world_dir, d["path"]), kind=name,
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
        model=prep.specs[size], stages=micro_stages(),
        align=[DataSource(path=_world_path(w, cap["train"]), image_root=images)], tasks=task_specs,
        method=MethodConfig(name=method, params=dict(method_params or {})),
        trainer=TrainerConfig(num_workers=workers, log_every=10),
        output_dir=str(out), nl_sets=nl_sets_from_manifest(w, prep.manifest, eval_samples))


def load_run_config(path: str | Path, sets: list[str] | None = None) -> RunConfig:
    data = load_yaml(path)
    apply_sets(data, sets or [], log=print)  # explicit --set values win over derived rules
    return from_dict(RunConfig, data)


def micro_quickstart(out: Path, method: str = "naive", seed: int = 0, size: str = "micro-s",
                     tasks: str = ",".join(SRIVASTAVA_TASKS), workers: int = 0,
                     progress: bool = True, log=print) -> Path:
    """`mllmcl micro`: world → base models → one continual run → report."""
    import time

    from .report import build_report

    t0 = time.perf_counter()
    prep = prepare_micro(out, sizes=[size], seed=0, progress=progress, log=log)
    log(prep.skill_text())
    cfg = micro_run_config(prep, size, method, seed, tasks=[t for t in tasks.split(",") if t],
                           out=out, workers=workers, study="micro")
    run_and_evaluate(cfg, progress=progress, study="micro", log=log)
    report = build_report(results_dir(cfg), out / "report.html", title="mllmcl-ray micro run")
    log(f"done in {time.perf_counter() - t0:.0f} s; results: {results_dir(cfg)}")
    return report


# ---------------------------------------------------------------------------------------
# grids of runs
# ---------------------------------------------------------------------------------------
def expand_grid(space: dict[str, list]) -> list[dict]:
    """All combinations of a {dotted key: [values]} grid, in a stable order."""
    import itertools

    keys = list(space)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]


def apply_overrides(base: RunConfig, overrides: dict) -> RunConfig:
    data = to_dict(base)
    for k, v in overrides.items():
        set_dotted(data, k, v)
    return from_dict(RunConfig, data)


def run_study(base: RunConfig, space: dict[str, list], *, study: str, use_tune: bool = True,
              max_concurrent: int = 2, progress: bool = True, log=print) -> list[str]:
    """Run every combination of `space` over `base` (continual run + evaluation each).

    With `use_tune` the combinations are Ray Tune trials (sweep.run_sweep: each trial a
    driver function running its own continual run, `max_concurrent` at a time; restorable);
    without, they run one after another in this process. Returns run ids."""
    combos = expand_grid(space)
    for c in combos:  # validate every combination before spending compute
        apply_overrides(base, c)
    if use_tune and len(combos) > 1:
        from .sweep import SweepSpec, run_sweep

        spec = SweepSpec(space={k: list(v) for k, v in space.items()},
                         max_concurrent=max_concurrent)
        from .config import config_hash
        from .sweep import can_restore

        # one Tune experiment per (base config, grid): rerunning the same study restores it
        # (only unfinished trials run again); a changed grid starts a new experiment, and
        # finished runs are still skipped because run ids hash their configs.
        storage = str(Path(base.output_dir).resolve() / "tune")
        name = f"{study}-{config_hash({'base': to_dict(base), 'space': space})}"
        df = run_sweep(base, spec, storage_path=storage, name=name, study=study,
                       resume=can_restore(str(Path(storage) / name)))
        ids = df["run_id"].dropna().astype(str).tolist() if "run_id" in df else []
        return ids
    ids = []
    for i, c in enumerate(combos):
        log(f"=== {study}: run {i + 1}/{len(combos)}: {c}")
        ids.append(run_and_evaluate(apply_overrides(base, c), progress=progress, study=study,
                                    log=log))
    return ids


# ---------------------------------------------------------------------------------------
# the studies' shared command line
# ---------------------------------------------------------------------------------------
def study_arg_parser(doc: str, default_out: str):
    """argparse for a study script: preset, config override, --set, output, dry run."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["micro", "paper"], default=None,
                    help="micro: the synthetic world on this machine (default without a GPU); "
                         "paper: the papers' models and data (default with a GPU)")
    ap.add_argument("--config", default=None,
                    help="YAML mapping of RunConfig fields merged over the preset's base config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one base-config value (repeatable), e.g. --set stages.finetune.lr=1e-4")
    ap.add_argument("--out", default=default_out, help=f"output directory (default {default_out})")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds")
    ap.add_argument("--workers", type=int, default=None,
                    help="Ray Train workers per run (0: in-process loop; micro default 0, paper 8)")
    ap.add_argument("--max-concurrent", type=int, default=2,
                    help="runs (Ray Tune trials) at a time (default 2)")
    ap.add_argument("--no-tune", action="store_true", help="run the grid sequentially, without Ray Tune")
    ap.add_argument("--data-root", default=None, help="paper preset: data root (docs/data.md)")
    ap.add_argument("--model-root", default=None,
                    help="paper preset: directory of local model copies (default: hub ids)")
    ap.add_argument("--eval-samples", type=int, default=None,
                    help="samples per eval set (micro default 200, paper 1024)")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate every run config (models and data named, batches reachable) and stop")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def default_preset() -> str:
    try:
        import torch

        return "paper" if torch.cuda.is_available() else "micro"
    except Exception:  # pragma: no cover
        return "micro"


def apply_cli_overrides(base: RunConfig, args) -> RunConfig:
    data = to_dict(base)
    if args.config:
        from .config import _deep_update

        _deep_update(data, load_yaml(args.config), "")
    apply_sets(data, args.set, log=print)  # explicit --set values win over derived rules
    if args.workers is not None:
        data["trainer"]["num_workers"] = args.workers
    return from_dict(RunConfig, data)


def dry_run(base: RunConfig, space: dict[str, list], study: str, log=print) -> int:
    """Validate every run of a study without training or downloading.

    Returns the exit status for the study script: 0 when every run passes
    `validate_run_config`, 2 (the user-error status) when any fails; each failing run's
    error is printed as one line."""
    from .errors import USER_ERROR_EXIT, one_line

    combos = expand_grid(space)
    bad = 0
    for i, c in enumerate(combos):
        cfg = apply_overrides(base, c)
        try:
            notes = validate_run_config(cfg)
        except ConfigError as e:
            bad += 1
            log(f"[{study}] run {i + 1}/{len(combos)} {cfg.model.name} {cfg.method.name} seed "
                f"{cfg.seed}: ERROR {one_line(e)}")
            continue
        log(f"[{study}] run {i + 1}/{len(combos)} {cfg.model.name} {cfg.method.name} seed "
            f"{cfg.seed} recipe {cfg.recipe}: OK")
        for n in notes:
            log(f"    {n}")
    if bad:
        log(f"[{study}] {bad} of {len(combos)} run configs INVALID (see ERROR lines)")
        return USER_ERROR_EXIT
    log(f"[{study}] {len(combos)} run configs valid")
    return 0


def finish_study(base: RunConfig, study: str, log=print) -> Path:
    """Write the study's report from its Parquet results and print its path."""
    from .report import build_report

    out = Path(base.output_dir) / f"{study}-report.html"
    path = build_report(results_dir(base), out, title=f"mllmcl-ray: {study}")
    log(f"report: {path}")
    return path
