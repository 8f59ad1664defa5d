"""Up-front validation of a whole run: everything knowable before any work starts.

`validate_run_config` is what `mllmcl validate`, `mllmcl run`, every study's dry run and
every Ray Tune trial call before training (and `RayBackend` before each `fit()`: the
cluster check). It returns notes (one line each) and raises the first problem as a
`ConfigError` subclass (`errors.py`) whose one-line message names the thing and what to
do. What it checks:

- values and names: ranges are checked when the config is built (the config dataclasses'
  `__post_init__`); here the registries: recipe, method combination (each method class
  declares what it takes exclusively, `ContinualMethod.exclusive`), LLM family,
  conversation template, parallel strategy, eval backend, eval-set kinds;
- batches: the global batch is reachable for the worker count;
- models: a path-looking `model.llm` / `vision` / `tokenizer` must exist (a local LLM or
  CLIP dir needs its config.json); a hub id offline (``HF_HUB_OFFLINE=1``) must be in
  the local cache; a config.json whose `auto_map` needs remote code fails unless
  `model.trust_remote_code` is set; a local LLM's `model_type` must match `model.family`;
- training data: every source file exists, is non-empty and its first record parses
  (and, with ``missing_image: error``, its image exists);
- eval sets: non-empty, unique ids, every record valid with a valid reference for its
  kind (VQA answers, an option/exact answer, a label, a grounding box of 4 numbers in
  [0, 1] with x1 < x2 and y1 < y2); NL sets: every line builds its requests;
- resources (when Ray is initialised and the run uses Ray Train): the cluster's CPUs /
  GPUs can hold `num_workers` × resources per worker.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .config import RECIPES, ConfigError, DataSource, EvalSet, ModelSpec, RunConfig
from .errors import DataError, ModelPathError, ResourceError

__all__ = ["validate_run_config", "check_model_spec", "check_train_source", "check_eval_set",
           "check_cluster_resources", "looks_like_path"]


def validate_run_config(cfg: RunConfig, check_paths: bool = True,
                        check_resources: bool = True) -> list[str]:
    """Check a whole run without downloading or training; returns notes, raises the first
    problem (`ConfigError` family). `check_paths=False` skips files and model dirs."""
    from .methods.base import build_methods
    from .models.families import get_family
    from .models.templates import get_template
    from .train.schedule import accumulation_steps
    from .train.strategies.base import check_strategy_name

    notes: list[str] = []
    if cfg.recipe not in RECIPES:  # (also checked when the config is built)
        raise ConfigError(f"recipe {cfg.recipe!r} must be one of {', '.join(RECIPES)}")
    build_methods(cfg.method)
    _registry(get_family, cfg.model.family, "model.family")
    _registry(get_template, cfg.model.template, "model.template")
    _check_backend(cfg.eval.backend)
    world = max(1, cfg.trainer.num_workers)
    for name in ("align", "finetune"):
        st = getattr(cfg.stages, name)
        acc = accumulation_steps(st, world, name)
        check_strategy_name(st.parallel)
        notes.append(f"stages.{name}: global batch {st.global_batch_size} = {st.per_device_batch_size}"
                     f" × {world} worker(s) × {acc} accumulation step(s)")
    if not cfg.tasks:
        raise ConfigError("tasks is empty: a run needs at least one VL task")
    names = [t.name for t in cfg.tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"tasks: task name(s) {dup} appear twice; task names must be unique")
    for i, t in enumerate(cfg.tasks):
        if not t.train:
            raise ConfigError(f"tasks[{i}] ({t.name!r}): train is empty; give the task a "
                              "training file")
    all_sets = cfg.nl_sets + [e for t in cfg.tasks for e in t.eval]
    for es in all_sets:
        _check_kind(es, nl=es in cfg.nl_sets)
    notes.extend(check_model_spec(cfg.model, check_paths))
    if cfg.eval.judge and check_paths:
        notes.append(_model_ref("eval.judge", cfg.eval.judge, cfg.model, True)[0])
    if check_paths:
        for where, src in ([("align", s) for s in cfg.align] +
                           [(f"tasks.{t.name}.train", s) for t in cfg.tasks for s in t.train]):
            notes.append(check_train_source(src, where))
        for es in cfg.nl_sets:
            notes.append(check_nl_eval_set(es))
        for t in cfg.tasks:
            for es in t.eval:
                notes.append(check_eval_set(es, f"tasks.{t.name}.eval"))
    if check_resources:
        note = check_cluster_resources(cfg)
        if note:
            notes.append(note)
    return notes


# ---------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------
def _registry(get, name: str, what: str) -> None:
    try:
        get(name)
    except ConfigError:
        raise
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{what}: {e.args[0] if e.args else e}") from None


def _check_backend(name: str) -> None:
    from .eval.engine.base import ENGINES, _LAZY

    if name not in ENGINES and name not in _LAZY:
        raise ConfigError(f"eval.backend {name!r} is unknown; known: "
                          f"{', '.join(sorted(set(ENGINES) | set(_LAZY)))}")


def _check_kind(es: EvalSet, nl: bool) -> None:
    """The kind is registered (eval/kinds.py; EvalSet checks it when built) and belongs to
    the suite the set is listed under (VL/EMT sets under tasks, NL sets under nl_sets)."""
    from .eval.kinds import UnknownKindError, get_kind, known_kinds

    if nl:  # the NL kind may come from the name, `kind` or the records: check_nl_set decides
        return
    try:
        kind = get_kind(es.kind)
    except UnknownKindError as e:
        raise ConfigError(f"eval set {es.name!r}: {e}") from None
    if kind.suite == "nl":
        raise ConfigError(f"eval set {es.name!r}: kind {es.kind!r} is an NL kind; list it under "
                          f"nl_sets, or use a VL kind ({', '.join(known_kinds('vl'))})")


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------
def looks_like_path(ref: str) -> bool:
    """A local path rather than a hub id: absolute, ./ ../ ~ or more than one '/'."""
    return (ref.startswith(("/", "./", "../", "~", "."))
            or ref.count("/") > 1 or os.sep != "/" and os.sep in ref)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("0", "", "false", "False")


def _cached_config(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    got = try_to_load_from_cache(repo_id, "config.json")
    return Path(got) if isinstance(got, str) else None


def _model_ref(label: str, ref: str, spec: ModelSpec, needs_config: bool) -> tuple[str, Path | None]:
    """(note, local config.json or None) for one model reference; raises if unusable."""
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelPathError(f"{label}: {ref} is a file, not a model directory")
        cfg_file = p / "config.json"
        if needs_config and not cfg_file.exists():
            raise ModelPathError(f"{label}: {ref} has no config.json (not a saved model "
                                 "directory); point it at the directory save_pretrained wrote")
        return f"{label}: {ref} (local dir)", cfg_file if cfg_file.exists() else None
    if looks_like_path(ref):
        raise ModelPathError(f"{label}: {ref} does not exist; fix the path (or give a hub id "
                             "such as EleutherAI/pythia-160m)")
    if _offline():
        cached = _cached_config(ref)
        if cached is None:
            raise ModelPathError(f"{label}: hub id {ref!r} is not in the local cache and the hub "
                                 "is offline (HF_HUB_OFFLINE); download it first or point "
                                 f"{label} at a local dir")
        return f"{label}: {ref} (hub id, cached)", cached
    return f"{label}: {ref} (hub id: fetched at run time)", _cached_config(ref)


def check_model_spec(spec: ModelSpec, check_paths: bool = True) -> list[str]:
    """Model references exist (or are hub ids), remote code is asked for where needed, and
    a local LLM's type matches `model.family`."""
    notes = []
    if not spec.llm and not spec.llm_config:
        raise ConfigError(f"model {spec.name!r}: set model.llm (hub id or dir) or model.llm_config")
    if not spec.vision and not spec.vision_config:
        raise ConfigError(f"model {spec.name!r}: set model.vision (hub id or dir) or "
                          "model.vision_config")
    if not spec.tokenizer and not spec.llm:
        raise ConfigError(f"model {spec.name!r}: set model.tokenizer (a tokenizer dir or hub id)")
    if not check_paths:
        return notes
    for label, ref, needs in (("model.llm", spec.llm, True), ("model.vision", spec.vision, True),
                              ("model.tokenizer", spec.tokenizer, False)):
        if not ref:
            continue
        note, cfg_file = _model_ref(label, ref, spec, needs)
        notes.append(note)
        if cfg_file is None or label == "model.tokenizer":
            continue
        try:
            conf = json.loads(Path(cfg_file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelPathError(f"{label}: {cfg_file} is not valid JSON ({e}); re-save the "
                                 "model") from None
        if conf.get("auto_map") and not spec.trust_remote_code:
            raise ModelPathError(
                f"{label}: {ref} needs remote code (its config.json has auto_map "
                f"{sorted(conf['auto_map'])}); set model.trust_remote_code: true if you trust it")
        if label == "model.llm" and conf.get("model_type"):
            from .models.families import FAMILIES, get_family

            fam = get_family(spec.family)
            known = {f.model_type: f.name for f in FAMILIES.values()}
            # another family's LLM type is a mistake; other layouts (e.g. a whole llava
            # checkpoint) are the model builder's to judge
            if conf["model_type"] != fam.model_type and conf["model_type"] in known:
                raise ModelPathError(f"model.llm: {ref} is a {conf['model_type']!r} model but "
                                     f"model.family {spec.family!r} expects "
                                     f"{fam.model_type!r}; set model.family: "
                                     f"{known[conf['model_type']]}")
    return notes


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
def _existing_file(path: str, what: str) -> Path:
    if not path:
        raise DataError(f"{what}: path is empty; set it to a data file")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what}: data file {p} does not exist; fix the path (docs/data.md)")
    if p.is_dir():
        raise DataError(f"{what}: {p} is a directory, not a data file")
    if p.stat().st_size == 0:
        raise DataError(f"{what}: data file {p} is empty; give it records")
    return p


def check_train_source(src: DataSource, where: str = "train") -> str:
    """The file exists and is non-empty, its first record parses (and its image exists
    when missing images are errors). Returns a note."""
    from .data.instruct import iter_raw, validate_record

    p = _existing_file(src.path, where)
    first = next(iter(iter_raw(p)), None)
    if first is None:
        raise DataError(f"{where}: data file {p} has no records; give it records or drop the source")
    idx, raw = first
    rec = validate_record(raw, p, idx)
    root = Path(src.image_root) if src.image_root else p.parent

    def image_missing(r: dict) -> Path | None:
        if not r.get("image"):
            return None
        img = Path(r["image"])
        img = img if img.is_absolute() else root / img
        return None if img.exists() else img

    img = image_missing(rec)
    if img is not None and src.missing_image == "error":
        raise DataError(f"{p}: record {idx} (id={rec['id']}): image {img} does not exist "
                        f"(image root {root}); fix image_root or use missing_image: skip")
    if img is not None:  # skip policy: make sure some record survives (stops at the first)
        n = 0
        for n, (i, r) in enumerate(iter_raw(p), 1):
            if image_missing(validate_record(r, p, i)) is None:
                return f"{where}: {p} (record {r['id']!r} is the first with its image)"
        raise DataError(f"{where}: every record of {p} ({n}) would be skipped: none of their "
                        f"images exists under {root}; fix image_root or the image paths")
    return f"{where}: {p} (first record {rec['id']!r} OK)"


def _box_problem(bbox) -> str | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        n = len(bbox) if isinstance(bbox, (list, tuple)) else type(bbox).__name__
        return f"has {n} numbers; a box is [x1, y1, x2, y2]"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in bbox):
        return "must hold 4 finite numbers"
    x1, y1, x2, y2 = bbox
    if not all(0 <= v <= 1 for v in bbox):
        return "has a coordinate outside [0, 1] (boxes are normalised by the image size)"
    if not (x1 < x2 and y1 < y2):
        return "must have x1 < x2 and y1 < y2"
    return None


def _reference_problem(rec: dict, kind_name: str) -> str | None:
    """What is wrong with a record's reference for its kind (eval/kinds.py reads it), or
    None: a box must be 4 numbers in [0, 1] with x1 < x2, y1 < y2; answers and labels
    must be non-empty."""
    from .eval.kinds import get_kind

    kind = get_kind(kind_name)
    if kind.name == "grounding":  # checked before reading: the reader casts to float
        if "bbox" not in rec:
            return "has no 'bbox' (grounding references are [x1, y1, x2, y2])"
        prob = _box_problem(rec["bbox"])
        return f"field 'bbox' {rec['bbox']!r} {prob}" if prob else None
    if "answers" in rec and kind.reference_field.startswith("answers"):
        answers = rec["answers"]
        if not isinstance(answers, list) or not answers or \
                not all(isinstance(a, str) and a.strip() for a in answers):
            return "field 'answers' must be a non-empty list of non-empty strings"
    if kind.reference is None:
        return None
    try:
        ref = kind.reference(rec)
    except (KeyError, ValueError, TypeError) as e:
        return f"has no valid reference ({kind.reference_field or 'reference'}): {e}"
    if isinstance(ref, str) and not ref.strip():
        return f"has an empty reference ({kind.reference_field or 'answer'})"
    if isinstance(ref, list) and (not ref or not all(str(a).strip() for a in ref)):
        return f"has an empty reference ({kind.reference_field or 'answers'})"
    return None


def check_eval_set(es: EvalSet, where: str = "eval") -> str:
    """Every record of a VL eval set: valid, unique id, valid reference; non-empty."""
    from .data.instruct import read_instructions

    label = f"{where} {es.name!r}"
    p = _existing_file(es.path, label)
    ids: set[str] = set()
    n = 0
    for rec in read_instructions(DataSource(path=str(p), image_root=es.image_root)):
        if rec["id"] in ids:
            raise DataError(f"{p}: id {rec['id']!r} appears twice; eval record ids must be "
                            "unique (each keys one prediction)")
        ids.add(rec["id"])
        prob = _reference_problem(rec, es.kind)
        if prob:
            raise DataError(f"{p}: record id={rec['id']} ({es.kind} set {es.name!r}) {prob}")
        n += 1
    if n == 0:
        raise DataError(f"{label}: {p} has no records; an empty eval set cannot be scored "
                        "(give it records or drop it)")
    return f"{label}: {p} ({n} records OK)"


def check_nl_eval_set(es: EvalSet) -> str:
    from .eval.suites.nl import check_nl_set

    _existing_file(es.path, f"nl_sets {es.name!r}")
    n = check_nl_set(es)
    return f"nl_sets {es.name!r}: {es.path} ({n} records OK)"


# ---------------------------------------------------------------------------------------
# resources
# ---------------------------------------------------------------------------------------
def check_cluster_resources(cfg: RunConfig) -> str | None:
    """Ray Train runs: the cluster (when Ray is initialised) can hold num_workers × the
    resources per worker; otherwise Ray would wait forever. Returns a note or None."""
    t = cfg.trainer
    if t.num_workers < 1:
        return None
    try:
        import ray
    except ImportError:  # pragma: no cover
        return None
    if not ray.is_initialized():
        return None
    have = ray.cluster_resources()
    need = {"CPU": t.num_workers * t.cpus_per_worker}
    if t.use_gpu:
        need["GPU"] = float(t.num_workers)
    for res, amount in need.items():
        got = float(have.get(res, 0.0))
        if amount > got + 1e-9:
            per = t.cpus_per_worker if res == "CPU" else 1
            fit = int(got // per) if per else 0
            raise ResourceError(
                f"trainer.num_workers {t.num_workers} × {per:g} {res} per worker = {amount:g} "
                f"{res}, but the Ray cluster has {got:g} {res}; use at most {fit} worker(s) "
                f"(or lower trainer.cpus_per_worker, or add nodes)")
    return (f"resources: {t.num_workers} worker(s) × {t.cpus_per_worker:g} CPU"
            + (" + 1 GPU" if t.use_gpu else "") + f" fit the cluster ({have.get('CPU', 0):g} CPU"
            + (f", {have.get('GPU', 0):g} GPU" if t.use_gpu else "") + ")")
