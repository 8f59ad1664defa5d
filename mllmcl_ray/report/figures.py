"""One function per paper figure / table, each a pure function of the result rows.

Every ``fig_*`` / ``table_*`` function takes the results DataFrame (the row schema of
docs/architecture.md, as ``results.ResultStore.read()`` returns it) and returns a
``plotly.graph_objects.Figure`` built only from those rows, or ``None`` when the rows
needed for it are absent. Numbers come from :mod:`mllmcl_ray.metrics` (Δ, ω, MAA, BWT,
...); this module only reshapes, aggregates seeds and draws.

Conventions
-----------
* Accuracies are stored as fractions; every figure shows them ×100 ("%"), and Δ / BWT
  as percentage points ("Δ (points)").
* A *config* is a run's identity without its seed: (study, model, scale, method,
  method_params). Where several seeds of one config are plotted, the figure shows the
  mean over seeds with ± one standard deviation (sample std, ddof=1; 0 for one seed)
  as error bars, and says ``n`` seeds in the hover text.
* "VL accuracy" after task k is the harmonic mean of every ``split == "vl"`` accuracy
  row evaluated after task k (Srivastava Fig. 3a "VL Avg. Acc"; for continual runs the
  datasets of all tasks seen so far, Table 1's "cumulative" accuracy).
* "NL Δ" is :func:`mllmcl_ray.metrics.nl_delta_table` (Eq. 1, harmonic ω over the NL
  suite; NLU / NLG split with the simple mean, App. C.3).
* Each trace carries a ``meta`` dict naming what it shows (config, method, split, k,
  dataset, ...), so tests and users can find a trace in the figure JSON.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from mllmcl_ray import metrics as M

__all__ = [
    "FigureSpec",
    "FIGURES",
    "run_table",
    "vl_accuracy_table",
    "final_nl_delta",
    "cl_metrics_frame",
    "summary_frame",
    "fig_nl_forgetting_vs_vl",
    "fig_nlu_vs_nlg_delta",
    "fig_delta_vs_scale",
    "fig_vl_vs_scale",
    "fig_accuracy_matrix",
    "table_cl_metrics",
    "fig_emt",
]

ID_COLUMNS = ("study", "model", "scale", "method", "method_params")
EMT_METRICS = ("emt_exact", "emt_nearest", "emt_judge")  # what suites/emt.py writes
CLIP_METRIC = "clip_zero_shot"
NL_TASK = "nl"
PALETTE = qualitative.Plotly + qualitative.D3
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
PCT = 100.0


# ======================================================================================
# run identity, labels, seed aggregation
# ======================================================================================


def _params_short(raw) -> str:
    """``{"msgm": {"alpha": 0.01}}`` → ``msgm.alpha=0.01`` (raw text if not JSON)."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)) or raw == "":
        return ""
    try:
        obj = json.loads(raw) if isinstance(raw, str) else raw
    except (TypeError, ValueError):
        return str(raw)

    def flat(prefix, o):
        if isinstance(o, dict):
            for k in sorted(o):
                yield from flat(f"{prefix}.{k}" if prefix else str(k), o[k])
        else:
            yield f"{prefix}={o}"

    return ", ".join(flat("", obj)) if isinstance(obj, dict) else str(obj)


def _clean(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v if isinstance(v, (int, float)) else str(v)


def run_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: run_id, the identity columns, seed, and derived labels.

    ``config`` is a string key of the run's identity without the seed; ``label`` a
    readable name of the config (model · method, plus the method's parameters where one
    method appears with several, and the study where there are several);
    ``method_label`` the method part of it; ``series`` the method label plus the study
    where there are several (what a line / marker group / facet of a figure stands for,
    so that runs of different studies are never joined into one line).
    """
    cols = ["run_id", "config", "label", "method_label", "series", "seed", *ID_COLUMNS]
    if df is None or df.empty or "run_id" not in df.columns:
        return pd.DataFrame(columns=cols)
    first = df.drop_duplicates("run_id").copy()
    for c in ID_COLUMNS:
        if c not in first.columns:
            first[c] = None
    if "seed" not in first.columns:
        first["seed"] = 0
    first = first[["run_id", "seed", *ID_COLUMNS]].reset_index(drop=True)
    first["config"] = [
        json.dumps([_clean(r[c]) for c in ID_COLUMNS], default=str) for _, r in first.iterrows()
    ]
    n_params = first.groupby("method", dropna=False)["method_params"].nunique(dropna=False)
    several_studies = first["study"].nunique(dropna=False) > 1

    def method_label(r):
        m = str(r["method"])
        if n_params.get(r["method"], 1) > 1:
            p = _params_short(r["method_params"])
            if p:
                m = f"{m} ({p})"
        return m

    first["method_label"] = [method_label(r) for _, r in first.iterrows()]
    first["series"] = [
        r["method_label"] + (f" [{r['study']}]" if several_studies else "") for _, r in first.iterrows()
    ]
    first["label"] = [
        f"{r['model']} · {r['method_label']}" + (f" [{r['study']}]" if several_studies else "")
        for _, r in first.iterrows()
    ]
    return first[cols].sort_values(["scale", "model", "method_label", "seed"], kind="stable", na_position="last")


def _aggregate(per_run: pd.DataFrame, runs: pd.DataFrame, value_cols: list[str], by: tuple = ()) -> pd.DataFrame:
    """Mean / std / n over the seeds of each config (and each value of ``by``).

    Returns one row per (config, *by) with the config's identity and labels, and for
    each value column ``c``: ``c`` (mean), ``c_std`` (sample std, 0 for one seed),
    ``c_n`` (seeds with a value).
    """
    ident = ["config", "label", "method_label", "series", *ID_COLUMNS]
    merged = per_run.merge(runs[["run_id", *ident]], on="run_id", how="inner")
    if merged.empty:
        return pd.DataFrame(columns=[*ident, *by, *value_cols])
    keys = ["config", *by]
    rows = []
    for key, g in merged.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = {c: g[c].iloc[0] for c in ident}
        row.update(dict(zip(keys, key)))
        for c in value_cols:
            v = g[c].to_numpy(dtype=float)
            v = v[~np.isnan(v)]
            row[c] = float(np.mean(v)) if v.size else math.nan
            row[f"{c}_std"] = float(np.std(v, ddof=1)) if v.size > 1 else 0.0
            row[f"{c}_n"] = int(v.size)
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(["series", "scale", "model", *by], kind="stable", na_position="last").reset_index(drop=True)


def _colors(labels) -> dict:
    uniq = list(dict.fromkeys(labels))
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(uniq)}


def _err(std, n) -> dict:
    std = [float(s) for s in std]
    return dict(type="data", array=[s * PCT for s in std], visible=bool(max(n, default=0) > 1))


def _hover_n(n) -> list[str]:
    return [f"n={int(k)} seed{'s' if int(k) != 1 else ''}" for k in n]


def _pct(values) -> list[float | None]:
    out = []
    for v in values:
        v = float(v)
        out.append(None if math.isnan(v) else v * PCT)
    return out


def _layout(fig: go.Figure, title: str, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01), template="plotly_white",
                      margin=dict(l=70, r=30, t=70, b=60), **kw)
    return fig


# ======================================================================================
# per-run quantities from the rows
# ======================================================================================


def _acc_rows(df: pd.DataFrame) -> pd.DataFrame:
    if df is None or df.empty or "metric" not in df.columns:
        return pd.DataFrame(columns=list(df.columns) if df is not None else [])
    return df[df["metric"] == "accuracy"]


def vl_accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (run_id, trained_task_index): ``vl_acc`` = harmonic mean of every VL accuracy
    row evaluated after that task (fraction), with ``trained_task`` and ``n_datasets``."""
    sub = _acc_rows(df)
    sub = sub[sub["split"] == "vl"] if "split" in sub.columns else sub.iloc[0:0]
    cols = ["run_id", "trained_task_index", "trained_task", "vl_acc", "n_datasets"]
    if sub.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for (run_id, k), g in sub.groupby(["run_id", "trained_task_index"], sort=True):
        out.append({
            "run_id": run_id,
            "trained_task_index": int(k),
            "trained_task": str(g["trained_task"].iloc[0]),
            "vl_acc": M.harmonic_mean(g["value"].to_numpy(dtype=float)),
            "n_datasets": int(len(g)),
        })
    return pd.DataFrame(out, columns=cols)


def _nl_table(df: pd.DataFrame) -> pd.DataFrame:
    if df is None or df.empty or "eval_task" not in df.columns or not (df["eval_task"] == NL_TASK).any():
        return pd.DataFrame(columns=["run_id", "trained_task_index", "trained_task", "delta_nl", "delta_nlu", "delta_nlg"])
    t = M.nl_delta_table(df, nl_task=NL_TASK)
    # only runs with a base evaluation (task 1) have a Δ
    return t[t["trained_task_index"].notna()]


def _last_per_run(t: pd.DataFrame, value_cols: list[str]) -> pd.DataFrame:
    """Rows of the last trained task per run among rows with a value in value_cols."""
    t = t.dropna(subset=value_cols, how="all")
    if t.empty:
        return t
    idx = t.groupby("run_id")["trained_task_index"].idxmax()
    return t.loc[idx].reset_index(drop=True)


def final_nl_delta(df: pd.DataFrame) -> pd.DataFrame:
    """Per run: Δ_NL / Δ_NLU / Δ_NLG after the last task with an NL evaluation (k ≥ 2)."""
    t = _nl_table(df)
    t = t[t["trained_task_index"] >= 2]
    return _last_per_run(t, ["delta_nl", "delta_nlu", "delta_nlg"])


# ======================================================================================
# Srivastava Fig. 2a: NL forgetting vs VL accuracy
# ======================================================================================


def fig_nl_forgetting_vs_vl(df: pd.DataFrame) -> go.Figure | None:
    """Srivastava Fig. 2a: per config, NL Δ (y) vs VL accuracy (x) after the last task.

    One marker per config (model / method), one trace per method; seeds averaged with
    ± std error bars on both axes.
    """
    nl = _nl_table(df)
    vl = vl_accuracy_table(df)
    if nl.empty or vl.empty:
        return None
    both = nl[nl["trained_task_index"] >= 2].merge(vl[["run_id", "trained_task_index", "vl_acc"]],
                                                   on=["run_id", "trained_task_index"])
    both = both.dropna(subset=["delta_nl", "vl_acc"])
    both = _last_per_run(both, ["delta_nl"])
    if both.empty:
        return None
    runs = run_table(df)
    agg = _aggregate(both[["run_id", "delta_nl", "vl_acc"]], runs, ["delta_nl", "vl_acc"])
    colors = _colors(agg["series"])
    fig = go.Figure()
    for series, g in agg.groupby("series", sort=False):
        fig.add_trace(go.Scatter(
            x=_pct(g["vl_acc"]), y=_pct(g["delta_nl"]),
            mode="markers+text", name=str(series), text=[str(m) for m in g["model"]],
            textposition="top center", marker=dict(size=11, color=colors[series]),
            error_x=_err(g["vl_acc_std"], g["vl_acc_n"]), error_y=_err(g["delta_nl_std"], g["delta_nl_n"]),
            customdata=np.array(list(zip(g["label"], _hover_n(g["delta_nl_n"]))), dtype=object),
            hovertemplate="%{customdata[0]}<br>VL acc %{x:.2f}%<br>NL Δ %{y:.2f} points<br>%{customdata[1]}<extra></extra>",
            meta={"series": str(series), "method": str(g["method_label"].iloc[0]), "study": str(g["study"].iloc[0]),
                  "configs": [str(c) for c in g["label"]]},
        ))
    fig.add_hline(y=0, line=dict(color="grey", width=1, dash="dot"))
    return _layout(fig, "Linguistic forgetting vs VL accuracy after the last task (Srivastava Fig. 2a)",
                   xaxis_title="VL accuracy (%, harmonic mean over VL datasets)",
                   yaxis_title="NL Δ (points; > 0 = forgetting)", legend_title_text="method")


# ======================================================================================
# Srivastava Fig. 2b / 6: NLU vs NLG Δ per model
# ======================================================================================


def fig_nlu_vs_nlg_delta(df: pd.DataFrame) -> go.Figure | None:
    """Srivastava Fig. 2b / Fig. 6: NLU Δ and NLG Δ per model (grouped bars, models by
    scale, plus the simple-mean "Average" bar of Fig. 2b); one facet per method."""
    fin = final_nl_delta(df)
    if fin.empty or fin[["delta_nlu", "delta_nlg"]].isna().all().all():
        return None
    runs = run_table(df)
    agg = _aggregate(fin[["run_id", "delta_nlu", "delta_nlg"]], runs, ["delta_nlu", "delta_nlg"])
    methods = list(dict.fromkeys(agg["series"]))
    fig = make_subplots(rows=len(methods), cols=1, shared_xaxes=False,
                        vertical_spacing=min(0.12, 0.5 / len(methods)) if len(methods) > 1 else 0.0,
                        subplot_titles=[f"method: {m}" for m in methods] if len(methods) > 1 else None)
    split_color = {"nlu": PALETTE[0], "nlg": PALETTE[1]}
    for i, method in enumerate(methods, start=1):
        g = agg[agg["series"] == method].sort_values(["scale", "model"], kind="stable", na_position="last")
        # models of this method; several configs of one model (e.g. studies) keep their label
        names = [str(m) for m in g["model"]]
        if len(set(names)) < len(names):
            names = [str(lab) for lab in g["label"]]
        for split in ("nlu", "nlg"):
            col = f"delta_{split}"
            vals = g[col].to_numpy(dtype=float)
            ok = ~np.isnan(vals)
            avg = float(np.mean(vals[ok])) if ok.any() else math.nan
            x = names + ["Average"]
            y = _pct(list(vals) + [avg])
            std = list(g[f"{col}_std"]) + [0.0]
            n = list(g[f"{col}_n"]) + [0]
            fig.add_trace(go.Bar(
                x=x, y=y, name=f"{split.upper()} Δ", legendgroup=split, showlegend=(i == 1),
                marker_color=split_color[split], error_y=_err(std, n),
                customdata=_hover_n(n[:-1]) + ["simple mean over models"],
                hovertemplate="%{x}<br>" + split.upper() + " Δ %{y:.2f} points<br>%{customdata}<extra></extra>",
                meta={"series": str(method), "method": str(g["method_label"].iloc[0]), "study": str(g["study"].iloc[0]),
                      "split": split, "x": x},
            ), row=i, col=1)
        fig.update_yaxes(title_text="Δ (points)", row=i, col=1)
    fig.update_layout(barmode="group", height=max(420, 320 * len(methods)))
    return _layout(fig, "NLU vs NLG forgetting after the last task (Srivastava Fig. 2b / Fig. 6)",
                   legend_title_text="Δ (> 0 = forgetting)")


# ======================================================================================
# Srivastava Fig. 3b / 4 / 5: Δ and VL accuracy vs LLM scale
# ======================================================================================


def _vs_scale(df: pd.DataFrame, per_run_k: pd.DataFrame, col: str, title: str, ytitle: str) -> go.Figure | None:
    per_run_k = per_run_k.dropna(subset=[col])
    if per_run_k.empty:
        return None
    runs = run_table(df)
    if runs["scale"].isna().all():
        return None
    agg = _aggregate(per_run_k[["run_id", "trained_task_index", "trained_task", col]], runs, [col],
                     by=("trained_task_index",))
    agg = agg.dropna(subset=["scale"])
    if agg.empty:
        return None
    ks = sorted(agg["trained_task_index"].unique())
    # the trained task's name(s) per line, from the rows
    names = (per_run_k.merge(runs[["run_id", "series"]], on="run_id")
             .groupby(["series", "trained_task_index"])["trained_task"]
             .agg(lambda v: "/".join(dict.fromkeys(map(str, v)))).to_dict())
    colors = _colors(agg["series"])
    fig = go.Figure()
    for (method, k), g in agg.groupby(["series", "trained_task_index"], sort=True):
        g = g.sort_values(["scale", "model"], kind="stable")
        k = int(k)
        task = names.get((method, k), "")
        name = str(method) if len(ks) == 1 else f"{method} · after task {k} ({task})"
        fig.add_trace(go.Scatter(
            x=[float(s) for s in g["scale"]], y=_pct(g[col]), mode="lines+markers", name=name,
            line=dict(color=colors[method], dash=DASHES[ks.index(k) % len(DASHES)]),
            marker=dict(size=8), error_y=_err(g[f"{col}_std"], g[f"{col}_n"]),
            customdata=np.array(list(zip(g["model"].astype(str), _hover_n(g[f"{col}_n"]))), dtype=object),
            hovertemplate="%{customdata[0]}<br>scale %{x:.3s}<br>%{y:.2f}<br>%{customdata[1]}<extra>" + name + "</extra>",
            meta={"series": str(method), "method": str(g["method_label"].iloc[0]), "study": str(g["study"].iloc[0]),
                  "k": k, "trained_task": task,
                  "models": [str(m) for m in g["model"]]},
        ))
    if col.startswith("delta"):
        fig.add_hline(y=0, line=dict(color="grey", width=1, dash="dot"))
    fig.update_xaxes(type="log", title_text="LLM scale (parameters, log)")
    return _layout(fig, title, yaxis_title=ytitle, legend_title_text="method · task")


def fig_delta_vs_scale(df: pd.DataFrame) -> go.Figure | None:
    """Srivastava Fig. 3b / 4b / 5b: NL Δ vs LLM scale (log x), one line per method;
    for continual runs one line per (method, trained task k ≥ 2)."""
    t = _nl_table(df)
    t = t[t["trained_task_index"] >= 2] if not t.empty else t
    return _vs_scale(df, t, "delta_nl", "Linguistic forgetting vs LLM scale (Srivastava Fig. 3b / 4b / 5b)",
                     "NL Δ (points; > 0 = forgetting)")


def fig_vl_vs_scale(df: pd.DataFrame) -> go.Figure | None:
    """Srivastava Fig. 4a / 5a: VL accuracy vs LLM scale (log x), one line per method;
    for continual runs one line per (method, trained task k)."""
    return _vs_scale(df, vl_accuracy_table(df), "vl_acc", "VL accuracy vs LLM scale (Srivastava Fig. 4a / 5a)",
                     "VL accuracy (%, harmonic mean over VL datasets)")


# ======================================================================================
# CoIN accuracy matrix a[k][t]
# ======================================================================================


def _config_matrices(df: pd.DataFrame) -> list[dict]:
    """Per config: tasks, seed-mean / std matrices (fractions), run ids.

    VL tasks only (the NL suite is excluded, as in :func:`metrics.cl_summary`). Seeds
    with a different task list than the config's first seed are kept as their own entry.
    """
    acc = _acc_rows(df)
    if acc.empty:
        return []
    runs = run_table(df)
    out: list[dict] = []
    for config, g in runs.groupby("config", sort=False):
        groups: list[dict] = []
        for r in g.itertuples():
            try:
                tasks, m = M.accuracy_matrix(acc, r.run_id, exclude=(NL_TASK,))
            except ValueError as e:  # inconsistent task indices: leave the run out, say so
                warnings.warn(f"accuracy matrix of run {r.run_id!r} skipped: {e}", stacklevel=2)
                continue
            if not tasks or np.isnan(m).all():
                continue
            for grp in groups:
                if grp["tasks"] == tasks:
                    grp["mats"].append(m)
                    grp["run_ids"].append(r.run_id)
                    grp["seeds"].append(r.seed)
                    break
            else:
                groups.append({"tasks": tasks, "mats": [m], "run_ids": [r.run_id], "seeds": [r.seed],
                               "label": r.label, "method_label": r.method_label, "model": r.model, "study": r.study,
                               "config": config})
        for i, grp in enumerate(groups):
            stack = np.stack(grp["mats"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                grp["mean"] = np.nanmean(stack, axis=0)
                grp["std"] = np.nanstd(stack, axis=0, ddof=1) if len(stack) > 1 else np.where(np.isnan(stack[0]), np.nan, 0.0)
            if len(groups) > 1:
                grp["label"] = f"{grp['label']} (seeds {', '.join(map(str, grp['seeds']))})"
            out.append(grp)
    return out


def _task_row_names(tasks: list[str]) -> list[str]:
    return [f"after {t}" for t in tasks]


def fig_accuracy_matrix(df: pd.DataFrame) -> go.Figure | None:
    """CoIN §3.1.3 accuracy matrix a[k][t] (%), one heatmap per config (dropdown when
    several; seeds averaged). Cells with t > k are blank."""
    mats = _config_matrices(df)
    if not mats:
        return None
    fig = go.Figure()
    for i, grp in enumerate(mats):
        z = [[None if math.isnan(v) else v * PCT for v in row] for row in grp["mean"]]
        sd = [["" if math.isnan(v) else f"{v * PCT:.2f}" for v in row] for row in grp["std"]]
        fig.add_trace(go.Heatmap(
            z=z, x=list(grp["tasks"]), y=_task_row_names(grp["tasks"]),
            zmin=0, zmax=100, colorscale="Viridis", colorbar=dict(title="acc (%)"),
            texttemplate="%{z:.1f}", customdata=sd, hoverongaps=False,
            hovertemplate="%{y}, eval %{x}: %{z:.2f}% (std %{customdata})<extra></extra>",
            name=str(grp["label"]), visible=(i == 0),
            meta={"config": str(grp["label"]), "run_ids": [str(r) for r in grp["run_ids"]],
                  "seeds": [_clean(s) for s in grp["seeds"]], "tasks": list(grp["tasks"])},
        ))
    fig.update_yaxes(autorange="reversed", title_text="trained task k")
    fig.update_xaxes(title_text="evaluated task t", side="bottom")
    title = "Accuracy matrix a[k][t] (%) — CoIN §3.1.3"
    if len(mats) > 1:
        buttons = []
        for i, grp in enumerate(mats):
            vis = [j == i for j in range(len(mats))]
            buttons.append(dict(label=str(grp["label"]), method="update",
                                args=[{"visible": vis}, {"title.text": f"{title}: {grp['label']}"}]))
        fig.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right",
                                            y=1.15, yanchor="top", showactive=True)])
    n = max(len(g["tasks"]) for g in mats)
    return _layout(fig, f"{title}: {mats[0]['label']}", height=max(380, 120 + 55 * n))


# ======================================================================================
# CoIN Tables 2-9: per-task accuracy, MAA, BWT (+ MFT, MFN)
# ======================================================================================


def _fmt(mean: float, std: float, n: int) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    if n > 1:
        return f"{mean * PCT:.2f} ± {std * PCT:.2f}"
    return f"{mean * PCT:.2f}"


COIN_BWT_COLUMN = "BWT (CoIN, 1/T)"


def cl_metrics_frame(df: pd.DataFrame) -> pd.DataFrame:
    """CoIN Tables 2–9 as a DataFrame of display strings (values ×100, "mean ± std" over
    seeds). Two lines per config, as CoIN prints them: ``after training`` = a[t][t]
    (accuracy on each task right after learning it) with MAA, BWT, MFT, MFN; ``final``
    = a[T][t] (after the last task). BWT is CoIN's printed form, Σ_{t<T}(a[T][t] − a[t][t])
    / **T** (metrics.bwt(divide_by="T"); it reproduces CoIN's tables, GEM's divides by
    T−1), and its column header says so: ``COIN_BWT_COLUMN``."""
    acc = _acc_rows(df)
    if acc.empty:
        return pd.DataFrame()
    summ = M.cl_summary(acc, bwt_divide_by="T")
    if summ.empty:
        return pd.DataFrame()
    mats = _config_matrices(df)
    if not mats:
        return pd.DataFrame()
    # task columns: union, ordered by first appearance (config order, task index order)
    task_cols: list[str] = list(dict.fromkeys(t for g in mats for t in g["tasks"]))
    by_run = summ.set_index("run_id")
    rows = []
    for grp in mats:
        s = by_run.loc[[r for r in grp["run_ids"] if r in by_run.index]]
        T = int(s["n_tasks"].max()) if len(s) else len(grp["tasks"])
        tasks = grp["tasks"][:T]
        mean, std, n_seeds = grp["mean"][:T, :T], grp["std"][:T, :T], len(grp["run_ids"])
        base = {"study": str(grp["study"]), "method": str(grp["method_label"]), "model": str(grp["model"]),
                "seeds": n_seeds}
        first = {**base, "line": "after learning it (a[t][t])"}
        last = {**base, "line": f"final, after {tasks[-1]} (a[T][t])"}
        for c in task_cols:
            first[c] = last[c] = "—"
        for j, t in enumerate(tasks):
            first[t] = _fmt(mean[j, j], std[j, j], n_seeds)
            last[t] = _fmt(mean[T - 1, j], std[T - 1, j], n_seeds)
        for c in ("maa", "bwt", "mft", "mfn"):
            v = s[c].to_numpy(dtype=float)
            v = v[~np.isnan(v)]
            col = COIN_BWT_COLUMN if c == "bwt" else c.upper()
            first[col] = _fmt(float(np.mean(v)) if v.size else math.nan,
                              float(np.std(v, ddof=1)) if v.size > 1 else 0.0, int(v.size))
            last[col] = ""
        rows.append(first)
        rows.append(last)
    out = pd.DataFrame(rows, columns=["study", "method", "model", "seeds", "line", *task_cols, "MAA",
                                      COIN_BWT_COLUMN, "MFT", "MFN"])
    if out["study"].nunique() <= 1:
        out = out.drop(columns="study")
    return out


def table_cl_metrics(df: pd.DataFrame) -> go.Figure | None:
    """CoIN Tables 2–9 layout as a plotly Table: rows = method (and model), columns =
    each task's accuracy (after learning it / final), MAA, BWT, MFT, MFN (%)."""
    t = cl_metrics_frame(df)
    if t.empty:
        return None
    cols = list(t.columns)
    n_text = cols.index("line") + 1
    shade = ["#ffffff" if (i // 2) % 2 == 0 else "#f2f5fa" for i in range(len(t))]
    fig = go.Figure(go.Table(
        header=dict(values=[f"<b>{c}</b>" for c in cols], fill_color="#dde4f0", align="center"),
        cells=dict(values=[[str(v) for v in t[c]] for c in cols], fill_color=[shade] * len(cols),
                   align=["left"] * n_text + ["right"] * (len(cols) - n_text)),
        columnwidth=[1.6] * (n_text - 2) + [0.7, 2.6] + [1.3] * (len(cols) - n_text),
        meta={"columns": cols},
    ))
    return _layout(fig, "Continual-learning metrics in CoIN's table layout (CoIN Tables 2–9; values in %)",
                   height=max(260, 120 + 32 * len(t)))


# ======================================================================================
# Zhai et al. EMT: MLLM classification accuracy vs its vision tower's CLIP zero-shot
# ======================================================================================


def _has_epochs(sub: pd.DataFrame) -> bool:
    """Rows scored inside tasks (results ``epoch`` ≥ 1, `TaskSpec.eval_every_epoch`);
    0 everywhere means end-of-task rows only."""
    return ("epoch" in sub.columns and sub["epoch"].notna().all()
            and bool((sub["epoch"].fillna(0) > 0).any()))


def _stage(sub: pd.DataFrame) -> pd.Series:
    """x position of a row. With rows scored inside a task (`eval_every_epoch`): epoch e
    for the rows after epoch e, E (the task's last epoch, one past the largest stored e)
    for its end-of-task rows (epoch 0, trained task ≥ 2), 0 for the rows before any
    fine-tuning (trained task 1: zero-shot). Otherwise the trained_task_index."""
    if _has_epochs(sub):
        epoch = sub["epoch"].fillna(0).astype(float)
        trained = sub["trained_task_index"].astype(float)
        last = epoch.groupby(sub["run_id"]).transform("max") + 1
        return epoch.where(epoch > 0, last.where(trained >= 2, 0.0))
    return sub["trained_task_index"].astype(float)


def fig_emt(df: pd.DataFrame) -> go.Figure | None:
    """Zhai et al. Fig. 4–7: EMT accuracy (split ``emt``; metrics emt_exact / emt_nearest /
    emt_judge) per dataset (one facet each) and per epoch / trained task (x), one line
    per (config, EMT metric), against the vision tower's zero-shot CLIP accuracy
    (metric ``clip_zero_shot``; dashed line per model, flat where it was measured once)."""
    if df is None or df.empty or "metric" not in df.columns:
        return None
    emt = df[df["metric"].isin(EMT_METRICS)]
    if "split" in df.columns:
        emt = emt[emt["split"] == "emt"]
    if emt.empty:
        return None
    clip = df[df["metric"] == CLIP_METRIC]
    runs = run_table(df)
    datasets = sorted(emt["dataset"].astype(str).unique())
    ncols = min(len(datasets), 4)
    nrows = math.ceil(len(datasets) / ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=datasets, shared_yaxes=True,
                        horizontal_spacing=0.05, vertical_spacing=0.18 if nrows > 1 else 0.0)
    emt = emt.assign(stage=_stage(emt))
    stage_names = (emt.groupby("stage")["trained_task"]
                   .agg(lambda s: "/".join(dict.fromkeys(map(str, s)))).to_dict())
    use_epoch = _has_epochs(emt)
    xmin, xmax = float(emt["stage"].min()), float(emt["stage"].max())
    colors = _colors(runs["label"])
    shown: set = set()
    metric_dash = {m: DASHES[i] for i, m in enumerate(EMT_METRICS)}
    for di, ds in enumerate(datasets):
        r, c = di // ncols + 1, di % ncols + 1
        sub = emt[emt["dataset"].astype(str) == ds]
        per = sub[["run_id", "stage", "metric", "value"]]
        agg = _aggregate(per, runs, ["value"], by=("metric", "stage"))
        for (label, metric), g in agg.groupby(["label", "metric"], sort=True):
            g = g.sort_values("stage")
            name = f"{label} · {metric}"
            fig.add_trace(go.Scatter(
                x=[float(s) for s in g["stage"]], y=_pct(g["value"]), mode="lines+markers", name=name,
                legendgroup=name, showlegend=name not in shown,
                line=dict(color=colors.get(label), dash=metric_dash.get(metric, "solid")),
                error_y=_err(g["value_std"], g["value_n"]),
                customdata=np.array([[stage_names.get(s, ""), h] for s, h in zip(g["stage"], _hover_n(g["value_n"]))], dtype=object),
                hovertemplate=ds + " · %{customdata[0]}<br>%{y:.2f}%<br>%{customdata[1]}<extra>" + name + "</extra>",
                meta={"dataset": ds, "metric": str(metric), "config": str(label), "kind": "emt"},
            ), row=r, col=c)
            shown.add(name)
        # CLIP zero-shot of the vision tower, per model
        csub = clip[clip["dataset"].astype(str) == ds] if not clip.empty else clip
        if not csub.empty:
            csub = csub.assign(stage=_stage(csub))
            for model, g in csub.groupby("model", sort=True):
                pts = g.groupby("stage")["value"].mean().sort_index()
                if len(pts) == 1:
                    xs, ys = [xmin, xmax], [float(pts.iloc[0])] * 2
                else:
                    xs, ys = [float(s) for s in pts.index], [float(v) for v in pts]
                name = f"CLIP zero-shot · {model}"
                fig.add_trace(go.Scatter(
                    x=xs, y=_pct(ys), mode="lines", name=name, legendgroup=name,
                    showlegend=name not in shown, line=dict(color="black", dash="dash", width=2),
                    hovertemplate=ds + " CLIP zero-shot %{y:.2f}%<extra>" + str(model) + "</extra>",
                    meta={"dataset": ds, "model": str(model), "kind": "clip_zero_shot"},
                ), row=r, col=c)
                shown.add(name)
    ticks = sorted(emt["stage"].unique())
    fig.update_xaxes(tickvals=[float(t) for t in ticks],
                     ticktext=[f"{int(t) if float(t).is_integer() else t}" + ("" if use_epoch else f": {stage_names.get(t, '')}")
                               for t in ticks],
                     title_text="epoch" if use_epoch else "after trained task")
    fig.update_yaxes(title_text="accuracy (%)", col=1)
    fig.update_layout(height=max(420, 360 * nrows))
    return _layout(fig, "EMT classification accuracy vs the vision tower's CLIP zero-shot accuracy (Zhai et al. Fig. 4–7)",
                   legend_title_text="config · metric")


# ======================================================================================
# summary table (plain HTML) and the registry html.py walks
# ======================================================================================


def summary_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per config: seeds, tasks trained, final NL/NLU/NLG Δ, final VL accuracy,
    MAA, BWT, MFT, MFN (display strings, %, "mean ± std" over seeds)."""
    runs = run_table(df)
    if runs.empty:
        return pd.DataFrame()
    per = runs[["run_id"]].copy()
    last_k = df.groupby("run_id")["trained_task_index"].max().rename("tasks_trained")
    per = per.merge(last_k, left_on="run_id", right_index=True, how="left")
    fin = final_nl_delta(df)
    per = per.merge(fin[["run_id", "delta_nl", "delta_nlu", "delta_nlg"]], on="run_id", how="left")
    vl = _last_per_run(vl_accuracy_table(df), ["vl_acc"])
    per = per.merge(vl[["run_id", "vl_acc"]] if not vl.empty else pd.DataFrame(columns=["run_id", "vl_acc"]),
                    on="run_id", how="left")
    acc = _acc_rows(df)
    summ = M.cl_summary(acc) if not acc.empty else pd.DataFrame(columns=["run_id", "maa", "bwt", "mft", "mfn"])
    per = per.merge(summ[["run_id", "maa", "bwt", "mft", "mfn"]], on="run_id", how="left")
    vals = ["delta_nl", "delta_nlu", "delta_nlg", "vl_acc", "maa", "bwt", "mft", "mfn"]
    for c in vals:
        per[c] = pd.to_numeric(per[c], errors="coerce").astype(float)
    agg = _aggregate(per, runs, vals)
    tasks = per.merge(runs[["run_id", "config"]], on="run_id").groupby("config")["tasks_trained"].max()
    seeds = runs.groupby("config")["seed"].agg(lambda s: ", ".join(map(str, sorted(s))))
    out = pd.DataFrame({
        "study": agg["study"].astype(str), "model": agg["model"].astype(str),
        "scale": [f"{s:.3g}" if s == s else "—" for s in agg["scale"].astype(float)],
        "method": agg["method_label"].astype(str),
        "seeds": [seeds.get(c, "") for c in agg["config"]],  # the seed values, not a count
        "tasks trained": [int(tasks.get(c)) if tasks.get(c) == tasks.get(c) else "—" for c in agg["config"]],
    })
    heads = {"delta_nl": "NL Δ", "delta_nlu": "NLU Δ", "delta_nlg": "NLG Δ", "vl_acc": "VL acc (%)",
             "maa": "MAA (%)", "bwt": "BWT", "mft": "MFT (%)", "mfn": "MFN (%)"}
    for c in vals:
        out[heads[c]] = [_fmt(m, s, n) for m, s, n in zip(agg[c], agg[f"{c}_std"], agg[f"{c}_n"])]
    return out


@dataclass(frozen=True)
class FigureSpec:
    name: str
    func: Callable[[pd.DataFrame], go.Figure | None]
    title: str
    caption: str
    needs: str  # what rows it needs (said in the report when it is skipped)


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("nl-forgetting-vs-vl", fig_nl_forgetting_vs_vl, "Linguistic forgetting vs VL accuracy",
               "Srivastava et al. Fig. 2a: NL Δ (Eq. 1, harmonic ω over the NL suite; > 0 = forgetting) against "
               "the harmonic-mean VL accuracy, both after the last trained task; one marker per model/method.",
               "NL rows (eval_task 'nl') at task 1 and later, and VL accuracy rows"),
    FigureSpec("nlu-vs-nlg", fig_nlu_vs_nlg_delta, "NLU vs NLG forgetting",
               "Srivastava et al. Fig. 2b / App. Fig. 6: NLU Δ and NLG Δ per model (simple mean over each "
               "split's datasets, App. C.3), models ordered by scale; 'Average' is the simple mean over models.",
               "NL rows with split 'nlu' / 'nlg' at task 1 and later"),
    FigureSpec("delta-vs-scale", fig_delta_vs_scale, "Linguistic forgetting vs LLM scale",
               "Srivastava et al. Fig. 3b / 4b / 5b: NL Δ against LLM parameter count (log axis), one line per "
               "method, and per trained task for continual runs (Fig. 5b).",
               "NL rows and a 'scale' per run"),
    FigureSpec("vl-vs-scale", fig_vl_vs_scale, "VL accuracy vs LLM scale",
               "Srivastava et al. Fig. 4a / 5a: harmonic-mean VL accuracy (cumulative over the VL tasks seen, "
               "Table 1) against LLM parameter count (log axis), one line per method and trained task.",
               "VL accuracy rows and a 'scale' per run"),
    FigureSpec("accuracy-matrix", fig_accuracy_matrix, "Accuracy matrix",
               "CoIN §3.1.3: a[k][t] = accuracy (ω, harmonic mean over the task's datasets) on task t after "
               "training task k; cells with t > k are blank. Pick the run/config in the dropdown.",
               "VL accuracy rows of at least one trained task"),
    FigureSpec("cl-metrics-table", table_cl_metrics, "CL metrics (CoIN layout)",
               "CoIN Tables 2–9 layout: per method, the first line is each task's accuracy right after learning "
               "it (a[t][t]) with MAA, BWT, MFT, MFN; the second line the final accuracy a[T][t]. BWT is "
               "CoIN's printed form, Σ(a[T][t] − a[t][t]) / T (GEM's divides by T−1; the summary table uses GEM's).",
               "VL accuracy rows of at least one trained task"),
    FigureSpec("emt", fig_emt, "EMT vs CLIP zero-shot",
               "Zhai et al. Fig. 4–7: EMT classification accuracy of the MLLM per dataset and per epoch / "
               "trained task, against the zero-shot CLIP accuracy of its vision tower (dashed).",
               "rows with split 'emt' and metric emt_exact / emt_nearest / emt_judge (and clip_zero_shot)"),
)


# ======================================================================================
# Zhai et al. EMT beyond fine-tuning: Fig. 4 (off-the-shelf MLLMs vs their towers),
# §3 (vision-encoder forgetting, Fig. 2 / Fig. 3) and §5 per epoch with failure modes
# ======================================================================================
EMT_FAILURES = ("correct", "wrong", "intrinsic", "extrinsic")
EMT_FAILURE_COLORS = {"correct": "#2ca02c", "wrong": "#7f7f7f", "intrinsic": "#d62728",
                      "extrinsic": "#ff7f0e"}


def _json_field(raw, key: str):
    try:
        return json.loads(raw).get(key)
    except (TypeError, ValueError, AttributeError):
        return None


def fig_emt_models(df: pd.DataFrame) -> go.Figure | None:
    """Zhai et al. Fig. 4: EMT accuracy (emt_exact) of off-the-shelf MLLMs (method
    ``off_the_shelf``) per dataset, beside the zero-shot CLIP accuracy of their vision
    tower, one facet per vision encoder (``method_params.vision_tower``)."""
    if df is None or df.empty or "method" not in df.columns:
        return None
    emt = df[(df["method"] == "off_the_shelf") & (df["metric"] == "emt_exact")]
    if emt.empty:
        return None
    emt = emt.assign(tower=[_json_field(p, "vision_tower") or "?" for p in emt["method_params"]])
    clip = df[(df["metric"] == CLIP_METRIC) & (df["method"] == "clip_zero_shot")]
    clip = clip.assign(tower=[_json_field(p, "vision_tower") for p in clip["method_params"]])
    towers = sorted(emt["tower"].unique())
    fig = make_subplots(rows=1, cols=len(towers), subplot_titles=towers, shared_yaxes=True)
    colors = _colors(sorted(emt["model"].astype(str).unique()))
    shown: set = set()
    for ci, tower in enumerate(towers, start=1):
        sub = emt[emt["tower"] == tower]
        datasets = sorted(sub["dataset"].astype(str).unique())
        for model, g in sub.groupby("model", sort=True):
            v = g.groupby("dataset")["value"].mean()
            name = str(model)
            fig.add_trace(go.Bar(x=datasets, y=_pct([v.get(d, math.nan) for d in datasets]), name=name,
                                 legendgroup=name, showlegend=name not in shown,
                                 marker_color=colors.get(name),
                                 meta={"kind": "emt", "model": name, "tower": tower}), row=1, col=ci)
            shown.add(name)
        c = clip[clip["tower"] == tower].groupby("dataset")["value"].mean()
        if len(c):
            name = "CLIP zero-shot (the tower)"
            fig.add_trace(go.Bar(x=datasets, y=_pct([c.get(d, math.nan) for d in datasets]), name=name,
                                 legendgroup=name, showlegend=name not in shown, marker_color="black",
                                 meta={"kind": "clip_zero_shot", "tower": tower}), row=1, col=ci)
            shown.add(name)
    fig.update_yaxes(title_text="accuracy (%)", col=1)
    fig.update_layout(barmode="group", height=420)
    return _layout(fig, "EMT accuracy of MLLMs vs their vision encoder's zero-shot accuracy (Zhai et al. Fig. 4)",
                   legend_title_text="model")


def _mean_std(g: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    out = g.groupby(by)["value"].agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def fig_emt_vision_resnet(df: pd.DataFrame) -> go.Figure | None:
    """Zhai et al. §3.1 Fig. 2: accuracy of the pretrained 50 % of the classes (training
    images, the paper's measure, solid; test images, dashed) and of the fine-tuned 50 %
    (dotted, training images) per epoch, one facet per dataset; mean ± std over seeds.
    The dotted vertical line is where fine-tuning starts."""
    if df is None or df.empty or "method" not in df.columns:
        return None
    sub = df[(df["method"] == "pretrain_finetune") & (df.get("split") == "vision")]
    if sub.empty:
        return None
    datasets = sorted(sub["dataset"].astype(str).unique())
    fig = make_subplots(rows=1, cols=len(datasets), subplot_titles=datasets, shared_yaxes=True)
    lines = (("pretrained_classes", "train_accuracy", "solid", "pretrained classes (train)"),
             ("pretrained_classes", "test_accuracy", "dash", "pretrained classes (test)"),
             ("finetuned_classes", "train_accuracy", "dot", "fine-tuned classes (train)"))
    shown: set = set()
    for ci, ds in enumerate(datasets, start=1):
        d = sub[sub["dataset"].astype(str) == ds]
        for (ev, metric, dash, name), color in zip(lines, PALETTE):
            g = _mean_std(d[(d["eval_task"] == ev) & (d["metric"] == metric)], ["trained_task_index"])
            if g.empty:
                continue
            fig.add_trace(go.Scatter(x=g["trained_task_index"].astype(float).tolist(), y=_pct(g["mean"]),
                                     error_y=_err(g["std"], g["count"]), mode="lines+markers", name=name,
                                     legendgroup=name, showlegend=name not in shown,
                                     line=dict(color=color, dash=dash),
                                     meta={"kind": "resnet", "dataset": ds, "eval_task": ev, "metric": metric}),
                          row=1, col=ci)
            shown.add(name)
        pre = d[d["trained_task"] == "pretrain"]["trained_task_index"]
        if len(pre):
            fig.add_vline(x=float(pre.max()) + 0.5, line_dash="dot", line_color="gray", row=1, col=ci)
    fig.update_xaxes(title_text="epoch (pretraining, then fine-tuning)")
    fig.update_yaxes(title_text="accuracy (%)", col=1)
    fig.update_layout(height=420)
    return _layout(fig, "ResNet: pretrained classes are forgotten when fine-tuning starts (Zhai et al. §3.1, Fig. 2)",
                   legend_title_text="measure")


def fig_emt_vision_clip(df: pd.DataFrame) -> go.Figure | None:
    """Zhai et al. §3.2 Fig. 3 / Table 10: zero-shot accuracy per epoch of CLIP whose
    vision encoder is fine-tuned with cross-entropy on one dataset (one facet each):
    the fine-tuned set (in-domain, solid) and every other set (out-of-domain, dashed);
    epoch 0 = before fine-tuning; mean ± std over seeds."""
    if df is None or df.empty or "method" not in df.columns:
        return None
    sub = df[(df["method"] == "clip_ce_finetune") & (df["metric"] == CLIP_METRIC)]
    if sub.empty:
        return None
    trained = sub[sub["eval_task"] == "in_domain"].groupby("run_id")["dataset"].first()
    sub = sub.assign(trained=sub["run_id"].map(trained).astype(str),
                     epoch=sub["trained_task_index"].astype(int) - 1)
    facets = sorted(sub["trained"].unique())
    fig = make_subplots(rows=1, cols=len(facets), shared_yaxes=True,
                        subplot_titles=[f"fine-tuned on {f}" for f in facets])
    colors = _colors(sorted(sub["dataset"].astype(str).unique()))
    shown: set = set()
    for ci, tr in enumerate(facets, start=1):
        d = sub[sub["trained"] == tr]
        for ds, g in d.groupby("dataset", sort=True):
            dom = "in-domain" if ds == tr else "out-of-domain"
            m = _mean_std(g, ["epoch"])
            name = f"{ds}"
            fig.add_trace(go.Scatter(x=m["epoch"].tolist(), y=_pct(m["mean"]), error_y=_err(m["std"], m["count"]),
                                     mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=name not in shown,
                                     line=dict(color=colors.get(str(ds)), dash="solid" if ds == tr else "dash"),
                                     hovertemplate=f"{ds} ({dom})<br>epoch %{{x}}: %{{y:.1f}}%<extra></extra>",
                                     meta={"kind": "clip_ft", "trained": tr, "dataset": str(ds), "domain": dom}),
                          row=1, col=ci)
            shown.add(name)
    fig.update_xaxes(title_text="fine-tuning epoch (0 = before)")
    fig.update_yaxes(title_text="zero-shot accuracy (%)", col=1)
    fig.update_layout(height=420)
    return _layout(fig, "CLIP vision encoder fine-tuned with CE: in-domain (solid) vs out-of-domain (dashed) "
                        "zero-shot accuracy (Zhai et al. §3.2, Fig. 3)", legend_title_text="evaluated set")


def fig_emt_epochs(df: pd.DataFrame) -> go.Figure | None:
    """Zhai et al. §5 Fig. 6/7 with §4.2's failure modes: per evaluated dataset (column),
    EMT accuracy (emt_exact) per epoch / trained task for each fine-tuning config (top;
    solid where the dataset is the fine-tuned one — study ``emt-<set>`` — dashed
    elsewhere), and below it the shares of correct / wrong / intrinsic / extrinsic answers
    stacked per epoch (mean over the configs and seeds)."""
    if df is None or df.empty or "metric" not in df.columns:
        return None
    emt = df[(df["split"] == "emt") & df["metric"].str.startswith("emt_exact")
             & (df["method"] != "off_the_shelf")]
    if emt.empty or not (emt["metric"] == "emt_exact_extrinsic").any():
        return None
    datasets = sorted(emt["dataset"].astype(str).unique())
    fig = make_subplots(rows=2, cols=len(datasets), subplot_titles=datasets, shared_xaxes=True,
                        vertical_spacing=0.08, row_heights=[0.55, 0.45])
    runs = run_table(df)
    colors = _colors(runs["label"])
    shown: set = set()
    emt = emt.assign(stage=_stage(emt))
    for ci, ds in enumerate(datasets, start=1):
        d = emt[emt["dataset"].astype(str) == ds]
        acc = _aggregate(d[d["metric"] == "emt_exact"][["run_id", "stage", "value"]], runs, ["value"],
                         by=("stage",))
        for label, g in acc.groupby("label", sort=True):
            g = g.sort_values("stage")
            study = str(g["study"].iloc[0])
            own = study.startswith("emt-") and study[4:] == ds
            fig.add_trace(go.Scatter(x=g["stage"].astype(float).tolist(), y=_pct(g["value"]),
                                     error_y=_err(g["value_std"], g["value_n"]), mode="lines+markers",
                                     name=str(label), legendgroup=str(label), showlegend=str(label) not in shown,
                                     line=dict(color=colors.get(label), dash="solid" if own else "dash"),
                                     meta={"kind": "emt_epoch", "dataset": ds, "config": str(label),
                                           "in_domain": bool(own)}), row=1, col=ci)
            shown.add(str(label))
        for mode in EMT_FAILURES:
            metric = "emt_exact" if mode == "correct" else f"emt_exact_{mode}"
            g = d[d["metric"] == metric].groupby("stage")["value"].mean().sort_index()
            if g.empty:
                continue
            name = f"share {mode}"
            fig.add_trace(go.Bar(x=[float(s) for s in g.index], y=_pct(g.values), name=name, legendgroup=name,
                                 showlegend=name not in shown, marker_color=EMT_FAILURE_COLORS[mode],
                                 meta={"kind": "emt_failure_share", "dataset": ds, "mode": mode}),
                          row=2, col=ci)
            shown.add(name)
    fig.update_layout(barmode="stack", height=640)
    fig.update_yaxes(title_text="EMT accuracy (%)", row=1, col=1)
    fig.update_yaxes(title_text="answers (%)", row=2, col=1)
    fig.update_xaxes(title_text="epoch / trained task", row=2)
    return _layout(fig, "EMT per epoch, and the answers' failure modes (Zhai et al. §5 Fig. 6/7, §4.2)",
                   legend_title_text="config / failure mode")


FIGURES = FIGURES + (
    FigureSpec("emt-models", fig_emt_models, "EMT of MLLMs vs their vision encoders",
               "Zhai et al. Fig. 4: EMT accuracy (label-name decider) of LLaVA-format checkpoints evaluated as "
               "they are, per dataset, beside the zero-shot CLIP accuracy of their vision tower; one facet per "
               "vision encoder.",
               "rows of method 'off_the_shelf' (studies/emt.py --models) and their towers' clip_zero_shot rows"),
    FigureSpec("emt-epochs", fig_emt_epochs, "EMT per epoch with failure modes",
               "Zhai et al. §5 (Fig. 6/7) and §4.2: EMT accuracy per epoch for each fine-tuning config (solid: the "
               "fine-tuned set, dashed: the others) and the shares of correct / wrong / intrinsic / extrinsic "
               "answers stacked per epoch.",
               "rows with split 'emt' and the metrics emt_exact and emt_exact_<mode>"),
    FigureSpec("emt-vision-resnet", fig_emt_vision_resnet, "Vision-encoder forgetting: ResNet (§3.1)",
               "Zhai et al. §3.1 Fig. 2: accuracy of the pretrained 50 % of the classes per epoch of pretraining "
               "and then of fine-tuning on the other 50 %.",
               "rows of studies/emt_vision.py --experiments resnet"),
    FigureSpec("emt-vision-clip", fig_emt_vision_clip, "Vision-encoder forgetting: CLIP (§3.2)",
               "Zhai et al. §3.2 Fig. 3 / Table 10: zero-shot accuracy of CLIP per epoch of cross-entropy "
               "fine-tuning of its vision encoder, in-domain (solid) and out-of-domain (dashed).",
               "rows of studies/emt_vision.py --experiments clip"),
)
