"""The papers' formulas, as pure functions of numbers (no models, no I/O).

Units: every function is unit-agnostic. Result rows store accuracies as fractions in
[0, 1]; the papers print percentages. A Δ or BWT of percentages is in percentage points.

Sources
-------
Srivastava et al., "Improving Multimodal Large Language Models Using Continual Learning"
(``/work/shared/papers/srivastava-*.txt``):

* Appendix B.4, Eq. 1: ``Δ_t(k) = ω_t(1) − ω_t(k)`` for ``t < T``, where ``ω_t`` is the
  **harmonic mean** of the accuracies of task t's evaluation datasets (:func:`omega`,
  :func:`delta`). Positive Δ = forgetting, negative Δ = positive backward transfer.
  Task 1 is the base LLM; its "datasets" are the NL suite.
* Fig. 3a / App. Tables 2-3: "VL Avg. Acc" is the harmonic mean of the four VL datasets
  (recomputed in tests/test_metrics.py) and "NL Avg. Δ" = base NL Acc − NL Acc.
* Fig. 2b and Appendix C.3 / Fig. 6: "the NLU and NLG averages are computed as the
  **simple mean**"; the Fig. 2b "Average" row is the simple mean over the nine models.
  Hence :func:`nl_delta` defaults to ``nl_mean="harmonic"`` (Eq. 1, the overall NL Δ)
  and ``split_mean="arithmetic"`` (C.3, the NLU / NLG split). With the arithmetic mean,
  Δ of the mean equals the mean of the per-dataset Δs.

Chen et al., "CoIN: A Benchmark of Continual Instruction tuNing for Multimodel Large
Language Model" (``/work/shared/papers/chen-coin-*.txt``), Section 3.1.3:

* ``a[k][t]`` = accuracy on task t after training task k (1-based in the paper, 0-based
  here). Tasks not yet trained (t > k) are NaN.
* MAA (Mean Average Accuracy, after iCaRL [48]):
  ``MAA = 1/T Σ_{k=1..T} ( 1/k Σ_{t=1..k} a[k][t] )`` (:func:`maa`).
* BWT (Backward Transfer, after GEM [39]):
  ``BWT = 1/(T−1) Σ_{t=1..T−1} ( a[T][t] − a[t][t] )`` (:func:`bwt`, the default).
  **The numbers printed in CoIN's tables are not this formula**: every BWT in Tables
  2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14 is reproduced (to the printed 2 decimals) by
  dividing the same sum by **T** instead of T−1 (equivalently: averaging
  ``a[T][t] − a[t][t]`` over all T tasks, the last one contributing 0). Use
  ``bwt(a, divide_by="T")`` to compare with CoIN's tables; see tests/test_metrics.py.
* CoIN's "MAA" column for single-model baselines (Multi-task, Zero-shot) is the plain
  mean of the 8 task accuracies (:func:`average_accuracy`).

Beside them (common CL summaries, not defined by CoIN): MFT = mean of the diagonal
(accuracy on each task just after learning it) and MFN = mean of the last row (final
accuracy on all tasks).

Layout: pure formulas first; the pandas helpers that turn result rows
(docs/architecture.md) into matrices and tables are in the section at the bottom.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

__all__ = [
    "harmonic_mean",
    "arithmetic_mean",
    "aggregate",
    "omega",
    "delta",
    "nl_delta",
    "average_accuracy",
    "maa",
    "bwt",
    "mft",
    "mfn",
    "cl_metrics",
    "accuracy_matrix",
    "nl_delta_table",
    "cl_summary",
]

MeanKind = Literal["harmonic", "arithmetic"]


# ======================================================================================
# Means
# ======================================================================================


def _as_float_array(values: Iterable[float], what: str = "values") -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a flat sequence of numbers, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what}: empty")
    return arr


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean ``n / Σ 1/x``.

    Empty input raises ``ValueError``; any value equal to 0 gives 0.0 (the limit, and the
    convention Srivastava's tables follow, e.g. App. Table 2 "LoRA (1/2 Full Rank)": a
    GQA accuracy of 0.00 gives a VL Avg of 0.00). Negative values raise (the harmonic
    mean of accuracies is only defined for x ≥ 0). NaN in, NaN out.
    """
    arr = _as_float_array(values)
    if np.isnan(arr).any():
        return math.nan
    if (arr < 0).any():
        raise ValueError(f"harmonic_mean: negative value in {arr.tolist()}")
    if (arr == 0).any():
        return 0.0
    return float(arr.size / np.sum(1.0 / arr))


def arithmetic_mean(values: Iterable[float]) -> float:
    """Simple mean; empty input raises ``ValueError``; NaN in, NaN out."""
    return float(np.mean(_as_float_array(values)))


def aggregate(values: Iterable[float], how: MeanKind = "harmonic") -> float:
    """``harmonic_mean`` or ``arithmetic_mean`` by name."""
    if how == "harmonic":
        return harmonic_mean(values)
    if how == "arithmetic":
        return arithmetic_mean(values)
    raise ValueError(f"unknown mean {how!r}: use 'harmonic' or 'arithmetic'")


# ======================================================================================
# Srivastava Δ (App. B.4, Eq. 1)
# ======================================================================================


def omega(accs: Iterable[float]) -> float:
    """ω_t: harmonic mean of a task's dataset accuracies (Srivastava App. B.4)."""
    return harmonic_mean(accs)


def delta(omega_1: float, omega_k: float) -> float:
    """Δ_t(k) = ω_t(1) − ω_t(k) (Srivastava Eq. 1). Positive = forgetting."""
    return float(omega_1) - float(omega_k)


def _aligned(base: Mapping[str, float], after: Mapping[str, float], what: str) -> tuple[list, list]:
    if set(base) != set(after):
        raise ValueError(
            f"{what}: base datasets {sorted(base)} differ from evaluated datasets {sorted(after)}"
        )
    names = sorted(base)
    return [base[n] for n in names], [after[n] for n in names]


def nl_delta(
    base_nlu: Mapping[str, float],
    base_nlg: Mapping[str, float],
    nlu: Mapping[str, float],
    nlg: Mapping[str, float],
    *,
    nl_mean: MeanKind = "harmonic",
    split_mean: MeanKind = "arithmetic",
) -> dict[str, float]:
    """Linguistic forgetting of one model after task k, relative to the base LLM (task 1).

    Arguments map dataset name → accuracy (base model = task 1, and after task k).
    Returns ``{"delta_nl", "delta_nlu", "delta_nlg"}``:

    * ``delta_nl`` = mean(base NLU ∪ NLG) − mean(NLU ∪ NLG) with ``nl_mean``
      (default harmonic: Srivastava Eq. 1, ω over all of task 1's datasets).
    * ``delta_nlu`` / ``delta_nlg`` use ``split_mean`` (default arithmetic: Srivastava
      App. C.3 / Fig. 6 "the NLU and NLG averages are computed as the simple mean").

    A split with no datasets gives NaN for its Δ.
    """
    b_nlu, a_nlu = _aligned(base_nlu, nlu, "NLU")
    b_nlg, a_nlg = _aligned(base_nlg, nlg, "NLG")
    out: dict[str, float] = {}
    if b_nlu or b_nlg:
        out["delta_nl"] = aggregate(b_nlu + b_nlg, nl_mean) - aggregate(a_nlu + a_nlg, nl_mean)
    else:
        out["delta_nl"] = math.nan
    out["delta_nlu"] = aggregate(b_nlu, split_mean) - aggregate(a_nlu, split_mean) if b_nlu else math.nan
    out["delta_nlg"] = aggregate(b_nlg, split_mean) - aggregate(a_nlg, split_mean) if b_nlg else math.nan
    return out


# ======================================================================================
# CoIN accuracy-matrix metrics (Section 3.1.3) and MFT / MFN
# ======================================================================================


def _square(a: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    m = np.asarray(a, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square T×T with T ≥ 1, got shape {m.shape}")
    return m


def average_accuracy(accs: Iterable[float]) -> float:
    """Mean accuracy over tasks (CoIN's AA_k over t ≤ k; CoIN reports this as "MAA" for
    single-model baselines such as Multi-task and Zero-shot in Table 2)."""
    return arithmetic_mean(accs)


def maa(a: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Mean Average Accuracy (CoIN §3.1.3): ``1/T Σ_k 1/k Σ_{t≤k} a[k][t]``.

    Reads only the lower triangle including the diagonal; a NaN there gives NaN.
    """
    m = _square(a)
    T = m.shape[0]
    return float(np.mean([np.mean(m[k, : k + 1]) for k in range(T)]))


def bwt(a: Sequence[Sequence[float]] | np.ndarray, *, divide_by: Literal["T-1", "T"] = "T-1") -> float:
    """Backward transfer (CoIN §3.1.3, GEM): ``1/(T−1) Σ_{t<T} (a[T][t] − a[t][t])``.

    ``divide_by="T"`` divides the same sum by T, which is what reproduces the BWT
    values printed in CoIN's tables (see the module docstring). Negative = forgetting.
    T = 1 gives NaN (nothing to transfer back to).
    """
    m = _square(a)
    T = m.shape[0]
    if T < 2:
        return math.nan
    diffs = m[T - 1, : T - 1] - np.diag(m)[: T - 1]
    if divide_by == "T-1":
        return float(np.sum(diffs) / (T - 1))
    if divide_by == "T":
        return float(np.sum(diffs) / T)
    raise ValueError(f"divide_by must be 'T-1' or 'T', got {divide_by!r}")


def mft(a: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Mean fine-tune accuracy: mean of the diagonal a[t][t] (CoIN's "first line")."""
    return float(np.mean(np.diag(_square(a))))


def mfn(a: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Mean final accuracy: mean of the last row a[T][·] (CoIN's "second line")."""
    m = _square(a)
    return float(np.mean(m[-1, :]))


def cl_metrics(a: Sequence[Sequence[float]] | np.ndarray, *, bwt_divide_by: Literal["T-1", "T"] = "T-1") -> dict[str, float]:
    """``{"maa", "bwt", "mft", "mfn"}`` of one accuracy matrix."""
    return {"maa": maa(a), "bwt": bwt(a, divide_by=bwt_divide_by), "mft": mft(a), "mfn": mfn(a)}


# ======================================================================================
# DataFrame helpers: result rows (docs/architecture.md "Result rows") -> tables
# ======================================================================================
# Everything below only reshapes rows and calls the pure formulas above.

_RUN_COLUMNS = ("study", "model", "scale", "method", "seed")


def _run_info(df, run_id) -> dict:
    sub = df[df["run_id"] == run_id]
    info = {}
    for c in _RUN_COLUMNS:
        if c in sub.columns and len(sub):
            info[c] = sub[c].iloc[0]
    return info


def accuracy_matrix(
    df,
    run_id: str,
    metric: str = "accuracy",
    *,
    exclude: Iterable[str] = (),
) -> tuple[list[str], np.ndarray]:
    """Build CoIN's accuracy matrix for one run from result rows.

    Entry ``[i][j]`` is ω (harmonic mean over the eval task's datasets, Srivastava
    App. B.4) of eval task ``tasks[j]`` after training the task whose index equals
    ``tasks[i]``'s index (indices: the rows' ``eval_task_index`` / ``trained_task_index``).
    Tasks are the run's eval tasks (minus ``exclude``) ordered by index. Entries with
    t > k, and missing evaluations, are NaN.
    """
    sub = df[(df["run_id"] == run_id) & (df["metric"] == metric)]
    excl = set(exclude)
    if excl:
        sub = sub[~sub["eval_task"].isin(excl)]
    if sub.empty:
        return [], np.zeros((0, 0))
    pairs = sub[["eval_task", "eval_task_index"]].drop_duplicates()
    dup = pairs["eval_task"][pairs["eval_task"].duplicated()]
    if len(dup):
        raise ValueError(f"run {run_id!r}: eval task {dup.iloc[0]!r} appears with several indices")
    pairs = pairs.sort_values(["eval_task_index", "eval_task"], kind="stable")
    tasks = [str(t) for t in pairs["eval_task"]]
    index = [int(i) for i in pairs["eval_task_index"]]
    omegas = {
        (int(k), str(t)): omega(g["value"].to_numpy(dtype=float))
        for (k, t), g in sub.groupby(["trained_task_index", "eval_task"], sort=False)
    }
    T = len(tasks)
    m = np.full((T, T), np.nan)
    for i in range(T):
        for j in range(T):
            if index[j] <= index[i]:
                m[i, j] = omegas.get((index[i], tasks[j]), np.nan)
    return tasks, m


def nl_delta_table(
    df,
    *,
    nl_task: str = "nl",
    metric: str = "accuracy",
    nl_mean: MeanKind = "harmonic",
    split_mean: MeanKind = "arithmetic",
):
    """Srivastava's linguistic forgetting per run and trained task.

    Uses rows with ``eval_task == nl_task``; a dataset is NLU or NLG by its ``split``
    column. The base is the same run's ``trained_task_index == 1`` rows. Columns:
    run_id, study, model, scale, method, seed (where present), trained_task_index,
    trained_task, delta_nl, delta_nlu, delta_nlg (see :func:`nl_delta`). Rows whose
    datasets differ from the base's, or runs with no base rows, give NaN.
    """
    import pandas as pd

    cols = ["run_id", *_RUN_COLUMNS, "trained_task_index", "trained_task", "delta_nl", "delta_nlu", "delta_nlg"]
    sub = df[(df["eval_task"] == nl_task) & (df["metric"] == metric)]
    out = []
    for run_id, run in sub.groupby("run_id", sort=True):
        def split_maps(rows):
            nlu = {str(r.dataset): float(r.value) for r in rows.itertuples() if r.split == "nlu"}
            nlg = {str(r.dataset): float(r.value) for r in rows.itertuples() if r.split == "nlg"}
            return nlu, nlg

        base = run[run["trained_task_index"] == 1]
        b_nlu, b_nlg = split_maps(base)
        info = _run_info(df, run_id)
        for k, rows in run.groupby("trained_task_index", sort=True):
            nlu, nlg = split_maps(rows)
            try:
                d = nl_delta(b_nlu, b_nlg, nlu, nlg, nl_mean=nl_mean, split_mean=split_mean)
            except ValueError:
                d = {"delta_nl": math.nan, "delta_nlu": math.nan, "delta_nlg": math.nan}
            out.append(
                {
                    "run_id": run_id,
                    **info,
                    "trained_task_index": int(k),
                    "trained_task": str(rows["trained_task"].iloc[0]),
                    **d,
                }
            )
    return pd.DataFrame(out, columns=cols)


def cl_summary(
    df,
    *,
    metric: str = "accuracy",
    exclude: Iterable[str] = ("nl",),
    bwt_divide_by: Literal["T-1", "T"] = "T-1",
):
    """One row per run: MAA, BWT, MFT, MFN (columns ``maa, bwt, mft, mfn``) over the
    run's VL tasks (all eval tasks except ``exclude``), plus ``n_tasks`` and the run's
    study/model/scale/method/seed. Runs still in progress are summarised over the tasks
    trained so far (the matrix is cut at the last trained task that has rows).
    """
    import pandas as pd

    cols = ["run_id", *_RUN_COLUMNS, "n_tasks", "maa", "bwt", "mft", "mfn"]
    out = []
    for run_id in sorted(df["run_id"].unique()) if len(df) else []:
        tasks, m = accuracy_matrix(df, run_id, metric, exclude=exclude)
        if not tasks:
            continue
        # cut at the last row that has any value (tasks trained so far)
        filled = [i for i in range(len(tasks)) if not np.all(np.isnan(m[i]))]
        T = filled[-1] + 1 if filled else 0
        if T == 0:
            continue
        m = m[:T, :T]
        out.append({"run_id": run_id, **_run_info(df, run_id), "n_tasks": T, **cl_metrics(m, bwt_divide_by=bwt_divide_by)})
    return pd.DataFrame(out, columns=cols)
