"""One step of a continual run on one worker: load → method hooks → train → save.

`run_step` is what every worker executes, in-process (`LocalBackend`) or inside a Ray
Train `TorchTrainer` (`train/ray_trainer.py`). It loads the previous step's checkpoint
(or builds the model from the spec), lets the CL methods prepare the model and the data,
trains one stage, runs the methods' end-of-task hooks and writes the step's checkpoint
atomically (a temp dir renamed into place), so a crash never leaves half a checkpoint.

What differs between the alignment step and a fine-tuning step is a `StagePath` (one per
stage name in `STAGES`): its stage config, its prompt template, how the model is
prepared and which method hooks train (methods sit out alignment). Everything else is
the common path in `run_step`. Around the steps, `TrainCallback`s (train/callbacks.py)
report, checkpoint mid-task and (`TaskSpec.eval_every_epoch`) write epoch checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Subset

from ..config import ConfigError, DataSource, RunConfig, StageConfig
from ..data.collate import Collator
from ..data.tokenized import TokenizedDataset, build_tokenized
from ..methods.base import ContinualMethod, MethodStack, TaskContext, build_methods
from ..models.build import MLLM, build_mllm, load_mllm, save_mllm, set_trainable
from ..models.templates import get_template
from ..models.training import MLLMForTraining
from .. import scale as scale_rules
from .callbacks import CallbackList, TrainCallback, TrainState
from .checkpoint import POSITION_FILE, atomic_dir, is_complete
from .loop import StageResult, epoch_end_steps, train_stage
from .schedule import num_optimizer_steps
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
    # the alignment captions trained earlier in this task (continual recipe, first VL task)
    align_sources: list[DataSource] = field(default_factory=list)
    # finished task -> the alignment captions trained in it (for rehearsal of task 2)
    previous_align: dict[str, list[DataSource]] = field(default_factory=dict)
    eval_every_epoch: bool = False  # write (and evaluate) a checkpoint at each epoch end
    epoch: int = 0  # what an evaluation scores: 0 = the task's end, e >= 1 its epoch e


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
        raise ConfigError(f"recipe {cfg.recipe!r} must be 'continual' or 'llava'")
    prev: dict[str, list[DataSource]] = {}
    prev_align: dict[str, list[DataSource]] = {}
    for i, task in enumerate(cfg.tasks):
        k = i + 2
        align = list(cfg.align) if i == 0 else []  # task 2 = alignment + first instructions
        steps.append(StepPlan(f"{k:02d}-{task.name}", k, task.name, "finetune", list(task.train),
                              previous_tasks=list(prev), previous_sources=dict(prev),
                              align_sources=align, previous_align=dict(prev_align),
                              eval_every_epoch=task.eval_every_epoch))
        prev[task.name] = list(task.train)
        if align:
            prev_align[task.name] = align
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
    raise ConfigError(f"stages.{stage_name}.lr_rule {stage.lr_rule!r} must be 'fixed' or 'scaled'")


# ---------------------------------------------------------------------------------------
# the two stage paths
# ---------------------------------------------------------------------------------------
class StagePath:
    """What one stage name does differently; the base is the fine-tuning path."""

    name = "finetune"

    def config(self, cfg: RunConfig) -> StageConfig:
        """The fine-tune stage; a continual-recipe task step passes over its data
        `task_epochs` times when that is set (the LLaVA recipe's mixture: `epochs`)."""
        st = cfg.stages.finetune
        if cfg.recipe == "continual" and st.task_epochs is not None:
            return dataclasses.replace(st, epochs=st.task_epochs)
        return st

    def template(self):
        """The prompt template the step's data is tokenised with (None: the model's)."""
        return None

    def prepare_model(self, mllm: MLLM, methods: MethodStack, ctx: TaskContext,
                      stage: StageConfig) -> None:
        methods.prepare_model(mllm, ctx)

    def training_methods(self, methods: MethodStack) -> ContinualMethod:
        """Whose hooks train the step (data, before_training, loss, penalty, finish_task)."""
        return methods


class AlignPath(StagePath):
    """Alignment: the configured parameters (projector) train with plain cross-entropy on
    plain-template captions, for every method; no method hook runs."""

    name = "align"

    def config(self, cfg: RunConfig) -> StageConfig:
        return cfg.stages.align

    def template(self):
        return get_template("plain")

    def prepare_model(self, mllm, methods, ctx, stage) -> None:
        set_trainable(mllm.model, stage.train)

    def training_methods(self, methods):
        return MethodStack([])


STAGES: dict[str, StagePath] = {"align": AlignPath(), "finetune": StagePath()}


def stage_path(step: StepPlan) -> StagePath:
    if step.stage not in STAGES:
        raise ConfigError(f"step {step.key}: stage {step.stage!r} must be one of {sorted(STAGES)}")
    return STAGES[step.stage]


def epoch_checkpoint_dir(out_dir: str | Path, epoch: int) -> Path:
    """Where the epoch-`epoch` checkpoint of the step writing `out_dir` goes (a sibling)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}-epoch{epoch:02d}"


class EpochCheckpoints(TrainCallback):
    """Writes a checkpoint at every epoch end but the last (`TaskSpec.eval_every_epoch`):
    the model as it is mid-task, in checkpoint form (`ContinualMethod.snapshot_model`), no
    method state; `ContinualRun` evaluates each. All ranks gather (a collective under
    sharding), rank 0 writes."""

    def __init__(self, out_dir: Path, methods: MethodStack, last_step: int):
        self.out_dir, self.methods, self.last_step = Path(out_dir), methods, last_step

    def on_epoch_end(self, epoch: int, step: int) -> None:
        if step >= self.last_step:  # the task-end checkpoint is this epoch's
            return
        st = self.state
        plain = st.strategy.full_model(st.module)
        if st.rank == 0:
            snap = self.methods.snapshot_model(dataclasses.replace(st.mllm, model=plain))
            path = epoch_checkpoint_dir(self.out_dir, epoch)
            save_checkpoint(snap, self.methods, path, {
                "key": st.step.key, "task_index": st.step.task_index, "task": st.step.task_name,
                "stage": st.step.stage, "epoch": epoch, "step": step, "complete": True},
                method_state=False)
        st.strategy.barrier()


# ---------------------------------------------------------------------------------------
# one step
# ---------------------------------------------------------------------------------------
def run_step(cfg: RunConfig, step: StepPlan, prev_checkpoint: str | None, out_dir: str | Path,
             *, strategy: Strategy | None = None, callbacks: Sequence[TrainCallback] = (),
             cache_dir: str | Path | None = None, feature_cache_dir: str | Path | None = None,
             resume_state: dict | None = None, progress: bool = True) -> dict:
    """Run one step; returns a summary dict. Rank 0 writes the checkpoint at `out_dir`.

    `resume_state` ({"step", "model_state", "optimizer_state"}) continues a step from a
    mid-task checkpoint; `feature_cache_dir` serves cached tower features.
    """
    torch.manual_seed(cfg.seed + step.task_index)
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir or Path(cfg.output_dir) / "cache")
    path = stage_path(step)
    stage = path.config(cfg)
    strategy = strategy or get_strategy("none")
    resume_state = resume_state or {}
    methods = build_methods(cfg.method)
    if prev_checkpoint:
        methods.load_state(Path(prev_checkpoint) / "method_state")
    mllm = load_step_model(cfg, prev_checkpoint, methods)
    plain = get_template("plain")
    read_stats: list = []
    data = tokenized_sources(mllm, step.sources, cfg, cache_dir, path.template(), stats=read_stats)
    data_counts = check_step_data(step, data, read_stats)
    collate = Collator(mllm.tokenizer.pad_token_id, mllm.image_processor,
                       load_pixels=feature_cache_dir is None)
    ctx = TaskContext(
        task_index=step.task_index, task_name=step.task_name, stage=step.stage, seed=cfg.seed,
        prev_checkpoint=prev_checkpoint, previous_tasks=list(step.previous_tasks),
        previous_data={name: tokenized_sources(mllm, srcs, cfg, cache_dir)
                       for name, srcs in step.previous_sources.items()},
        previous_align_data={name: tokenized_sources(mllm, srcs, cfg, cache_dir, plain)
                             for name, srcs in step.previous_align.items()},
        align_data=(tokenized_sources(mllm, step.align_sources, cfg, cache_dir, plain)
                    if step.align_sources else None),
        collate=collate, device=strategy.device, world_size=strategy.world_size,
        rank=strategy.rank, layout=strategy)
    path.prepare_model(mllm, methods, ctx, stage)
    hooks = path.training_methods(methods)
    datasets = hooks.train_data([data], ctx)
    dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
    features = None
    if feature_cache_dir is not None:
        from ..data.feature_cache import FeatureCache

        # fill on the worker's device (the model moves there only at wrap), in bf16 on CUDA
        # when the stage trains in bf16: the frozen tower's forward is most of the fill
        bf16 = strategy.mixed_precision == "bf16" and strategy.device.type == "cuda"
        features = FeatureCache(feature_cache_dir, mllm, device=strategy.device,
                                compute_dtype=torch.bfloat16 if bf16 else None)
        paths = sorted(set().union(*[set(d.image_paths()) for d in _leaves(datasets)]))
        features.precompute(paths, strategy.rank, strategy.world_size)
        strategy.barrier()
        features.refresh()
    module = strategy.wrap(MLLMForTraining(mllm.model))
    hooks.before_training(module, ctx)
    if resume_state.get("model_state") is not None:  # mid-task resume: its weights
        strategy.load_model_state(module, resume_state["model_state"])
    lr = resolve_lr(stage, mllm, step.stage)
    total = num_optimizer_steps(stage, len(dataset))
    cbs = list(callbacks)
    if step.eval_every_epoch:
        cbs.append(EpochCheckpoints(out_dir, methods, total))
    cb = CallbackList(cbs).bind(TrainState(step, ctx, strategy, mllm, module))
    cb.on_stage_start()
    result: StageResult = train_stage(
        module, dataset, stage, hooks, strategy, ctx, collate, lr=lr,
        seed=cfg.seed * 1000 + step.task_index, stage_name=step.stage,
        start_step=resume_state.get("step", 0), optimizer_state=resume_state.get("optimizer_state"),
        log_every=cfg.trainer.log_every, checkpoint_every=cfg.trainer.checkpoint_every,
        callbacks=cb, features=features, progress=progress)
    cb.on_train_end()
    strategy.gather_into(module, mllm)
    summary = {"key": step.key, "task_index": step.task_index, "task": step.task_name,
               "stage": step.stage, "steps": result.steps, "total_steps": result.total_steps,
               "first_loss": result.losses[0] if result.losses else None,
               "last_loss": result.losses[-1] if result.losses else None,
               "losses": result.losses, "samples": len(dataset), "lr": lr,
               "tokens_per_s": result.tokens_per_s, "seconds": result.seconds, **data_counts,
               "epoch_checkpoints": epoch_checkpoints(step, out_dir, len(dataset), stage, total)}
    if strategy.rank == 0:
        mllm.model.eval()
        hooks.finish_task(mllm, ctx)
        save_checkpoint(mllm, methods, out_dir, {**summary, "complete": True})
        cb.on_save(out_dir)
    strategy.barrier()
    return summary


def epoch_checkpoints(step: StepPlan, out_dir: Path, n: int, stage: StageConfig,
                      total: int) -> list[list]:
    """[[epoch, path], ...] of the step's complete epoch checkpoints (before the last)."""
    if not step.eval_every_epoch:
        return []
    out = []
    for s, e in epoch_end_steps(n, stage, total).items():
        d = epoch_checkpoint_dir(out_dir, e)
        if s < total and is_complete(d):
            out.append([e, str(d)])
    return out


def _leaves(datasets) -> list[TokenizedDataset]:
    out = []
    for d in datasets:
        if isinstance(d, ConcatDataset):
            out.extend(_leaves(d.datasets))
        elif isinstance(d, TokenizedDataset):
            out.append(d)
        elif isinstance(d, Subset):
            out.extend(_leaves([d.dataset]))
        else:
            raise TypeError(f"training data of type {type(d).__name__}: a method's train_data "
                            "must return TokenizedDatasets, Subsets or ConcatDatasets of them")
    return out


def save_checkpoint(mllm: MLLM, methods: MethodStack, out_dir: Path, position: dict,
                    method_state: bool = True) -> Path:
    """Write model + method state + position into `out_dir` atomically."""
    with atomic_dir(out_dir) as tmp:
        model_dir = tmp / "model"
        if not methods.save_model(mllm, model_dir):
            save_mllm(mllm, model_dir)
        if method_state:
            methods.save_state(tmp / "method_state")
        (tmp / POSITION_FILE).write_text(json.dumps(position, indent=1, default=str))
    return out_dir
