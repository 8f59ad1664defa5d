"""The continual-learning method interface, the registry, and method stacks.

A method is a class with a few hooks, every one a no-op by default (as OLMo-core's
callbacks): the trainer calls the hooks of the configured methods in order and never
switches on method names. Methods are registered by name (`@register_method("lora")`)
with a typed params dataclass; a config names one or several joined by "+", e.g.
``msgm+rehearsal``, and gives each method's params under its own name.

Hooks, in the order a task sees them:
- ``prepare_model(mllm, ctx)``: at the task's start, after the previous task's weights are
  loaded: freeze/unfreeze, wrap (peft), load adapters from ``ctx.prev_checkpoint``. A
  `MethodStack` first applies the LLaVA fine-tuning default (projector + LLM train), which
  methods that decide what trains (linear, lora, moelora) then narrow.
- ``train_data(datasets, ctx)``: the task's training datasets (rehearsal adds its buffer).
- ``before_training(module, ctx)``: on the worker, with the model ready (LwF records the
  teacher's outputs here; EWC moves its anchors to the right device).
- ``token_loss(logits, targets, ctx)``: the loss on answer tokens (logits: [M, V] at the
  M answer positions, targets: [M]); one method at most replaces cross-entropy.
- ``penalty(module, batch, logits, ctx)``: a term added to the loss (EWC, LwF).
- ``finish_task(mllm, ctx)``: at the task's end (merge LoRA, estimate Fisher, store
  rehearsal samples).
- ``save_state(dir)`` / ``load_state(dir)``: what the method carries across tasks, saved in
  each task's checkpoint so a resumed run continues with it.
- ``save_model(mllm, path)`` / ``load_model(path, spec)``: a method whose weights cannot be
  merged into plain weights (MoELoRA) saves/loads them itself; the default is a plain
  `save_pretrained` LLaVA checkpoint.
- ``snapshot_model(mllm)``: the model in checkpoint form for a checkpoint taken inside a
  task (an epoch checkpoint, `TaskSpec.eval_every_epoch`), without disturbing training
  (LoRA: a merged copy).

These are all the hooks the trainer calls (train/task.py, train/loop.py); it calls them
on every run, never asks whether a method has one. The alignment step calls none of the
training hooks (methods sit out alignment); ``save_state``/``save_model`` run at every
checkpoint. A composite registered name (mSGM) overrides the ``expand`` classmethod and
names its ``components``. `TaskContext` is complete when a hook first sees it (frozen).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..config import ConfigError, MethodConfig, from_dict
from ..models.training import ParamLayout, forward_batch


@dataclass(frozen=True)
class TaskContext:
    """What a hook may know about the task at hand, complete when the trainer builds it
    (frozen: nothing is attached later)."""

    task_index: int  # k (task 1 is the base LLM; the first VL task is 2)
    task_name: str
    stage: str  # "align" or "finetune"
    seed: int = 0
    prev_checkpoint: str | None = None  # the checkpoint this task starts from
    previous_tasks: list[str] = field(default_factory=list)  # names of finished VL tasks
    previous_data: dict[str, Any] = field(default_factory=dict)  # name -> tokenised dataset
    # name of a finished task -> the alignment captions trained in it (tokenised with the
    # plain template): the first VL task of the continual recipe (Srivastava's task 2)
    previous_align_data: dict[str, Any] = field(default_factory=dict)
    align_data: Any = None  # the alignment captions trained earlier in *this* task, or None
    collate: Any = None  # the trainer's collate function (a data.collate.Collator)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    world_size: int = 1
    rank: int = 0
    layout: ParamLayout = field(default_factory=ParamLayout)  # local shards of parameters

    def forward(self, module, batch: dict) -> torch.Tensor:
        """The trainer's forward on a collated batch -> logits [B, L, V]."""
        return forward_batch(module, batch, self.device)

    def pixel_collate(self):
        """A collator like the trainer's that always loads pixel values.

        The trainer's collator leaves images out when the vision-feature cache supplies
        them; a method that runs its own batches (LwF replay, EWC's Fisher) needs the
        pixels, and the forward then runs the frozen tower on them.
        """
        from ..data.collate import Collator

        if self.collate is None:
            raise RuntimeError("the task context has no collate function")
        return Collator(self.collate.pad_token_id, self.collate.image_processor,
                        load_pixels=True)


class ContinualMethod:
    """Base class: every hook does nothing."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = type(None)
    replaces_loss: ClassVar[bool] = False  # True if token_loss is overridden
    # Does the method keep the weights plain (mergeable) at every task end?
    plain_checkpoints: ClassVar[bool] = True
    # What the method takes exclusively (two methods of a stack may not share one):
    # "trainable" (it decides which weights train: linear, lora, moelora) and/or
    # "adapter" (it wraps the LLM in a peft adapter: lora, moelora).
    exclusive: ClassVar[tuple[str, ...]] = ()
    # Registered methods a composite expands into (their params sit under their own names)
    components: ClassVar[tuple[str, ...]] = ()
    # Bump when a code change makes the method learn something else with the same settings.
    # Revisions above 1 enter the run id (method_revisions), so a rerun after an upgrade
    # starts a new run instead of resuming checkpoints the old code made.
    revision: ClassVar[int] = 1

    @classmethod
    def expand(cls, params: dict) -> list[ContinualMethod]:
        """The method instances this registered name stands for, from `method.params`
        (all methods' settings by name). One instance with its own settings by default; a
        composite (mSGM) returns its components."""
        return [cls(_params(cls, params.get(cls.name, {}), cls.name))]

    def __init__(self, params: Any = None):
        self.params = params

    # -- hooks ---------------------------------------------------------------------------
    def prepare_model(self, mllm, ctx: TaskContext) -> None:
        pass

    def train_data(self, datasets: list, ctx: TaskContext) -> list:
        return datasets

    def before_training(self, module, ctx: TaskContext) -> None:
        pass

    def token_loss(self, logits: torch.Tensor, targets: torch.Tensor, ctx: TaskContext
                   ) -> torch.Tensor | None:
        return None

    def penalty(self, module, batch: dict, logits: torch.Tensor, ctx: TaskContext
                ) -> torch.Tensor | None:
        return None

    def finish_task(self, mllm, ctx: TaskContext) -> None:
        pass

    def save_state(self, path: Path) -> None:
        pass

    def load_state(self, path: Path) -> None:
        pass

    def save_model(self, mllm, path: Path) -> bool:
        """Save the model if this method owns the format; return True if it did."""
        return False

    def load_model(self, path: Path, spec) -> Any:
        """Load a checkpoint saved by this method's save_model, or None."""
        return None

    def snapshot_model(self, mllm):
        """The model as a checkpoint taken *inside* a task (an epoch checkpoint) holds it,
        without disturbing training: an MLLM to save. The default is `mllm` itself; a
        method whose training form is not a checkpoint form (LoRA: unmerged adapters)
        returns a converted copy."""
        return mllm


METHODS: dict[str, type[ContinualMethod]] = {}


def register_method(name: str):
    """Class decorator: register a ContinualMethod under `name`."""

    def deco(cls: type[ContinualMethod]) -> type[ContinualMethod]:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def method_names(cfg_name: str) -> list[str]:
    names = [n.strip() for n in cfg_name.split("+") if n.strip()]
    if not names:
        raise ConfigError("method.name is empty; use e.g. 'naive' or 'msgm+rehearsal'")
    return names


def method_revisions(cfg: MethodConfig) -> dict[str, int]:
    """{method name: revision} of the configured methods (composites' components too) whose
    revision is above 1; unknown names are left to build_methods to report."""
    import mllmcl_ray.methods  # noqa: F401  (registers built-ins)

    known = [n for n in method_names(cfg.name) if n in METHODS]
    return {n: METHODS[n].revision for n in sorted(set(_param_owners(known)))
            if n in METHODS and METHODS[n].revision > 1}


def build_methods(cfg: MethodConfig) -> MethodStack:
    """Instantiate the configured methods (validating each one's params)."""
    import mllmcl_ray.methods  # noqa: F401  (registers built-ins)

    names = method_names(cfg.name)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(f"method.name {cfg.name!r}: unknown method(s) {unknown}; registered: "
                          f"{', '.join(sorted(METHODS))}")
    stray = sorted(set(cfg.params) - set(_param_owners(names)))
    if stray:
        raise ConfigError(f"method.params has settings for {stray}, which are not among the "
                          f"configured methods {names}")
    methods: list[ContinualMethod] = []
    for n in names:
        cls = METHODS[n]
        methods.extend(cls.expand(cfg.params))
    return MethodStack(methods)


def _param_owners(names: list[str]) -> list[str]:
    owners = list(names)
    for n in names:
        owners.extend(METHODS[n].components)
    return owners


def _params(cls: type[ContinualMethod], data: dict, name: str) -> Any:
    if cls.Params is type(None):
        if data:
            raise ConfigError(f"method.params.{name}: method {name!r} takes no settings")
        return None
    return from_dict(cls.Params, data, f"method.params.{name}")


def check_compatible(methods: list[ContinualMethod]) -> None:
    """Methods of one stack must be distinct and claim no `exclusive` role twice."""
    names = [m.name for m in methods]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"method.name {'+'.join(names)!r}: {dup} appear(s) twice (a composite "
                          "such as msgm already includes its parts); name each method once")
    owner: dict[str, str] = {}
    for m in methods:
        for role in m.exclusive:
            if role in owner:
                raise ConfigError(
                    f"method.name {'+'.join(names)!r}: {owner[role]!r} and {m.name!r} both take "
                    f"the {role!r} role (methods.base.ContinualMethod.exclusive); combine at "
                    "most one of them")
            owner[role] = m.name


class MethodStack(ContinualMethod):
    """Several methods run as one: hooks called in order, penalties summed."""

    def __init__(self, methods: list[ContinualMethod]):
        super().__init__(None)
        self.methods = methods
        losers = [m.name for m in methods if m.replaces_loss]
        if len(losers) > 1:
            raise ConfigError(f"methods {losers} each replace the token loss; combine at most one")
        check_compatible(methods)
        self.name = "+".join(m.name for m in methods)
        self.plain_checkpoints = all(m.plain_checkpoints for m in methods)

    def prepare_model(self, mllm, ctx):
        # The LLaVA fine-tuning default (projector + LLM train, tower frozen) comes first, so
        # methods that only change the loss or the data (soft_targets, rehearsal, ewc, lwf)
        # train like naive FT; methods that decide what trains (linear, lora, moelora) narrow it.
        from ..models.build import set_trainable

        set_trainable(mllm.model, "projector+llm")
        for m in self.methods:
            m.prepare_model(mllm, ctx)

    def train_data(self, datasets, ctx):
        for m in self.methods:
            datasets = m.train_data(datasets, ctx)
        return datasets

    def before_training(self, module, ctx):
        for m in self.methods:
            m.before_training(module, ctx)

    def token_loss(self, logits, targets, ctx):
        for m in self.methods:
            out = m.token_loss(logits, targets, ctx)
            if out is not None:
                return out
        return F.cross_entropy(logits.float(), targets)

    def penalty(self, module, batch, logits, ctx):
        total = None
        for m in self.methods:
            p = m.penalty(module, batch, logits, ctx)
            if p is not None:
                total = p if total is None else total + p
        return total

    def finish_task(self, mllm, ctx):
        for m in self.methods:
            m.finish_task(mllm, ctx)

    def save_state(self, path):
        for m in self.methods:
            d = Path(path) / m.name
            d.mkdir(parents=True, exist_ok=True)
            m.save_state(d)

    def load_state(self, path):
        for m in self.methods:
            d = Path(path) / m.name
            if d.exists():
                m.load_state(d)

    def save_model(self, mllm, path):
        return any(m.save_model(mllm, path) for m in self.methods)

    def load_model(self, path, spec):
        for m in self.methods:
            out = m.load_model(path, spec)
            if out is not None:
                return out
        return None

    def snapshot_model(self, mllm):
        for m in self.methods:
            mllm = m.snapshot_model(mllm)
        return mllm

    def params_dict(self) -> dict:
        return {m.name: dataclasses.asdict(m.params) for m in self.methods
                if dataclasses.is_dataclass(m.params)}
