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


class _FieldError(ConfigError):
    """A field's value is out of range (raised by `__post_init__`; `from_dict` prefixes the
    dotted path of the config it builds, e.g. ``stages.finetune.lr``)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field_name = field_name
        self.detail = message


def _require(obj: Any, name: str, ok: bool, what: str) -> None:
    """Range check for `__post_init__`: raise naming the field, its value and the rule."""
    if not ok:
        raise _FieldError(name, f"{what}, got {getattr(obj, name)!r}")


def _one_of(obj: Any, name: str, choices: tuple) -> None:
    _require(obj, name, getattr(obj, name) in choices,
             "must be one of " + ", ".join(map(repr, choices)))


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
    init: str | None = None  # LLaVA-format MLLM checkpoint dir/hub id to start from (EMT: instruction-tuned LLaVA); None: llm + vision + fresh projector
    attn_implementation: str | None = None  # "sdpa", "flash_attention_2" (GPU, flash-attn
    # installed), "eager"; None: transformers' default (sdpa where the family supports it)

    def __post_init__(self):
        _one_of(self, "dtype", ("float32", "bfloat16", "float16"))
        _require(self, "max_seq_len", self.max_seq_len >= 1, "must be ≥ 1")
        _require(self, "scale", self.scale is None or self.scale > 0, "must be > 0 (or null)")


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
    # continual recipe only: passes over each task's data in its fine-tune step (None: epochs;
    # the LLaVA recipe's one mixture and the align stage always use epochs)
    task_epochs: float | None = None
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

    # fields a rule can derive: {field: (rule field, the rule value that uses the field)}
    derived: typing.ClassVar[dict[str, tuple[str, str]]] = {"lr": ("lr_rule", "fixed")}

    def __post_init__(self):
        _require(self, "lr", self.lr > 0, "must be > 0 (the peak learning rate)")
        _one_of(self, "lr_rule", LR_RULES)
        _require(self, "warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)")
        _one_of(self, "schedule", ("cosine", "constant"))
        _require(self, "epochs", self.epochs > 0, "must be > 0")
        _require(self, "task_epochs", self.task_epochs is None or self.task_epochs > 0,
                 "must be > 0 (or null: epochs)")
        _require(self, "max_steps", self.max_steps is None or self.max_steps >= 1,
                 "must be ≥ 1 (or null: no cap)")
        _require(self, "global_batch_size", self.global_batch_size >= 1, "must be ≥ 1")
        _require(self, "per_device_batch_size", self.per_device_batch_size >= 1, "must be ≥ 1")
        _require(self, "weight_decay", self.weight_decay >= 0, "must be ≥ 0")
        _require(self, "max_grad_norm", self.max_grad_norm >= 0, "must be ≥ 0 (0 disables)")
        _one_of(self, "train", ("projector", "projector+llm"))


LR_RULES = ("fixed", "scaled")  # StageConfig.lr_rule: "fixed" uses lr; the others derive it


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

    def __post_init__(self):
        _require(self, "fraction", 0 < self.fraction <= 1, "must be in (0, 1]")
        _one_of(self, "missing_image", ("error", "skip"))


@dataclass
class EvalSet:
    """A test set of a task and how it is scored."""

    name: str = ""  # dataset name in results (e.g. "vqa", "textvqa_ocr")
    path: str = ""  # LLaVA-format JSON with scorer fields (answers, bbox, label)
    image_root: str | None = None  # image directory
    kind: str = "vqa"  # scorer kind (eval/kinds.py registry: vqa, vqa_2021, textvqa, ...)
    max_samples: int | None = 1024  # slim subset size, chosen by seed (Srivastava: 1024)
    max_new_tokens: int | None = None  # generation budget per answer; None: the kind's default
    ocr_tokens: bool | None = None  # show records' OCR tokens in the prompt (TextVQA "OCR" vs
    # "Pure"); None: on for sets whose name ends in "_ocr"

    def __post_init__(self):
        _require(self, "max_samples", self.max_samples is None or self.max_samples >= 1,
                 "must be ≥ 1 (or null: the whole set)")
        _require(self, "max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1,
                 "must be ≥ 1 (or null: the kind's default)")
        from .eval.kinds import UnknownKindError, check_kind

        try:
            check_kind(self.kind)
        except UnknownKindError as e:
            raise ConfigError(f"EvalSet {self.name!r}: {e}") from None


@dataclass
class TaskSpec:
    """One task of a continual sequence (tasks 2..T; task 1 is the base LLM)."""

    name: str = ""  # task name (e.g. "vqa")
    train: list[DataSource] = field(default_factory=list)  # training data (mixed)
    eval: list[EvalSet] = field(default_factory=list)  # evaluation sets (may be empty)
    # EMT protocol: also checkpoint and evaluate at each epoch end inside the task (one lr
    # schedule, optimizer and adapter); rows carry epoch 1..E-1, the task end is epoch 0
    eval_every_epoch: bool = False


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

    def __post_init__(self):
        _require(self, "num_workers", self.num_workers >= 0, "must be ≥ 0 (0: in-process loop)")
        _require(self, "cpus_per_worker", self.cpus_per_worker > 0, "must be > 0")
        _one_of(self, "mixed_precision", ("auto", "bf16", "fp32"))
        _one_of(self, "activation_checkpointing", ("auto", "on", "off"))
        _require(self, "log_every", self.log_every >= 1, "must be ≥ 1")
        _require(self, "checkpoint_every", self.checkpoint_every >= 0, "must be ≥ 0 (0: task ends only)")
        _require(self, "keep_last", self.keep_last >= 1, "must be ≥ 1")
        _require(self, "max_failures", self.max_failures >= -1, "must be ≥ 0 (or -1: unlimited)")
        _require(self, "threads_per_worker",
                 self.threads_per_worker is None or self.threads_per_worker >= 1,
                 "must be ≥ 1 (or null: cores / workers)")


@dataclass
class EvalConfig:
    """What is evaluated after each task."""

    nl: bool = True  # language suite (Lambada-like NLG, ARC/Winogrande/WSC-like NLU)
    nl_max_samples: int | None = 1024  # per NL dataset
    vl: bool = True  # every VL task seen so far
    backend: str = "transformers"  # "transformers" or "vllm"
    batch_size: int = 32  # generation batch
    judge: str | None = None  # judge model dir/id (None: no LLM judge)
    zero_shot: bool = False  # also score every task's sets after alignment, or of a model.init start before training (task 1 rows, "zero_shot")
    seed: int = 0  # subset selection seed
    nl_backend: str = "project"  # NL scorer: "project" (suites/nl.py) or "lm_eval" (lm-evaluation-harness)
    # where evaluation runs (eval/service.py): "auto" = engine actors whenever the run uses Ray
    # (trainer.num_workers >= 1, or inside a Tune trial), else this process; "actors"; "driver"
    placement: str = "auto"
    num_actors: int | None = None  # engine actors (None: one per GPU if actor_gpus, else cpu_budget // actor_cpus)
    actor_gpus: int | None = None  # GPUs per engine actor (None: 1 where the cluster has GPUs, else 0)
    actor_cpus: float = 1.0  # CPUs reserved per engine actor (CPU actors: also its torch threads)
    cpu_budget: float = 1.0  # CPUs all CPU engine actors share (laptops, CI)
    # CPU actors (engine, judge) reserve their CPUs in Ray's accounting; off (default) they
    # reserve none and only limit their threads, so Tune trials holding every CPU cannot starve them
    reserve_cpus: bool = False
    judge_backend: str | None = None  # judge engine: "transformers" or "vllm" (None: eval.backend)
    judge_gpus: int = 0  # GPUs of the judge actor (vLLM: tensor_parallel_size, one node)
    judge_cpus: float = 1.0  # CPUs of the judge actor
    max_job_retries: int = 2  # reruns of a job whose actor died, before the run fails
    service_idle_s: float = 600.0  # the shared pool exits after this long with no client

    def __post_init__(self):
        _require(self, "nl_max_samples", self.nl_max_samples is None or self.nl_max_samples >= 1,
                 "must be ≥ 1 (or null: whole sets)")
        _require(self, "batch_size", self.batch_size >= 1, "must be ≥ 1")


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

    def __post_init__(self):
        _one_of(self, "recipe", RECIPES)


RECIPES = ("continual", "llava")  # RunConfig.recipe (train/task.py plan_steps)


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
        if isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string
            value = _parse_float(value, path)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if value != value:  # NaN
            raise ConfigError(f"{path}: expected a number, got NaN")
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


def _parse_float(text: str, path: str) -> Any:
    """The ordinary float spellings (``1e-4``, ``2E-5``, `` 0.5 ``) of a float field."""
    import re

    t = text.strip()
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", t):
        return float(t)
    raise ConfigError(f"{path}: expected a number, got {text!r}")


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
    try:
        return cls(**kwargs)
    except _FieldError as e:
        if not path:
            raise
        raise _FieldError(f"{path}.{e.field_name}", e.detail) from None


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


def _config_type_at(root: type, parts: list[str]) -> Any:
    """The dataclass type at a dotted path below `root` (None if it is not a dataclass)."""
    tp: Any = root
    for part in parts:
        if not _is_dataclass_type(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp, _ = _strip_optional(hints[part])
    return tp if _is_dataclass_type(tp) else None


def resolve_explicit(data: dict, overridden: typing.Iterable[str], root: type | None = None,
                     log=None) -> list[str]:
    """Explicit values win over derived rules: for every overridden key that a rule can
    derive (a config class's `derived`, e.g. `stages.finetune.lr` under `lr_rule`), switch
    the rule to the value that uses the field, and say so; overriding both the field and
    its rule to a deriving value is a ConfigError naming both. Edits `data`; returns notes."""
    root = root or RunConfig
    keys = set(overridden)
    notes = []
    for key in sorted(keys):
        parts = key.split(".")
        cls = _config_type_at(root, parts[:-1])
        rule = getattr(cls, "derived", {}).get(parts[-1]) if cls is not None else None
        if rule is None:
            continue
        rule_field, uses_field = rule
        parent = ".".join(parts[:-1])
        rule_key = f"{parent}.{rule_field}" if parent else rule_field
        cur = data
        for p in parts[:-1]:
            cur = cur.get(p, {}) if isinstance(cur, dict) else {}
        current = cur.get(rule_field, getattr(cls(), rule_field)) if isinstance(cur, dict) \
            else uses_field
        if current == uses_field:
            continue
        if rule_key in keys:
            raise ConfigError(f"{key} is set explicitly but {rule_key} is {current!r}, which "
                              f"derives it; drop one of the two (or set {rule_key}={uses_field})")
        cur[rule_field] = uses_field
        note = (f"{key} set explicitly: {rule_key} {current!r} → {uses_field!r} (explicit "
                "values win over derived rules)")
        notes.append(note)
        if log is not None:
            log(note)
    return notes


def apply_sets(data: dict, sets: typing.Iterable[str], log=None) -> list[str]:
    """Apply `key.path=value` overrides (`--set`) to a RunConfig mapping, explicit values
    winning over derived rules (`resolve_explicit`); returns the notes."""
    keys = []
    for text in sets:
        k, v = parse_override(text)
        set_dotted(data, k, v)
        keys.append(k)
    return resolve_explicit(data, keys, log=log)


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
