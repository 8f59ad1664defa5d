"""Ray Tune sweeps whose trials are whole continual runs.

A trial is one `RunConfig`: the sweep's base config with the trial's dotted overrides
applied (strictly: an unknown key raises `ConfigError`). Ray 2.60 runs Train V2, where
`Tuner(TorchTrainer)` fails, so a trial is a *driver function*: it builds the run config,
calls a run function (default `mllmcl_ray.runner.run_and_evaluate`, which builds and fits its
own TorchTrainer(s) per task) and reports the run's final metrics with `ray.tune.report`
(the Tune-function API; `ray.train.report` is the V2 API for code inside Train workers).

Every trial writes into the base config's `output_dir` (made absolute on the driver): run
ids are `<name>-<hash of the whole config>` (train/continual.py `run_id_for`), so trials
never collide and the report reads all of them from one `<output_dir>/results` store; trial
names and output dirs therefore stay as the base config has them (an override of `name`
or `output_dir` is applied like any other key).

Search spaces (`SweepSpec.space`) map a dotted RunConfig key to
- a list: grid search over those values (Tune's `grid_search`; values may be mappings,
  e.g. whole `model` specs), or
- `{"uniform": [a, b]}`, `{"loguniform": [a, b]}`, `{"choice": [...]}`, `{"randint": [a, b]}`:
  random search, `num_samples` draws (times the grid, as Tune does).

Tune's state lives in `<storage_path>/<name>` (never `~/ray_results` unless asked):
`restore_sweep` continues an interrupted or partly failed sweep there and re-runs only
unfinished (and, by default, errored) trials; `Tuner.can_restore` says whether it can.
Tune writes CSV/JSON results and, when `tensorboardX` is importable, TensorBoard event
files per trial: `tensorboard --logdir <storage_path>/<name>`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .validate import validate_run_config
from .config import (ConfigError, ModelSpec, RunConfig, from_dict, resolve_explicit, set_dotted,
                     to_dict)

log = logging.getLogger(__name__)

RunFn = Callable[..., Any]  # run_fn(cfg, progress=bool, **run_kwargs) -> run id (str) or metrics (dict)

RANDOM_KINDS = ("uniform", "loguniform", "choice", "randint")
BASE_KEY = "base_config"  # param-space entry holding the base RunConfig as JSON
RESOURCES_KEY = "trial_resources"  # param-space entry holding the trial driver's resources
RUN_KWARGS_KEY = "run_kwargs"  # param-space entry: extra keyword arguments of the run function
RESERVED_KEYS = (BASE_KEY, RESOURCES_KEY, RUN_KWARGS_KEY)
OVERRIDES_KEY = "overrides"  # param-space entry holding the dotted overrides
DEFAULT_TRIAL_CPU = 0.01  # trial driver's CPU when Ray Train workers hold the CPUs (0 is rejected)


# ---------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------
@dataclass
class SweepSpec:
    """What a sweep varies and how Tune schedules it."""

    space: dict[str, Any] = field(default_factory=dict)  # dotted key -> list (grid) or {kind: args}
    num_samples: int = 1  # random draws (each draw runs the whole grid once)
    max_concurrent: int | None = None  # trials running at once (None: as resources allow)
    metric: str | None = None  # metric for best-trial selection (e.g. "final_vl_accuracy")
    mode: str | None = None  # "max" or "min" (with metric)
    seed: int | None = None  # seed of Tune's random sampling (reproducible draws)
    max_failures: int = 0  # Tune retries of a failed trial (the run resumes from its checkpoints)
    trial_resources: dict[str, float] | None = None  # None: 0.01 CPU with Ray Train workers, else the run's CPUs

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepSpec":
        """Strict construction from a YAML mapping (unknown keys raise ConfigError)."""
        return from_dict(cls, dict(data), "sweep")

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"sweep.num_samples must be ≥ 1, got {self.num_samples}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"sweep.max_concurrent must be ≥ 1 or null, got {self.max_concurrent}")
        if self.mode not in (None, "max", "min"):
            raise ConfigError(f"sweep.mode must be 'max' or 'min', got {self.mode!r}")
        if (self.metric is None) != (self.mode is None):
            raise ConfigError("sweep.metric and sweep.mode go together: set both or neither")


# ---------------------------------------------------------------------------------------
# dotted keys and overrides (no Ray needed)
# ---------------------------------------------------------------------------------------
def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _strip(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def check_key(dotted: str, root: type = RunConfig) -> None:
    """Raise ConfigError unless `dotted` names a field path of `root` (below a free-form
    mapping such as `method.params` or `model.llm_config` anything goes: the method or
    the model builder validates it)."""
    if not dotted or any(not part for part in dotted.split(".")):
        raise ConfigError(f"sweep key {dotted!r} is not a dotted key path")
    tp: Any = root
    walked: list[str] = []
    for part in dotted.split("."):
        tp = _strip(tp)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                where = ".".join(walked) or tp.__name__
                raise ConfigError(f"sweep key {dotted!r}: {where} has no key {part!r}; "
                                  f"valid keys are: {', '.join(sorted(names))}")
            tp = _field_type(tp, part)
        elif typing.get_origin(tp) is dict or tp is dict or tp is Any:
            return  # a free-form mapping: its owner validates the rest
        else:
            raise ConfigError(f"sweep key {dotted!r}: {'.'.join(walked)} is a "
                              f"{getattr(tp, '__name__', tp)}, not a mapping")
        walked.append(part)


def apply_overrides(base: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """A copy of `base` with dotted overrides applied; unknown keys and wrong types raise
    ConfigError (as `mllmcl run --set`)."""
    data = to_dict(base)
    for key in sorted(overrides):  # parents before children ("model" before "model.name")
        check_key(key)
        value = overrides[key]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = to_dict(value)
        set_dotted(data, key, value)
    resolve_explicit(data, overrides, log=print)  # explicit values win over derived rules
    return from_dict(RunConfig, data)


def trial_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted overrides of a Tune trial config: `{"overrides": {...}}` and/or flat
    dotted keys (everything but the reserved base-config, resources and run-kwargs entries)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if k in RESERVED_KEYS:
            continue
        if k == OVERRIDES_KEY:
            if not isinstance(v, Mapping):
                raise ConfigError(f"trial config {OVERRIDES_KEY!r} must be a mapping, got {type(v).__name__}")
            out.update(v)
        else:
            out[k] = v
    return out


def _domain(key: str, spec: Any):
    from ray import tune

    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ConfigError(f"sweep key {key!r}: empty grid")
        return tune.grid_search(list(spec))
    if isinstance(spec, Mapping):
        if len(spec) != 1 or next(iter(spec)) not in RANDOM_KINDS:
            raise ConfigError(f"sweep key {key!r}: expected a list (grid) or one of "
                              f"{{{', '.join(k + ': ...' for k in RANDOM_KINDS)}}}, got {dict(spec)!r}")
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(args, (list, tuple)) or not args:
                raise ConfigError(f"sweep key {key!r}: choice needs a non-empty list")
            return tune.choice(list(args))
        if not isinstance(args, (list, tuple)) or len(args) != 2 or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"sweep key {key!r}: {kind} needs [low, high] numbers, got {args!r}")
        lo, hi = args
        if not lo < hi:
            raise ConfigError(f"sweep key {key!r}: {kind} needs low < high, got {args!r}")
        if kind == "uniform":
            return tune.uniform(float(lo), float(hi))
        if kind == "loguniform":
            if lo <= 0:
                raise ConfigError(f"sweep key {key!r}: loguniform needs low > 0, got {lo}")
            return tune.loguniform(float(lo), float(hi))
        if not all(isinstance(a, int) for a in args):
            raise ConfigError(f"sweep key {key!r}: randint needs integers, got {args!r}")
        return tune.randint(int(lo), int(hi))  # high excluded, as numpy
    raise ConfigError(f"sweep key {key!r}: expected a list (grid) or a mapping "
                      f"({', '.join(RANDOM_KINDS)}), got {type(spec).__name__}")


def _examples(spec: Any) -> list[Any]:
    """Values a space entry can take, for validating against the base config up front."""
    if isinstance(spec, (list, tuple)):
        return list(spec)
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return list(args)
    lo, hi = args
    if kind == "randint":
        return [int(lo), int(hi) - 1]
    return [float(lo), float(hi)]


def build_param_space(spec: SweepSpec, base_cfg: RunConfig | None = None) -> dict[str, Any]:
    """Tune param space `{"overrides": {dotted key: domain}}` from a SweepSpec.

    Keys are checked against RunConfig's fields; with `base_cfg`, every grid/choice value
    and both ends of a range are also applied to it, so type errors surface before any
    trial starts."""
    if not isinstance(spec, SweepSpec):
        raise ConfigError(f"expected a SweepSpec, got {type(spec).__name__}")
    if not spec.space:
        raise ConfigError("sweep.space is empty: name at least one dotted key to vary")
    overrides: dict[str, Any] = {}
    for key in sorted(spec.space):
        check_key(key)
        overrides[key] = _domain(key, spec.space[key])
    if base_cfg is not None:
        for key in sorted(spec.space):
            for v in _examples(spec.space[key]):
                apply_overrides(base_cfg, {key: v})
    return {OVERRIDES_KEY: overrides}


def grid_size(spec: SweepSpec) -> int:
    """How many trials the sweep launches (grid points × num_samples)."""
    n = 1
    for v in spec.space.values():
        if isinstance(v, (list, tuple)):
            n *= len(v)
    return n * spec.num_samples


# ---------------------------------------------------------------------------------------
# convenience spaces for the papers (merge several with {**a, **b})
# ---------------------------------------------------------------------------------------
def model_scale_space(specs: list[ModelSpec | Mapping[str, Any]]) -> dict[str, list]:
    """Grid over whole model specs (the scaling axis): `{"model": [spec dicts]}`."""
    if not specs:
        raise ConfigError("model_scale_space needs at least one model spec")
    return {"model": [to_dict(from_dict(ModelSpec, s if isinstance(s, ModelSpec) else dict(s), "model"))
                      for s in specs]}


def soft_target_alpha_space(alphas: list[float] = (0.0, 0.001, 0.01, 0.1)) -> dict[str, list]:
    """Soft-target α (Srivastava et al.): probability mass moved off the target token."""
    return {"method.params.soft_targets.alpha": [float(a) for a in alphas]}


def lora_rank_space(ranks: list[int] = (8, 32, 128)) -> dict[str, list]:
    """LoRA rank r."""
    return {"method.params.lora.rank": [int(r) for r in ranks]}


def moelora_experts_space(experts: list[int] = (2, 4, 8)) -> dict[str, list]:
    """Number of MoELoRA experts."""
    return {"method.params.moelora.experts": [int(e) for e in experts]}


# ---------------------------------------------------------------------------------------
# the trial
# ---------------------------------------------------------------------------------------
def _default_run_fn() -> RunFn:
    from .runner import run_and_evaluate

    return run_and_evaluate


def final_metrics(results_dir: str | os.PathLike, run_id: str) -> dict[str, Any]:
    """Summary of a finished run from its result rows: for each (split, metric), the mean
    over datasets after the base model (`base_<split>_<metric>`) and after the last task
    (`final_<split>_<metric>`), plus `tasks_trained`."""
    from .results import ResultStore

    out: dict[str, Any] = {"run_id": run_id}
    df = ResultStore(results_dir).read({"run_id": run_id})
    if df.empty:
        out["tasks_trained"] = 0
        return out
    last = int(df["trained_task_index"].max())
    out["tasks_trained"] = last
    for label, k in (("base", 1), ("final", last)):
        sub = df[df["trained_task_index"] == k]
        for (split, metric), g in sub.groupby(["split", "metric"], sort=True):
            vals = [float(v) for v in g["value"] if v is not None and not math.isnan(float(v))]
            if vals:
                out[f"{label}_{split}_{metric}"] = sum(vals) / len(vals)
    out.update(_cl_metrics(df, run_id))
    return out


def _cl_metrics(df, run_id: str) -> dict[str, float]:
    """Final NL Δ (Srivastava Eq. 1) and MAA / BWT over the VL tasks (CoIN), where the rows
    allow them."""
    from . import metrics as M

    out: dict[str, float] = {}
    nl = M.nl_delta_table(df)
    nl = nl[nl["run_id"] == run_id]
    if len(nl):
        last = nl.sort_values("trained_task_index").iloc[-1]
        for k in ("delta_nl", "delta_nlu", "delta_nlg"):
            if not math.isnan(float(last[k])):
                out[f"final_{k}"] = float(last[k])
    summ = M.cl_summary(df[df["split"] == "vl"]) if (df["split"] == "vl").any() else None
    if summ is not None and len(summ):
        r = summ.iloc[0]
        for k in ("maa", "bwt"):
            if not math.isnan(float(r[k])):
                out[f"final_{k}"] = float(r[k])
    return out


def task_metrics(results_dir: str | os.PathLike, run_id: str) -> list[dict[str, Any]]:
    """One dict per trained task of a run (what a tracker plots over tasks): the task's
    index and name, the mean of each (split, metric) over datasets, and its NL Δ."""
    from . import metrics as M
    from .results import ResultStore

    df = ResultStore(results_dir).read({"run_id": run_id})
    if df.empty:
        return []
    nl = M.nl_delta_table(df).set_index("trained_task_index")
    out = []
    for k, sub in df.groupby("trained_task_index", sort=True):
        row: dict[str, Any] = {"run_id": run_id, "trained_task_index": int(k),
                               "trained_task": str(sub["trained_task"].iloc[0])}
        for (split, metric), g in sub.groupby(["split", "metric"], sort=True):
            vals = [float(v) for v in g["value"] if v is not None and not math.isnan(float(v))]
            if vals:
                row[f"{split}_{metric}"] = sum(vals) / len(vals)
        if k in nl.index and not math.isnan(float(nl.loc[k, "delta_nl"])):
            row["delta_nl"] = float(nl.loc[k, "delta_nl"])
        out.append(row)
    return out


def run_trial(config: Mapping[str, Any], base_cfg: RunConfig | None = None, run_fn: RunFn | None = None,
              progress: bool = False) -> dict[str, Any]:
    """One trial without Tune: build the trial's RunConfig, run it, return its metrics.

    The base config comes from `base_cfg` or the trial config's `base_config` entry (JSON,
    put there by `run_sweep` so that `restore_sweep` needs no base config). The run
    function is called as `run_fn(cfg, progress=..., **config["run_kwargs"])`."""
    return _trial(config, base_cfg, run_fn, progress)[0]


def _trial(config, base_cfg, run_fn, progress) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(final metrics, per-task metrics) of one trial (per-task only for run ids)."""
    if base_cfg is None:
        if BASE_KEY not in config:
            raise ConfigError(f"no base config: pass base_cfg or put {BASE_KEY!r} in the param space")
        raw = config[BASE_KEY]
        base_cfg = from_dict(RunConfig, json.loads(raw) if isinstance(raw, str) else raw)
    overrides = trial_overrides(config)
    cfg = apply_overrides(base_cfg, overrides)
    if run_fn is None:  # the real run: everything knowable fails here, before the trial's work
        validate_run_config(cfg)
    fn = run_fn or _default_run_fn()
    out = fn(cfg, progress=progress, **dict(config.get(RUN_KWARGS_KEY) or {}))
    history: list[dict[str, Any]] = []
    if isinstance(out, Mapping):
        metrics = dict(out)
    elif isinstance(out, str):
        metrics = final_metrics(Path(cfg.output_dir) / "results", out)
        history = task_metrics(Path(cfg.output_dir) / "results", out)
    elif out is None:
        metrics = {}
    else:
        raise TypeError(f"run function returned {type(out).__name__}; expected a run id or a metrics dict")
    metrics.setdefault("run_name", cfg.name)
    return metrics, history


def _pgf(resources: Mapping[str, float]):
    from ray.tune import PlacementGroupFactory

    bundle = {}
    for k, v in resources.items():
        key = {"cpu": "CPU", "gpu": "GPU"}.get(k.lower(), k)
        if v:
            bundle[key] = float(v)
    if not bundle.get("CPU"):
        bundle["CPU"] = DEFAULT_TRIAL_CPU  # Tune rejects an empty/zero request
    return PlacementGroupFactory([bundle])


def _resources_from_config(config: Mapping[str, Any]):
    """Trial resources from the trial config (saved with the experiment, so a restored
    sweep asks for what the original did)."""
    res = config.get(RESOURCES_KEY)
    if not res and BASE_KEY in config:
        raw = config[BASE_KEY]
        res = default_trial_resources(from_dict(RunConfig, json.loads(raw) if isinstance(raw, str) else raw))
    return _pgf(res or {"cpu": DEFAULT_TRIAL_CPU})


def make_trainable(base_cfg: RunConfig | None = None, run_fn: RunFn | None = None, *,
                   resources: Mapping[str, float] | None = None, progress: bool = False):
    """The Tune trainable: a function trial wrapped with `tune.with_resources`.

    `resources`: a fixed request (e.g. `{"cpu": 0.01}`: the trial only drives, Ray Train
    workers hold the CPUs/GPUs; Tune rejects 0). None: read from the trial config's
    `trial_resources` entry (put there by `run_sweep`), else 0.01 CPU."""
    from ray import tune

    def mllmcl_trial(config: dict) -> None:
        metrics, history = _trial(config, base_cfg, run_fn, progress)
        # Tune-function API in Ray 2.60 (ray.train.report is V2 Train's): one result per
        # trained task (trackers plot them over training_iteration), then the final one
        for row in history[:-1]:
            tune.report(row)
        tune.report({**(history[-1] if history else {}), **metrics})

    return tune.with_resources(mllmcl_trial, _pgf(resources) if resources else _resources_from_config)


def default_trial_resources(base_cfg: RunConfig) -> dict[str, float]:
    """0.01 CPU when Ray Train workers do the work; else the in-process run's CPUs (and a
    GPU when the run uses one)."""
    t = base_cfg.trainer
    if t.num_workers > 0:
        return {"cpu": DEFAULT_TRIAL_CPU}
    res = {"cpu": float(t.threads_per_worker or max(1.0, t.cpus_per_worker))}
    if t.use_gpu:
        res["gpu"] = 1.0
    return res


# ---------------------------------------------------------------------------------------
# running and restoring
# ---------------------------------------------------------------------------------------
def sweep_dataframe(result_grid) -> Any:
    """`ResultGrid.get_dataframe()` (one row per trial that reported), plus a row for every
    trial that errored or never finished (`error` holds the error text, else None), and
    without the bookkeeping columns (base config JSON, trial resources).

    `df.attrs`: `experiment_path`, `num_trials` (trials created so far), `num_finished`,
    `num_errors`, `num_unfinished`; `run_sweep` adds `num_expected` (grid × samples). Fewer
    finished than expected (an interrupted fit, errors): continue with
    `restore_sweep(df.attrs["experiment_path"], run_fn)`."""
    import pandas as pd
    from ray.tune.utils import flatten_dict

    df = result_grid.get_dataframe()
    if "error" not in df.columns:
        df["error"] = None
    reported = set(df["trial_id"]) if "trial_id" in df.columns else set()
    extra, n_err, n_unfinished = [], 0, 0
    for r in result_grid:
        if r.error is not None:
            n_err += 1
        if (r.metrics or {}).get("trial_id") in reported and r.error is None:
            continue
        if r.error is None:
            n_unfinished += 1
        row = {f"config/{k}": v for k, v in flatten_dict(dict(r.config or {}), delimiter="/").items()}
        row.update({"logdir": Path(r.path).name if r.path else None,
                    "error": None if r.error is None else str(r.error).strip().splitlines()[-1]})
        extra.append(row)
    if extra:
        df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    drop = [c for c in df.columns if any(c == f"config/{k}" or c.startswith(f"config/{k}/")
                                         for k in RESERVED_KEYS)]
    df = df.drop(columns=drop)
    df.attrs.update(experiment_path=getattr(result_grid, "experiment_path", None),
                    num_trials=len(result_grid), num_errors=n_err, num_unfinished=n_unfinished,
                    num_finished=len(result_grid) - n_err - n_unfinished)
    return df


def _absolute(cfg: RunConfig) -> RunConfig:
    """Tune runs trials in their own working directories: make output_dir absolute."""
    if "://" in cfg.output_dir:
        return cfg
    return dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir).expanduser().resolve()))


def _storage(storage_path: str | os.PathLike) -> str:
    s = str(storage_path)
    return s.rstrip("/") if "://" in s else str(Path(s).expanduser().resolve())


def experiment_path(storage_path: str | os.PathLike, name: str) -> str:
    """`<storage_path>/<name>`: where Tune keeps the sweep's state (restore from here)."""
    return f"{_storage(storage_path)}/{name}"


def run_sweep(base_cfg: RunConfig, spec: SweepSpec, storage_path: str | os.PathLike, name: str,
              run_fn: RunFn | None = None, resume: bool = False, *, progress: bool = False,
              study: str | None = None, run_kwargs: Mapping[str, Any] | None = None,
              verbose: int | None = None, callbacks: list | None = None):
    """Run a sweep (or, with `resume=True` and a restorable experiment at
    `<storage_path>/<name>`, continue it with `restore_sweep`).

    Trials write results into the base config's `output_dir` (one shared result store).
    Returns `ResultGrid.get_dataframe()`: one row per trial with the reported metrics and
    `config/overrides/<dotted key>` columns. `progress` is passed to the run function
    (per-trial logs, forwarded by Ray with a trial prefix); so are `study` (the result
    rows' study name, `run_and_evaluate(study=...)`) and `run_kwargs`, saved with the
    experiment for `restore_sweep`. Tune's reporter shows trial progress in the terminal
    (`verbose`: 0 silent, 1 status, 2 with results). `callbacks`: extra Tune callbacks."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    path = experiment_path(storage_path, name)
    if resume and tune.Tuner.can_restore(path):
        return restore_sweep(path, run_fn, progress=progress)
    base_cfg = _absolute(base_cfg)
    param_space = build_param_space(spec, base_cfg)
    param_space[BASE_KEY] = json.dumps(to_dict(base_cfg), sort_keys=True)
    param_space[RESOURCES_KEY] = dict(spec.trial_resources or default_trial_resources(base_cfg))
    kwargs = dict(run_kwargs or {})
    if study is not None:
        kwargs["study"] = study
    if kwargs:
        param_space[RUN_KWARGS_KEY] = kwargs
    tuner = tune.Tuner(
        make_trainable(None, run_fn, progress=progress),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
            # BasicVariantGenerator's own limit: Tune ignores max_concurrent_trials with a
            # SearchGenerator instance (and warns)
            search_alg=BasicVariantGenerator(max_concurrent=spec.max_concurrent or 0,
                                             random_state=spec.seed),
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=_storage(storage_path), verbose=verbose, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        ),
    )
    df = sweep_dataframe(tuner.fit())
    df.attrs["num_expected"] = grid_size(spec)
    if df.attrs["num_finished"] < df.attrs["num_expected"]:
        log.warning("sweep %s: %d of %d trials finished (%d errored); continue with "
                    "restore_sweep(%r, run_fn) or run_sweep(..., resume=True)", name,
                    df.attrs["num_finished"], df.attrs["num_expected"], df.attrs["num_errors"], path)
    return df


def can_restore(path: str | os.PathLike) -> bool:
    """Whether `path` (= `<storage_path>/<name>`) holds a Tune experiment to restore."""
    from ray import tune

    return tune.Tuner.can_restore(str(path))


def restore_sweep(path: str | os.PathLike, run_fn: RunFn | None = None, *, restart_errored: bool = True,
                  progress: bool = False):
    """Continue the sweep at `path` (= `<storage_path>/<name>`): finished trials are kept,
    unfinished ones run again and, with `restart_errored`, so do errored ones (from
    scratch for Tune; the continual run itself resumes from its own checkpoints and skips
    result rows already stored). Base config and trial resources come from the saved
    param space, so only the run function is needed."""
    from ray import tune

    path = str(path)
    if not tune.Tuner.can_restore(path):
        raise FileNotFoundError(f"no Tune experiment to restore at {path}")
    tuner = tune.Tuner.restore(path, trainable=make_trainable(None, run_fn, progress=progress),
                               resume_unfinished=True, restart_errored=restart_errored)
    return sweep_dataframe(tuner.fit())


# ---------------------------------------------------------------------------------------
# grids of runs: what studies run (Tune or sequential), dry runs, command-line overrides
# ---------------------------------------------------------------------------------------
def expand_grid(space: Mapping[str, list]) -> list[dict]:
    """All combinations of a {dotted key: [values]} grid, in a stable order."""
    import itertools

    keys = list(space)
    for k in keys:
        if not isinstance(space[k], (list, tuple)) or not space[k]:
            raise ConfigError(f"grid key {k!r}: expected a non-empty list of values, got {space[k]!r}")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]


def load_run_config(path: str | os.PathLike, sets: list[str] | None = None) -> RunConfig:
    """A RunConfig from YAML plus `--set key=value` overrides (strict, as the grids)."""
    from .config import load_yaml

    return apply_config_overrides(from_dict(RunConfig, load_yaml(path)), sets=sets)


def apply_config_overrides(base: RunConfig, config: str | os.PathLike | None = None,
                           sets: list[str] | None = None, workers: int | None = None) -> RunConfig:
    """A copy of `base` with a YAML file of RunConfig fields merged over it (`--config`),
    then `--set key=value` overrides (strict dotted keys), then `--workers`."""
    from .config import _deep_update, load_yaml, parse_override

    data = to_dict(base)
    if config:
        _deep_update(data, load_yaml(config), "")
    cfg = from_dict(RunConfig, data)
    overrides = dict(parse_override(s) for s in sets or [])
    if workers is not None:
        overrides["trainer.num_workers"] = int(workers)
    return apply_overrides(cfg, overrides) if overrides else cfg


TRACKERS = ("tensorboard", "wandb", "mlflow")


def tracker_callbacks(tracker: str | None, storage: str | os.PathLike, project: str) -> list:
    """Ray Tune logger callbacks for `--tracker`, all offline (nothing leaves the machine):
    tensorboard event files per trial (beside Tune's state), a W&B offline run dir, or an
    MLflow file store at `<storage>/mlruns`. Trials report once per trained task (the
    per-task means and NL Δ) and a final result with Δ, MAA and BWT."""
    if tracker is None:
        return []
    if tracker == "tensorboard":
        try:
            from ray.tune.logger import TBXLoggerCallback
            import tensorboardX  # noqa: F401
        except ImportError:
            raise ConfigError("--tracker tensorboard needs tensorboardX: pip install tensorboardX") from None
        return [TBXLoggerCallback()]
    if tracker == "wandb":
        try:
            import wandb  # noqa: F401
            from ray.air.integrations.wandb import WandbLoggerCallback
        except ImportError:
            raise ConfigError("--tracker wandb needs wandb: pip install wandb") from None
        os.environ["WANDB_MODE"] = "offline"  # read by the callback's setup on the driver
        return [WandbLoggerCallback(project=project, mode="offline", dir=str(storage))]
    if tracker == "mlflow":
        try:
            import mlflow  # noqa: F401
            from ray.air.integrations.mlflow import MLflowLoggerCallback
        except ImportError:
            raise ConfigError("--tracker mlflow needs mlflow: pip install mlflow") from None
        uri = Path(storage).resolve() / "mlruns"
        return [MLflowLoggerCallback(tracking_uri=uri.as_uri(), experiment_name=project)]
    raise ConfigError(f"unknown tracker {tracker!r}; choose among {', '.join(TRACKERS)}")


def run_study(base: RunConfig, space: Mapping[str, list], *, study: str, use_tune: bool = True,
              max_concurrent: int = 2, progress: bool = True, log=print,
              tracker: str | None = None) -> list[str]:
    """Run every combination of `space` over `base` (continual run + evaluation each).

    With `use_tune` the combinations are Ray Tune trials (`run_sweep`: each trial a driver
    function running its own continual run, `max_concurrent` at a time; restorable); a
    single combination runs in this process unless a `tracker` wants Tune's loggers.
    Without Tune they run one after another here. Returns run ids."""
    from .config import config_hash

    combos = expand_grid(space)
    for c in combos:  # validate every combination before spending compute
        apply_overrides(base, c)
    if tracker and not use_tune:
        raise ConfigError("--tracker logs through Ray Tune's callbacks: drop --no-tune")
    if use_tune and (len(combos) > 1 or tracker):
        spec = SweepSpec(space={k: list(v) for k, v in space.items()}, max_concurrent=max_concurrent)
        # one Tune experiment per (base config, grid): rerunning the same study restores it
        # (only unfinished trials run again); a changed grid starts a new experiment, and
        # finished runs are still skipped because run ids hash their configs.
        storage = str(Path(base.output_dir).resolve() / "tune")
        name = f"{study}-{config_hash({'base': to_dict(base), 'space': dict(space)})}"
        df = run_sweep(base, spec, storage_path=storage, name=name, study=study,
                       resume=can_restore(str(Path(storage) / name)),
                       callbacks=tracker_callbacks(tracker, storage, study) or None)
        return df["run_id"].dropna().astype(str).tolist() if "run_id" in df else []
    from .runner import run_and_evaluate

    ids = []
    for i, c in enumerate(combos):
        log(f"=== {study}: run {i + 1}/{len(combos)}: {combo_label(c)}")
        ids.append(run_and_evaluate(apply_overrides(base, c), progress=progress, study=study, log=log))
    return ids


def combo_label(combo: Mapping[str, Any]) -> str:
    """One grid point for a log line: a named config (model, method) by its name and any
    params, other values as they are ("model=micro-s, method=rehearsal {...}, seed=1")."""
    parts = []
    for key, value in combo.items():
        if isinstance(value, Mapping) and "name" in value:
            params = value.get("params")
            parts.append(f"{key}={value['name']}" + (f" {params}" if params else ""))
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def dry_run(base: RunConfig, space: Mapping[str, list], study: str, log=print) -> int:
    """Validate every run of a grid without training or downloading.

    Returns 0 when every run passes `validate_run_config`, 2 (the user-error status) when
    any fails; each failing run's error is printed as one line."""
    from .errors import USER_ERROR_EXIT, one_line
    from .validate import validate_run_config

    combos = expand_grid(space)
    bad = 0
    for i, c in enumerate(combos):
        cfg = apply_overrides(base, c)
        try:  # resources are checked where the run starts (the cluster may differ)
            notes = validate_run_config(cfg, check_resources=False)
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


__all__ = [
    "SweepSpec", "build_param_space", "check_key", "apply_overrides", "trial_overrides", "grid_size",
    "model_scale_space", "soft_target_alpha_space", "lora_rank_space", "moelora_experts_space",
    "final_metrics", "run_trial", "make_trainable", "default_trial_resources", "run_sweep",
    "restore_sweep", "can_restore", "sweep_dataframe", "experiment_path", "task_metrics",
    "expand_grid", "load_run_config", "apply_config_overrides", "tracker_callbacks", "TRACKERS",
    "run_study", "dry_run",
]
