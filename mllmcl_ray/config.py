"""Typed configuration for mllmcl-ray.

Every setting is a field of a dataclass with a documented line. Configs load from YAML
(`yaml.safe_load`) with unknown keys rejected by name (`ConfigError` names the dotted
path), and named presets (`micro`, `paper`) are built by functions in `presets.py`.

Per-stage settings are nested (`stages.align`, `stages.finetune`); CL-method settings
are nested under `method.<method-name>` and validated by the method's own dataclass.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it and what to do."""


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """What MLLM to build: a causal LM + a CLIP vision tower + a 2-layer GELU projector."""

    name: str = "micro"  # label used in results and reports (e.g. "pythia-410m")
    family: str = "gpt_neox"  # LLM family (models/families.py registry): gpt_neox, phi, llama
    llm: str | None = None  # hub id or local dir of the causal LM (None: build from llm_config)
    llm_config: dict | None = None  # config kwargs for a randomly initialised LM (tests, micro)
    vision: str | None = None  # hub id or local dir of a CLIP model / CLIP vision model
    vision_config: dict | None = None  # CLIPVisionConfig kwargs for a random tower (tests)
    tokenizer: str | None = None  # hub id or dir; None: the LLM's own tokenizer (llm)
    template: str = "pythia"  # conversation template (models/templates.py): pythia, vicuna_v1, micro
    vision_feature_layer: int = -2  # LLaVA-1.5: penultimate layer, CLS dropped
    trust_remote_code: bool = False  # never load remote code unless asked for explicitly
    dtype: str = "float32"  # weights dtype when loading: float32, bfloat16, float16
    max_seq_len: int = 2048  # longest tokenised sample; longer ones are truncated
    scale: float | None = None  # LLM parameter count for scale rules/reports; None: counted
    attn_implementation: str | None = None  # "sdpa", "flash_attention_2" (GPU, flash-attn
    # installed), "eager"; None: transformers' default (sdpa where the family supports it)


# ---------------------------------------------------------------------------------------
# training stages
# ---------------------------------------------------------------------------------------
@dataclass
class StageConfig:
    """One optimisation stage (LLaVA alignment or fine-tuning)."""

    lr: float = 2e-5  # peak learning rate
    lr_rule: str = "fixed"  # "fixed" uses lr; "scaled" uses scale.finetune_lr(params) (scale.py)
    warmup_ratio: float = 0.03  # linear warm-up fraction of the stage's optimizer steps
    schedule: str = "cosine"  # "cosine" or "constant" after warm-up
    epochs: float = 1.0  # passes over the task's data (LLaVA: 1)
    max_steps: int | None = None  # optional cap on optimizer steps (smoke runs)
    global_batch_size: int = 128  # samples per optimizer step, whatever the worker count
    per_device_batch_size: int = 16  # samples per forward pass on one worker
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    train: str = "projector+llm"  # what trains: "projector" or "projector+llm" (methods may narrow it)
    parallel: str = "full_shard"  # distributed strategy: full_shard, shard_grad_op, ddp, none
    group_by_length: bool = False  # length-grouped micro-batches (data/grouping.py, LLaVA's
    # group_by_modality_length): less padding; the samples of each window of steps are kept
    group_window_steps: int = 1  # optimizer steps regrouped together (1: each step keeps its samples)


def _align_default() -> StageConfig:
    return StageConfig(lr=1e-3, warmup_ratio=0.03, global_batch_size=256, train="projector",
                       parallel="shard_grad_op")


@dataclass
class StagesConfig:
    """The LLaVA recipe's two stages."""

    align: StageConfig = field(default_factory=_align_default)  # captions, projector only
    finetune: StageConfig = field(default_factory=StageConfig)  # each VL task


# ---------------------------------------------------------------------------------------
# data and tasks
# ---------------------------------------------------------------------------------------
@dataclass
class DataSource:
    """One LLaVA-format conversation JSON file with its image root."""

    path: str = ""  # JSON array (or JSONL) of {id, image, conversations}
    image_root: str | None = None  # directory the records' image paths are relative to
    fraction: float = 1.0  # seeded sub-sample of the file (CoIN's data-volume study)
    missing_image: str = "error"  # "error" or "skip" (skip counts and reports)


@dataclass
class EvalSet:
    """A test set of a task and how it is scored."""

    name: str = ""  # dataset name in results (e.g. "vqa", "textvqa_ocr")
    path: str = ""  # LLaVA-format JSON with scorer fields (answers, bbox, label)
    image_root: str | None = None  # image directory
    kind: str = "vqa"  # scorer: vqa, exact, option, grounding, classification
    max_samples: int | None = 1024  # slim subset size, chosen by seed (Srivastava: 1024)
    max_new_tokens: int = 16  # generation budget per answer
    ocr_tokens: bool | None = None  # show records' OCR tokens in the prompt (TextVQA "OCR" vs
    # "Pure"); None: on for sets whose name ends in "_ocr"


@dataclass
class TaskSpec:
    """One task of a continual sequence (tasks 2..T; task 1 is the base LLM)."""

    name: str = ""  # task name (e.g. "vqa")
    train: list[DataSource] = field(default_factory=list)  # training data (mixed)
    eval: list[EvalSet] = field(default_factory=list)  # evaluation sets (may be empty)


# ---------------------------------------------------------------------------------------
# methods, trainer, evaluation
# ---------------------------------------------------------------------------------------
@dataclass
class MethodConfig:
    """Which CL method(s) run and their settings.

    `name` is one registered method or several joined by '+' (e.g. "msgm+rehearsal");
    each method's settings are a mapping under its own name, validated by the method.
    """

    name: str = "naive"  # registered method names joined by '+'
    params: dict[str, dict] = field(default_factory=dict)  # {method_name: {field: value}}


@dataclass
class TrainerConfig:
    """How training runs (processes, strategy, checkpoints)."""

    num_workers: int = 1  # Ray Train workers (0: plain in-process loop, no Ray)
    use_gpu: bool = False  # GPU workers
    cpus_per_worker: float = 1.0  # CPU resources per worker
    mixed_precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "bf16", "fp32"
    activation_checkpointing: str = "auto"  # "auto" (on with GPU), "on", "off"
    log_every: int = 10  # report metrics every N optimizer steps
    checkpoint_every: int = 0  # mid-task checkpoint every N optimizer steps (0: task ends only)
    keep_last: int = 2  # mid-task checkpoints kept
    feature_cache: bool = True  # cache frozen vision-tower features across stages/tasks/runs
    max_failures: int = 1  # Ray Train worker failures tolerated per task
    threads_per_worker: int | None = None  # torch threads per worker (None: cores / workers)


@dataclass
class EvalConfig:
    """What is evaluated after each task."""

    nl: bool = True  # language suite (Lambada-like NLG, ARC/Winogrande/WSC-like NLU)
    nl_max_samples: int | None = 1024  # per NL dataset
    vl: bool = True  # every VL task seen so far
    backend: str = "transformers"  # "transformers" or "vllm"
    batch_size: int = 32  # generation batch
    judge: str | None = None  # judge model dir/id (None: no LLM judge)
    zero_shot: bool = False  # also score every task's sets after alignment (task 1 rows, "zero_shot")
    seed: int = 0  # subset selection seed


@dataclass
class RunConfig:
    """One continual run: a model, a method, a task sequence, a seed."""

    name: str = "run"  # run label
    seed: int = 0  # seed for data order, sub-samples, init
    recipe: str = "continual"  # "continual" (task by task) or "llava" (align then all tasks mixed)
    model: ModelSpec = field(default_factory=ModelSpec)  # the MLLM
    stages: StagesConfig = field(default_factory=StagesConfig)  # optimisation stages
    align: list[DataSource] = field(default_factory=list)  # captioning data for alignment
    tasks: list[TaskSpec] = field(default_factory=list)  # VL tasks 2..T in order
    method: MethodConfig = field(default_factory=MethodConfig)  # CL method(s)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # processes and checkpoints
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation after each task
    output_dir: str = "runs"  # where checkpoints and results go
    nl_sets: list[EvalSet] = field(default_factory=list)  # language suite datasets (task 1)


# ---------------------------------------------------------------------------------------
# strict (de)serialisation
# ---------------------------------------------------------------------------------------
def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(tp: Any, value: Any, path: str) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{path}: null is not allowed here (expected {getattr(tp, '__name__', tp)})")
    if _is_dataclass_type(tp):
        return from_dict(tp, value, path)
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys raise ConfigError naming them."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = path or cls.__name__
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys are: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain-data copy of a config (for YAML/JSON, Tune and results)."""
    return dataclasses.asdict(obj)


def merge(base: Any, overrides: dict, path: str = "") -> Any:
    """A copy of dataclass `base` with a nested mapping of overrides applied (strict)."""
    data = to_dict(base)
    _deep_update(data, overrides, path)
    return from_dict(type(base), data, path)


def _deep_update(dst: dict, src: dict, path: str) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and k != "params":
            _deep_update(dst[k], v, f"{path}.{k}" if path else k)
        else:
            dst[k] = v


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c=value` in a nested mapping (for --set overrides and Tune search spaces)."""
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"{dotted}: {k} is not a mapping")
    cur[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a `key.path=value` command-line override; the value is YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with yaml.safe_load; clear errors for missing/malformed files."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def config_hash(obj: Any) -> str:
    """Stable short hash of a config (run ids, cache keys)."""
    import hashlib

    blob = json.dumps(to_dict(obj) if dataclasses.is_dataclass(obj) else obj, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
