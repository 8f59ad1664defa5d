"""One step of a continual run on one worker: load → method hooks → train → save.

`run_step` is what every worker executes, in-process (`LocalBackend`) or inside a Ray
Train `TorchTrainer` (`train/ray_trainer.py`). It loads the previous step's checkpoint
(or builds the model from the spec), lets the CL methods prepare the model and the data,
trains one stage, runs the methods' end-of-task hooks and writes the step's checkpoint
atomically (a temp dir renamed into place), so a crash never leaves half a checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import DataSource, RunConfig, StageConfig, from_dict
from ..data.collate import Collator
from ..data.tokenized import TokenizedDataset, build_tokenized
from ..methods.base import MethodStack, TaskContext, build_methods
from ..models.build import MLLM, build_mllm, load_mllm, save_mllm
from .. import scale as scale_rules
from .checkpoint import POSITION_FILE, atomic_dir
from .loop import StageResult, train_stage
from .module import MLLMForTraining
from .strategies.base import Strategy, get_strategy


@dataclass
class StepPlan:
    """One step of a run: a stage of a task."""

    key: str  # unique, sortable: "02-align", "02-instruct", "03-vqa", ...
    task_index: int  # k
    task_name: str
    stage: str  # "align" or "finetune"
    sources: list[DataSource] = field(default_factory=list)
    evaluate: bool = True  # evaluate after this step
    previous_tasks: list[str] = field(default_factory=list)  # finished VL tasks (sources known)
    previous_sources: dict[str, list[DataSource]] = field(default_factory=dict)


def plan_steps(cfg: RunConfig) -> list[StepPlan]:
    """The run's steps: alignment, then VL tasks one by one (continual) or mixed (llava)."""
    steps: list[StepPlan] = []
    first = cfg.tasks[0].name if cfg.tasks else "mixture"
    if cfg.align:
        steps.append(StepPlan("02-align", 2, first if cfg.recipe == "continual" else "llava",
                              "align", list(cfg.align), evaluate=cfg.eval.zero_shot))
    if cfg.recipe == "llava":
        sources = [s for t in cfg.tasks for s in t.train]
        steps.append(StepPlan("02-llava", 2, "llava", "finetune", sources))
        return steps
    if cfg.recipe != "continual":
        from ..config import ConfigError

        raise ConfigError(f"recipe {cfg.recipe!r} must be 'continual' or 'llava'")
    prev: dict[str, list[DataSource]] = {}
    for i, task in enumerate(cfg.tasks):
        k = i + 2
        steps.append(StepPlan(f"{k:02d}-{task.name}", k, task.name, "finetune", list(task.train),
                              previous_tasks=list(prev), previous_sources=dict(prev)))
        prev[task.name] = list(task.train)
    return steps


def tokenized_sources(mllm: MLLM, sources: list[DataSource], cfg: RunConfig, cache_dir: Path,
                      template=None, stats: list | None = None) -> TokenizedDataset:
    return build_tokenized(sources, mllm.tokenizer, template or mllm.template,
                           n_image_tokens=mllm.n_image_tokens, max_len=mllm.spec.max_seq_len,
                           seed=cfg.seed, cache_dir=cache_dir, stats=stats)


def check_step_data(step: StepPlan, data: TokenizedDataset, stats: list) -> dict:
    """The step's read counts (for the summary / run_state.json); skips are printed, and a
    step left without records is a DataError before any training."""
    skipped = sum(st.skipped_missing_image for st in stats)
    if skipped:
        print(f"[{step.key}] " + "; ".join(st.summary() for st in stats if st.skipped_missing_image))
    if len(data) == 0:
        from ..errors import DataError

        what = "; ".join(st.summary() for st in stats) or "no sources"
        raise DataError(f"step {step.key}: no training records ({what}); fix the data files "
                        "or their image paths (missing_image: skip skipped them all)"
                        if skipped else f"step {step.key}: no training records ({what}); give "
                        "the task a non-empty training file")
    return {"records_seen": sum(st.seen for st in stats), "records_kept": len(data),
            "skipped_missing_image": skipped,
            "skipped_ids": [i for st in stats for i in st.skipped_ids][:10]}


def load_step_model(cfg: RunConfig, prev_checkpoint: str | None, methods: MethodStack) -> MLLM:
    if prev_checkpoint is None:
        return build_mllm(cfg.model)
    model_dir = Path(prev_checkpoint) / "model"
    loaded = methods.load_model(model_dir, cfg.model)
    return loaded if loaded is not None else load_mllm(model_dir, cfg.model)


def resolve_lr(stage: StageConfig, mllm: MLLM, stage_name: str) -> float:
    if stage.lr_rule == "fixed":
        return stage.lr
    if stage.lr_rule == "scaled":
        from ..models.build import llm_parameter_count

        return scale_rules.stage_lr(stage_name, llm_parameter_count(mllm.model))
    from ..config import ConfigError

    raise ConfigError(f"stages.{stage_name}.lr_rule {stage.lr_rule!r} must be 'fixed' or 'scaled'")


def run_step(cfg: RunConfig, step: StepPlan, prev_checkpoint: str | None, out_dir: str | Path,
             *, strategy: Strategy | None = None, report: Callable[[dict], None] | None = None,
             cache_dir: str | Path | None = None, resume_state: dict | None = None,
             mid_checkpoint: Callable[[int, dict, MLLM, MethodStack], None] | None = None,
             feature_cache_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Run one step; returns a summary dict. Rank 0 writes the checkpoint at `out_dir`."""
    torch.manual_seed(cfg.seed + step.task_index)
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir or Path(cfg.output_dir) / "cache")
    stage = cfg.stages.align if step.stage == "align" else cfg.stages.finetune
    strategy = strategy or get_strategy("none")
    methods = build_methods(cfg.method)
    if prev_checkpoint:
        methods.load_state(Path(prev_checkpoint) / "method_state")
    mllm = load_step_model(cfg, prev_checkpoint, methods)
    ctx = TaskContext(task_index=step.task_index, task_name=step.task_name, stage=step.stage,
                      seed=cfg.seed, prev_checkpoint=prev_checkpoint,
                      previous_tasks=list(step.previous_tasks), device=strategy.device,
                      world_size=strategy.world_size, rank=strategy.rank)
    template = None
    if step.stage == "align":
        from ..models.templates import get_template

        template = get_template("plain")
        from ..models.build import set_trainable

        set_trainable(mllm.model, stage.train)  # alignment: projector only, for every method
    else:
        methods.prepare_model(mllm, ctx)
    read_stats: list = []
    data = tokenized_sources(mllm, step.sources, cfg, cache_dir, template, stats=read_stats)
    data_counts = check_step_data(step, data, read_stats)
    ctx.previous_data = {name: tokenized_sources(mllm, srcs, cfg, cache_dir)
                         for name, srcs in step.previous_sources.items()}
    datasets = [data] if step.stage == "align" else methods.train_data([data], ctx)
    dataset = datasets[0] if len(datasets) == 1 else torch.utils.data.ConcatDataset(datasets)
    features = None
    if feature_cache_dir is not None:
        from ..data.feature_cache import FeatureCache

        features = FeatureCache(feature_cache_dir, mllm)
        paths = sorted(set().union(*[set(d.image_paths()) for d in _leaves(datasets)]))
        features.precompute(paths, strategy.rank, strategy.world_size)
        strategy.barrier()
        features.refresh()
    collate = Collator(mllm.tokenizer.pad_token_id, mllm.image_processor,
                       load_pixels=features is None)
    ctx.collate = collate
    module = strategy.wrap(MLLMForTraining(mllm.model))
    if step.stage != "align":
        methods.before_training(module, ctx)
    if (resume_state or {}).get("model_state") is not None:  # mid-task resume: its weights
        strategy.load_model_state(module, resume_state["model_state"])
    lr = resolve_lr(stage, mllm, step.stage)

    def _mid(done, opt_state):
        if mid_checkpoint is not None:
            mid_checkpoint(done, opt_state, mllm, methods)

    start_step = (resume_state or {}).get("step", 0)
    result: StageResult = train_stage(
        module, dataset, stage, methods if step.stage != "align" else MethodStack([]), strategy,
        ctx, collate, lr=lr, seed=cfg.seed * 1000 + step.task_index, stage_name=step.stage,
        start_step=start_step, optimizer_state=(resume_state or {}).get("optimizer_state"),
        log_every=cfg.trainer.log_every, report=report,
        checkpoint_every=cfg.trainer.checkpoint_every, checkpoint=_mid, features=features,
        progress=progress)
    strategy.gather_into(module, mllm) if hasattr(strategy, "gather_into") else None
    summary = {"key": step.key, "task_index": step.task_index, "task": step.task_name,
               "stage": step.stage, "steps": result.steps, "total_steps": result.total_steps,
               "first_loss": result.losses[0] if result.losses else None,
               "last_loss": result.losses[-1] if result.losses else None,
               "losses": result.losses, "samples": len(dataset), "lr": lr,
               "tokens_per_s": result.tokens_per_s, "seconds": result.seconds, **data_counts}
    if strategy.rank == 0:
        mllm.model.eval()
        if step.stage != "align":
            methods.finish_task(mllm, ctx)
        save_checkpoint(mllm, methods, out_dir, {**summary, "complete": True})
    strategy.barrier()
    return summary


def _leaves(datasets) -> list:
    out = []
    for d in datasets:
        if isinstance(d, torch.utils.data.ConcatDataset):
            out.extend(_leaves(d.datasets))
        elif hasattr(d, "image_paths"):
            out.append(d)
        elif hasattr(d, "dataset"):  # Subset
            out.extend(_leaves([d.dataset]))
    return out


def save_checkpoint(mllm: MLLM, methods: MethodStack, out_dir: Path, position: dict) -> Path:
    """Write model + method state + position into `out_dir` atomically."""
    with atomic_dir(out_dir) as tmp:
        model_dir = tmp / "model"
        if not methods.save_model(mllm, model_dir):
            save_mllm(mllm, model_dir)
        methods.save_state(tmp / "method_state")
        (tmp / POSITION_FILE).write_text(json.dumps(position, indent=1, default=str))
    return out_dir
