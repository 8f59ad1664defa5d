"""Paper claims as data: each `Claim` is a statement of a paper, the paper's numbers, and
a function of the result rows that measures the claimed quantity once per seed.

A study (its spec, or a study script) names the claims it reproduces (`CLAIMS` keys);
`claims_table(df, names)` evaluates them, `claims_markdown` prints the table that ends
every study's report and that ``mllmcl results --claims RESULTS_DIR`` prints.

Verdict rule (fixed, the same for every claim; never tuned per claim):

* each claim's ``measure`` returns one value per seed of a quantity that the claim says
  is greater than ``threshold`` (e.g. Δ_NL(naive) − Δ_NL(Soft Targets) > 0);
* fewer than ``min_seeds`` seeds measured (default 2) → **not enough seeds**;
* otherwise **holds** when the mean over seeds and every single seed are above the
  threshold (the effect is larger than the seed spread in sign), else **does not hold**.

Values are in percentage points (accuracies and Δ ×100), as in the papers' tables.
Recipes are read from the rows: a run whose rows have ``trained_task == "llava"`` is a
LLaVA-recipe run (align, then all tasks mixed; train/task.py), any other run is
continual; zero-shot rows are ``trained_task == "zero_shot"`` (runner.py).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mllmcl_ray import metrics as M

PCT = 100.0
HOLDS, DOES_NOT_HOLD, NOT_ENOUGH_SEEDS = "holds", "does not hold", "not enough seeds"
COLUMNS = ["claim", "source", "paper", "quantity", "this run", "seeds", "verdict"]


@dataclass(frozen=True)
class Claim:
    """One paper claim and how to test it on result rows."""

    name: str  # registry key (study specs reference claims by it)
    text: str  # the claim, e.g. "Soft Targets reduce NL Δ vs naive (LLaVA recipe)"
    source: str  # paper, figure / table
    paper: str  # the paper's numbers, as text
    quantity: str  # what `measure` returns, e.g. "Δ_NLG − Δ_NLU (points)"
    measure: Callable[[pd.DataFrame], dict[int, float]]  # rows -> {seed: value}
    threshold: float = 0.0  # the claim holds when the quantity is above this
    min_seeds: int = 2


def verdict(values: Sequence[float], threshold: float = 0.0, min_seeds: int = 2) -> str:
    """The fixed verdict rule of the module docstring."""
    v = [float(x) for x in values if not math.isnan(float(x))]
    if len(v) < min_seeds:
        return NOT_ENOUGH_SEEDS
    return HOLDS if (np.mean(v) > threshold and min(v) > threshold) else DOES_NOT_HOLD


# ---------------------------------------------------------------------------------------
# row helpers
# ---------------------------------------------------------------------------------------
def llava_runs(df: pd.DataFrame) -> set[str]:
    """Run ids of LLaVA-recipe runs (a row with trained_task 'llava')."""
    if df.empty:
        return set()
    return set(df.loc[df["trained_task"].astype(str) == "llava", "run_id"].astype(str))


def _final_deltas(df: pd.DataFrame) -> pd.DataFrame:
    """Per run: Δ_NL / Δ_NLU / Δ_NLG after its last task with an NL evaluation (k ≥ 2),
    with model, method and seed."""
    if df.empty or not (df["eval_task"] == "nl").any():
        return pd.DataFrame(columns=["run_id", "model", "method", "seed", "delta_nl",
                                     "delta_nlu", "delta_nlg"])
    t = M.nl_delta_table(df)
    t = t[t["trained_task_index"] >= 2].sort_values(["run_id", "trained_task_index"])
    return t.groupby("run_id").tail(1).reset_index(drop=True)


def _per_seed(pairs: pd.DataFrame, col: str) -> dict[int, float]:
    """{seed: mean of `col` over the rows of that seed} (NaN rows dropped)."""
    pairs = pairs.dropna(subset=[col])
    return {int(s): float(g[col].mean()) for s, g in pairs.groupby("seed")}


def _method_gap(df: pd.DataFrame, better: str, worse: str, recipe: str) -> dict[int, float]:
    """Per seed: mean over models of Δ_NL(worse) − Δ_NL(better), both final, same recipe,
    paired by (model, seed)."""
    fin = _final_deltas(df)
    if fin.empty:
        return {}
    llava = llava_runs(df)
    is_llava = fin["run_id"].astype(str).isin(llava)
    fin = fin[is_llava] if recipe == "llava" else fin[~is_llava]
    a = fin[fin["method"] == worse][["model", "seed", "delta_nl"]]
    b = fin[fin["method"] == better][["model", "seed", "delta_nl"]]
    both = a.merge(b, on=["model", "seed"], suffixes=("_worse", "_better"))
    both["gap"] = (both["delta_nl_worse"] - both["delta_nl_better"]) * PCT
    return _per_seed(both, "gap")


# ---------------------------------------------------------------------------------------
# measures
# ---------------------------------------------------------------------------------------
def nlg_minus_nlu(df: pd.DataFrame) -> dict[int, float]:
    """Per seed: mean over runs of final Δ_NLG − Δ_NLU (points)."""
    fin = _final_deltas(df)
    if fin.empty:
        return {}
    fin = fin.assign(gap=(fin["delta_nlg"] - fin["delta_nlu"]) * PCT)
    return _per_seed(fin, "gap")


def naive_minus_soft_targets_llava(df: pd.DataFrame) -> dict[int, float]:
    return _method_gap(df, better="soft_targets", worse="naive", recipe="llava")


def naive_minus_msgm_rehearsal_continual(df: pd.DataFrame) -> dict[int, float]:
    return _method_gap(df, better="msgm+rehearsal", worse="naive", recipe="continual")


def finetuned_minus_zero_shot(df: pd.DataFrame) -> dict[int, float]:
    """Per seed: mean over runs of (VL accuracy on each task's sets right after that task
    was trained − the same sets' zero-shot accuracy), points. Right after: the row with
    ``trained_task_index == eval_task_index`` (continual) or the 'llava' step (LLaVA)."""
    if df.empty:
        return {}
    vl = df[(df["split"] == "vl") & (df["metric"] == "accuracy")]
    zs = vl[vl["trained_task"].astype(str) == "zero_shot"]
    if zs.empty:
        return {}
    ft = vl[(vl["trained_task"].astype(str) == "llava")
            | ((vl["trained_task"].astype(str) != "zero_shot")
               & (vl["trained_task_index"] == vl["eval_task_index"]))]
    key = ["run_id", "dataset"]
    both = ft[key + ["seed", "value"]].merge(zs[key + ["value"]], on=key,
                                             suffixes=("_ft", "_zs"))
    if both.empty:
        return {}
    per_run = both.groupby(["run_id", "seed"], as_index=False).agg(
        ft=("value_ft", "mean"), zs=("value_zs", "mean"))
    per_run["gap"] = (per_run["ft"] - per_run["zs"]) * PCT
    return _per_seed(per_run, "gap")


# ---------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------
CLAIMS: dict[str, Claim] = {}


def register(claim: Claim) -> Claim:
    if claim.name in CLAIMS:
        raise ValueError(f"claim {claim.name!r} is already registered")
    CLAIMS[claim.name] = claim
    return claim


register(Claim(
    "nlg_forgets_more_than_nlu", "NLG forgets more than NLU",
    "Srivastava et al. Fig. 2b (LLaVA recipe, 9 LLMs)",
    "average NLU Δ −0.15 vs NLG Δ 5.31; NLG > NLU for all 9 LLMs",
    "Δ_NLG − Δ_NLU after the last task (points)", nlg_minus_nlu))
register(Claim(
    "soft_targets_below_naive_llava", "Soft Targets forget less NL than naive FT (LLaVA recipe)",
    "Srivastava et al. Fig. 3a/3b",
    "Pythia-160M NL Δ: naive 7.83 vs Soft Targets 2.83; ST ≤ naive at every Pythia scale",
    "Δ_NL(naive) − Δ_NL(Soft Targets), same model and seed (points)",
    naive_minus_soft_targets_llava))
register(Claim(
    "msgm_rehearsal_below_naive_continual",
    "mSGM + Rehearsal 1 % forgets less NL than naive FT (continual recipe)",
    "Srivastava et al. Table 1, Fig. 5",
    "Pythia-410M NL Δ after task 5: naive 7.70 vs mSGM+Reh. 2.77 (task 3: 12.21 vs 0.73)",
    "Δ_NL(naive) − Δ_NL(mSGM+Rehearsal) after the last task, same model and seed (points)",
    naive_minus_msgm_rehearsal_continual))
register(Claim(
    "vl_finetuned_above_zero_shot", "VL accuracy after fine-tuning ≫ zero-shot (≥ 10 points)",
    "Srivastava et al. Fig. 3a; CoIN Table 2",
    "Pythia-160M VL avg: zero-shot 0.00 vs naive 5.29 (VQAv2 0.00 vs 30.32)",
    "accuracy right after training a task − its zero-shot accuracy (points)",
    finetuned_minus_zero_shot, threshold=10.0))


# Which claims each study script reproduces (study specs may name their own list); a
# report over rows of several studies shows the union, in registry order.
STUDY_CLAIMS: dict[str, tuple[str, ...]] = {
    "micro": tuple(CLAIMS),
    "scale_pythia": tuple(CLAIMS),
    "mitigation": ("nlg_forgets_more_than_nlu", "soft_targets_below_naive_llava",
                   "msgm_rehearsal_below_naive_continual", "vl_finetuned_above_zero_shot"),
    "coin": ("vl_finetuned_above_zero_shot",),
    "emt": (),
}


def _study_key(study: str) -> str | None:
    """The STUDY_CLAIMS key of a study name: itself, or the key it extends with "-..."
    (e.g. "coin-alphabet-10type-vol0.4", "coin-baselines" are "coin")."""
    if study in STUDY_CLAIMS:
        return study
    keys = [k for k in STUDY_CLAIMS if study.startswith(k + "-")]
    return max(keys, key=len) if keys else None


def claims_for(df: pd.DataFrame) -> list[str]:
    """The claims of the studies in `df` (`STUDY_CLAIMS`); every claim when a study is
    not listed there."""
    studies = set(df["study"].astype(str)) if df is not None and "study" in df.columns else set()
    keys = [_study_key(s) for s in studies]
    if not keys or any(k is None for k in keys):
        return list(CLAIMS)
    wanted = {c for k in keys for c in STUDY_CLAIMS[k]}
    return [c for c in CLAIMS if c in wanted]


def get_claim(name: str) -> Claim:
    try:
        return CLAIMS[name]
    except KeyError:
        raise KeyError(f"unknown claim {name!r}; known: {', '.join(CLAIMS)}") from None


def _fmt_values(values: dict[int, float]) -> str:
    if not values:
        return "no rows"
    v = np.array(list(values.values()), dtype=float)
    std = float(np.std(v, ddof=1)) if v.size > 1 else 0.0
    per = ", ".join(f"s{s}: {x:.2f}" for s, x in sorted(values.items()))
    return f"{v.mean():.2f} ± {std:.2f} ({per})"


def claims_table(df: pd.DataFrame, names: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per claim (`names`, default `claims_for(df)`): the columns of
    `COLUMNS`; ``this run`` is "mean ± std (per seed)" of the claim's quantity."""
    rows = []
    for name in (list(names) if names is not None else claims_for(df)):
        c = get_claim(name)
        values = c.measure(df) if df is not None and not df.empty else {}
        rows.append({"claim": c.text, "source": c.source, "paper": c.paper,
                     "quantity": f"{c.quantity} > {c.threshold:g}",
                     "this run": _fmt_values(values), "seeds": len(values),
                     "verdict": verdict(list(values.values()), c.threshold, c.min_seeds)})
    return pd.DataFrame(rows, columns=COLUMNS)


def claims_markdown(df: pd.DataFrame, names: Iterable[str] | None = None) -> str:
    """The claims table as Markdown (what `mllmcl results --claims` prints)."""
    t = claims_table(df, names)
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(str(r[c]).replace("|", "/") for c in COLUMNS) + " |\n"
                   for _, r in t.iterrows())
    return ("## Paper claims\n\nVerdict: holds when the mean over seeds and every seed are "
            "above the threshold; at least 2 seeds.\n\n" + head + body)
