"""The Parquet result store (docs/architecture.md, "Result rows").

A store is a directory of Parquet part files (``part-<time>-<uuid>.parquet``), one per
``append``. Writes are atomic: a part is written to a hidden temp file in the same
directory (``.part-….parquet.tmp``), flushed and fsync'ed, then ``os.replace``d into its
final name and the directory fsync'ed. A writer killed mid-write leaves at most a hidden
temp file, which readers never list (Arrow / pandas also skip names starting with ".")
and the next ``append`` deletes. Appends hold an exclusive ``flock`` on ``.lock`` in the
directory while they check keys and write, so concurrent appends from several processes
neither lose rows nor write a key twice.

Rows are keyed; re-appending a key is skipped (reruns skip what is there):

* :class:`ResultStore` (``root/``): one row per scored metric, key
  ``(run_id, trained_task_index, eval_task, dataset, metric, epoch)``. ``epoch`` is 0 for
  the end of a task and e ≥ 1 for an evaluation after epoch e inside it (EMT protocol,
  `TaskSpec.eval_every_epoch`); a row given without it (or with None), and a part written
  before the column existed, read as epoch 0.
* :class:`PredictionStore` (``root/predictions/``): one row per scored sample, key
  ``(run_id, trained_task_index, eval_task, dataset, sample_id)``.

``ResultStore.read`` lists only the parts directly in ``root`` (not ``predictions/``).

Results and predictions commit together (`commit_rows`): a dataset's prediction rows are
written first and its result rows last, so a stored result row marks the dataset done
with its predictions; a writer killed in between leaves predictions without results, and
the rerun recomputes the dataset (its result keys are missing) and replaces them. A
dataset recomputed because what it was scored on changed (`Evaluator.pending`) has its
old rows removed first (`delete_groups`: the parts holding them are rewritten atomically).

Corrupt or empty parts: readers skip them with a warning naming the file
(`UnreadablePartWarning`), so their keys count as missing and a rerun recomputes them;
``mllmcl results --repair`` (`repair`) moves them aside into ``quarantine/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "RESULT_SCHEMA",
    "RESULT_KEY",
    "RESULT_DEFAULTS",
    "PREDICTION_SCHEMA",
    "PREDICTION_KEY",
    "ResultStore",
    "PredictionStore",
    "summary_table",
    "commit_rows",
    "UnreadablePartWarning",
]


class UnreadablePartWarning(UserWarning):
    """A Parquet part could not be read and was skipped (`mllmcl results --repair`)."""

RESULT_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("study", pa.string()),
        ("model", pa.string()),
        ("scale", pa.float64()),
        ("method", pa.string()),
        ("method_params", pa.string()),
        ("seed", pa.int64()),
        ("trained_task_index", pa.int64()),
        ("trained_task", pa.string()),
        ("eval_task", pa.string()),
        ("eval_task_index", pa.int64()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("n", pa.int64()),
        ("time", pa.float64()),
        ("checkpoint_id", pa.string()),
        ("eval_set_hash", pa.string()),
        ("prompt_version", pa.string()),
        ("decoding", pa.string()),
        ("epoch", pa.int64()),
    ]
)
RESULT_KEY = ("run_id", "trained_task_index", "eval_task", "dataset", "metric", "epoch")
# columns a row may leave out (older writers), with the value they then take
RESULT_DEFAULTS = {"epoch": 0}

PREDICTION_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("trained_task_index", pa.int64()),
        ("eval_task", pa.string()),
        ("dataset", pa.string()),
        ("sample_id", pa.string()),
        ("prompt", pa.string()),
        ("output", pa.string()),
        ("reference", pa.string()),
        ("correct", pa.float64()),
        ("extra", pa.string()),
        ("epoch", pa.int64()),
    ]
)
PREDICTION_KEY = ("run_id", "trained_task_index", "eval_task", "dataset", "sample_id", "epoch")

_PART_PREFIX = "part-"
_PART_SUFFIX = ".parquet"
_TMP_SUFFIX = ".tmp"
_LOCK_NAME = ".lock"


def _short(row: Mapping[str, Any], key: Sequence[str]) -> str:
    shown = {k: row.get(k) for k in key if k in row}
    return repr(shown) if shown else repr(dict(list(row.items())[:4]))


def _coerce(value: Any, typ: pa.DataType, col: str, where: str) -> Any:
    if value is None:
        raise ValueError(f"{where}: column {col!r} is None")
    if pa.types.is_string(typ):
        if isinstance(value, str):
            return str(value)
    elif pa.types.is_int64(typ):
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return int(value)
    elif pa.types.is_float64(typ):
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
            return float(value)
    else:  # pragma: no cover - schemas above only use these three
        raise TypeError(f"unsupported column type {typ}")
    raise ValueError(f"{where}: column {col!r} must be {typ}, got {type(value).__name__} {value!r}")


class _PartStore:
    """Shared mechanism: validated, keyed, atomic appends of Parquet part files."""

    schema: pa.Schema
    key: tuple[str, ...]
    defaults: Mapping[str, Any] = {}  # columns a row may omit -> their value
    kind = "row"

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory)
        self._key_cache: dict[str, set[tuple]] = {}

    # -- validation ------------------------------------------------------------------

    def _prepare(self, col: str, value: Any, where: str) -> Any:
        return value

    def validate(self, rows: Iterable[Mapping[str, Any]]) -> list[dict]:
        """Check every row against the schema; returns coerced copies.

        Raises ``ValueError`` naming the row and the column for a missing or unknown
        column, a None, or a value of the wrong type.
        """
        names = self.schema.names
        out = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ValueError(f"{self.kind} {i}: expected a dict, got {type(row).__name__}")
            if self.defaults:  # an omitted (or None) defaulted column takes its default
                row = {**row, **{c: v for c, v in self.defaults.items() if row.get(c) is None}}
            where = f"{self.kind} {i} {_short(row, self.key)}"
            missing = [c for c in names if c not in row]
            if missing:
                raise ValueError(f"{where}: missing column {missing[0]!r}" + (f" (and {missing[1:]})" if missing[1:] else ""))
            unknown = [c for c in row if c not in names]
            if unknown:
                raise ValueError(f"{where}: unknown column {unknown[0]!r}")
            clean = {}
            for field in self.schema:
                v = self._prepare(field.name, row[field.name], where)
                clean[field.name] = _coerce(v, field.type, field.name, where)
            out.append(clean)
        return out

    # -- files -----------------------------------------------------------------------

    def _parts(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(
            p
            for p in self.path.iterdir()
            if p.name.startswith(_PART_PREFIX) and p.name.endswith(_PART_SUFFIX) and p.is_file()
        )

    def _temp_files(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return [p for p in self.path.iterdir() if p.name.startswith("." + _PART_PREFIX) and p.name.endswith(_TMP_SUFFIX)]

    @contextlib.contextmanager
    def _locked(self):
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / _LOCK_NAME, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _write_part(self, rows: list[dict]) -> Path:
        table = pa.Table.from_pylist(rows, schema=self.schema)
        name = f"{_PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex}{_PART_SUFFIX}"
        final = self.path / name
        tmp = self.path / f".{name}{_TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    # -- public API --------------------------------------------------------------------

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Validate and write ``rows`` as one new part; rows whose key is already stored
        (or repeated earlier in ``rows``) are dropped. Returns the number written.
        Leftover temp files of killed writers are deleted."""
        clean = self.validate(rows)
        with self._locked():
            for tmp in self._temp_files():
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            if not clean:
                return 0
            seen = set(self.keys())
            new = []
            for r in clean:
                k = tuple(r[c] for c in self.key)
                if k in seen:
                    continue
                seen.add(k)
                new.append(r)
            if new:
                part = self._write_part(new)
                self._key_cache[part.name] = {tuple(r[c] for c in self.key) for r in new}
            return len(new)

    def _read_part_raw(self, path: Path, columns: Sequence[str] | None = None) -> pa.Table:
        """One part, with a column it predates filled with its default (``defaults``)."""
        have = set(pq.read_schema(path).names)
        want = list(columns) if columns else list(self.schema.names)
        t = pq.read_table(path, columns=[c for c in want if c in have])
        for c in want:
            if c not in have:
                if c not in self.defaults:
                    raise ValueError(f"{path}: column {c!r} is missing")
                t = t.append_column(self.schema.field(c),
                                    pa.array([self.defaults[c]] * t.num_rows,
                                             type=self.schema.field(c).type))
        return t.select(want)

    def _read_part(self, p: Path, columns: Sequence[str] | None = None) -> pa.Table | None:
        """One part's table, or None (with a warning naming the file) if it is unreadable."""
        try:
            return self._read_part_raw(p, columns).cast(
                self.schema if columns is None else
                pa.schema([self.schema.field(c) for c in columns]))
        except (pa.ArrowException, OSError, KeyError, ValueError) as e:
            warnings.warn(f"skipping unreadable {self.kind} part {p} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); its keys count as "
                          "missing (a rerun recomputes them); `mllmcl results --repair` moves "
                          "it aside", UnreadablePartWarning, stacklevel=3)
            return None

    def _read_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        parts = self._parts()
        tables = [t for t in (self._read_part(p, columns) for p in parts) if t is not None]
        if not tables:
            schema = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables)

    def unreadable_parts(self) -> list[tuple[Path, str]]:
        """(part, reason) for every part that cannot be read whole against the schema."""
        bad = []
        for p in self._parts():
            try:
                self._read_part_raw(p).cast(self.schema)
            except (pa.ArrowException, OSError, KeyError, ValueError) as e:
                bad.append((p, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        return bad

    def repair(self) -> list[tuple[Path, Path, str]]:
        """Move unreadable parts into ``quarantine/`` (under the lock); returns (from, to,
        reason) per moved part. Their keys are then missing and a rerun recomputes them."""
        moved = []
        with self._locked():
            bad = self.unreadable_parts()
            if bad:
                q = self.path / "quarantine"
                q.mkdir(exist_ok=True)
                for p, why in bad:
                    dst = q / p.name
                    os.replace(p, dst)
                    self._key_cache.pop(p.name, None)
                    moved.append((p, dst, why))
        return moved

    def delete_groups(self, groups: Iterable[Mapping[str, Any]]) -> int:
        """Remove every row matching one of `groups` (each a {column: value} mapping):
        the parts holding such rows are rewritten without them (atomically, under the
        lock). Returns the number of rows removed."""
        groups = [dict(g) for g in groups]
        if not groups or not self.path.is_dir():
            return 0
        cols = sorted({c for g in groups for c in g})

        def match(t: pa.Table):
            mask = None
            for g in groups:
                m = None
                for col, val in g.items():
                    c = pc.equal(t[col], pa.scalar(val, type=self.schema.field(col).type))
                    m = c if m is None else pc.and_(m, c)
                mask = m if mask is None else pc.or_(mask, m)
            return mask, int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)

        removed = 0
        with self._locked():
            for p in self._parts():
                t = self._read_part(p, cols)  # the group columns only, to find the hits
                if t is None or not match(t)[1]:
                    continue
                t = self._read_part(p)
                if t is None:
                    continue
                mask, hit = match(t)
                keep = t.filter(pc.invert(mask))
                if keep.num_rows:
                    new = self._write_part(keep.to_pylist())
                    self._key_cache[new.name] = {tuple(r[c] for c in self.key)
                                                 for r in keep.select(list(self.key)).to_pylist()}
                os.remove(p)
                self._key_cache.pop(p.name, None)
                removed += hit
        return removed

    def read(self, filters: Mapping[str, Any] | None = None, columns: Sequence[str] | None = None):
        """All stored rows as a pandas DataFrame (empty, with the schema's columns and
        dtypes, when there is no data).

        ``filters`` maps a column to a value or to a list/tuple/set of accepted values,
        e.g. ``{"run_id": "r1", "metric": ["accuracy", "judge_score"]}``.
        """
        table = self._read_table()
        for col, want in (filters or {}).items():
            if col not in self.schema.names:
                raise ValueError(f"unknown filter column {col!r}")
            values = list(want) if isinstance(want, (list, tuple, set, frozenset)) else [want]
            value_set = pa.array(values, type=self.schema.field(col).type)
            table = table.filter(pc.is_in(table[col], value_set=value_set))
        if columns is not None:
            table = table.select(list(columns))
        return table.to_pandas()

    def keys(self) -> set[tuple]:
        """The set of stored keys (tuples in ``self.key`` order)."""
        out: set[tuple] = set()
        for p in self._parts():
            ks = self._key_cache.get(p.name)
            if ks is None:
                t = self._read_part(p, self.key)
                if t is None:
                    continue
                cols = [t[c].to_pylist() for c in self.key]
                ks = set(zip(*cols))
                self._key_cache[p.name] = ks
            out |= ks
        return out | self._legacy_keys(out)

    def _legacy_keys(self, keys: set[tuple]) -> set[tuple]:
        """Nothing here; ResultStore adds the key without ``epoch`` for epoch-0 rows."""
        return set()

    def has(self, key: Sequence[Any]) -> bool:
        """Whether a row with this key is stored."""
        key = tuple(key)
        if self.defaults and len(key) == len(self.key) - len(self.defaults):
            key = key + tuple(self.defaults[c] for c in self.key[len(key):])
        if len(key) != len(self.key):
            raise ValueError(f"key must have {len(self.key)} parts {self.key}, got {key!r}")
        return key in self.keys()

    def __len__(self) -> int:
        return self._read_table(self.key).num_rows


class ResultStore(_PartStore):
    """Metric rows (docs/architecture.md "Result rows") in ``root``."""

    schema = RESULT_SCHEMA
    key = RESULT_KEY
    defaults = RESULT_DEFAULTS
    kind = "result row"

    def __init__(self, root: str | os.PathLike):
        super().__init__(root)
        self.root = Path(root)

    def _legacy_keys(self, keys: set[tuple]) -> set[tuple]:
        """End-of-task (epoch 0) rows also answer to their key without ``epoch``, the key
        callers written before the column existed look up (``has`` takes either form)."""
        return {k[:-1] for k in keys if k[-1] == 0}


class PredictionStore(_PartStore):
    """Per-sample predictions in ``root/predictions``.

    Columns: run_id, trained_task_index, eval_task, dataset, sample_id, prompt, output,
    reference (str), correct (float), extra (JSON string; a dict or list is serialised,
    a string must parse as JSON), epoch (as in result rows: 0 = end of task).
    """

    schema = PREDICTION_SCHEMA
    key = PREDICTION_KEY
    defaults = RESULT_DEFAULTS  # epoch: 0 (end of task) when a row or an older part lacks it
    kind = "prediction row"

    def __init__(self, root: str | os.PathLike):
        super().__init__(Path(root) / "predictions")
        self.root = Path(root)

    def _prepare(self, col: str, value: Any, where: str) -> Any:
        if col == "extra":
            if isinstance(value, (dict, list)):
                return json.dumps(value, sort_keys=True)
            if isinstance(value, str):
                try:
                    json.loads(value)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: column 'extra' is not valid JSON: {value[:80]!r} ({e})") from None
        return value


def commit_rows(store: ResultStore | None, predictions: PredictionStore | None,
                rows: list[dict], preds: list[dict], replace: bool = False) -> None:
    """Write one dataset's result and prediction rows so that they commit together: the
    predictions first (replacing any of the same datasets), the result rows (which mark the
    dataset done) last. With `replace` the datasets' old result rows are removed first, so
    a crash at any point leaves the result keys missing and the rerun recomputes them."""
    groups = sorted({(r["run_id"], r["trained_task_index"], r["eval_task"], r["dataset"])
                     for r in rows})
    group_maps = [dict(zip(("run_id", "trained_task_index", "eval_task", "dataset"), g))
                  for g in groups]
    if replace and store is not None:  # (the result key also has the epoch; these rows')
        epochs = sorted({int(r.get("epoch") or 0) for r in rows})
        store.delete_groups([dict(g, epoch=e) for g in group_maps for e in epochs])
    if predictions is not None:
        # predictions left by a writer killed before its result rows, or by the stale
        # scoring being replaced: the fresh ones replace them
        epochs = sorted({int(r.get("epoch") or 0) for r in rows}) or [0]
        predictions.delete_groups([dict(g, epoch=e) for g in group_maps for e in epochs])
        if preds:
            predictions.append(preds)
    if store is not None:
        store.append(rows)


# ======================================================================================
# printing
# ======================================================================================

_SUMMARY_INDEX = ["run_id", "model", "method", "trained_task_index", "trained_task"]


def summary_table(df, *, metrics: Iterable[str] | None = None):
    """Pivot result rows for ``mllmcl results``: one row per (run_id, model, method,
    trained task), one column per ``eval_task/dataset`` (``eval_task/dataset [metric]``
    for metrics other than accuracy), ordered by eval task index. Values as stored
    (fractions). ``metrics`` keeps only those metrics."""
    import pandas as pd

    if metrics is not None:
        df = df[df["metric"].isin(list(metrics))]
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=_SUMMARY_INDEX)
    d = df.copy()
    label = d["eval_task"].astype(str) + "/" + d["dataset"].astype(str)
    other = d["metric"] != "accuracy"
    label = label.where(~other, label + " [" + d["metric"].astype(str) + "]")
    d["_column"] = label
    order = (
        d[["_column", "eval_task_index", "eval_task", "dataset", "metric"]]
        .drop_duplicates("_column")
        .assign(_acc=lambda x: x["metric"] != "accuracy")
        .sort_values(["eval_task_index", "eval_task", "dataset", "_acc", "metric"], kind="stable")["_column"]
        .tolist()
    )
    wide = d.pivot_table(index=_SUMMARY_INDEX, columns="_column", values="value", aggfunc="first")
    wide = wide.reindex(columns=[c for c in order if c in wide.columns])
    wide.columns.name = None
    wide = wide.reset_index().sort_values(["run_id", "trained_task_index"], kind="stable")
    return wide.reset_index(drop=True)
