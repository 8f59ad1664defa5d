"""The `Preset` contract: where a study's models and data come from.

A study builds its runs through a preset and never branches on which one: `micro`
(presets/micro.py: the synthetic world and base models made on this machine) or `paper`
(presets/paper.py: the papers' models by hub id and data under a data root). A preset
knows its models, the Srivastava run config (stages, alignment data, the Table 4 tasks,
the NL suite), how to read one more VL task, and its defaults (workers, eval samples).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from ..config import ConfigError, DataSource, EvalSet, ModelSpec, RunConfig, TaskSpec

# Srivastava Table 4: instruct, VQA, OCR, referential grounding (tasks 2..5).
SRIVASTAVA_TASKS = ("instruct", "vqa", "ocr", "grounding")


@dataclass
class InstructStart:
    """An instruction-tuned MLLM for a model of a preset (EMT §5 fine-tunes LLaVA): what
    ``ModelSpec.init`` names, and, where it is made here, the run that makes it."""

    init: str  # ModelSpec.init: a LLaVA-format checkpoint dir (project or llava-hf) or hub id
    source: str  # one line for the log: where the start comes from
    recipe: RunConfig | None = None  # the LLaVA-recipe run whose last checkpoint's model is `init` (None: it exists already)


class Preset(ABC):
    """Models and data for the studies (see the module docstring)."""

    name: str = ""  # "micro" or "paper": also the key of per-preset values in study specs
    default_workers: int = 0  # Ray Train workers per run when --workers is not given

    def __init__(self, *, workers: int | None = None, eval_samples: int | None = None,
                 out: str = "runs", log=print, progress: bool = True):
        self.workers = self.default_workers if workers is None else int(workers)
        # None: the preset's own sizes; ≤ 0: every sample; n: at most n per eval set
        self.eval_samples = eval_samples
        self.out = str(out)
        self.log = log
        self.progress = progress

    # -- models -------------------------------------------------------------------------
    @abstractmethod
    def model_names(self) -> list[str]:
        """Every model name this preset knows."""

    @abstractmethod
    def model(self, name: str) -> ModelSpec:
        """The MLLM spec of a model name (ConfigError naming the known ones otherwise)."""

    def models(self, names: list[str]) -> list[ModelSpec]:
        return [self.model(n) for n in names]

    # -- run configs ----------------------------------------------------------------------
    @abstractmethod
    def run_config(self, model: str, *, recipe: str = "continual",
                   tasks: tuple[str, ...] | list[str] = SRIVASTAVA_TASKS,
                   study: str = "study") -> RunConfig:
        """Srivastava's run: alignment, then `tasks` (Table 4 names), the NL suite, this
        preset's stages; method naive, seed 0 (the study's grid varies them)."""

    @abstractmethod
    def task(self, name: str, kind: str, *, train: str | None = None, test: str | None = None,
             max_new_tokens: int | None = None) -> TaskSpec:
        """One more VL task with one eval set scored by `kind` (eval/ kinds). Paper preset:
        `train`/`test` are paths under the data root; the micro world knows its own."""

    @abstractmethod
    def coin_tasks(self) -> dict[str, str | None]:
        """CoIN's tasks on this preset in CoIN's order: name -> the CoIN task type whose
        instruction templates (data/instructions.py) rewrite its prompts (None: kept)."""

    @abstractmethod
    def coin_task(self, name: str) -> TaskSpec:
        """One CoIN task (a name of `coin_tasks`) with its eval set and kind."""

    @abstractmethod
    def emt_sets(self) -> tuple[str, ...]:
        """EMT's classification sets on this preset (Zhai: MNIST, CIFAR-10/100, miniImagenet)."""

    def instruct_start(self, model: str) -> InstructStart:
        """The instruction-tuned MLLM of `model` (the LLaVA recipe's output) that EMT
        fine-tunes by default. A preset without one raises ConfigError."""
        raise ConfigError(f"the {self.name} preset knows no instruction-tuned LLaVA checkpoint for "
                          f"model {model!r}: give one with --init CHECKPOINT, or --start aligned")

    def emt_task(self, name: str) -> TaskSpec:
        """One classification set as a task: its training data and its test set (kind
        `classification`, scored by EMT's suite)."""
        if name not in self.emt_sets():
            raise ConfigError(f"unknown classification set {name!r} on the {self.name} preset; "
                              f"known: {', '.join(self.emt_sets())}")
        return self.task(name, "classification", train=f"emt/{name}/train.json",
                         test=f"emt/{name}/test.json")

    def data(self, rel: str) -> DataSource:
        """A training source under the data root (paper preset only)."""
        raise ConfigError(f"the {self.name} preset has no data root: a data path ({rel}) is for --preset paper")

    def vl_max_samples(self, default: int | None) -> int | None:
        """Samples per VL eval set: --eval-samples when given (≤ 0: all), else `default`."""
        if self.eval_samples is None:
            return default
        return None if self.eval_samples <= 0 else self.eval_samples

    def cap(self, sets: list[EvalSet], default: int | None) -> list[EvalSet]:
        for s in sets:
            s.max_samples = self.vl_max_samples(default)
        return sets
