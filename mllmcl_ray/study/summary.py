"""What a study prints when its runs are done (and saves as OUT/<study>-summary.md).

`default_summary`: one table per study name of its plans, one row per run — model, method,
seed, tasks trained, the final NL Δ (Srivastava Eq. 1, harmonic ω; NLU and NLG as simple
means), the last task's mean VL accuracy, MAA and BWT (CoIN Sec. 3.1.3, BWT over T−1).
Numbers are percentages (accuracies are stored as fractions).
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temp file in the same dir and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.2f}"


def run_table(df) -> list[str]:
    """Markdown rows (with header) of the runs in `df` (result rows of one study)."""
    from .. import metrics as M

    nl = M.nl_delta_table(df)
    vl = df[(df["split"] == "vl") & (df["metric"] == "accuracy")]
    cl = M.cl_summary(vl) if len(vl) else None
    lines = ["| model | method | seed | tasks | NL Δ | NLU Δ | NLG Δ | VL acc (last) | MAA | BWT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run_id, run in df.groupby("run_id", sort=True):
        last = int(run["trained_task_index"].max())
        d = nl[nl["run_id"] == run_id].sort_values("trained_task_index")
        d = d.iloc[-1] if len(d) else {}
        v = vl[(vl["run_id"] == run_id) & (vl["trained_task_index"] == last)]["value"]
        c = cl[cl["run_id"] == run_id] if cl is not None else []
        c = c.iloc[0] if len(c) else {}
        r = run.iloc[0]
        lines.append(f"| {r['model']} | {r['method']} | {r['seed']} | {last} | "
                     f"{_pct(d.get('delta_nl'))} | {_pct(d.get('delta_nlu'))} | {_pct(d.get('delta_nlg'))} | "
                     f"{_pct(v.mean() if len(v) else None)} | {_pct(c.get('maa'))} | {_pct(c.get('bwt'))} |")
    return lines


def reproduction_title(ctx) -> str:
    """The chosen reproduction, or — when the user's flags changed what it runs — a custom
    study that names the reproduction it started from and every flag that differs."""
    r = ctx.reproduction
    changed = ctx.overrides
    if not changed:
        return f"{r.name} ({r.doc})"
    return (f"custom: {r.name}'s settings with {', '.join(changed)} "
            f"(so not {r.doc.split(':')[0]} as published)")


def default_summary(ctx, plans) -> str:
    """Per study name of the plans: the run table (see the module docstring)."""
    from ..results import ResultStore
    from ..runner import results_dir

    df = ResultStore(results_dir(plans[0].base)).read()
    if df.empty:
        return ""
    out = [f"# {ctx.spec.name}: {reproduction_title(ctx)}", ""]
    for study in dict.fromkeys(p.study for p in plans):
        sub = df[df["study"] == study]
        if sub.empty:
            continue
        out += [f"## {study} (%; Δ: base LLM minus after the last task)", "", *run_table(sub), ""]
    return "\n".join(out)


def coin_summary(df, study: str = "coin", baselines_study: str = "coin-baselines") -> str:
    """CoIN's numbers: MAA / BWT per run for accuracy (Truth Alignment) and judge score
    (Reasoning Capability), BWT both as GEM's 1/(T−1) and CoIN's printed 1/T, and the
    baselines' per-task rows (multi-task: trained task 2 of the LLaVA-recipe run;
    zero-shot: its rows after alignment, trained task 1)."""
    import numpy as np

    from .. import metrics as M

    df = df[df["study"].astype(str).str.startswith(study)]
    if df.empty:
        return ""
    lines = ["# CoIN summary", ""]
    for metric, title in (("accuracy", "Truth Alignment"), ("judge_score", "Reasoning Capability")):
        sub = df[(df["metric"] == metric) & (df["study"] != baselines_study)]
        summ = M.cl_summary(sub, metric=metric) if len(sub) else []
        if not len(summ):
            continue
        lines += [f"## {title} ({metric}, %)", "",
                  "| study | method | params | seed | tasks | MAA | BWT (1/(T-1)) | BWT (CoIN, 1/T) |",
                  "|---|---|---|---|---|---|---|---|"]
        params = sub.drop_duplicates("run_id").set_index("run_id")["method_params"]
        for r in summ.itertuples():
            _, m = M.accuracy_matrix(sub, r.run_id, metric, exclude=("nl",))
            m = m[:r.n_tasks, :r.n_tasks]
            bwt_t = M.bwt(m, divide_by="T") if r.n_tasks > 1 else float("nan")
            lines.append(f"| {r.study} | {r.method} | {params.get(r.run_id, '')} | {r.seed} | "
                         f"{r.n_tasks} | {_pct(r.maa)} | {_pct(r.bwt)} | {_pct(bwt_t)} |")
        lines.append("")
    base = df[(df["study"] == baselines_study) & (df["split"] == "vl") & (df["metric"] == "accuracy")]
    if not base.empty:
        tasks = list(dict.fromkeys(base.sort_values("eval_task_index")["eval_task"].astype(str)))
        lines += ["## Baselines (accuracy, %; MAA = mean over tasks, as CoIN Tab. 2)", "",
                  "| baseline | seed | " + " | ".join(tasks) + " | MAA |",
                  "|---|---|" + "---|" * (len(tasks) + 1)]
        for (k, seed), g in base.groupby(["trained_task_index", "seed"]):
            name = "zero-shot" if int(k) == 1 else "multi-task"
            vals = [M.omega(g[g["eval_task"] == t]["value"].to_numpy(dtype=float))
                    if (g["eval_task"] == t).any() else float("nan") for t in tasks]
            maa = float(np.nanmean(vals)) if len(vals) else float("nan")
            lines.append(f"| {name} | {seed} | " + " | ".join(_pct(v) for v in vals) + f" | {_pct(maa)} |")
        lines.append("")
    return "\n".join(lines)
