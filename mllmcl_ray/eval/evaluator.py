"""Evaluate one checkpoint after task k: NL suite, VL tasks seen so far, EMT, judge.

`Evaluator.evaluate` writes one result row per (dataset, metric) with every column of
docs/architecture.md ("Result rows") and one prediction row per scored sample, and
skips what is already stored: a dataset whose metric keys are all in the ResultStore
is not evaluated again, and when nothing is left the engine is never built, so a rerun
costs nothing.

Rows: ``eval_task`` is ``nl`` (index 1) for the language suite, else the VL task's name
and index; ``split`` is ``nlg``/``nlu``/``vl``/``emt``/``judge``; ``eval_set_hash`` hashes the
scored subset's content; ``prompt_version`` is the template's version (NL:
``nl.NL_PROMPT_VERSION``; judge rows: ``<judge prompt version>/<CoIN rule>``);
``decoding`` is the JSON of the engine's decoding settings (judge rows: the judge model,
prompt version, rule and sampling). Accuracies are fractions; the judge score is CoIN's
``100·Σ/(10·N)`` divided by 100, unparseable replies counting 0 in N, with
``judge_unparseable`` (share) and ``judge_unparseable_count`` beside. VL metric keys come
from the eval-kind registry (`kinds.py`: ``accuracy`` plus e.g. ``grounding_truncated``).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import EvalConfig, EvalSet
from .engine.base import Engine, decoding_json, engine_factory
from ..results import commit_rows
from .kinds import get_kind, max_new_tokens
from .suites.common import SuiteResult

RUN_META_COLUMNS = ("run_id", "study", "model", "scale", "method", "method_params", "seed")
NL_TASK = "nl"
VLTasks = Sequence[tuple[int, str, Sequence[EvalSet]]]


@dataclass
class PlannedSet:
    """One dataset to score: where its rows go and which metric keys it writes."""

    suite: str  # nl, vl, emt
    eval_task: str
    eval_task_index: int
    eval_set: EvalSet
    metrics: tuple[str, ...]  # metric keys that mark the set as done
    judge: bool = False
    replace: bool = False  # stored rows are stale: remove them when the new ones are written


@dataclass
class EvalJob:
    """Everything needed to evaluate one checkpoint (picklable, for Ray actors)."""

    checkpoint: Any  # checkpoint dir (str) or an MLLM (in-process only)
    run_meta: dict
    trained_task_index: int
    trained_task: str
    nl_sets: list[EvalSet] = field(default_factory=list)
    vl_tasks: list[tuple[int, str, list[EvalSet]]] = field(default_factory=list)
    emt_tasks: list[tuple[int, str, list[EvalSet]]] = field(default_factory=list)
    checkpoint_id: str | None = None
    epoch: int = 0  # 0: end of the trained task; e ≥ 1: after epoch e inside it (eval_every_epoch)


def _meta(run_meta: dict) -> dict:
    missing = [c for c in RUN_META_COLUMNS if c not in run_meta]
    if missing:
        raise ValueError(f"run_meta lacks {', '.join(missing)} (needs {', '.join(RUN_META_COLUMNS)})")
    m = {c: run_meta[c] for c in RUN_META_COLUMNS}
    if not isinstance(m["method_params"], str):
        m["method_params"] = json.dumps(m["method_params"], sort_keys=True, default=str)
    m["scale"] = float(m["scale"])
    m["seed"] = int(m["seed"])
    return m


def expected_eval_set_hash(p: PlannedSet, cfg: EvalConfig) -> str | None:
    """The `eval_set_hash` the suite would write for `p` now (as run_vl_set, run_nl_set
    and run_emt_set compute it), without a model; None if it cannot be told."""
    from .suites.common import content_hash

    es = p.eval_set
    try:
        if p.suite == "nl":
            from .suites.nl import load_nl_docs, nl_kind

            limit = [m for m in (es.max_samples, cfg.nl_max_samples) if m is not None]
            docs = load_nl_docs(es, min(limit) if limit else None, cfg.seed)
            return content_hash([nl_kind(es.name, es.kind, docs[0] if docs else None), docs])
        from .suites.emt import emt_set_hash
        from .suites.vl import load_eval_records, use_ocr, vl_set_hash

        records = load_eval_records(es, cfg.seed)
        if p.suite == "emt":
            return emt_set_hash(es, records)
        return vl_set_hash(es, records, use_ocr(es, None))
    except (OSError, ValueError):  # unreadable now: scoring will say what is wrong
        return None


class Evaluator:
    """Scores checkpoints and writes result / prediction rows.

    Args:
        engine_factory: ``model -> Engine`` (e.g. ``engine.base.engine_factory("transformers",
            batch_size=32)``); called at most once per `evaluate`, only if work is left.
        store: the ResultStore (None: compute only, nothing is skipped or written).
        predictions: the PredictionStore for per-sample rows (None: not kept).
        cfg: EvalConfig (which suites, NL subset size, subset seed, judge model).
        judge: a `judge.Judge` (default: built from ``cfg.judge`` with the same backend,
            replies cached in ``judge_cache``, default ``<store root>/judge_cache.sqlite``).
        embedder: EMT's embedder; "auto" = `suites.emt.default_embedder(engine)`.
    """

    def __init__(self, engine_factory: Callable[[Any], Engine], store=None, predictions=None,
                 cfg: EvalConfig | None = None, *, judge=None, judge_cache: str | Path | None = None,
                 embedder: Any = "auto", lambada_mode: str = "loglikelihood"):
        self.engine_factory = engine_factory
        self.store = store
        self.predictions = predictions
        self.cfg = cfg or EvalConfig()
        self.embedder = embedder
        self.lambada_mode = lambada_mode
        self._judge = judge
        if judge is None and self.cfg.judge:
            from .judge import make_judge

            cache = judge_cache or (Path(store.root) / "judge_cache.sqlite" if store is not None
                                    else None)
            self._judge = make_judge(self.cfg.judge, engine_factory, cache)
        self._engine_key: str | None = None
        self._engine: Engine | None = None
        self.engines_built = 0

    @classmethod
    def from_config(cls, cfg: EvalConfig, store=None, predictions=None, **kwargs) -> Evaluator:
        """An Evaluator whose engines are `cfg.backend` with `cfg.batch_size`."""
        return cls(engine_factory(cfg.backend, batch_size=cfg.batch_size), store, predictions,
                   cfg, **kwargs)

    # ----------------------------------------------------------------------------------
    # planning
    # ----------------------------------------------------------------------------------
    def plan(self, *, nl_sets: Sequence[EvalSet] = (), vl_tasks: VLTasks = (),
             emt_tasks: VLTasks = ()) -> list[PlannedSet]:
        out: list[PlannedSet] = []
        if self.cfg.nl:
            for es in nl_sets:
                out.append(PlannedSet("nl", NL_TASK, 1, es, ("accuracy",)))
        if self.cfg.vl:
            judge = self._judge is not None
            for t_idx, t_name, sets in vl_tasks:
                for es in sets:
                    ms = ("accuracy", *get_kind(es.kind).outcome_metrics.values())
                    out.append(PlannedSet("vl", t_name, int(t_idx), es,
                                          (*ms, "judge_score") if judge else ms, judge))
        for t_idx, t_name, sets in emt_tasks:
            for es in sets:
                ms = ("emt_exact", "emt_judge") if self._judge is not None else ("emt_exact",)
                out.append(PlannedSet("emt", t_name, int(t_idx), es, ms))
        return out

    def pending(self, plan: list[PlannedSet], run_id: str, trained_task_index: int,
                checkpoint_id: str | None = None, epoch: int = 0) -> list[PlannedSet]:
        """The planned sets with at least one metric key not yet stored, plus the stored
        ones that are stale (`stale_reason`: scored on another eval set, checkpoint or
        generation budget than they would be now; they are recomputed, and it says so)."""
        if self.store is None:
            return plan
        have = self.store.keys()
        out = []
        stored = None
        for p in plan:
            if any((run_id, int(trained_task_index), p.eval_task, p.eval_set.name, m, int(epoch))
                   not in have for m in p.metrics):
                out.append(p)
                continue
            if stored is None:  # one read for every stored set of this checkpoint
                stored = self.store.read(
                    {"run_id": run_id, "trained_task_index": int(trained_task_index)},
                    columns=["eval_task", "dataset", "metric", "eval_set_hash", "checkpoint_id",
                             "decoding", "epoch"])
            why = self.stale_reason(p, stored, checkpoint_id, epoch)
            if why:
                print(f"[{run_id}] recomputing {p.eval_task}/{p.eval_set.name} after task "
                      f"{trained_task_index}: {why}")
                p.replace = True
                out.append(p)
        return out

    def stale_reason(self, p: PlannedSet, stored: pd.DataFrame, checkpoint_id: str | None,
                     epoch: int = 0) -> str | None:
        """Why the stored rows (`stored`: this checkpoint's) of a planned set no longer
        match what it would be scored on now (eval-set content hash, checkpoint id,
        max_new_tokens), or None."""
        if "epoch" in stored:  # this evaluation point's rows only
            stored = stored[stored["epoch"].fillna(0) == int(epoch)]
        stored = stored[(stored["eval_task"] == p.eval_task)
                        & (stored["dataset"] == p.eval_set.name)
                        & stored["metric"].isin(list(p.metrics))]
        if stored.empty:
            return None
        row = stored.iloc[-1]
        if checkpoint_id is not None and row["checkpoint_id"] != str(checkpoint_id):
            return f"stored checkpoint {row['checkpoint_id']} ≠ {checkpoint_id}"
        try:
            stored_budget = json.loads(row["decoding"]).get("max_new_tokens")
        except (TypeError, ValueError):
            stored_budget = None
        budget = None if p.suite == "nl" else max_new_tokens(p.eval_set)
        if budget is not None and stored_budget is not None and stored_budget != budget:
            return f"stored max_new_tokens {stored_budget} ≠ {budget}"
        now = expected_eval_set_hash(p, self.cfg)
        if now is not None and row["eval_set_hash"] != now:
            return f"the eval set changed (stored hash {row['eval_set_hash']} ≠ {now})"
        return None

    # ----------------------------------------------------------------------------------
    # engines
    # ----------------------------------------------------------------------------------
    def engine_for(self, model: Any) -> Engine:
        """The engine for `model`; the last checkpoint dir's engine is kept and reused."""
        key = str(model) if isinstance(model, (str, Path)) else None
        if key is not None and key == self._engine_key and self._engine is not None:
            return self._engine
        if self._engine is not None and self._engine_key is not None:
            self._engine.close()
        self._engine = self.engine_factory(model)
        self._engine_key = key
        self.engines_built += 1
        return self._engine

    # ----------------------------------------------------------------------------------
    # evaluation
    # ----------------------------------------------------------------------------------
    def evaluate(self, mllm_or_checkpoint: Any, *, run_meta: dict, trained_task_index: int,
                 trained_task: str, nl_sets: Sequence[EvalSet] = (), vl_tasks: VLTasks = (),
                 emt_tasks: VLTasks = (), checkpoint_id: str | None = None) -> pd.DataFrame:
        """Score what is not stored yet; write and return the new result rows."""
        rows, _ = self.compute(mllm_or_checkpoint, run_meta=run_meta,
                               trained_task_index=trained_task_index, trained_task=trained_task,
                               nl_sets=nl_sets, vl_tasks=vl_tasks, emt_tasks=emt_tasks,
                               checkpoint_id=checkpoint_id, write=True)
        return pd.DataFrame(rows)

    def run_job(self, job: EvalJob, write: bool = False) -> tuple[list[dict], list[dict]]:
        return self.compute(job.checkpoint, run_meta=job.run_meta,
                            trained_task_index=job.trained_task_index,
                            trained_task=job.trained_task, nl_sets=job.nl_sets,
                            vl_tasks=job.vl_tasks, emt_tasks=job.emt_tasks,
                            checkpoint_id=job.checkpoint_id, write=write, epoch=job.epoch)

    def compute(self, model: Any, *, run_meta: dict, trained_task_index: int, trained_task: str,
                nl_sets: Sequence[EvalSet] = (), vl_tasks: VLTasks = (),
                emt_tasks: VLTasks = (), checkpoint_id: str | None = None, write: bool = False,
                epoch: int = 0) -> tuple[list[dict], list[dict]]:
        """(result rows, prediction rows) for the sets not yet stored; with `write` each
        dataset's rows are appended to the stores as soon as it is scored."""
        meta = _meta(run_meta)
        ckpt_id = checkpoint_id or run_meta.get("checkpoint_id") or (
            str(model) if isinstance(model, (str, Path))
            else f"{meta['run_id']}/task{int(trained_task_index)}")
        todo = self.pending(self.plan(nl_sets=nl_sets, vl_tasks=vl_tasks, emt_tasks=emt_tasks),
                            meta["run_id"], trained_task_index, str(ckpt_id), int(epoch))
        if not todo:
            return [], []
        base = dict(meta, trained_task_index=int(trained_task_index),
                    trained_task=str(trained_task), checkpoint_id=str(ckpt_id), epoch=int(epoch))
        engine = self.engine_for(model)
        all_rows: list[dict] = []
        all_preds: list[dict] = []
        for p in todo:
            results = self._run_set(engine, p)
            empty = [r.dataset for r in results if r.split != "judge" and r.n == 0]
            if empty:
                from ..errors import DataError

                raise DataError(f"eval set {p.eval_set.name!r} ({p.eval_set.path}) scored 0 "
                                "records; an empty eval set has no accuracy: give it records")
            rows, preds = [], []
            for res in results:
                rows.extend(self._rows(base, p, res))
                if res.split != "judge":
                    preds.extend(self._prediction_rows(base, p, res))
            if write:  # predictions first, result rows (the done mark) last
                commit_rows(self.store, self.predictions, rows, preds, replace=p.replace)
            all_rows.extend(rows)
            all_preds.extend(preds)
        return all_rows, all_preds

    def _embedder(self, engine):
        if self.embedder == "auto":
            from .suites.emt import default_embedder

            return default_embedder(engine)
        return self.embedder

    def _run_set(self, engine: Engine, p: PlannedSet) -> list[SuiteResult]:
        seed = self.cfg.seed
        if p.suite == "nl" and self.cfg.nl_backend == "lm_eval":
            from .suites.nl_lmeval import run_lm_eval_set

            return [run_lm_eval_set(engine, p.eval_set, max_samples=self.cfg.nl_max_samples,
                                    seed=seed, batch_size=self.cfg.batch_size)]
        if p.suite == "nl":
            if self.cfg.nl_backend != "project":
                from ..config import ConfigError

                raise ConfigError(f"eval.nl_backend {self.cfg.nl_backend!r} must be 'project' "
                                  "or 'lm_eval'")
            from .suites.nl import run_nl_set

            return [run_nl_set(engine, p.eval_set, max_samples=self.cfg.nl_max_samples,
                               seed=seed, lambada_mode=self.lambada_mode)]
        if p.suite == "emt":
            from .suites.emt import run_emt_set

            return [run_emt_set(engine, p.eval_set, seed=seed, embedder=self._embedder(engine),
                                judge=self._judge)]
        from .suites.vl import run_vl_set

        res = run_vl_set(engine, p.eval_set, seed=seed)
        out = [res]
        if p.judge:
            out.append(self._judge_result(res, get_kind(p.eval_set.kind).judge_rule))
        return out

    def _judge_result(self, res: SuiteResult, rule: str = "CoIN") -> SuiteResult:
        from .judge import JUDGE_PROMPT_VERSION, judge_fraction

        j = self._judge.judge_answers([(p["question"], p["answer"], p["prediction"])
                                       for p in res.predictions], rule=rule)
        for p, reply, s in zip(res.predictions, j.replies, j.scores):
            p["judge_reply"] = reply
            p["judge_score"] = s
        n_all = j.n_scored + j.n_unparseable
        return SuiteResult(dataset=res.dataset, split="judge",
                           metrics={"judge_score": judge_fraction(j),
                                    "judge_unparseable": (j.n_unparseable / n_all if n_all
                                                          else math.nan),
                                    "judge_unparseable_count": float(j.n_unparseable)},
                           n=n_all, eval_set_hash=res.eval_set_hash,
                           prompt_version=f"{JUDGE_PROMPT_VERSION}/{rule}",
                           decoding=self._judge.info(JUDGE_PROMPT_VERSION) | {"judge_rule": rule},
                           counts={"unparseable": j.n_unparseable})

    @staticmethod
    def _rows(base: dict, p: PlannedSet, res: SuiteResult) -> list[dict]:
        now = time.time()
        return [dict(base, eval_task=p.eval_task, eval_task_index=p.eval_task_index,
                     dataset=res.dataset, split=res.split, metric=m, value=float(v), n=int(res.n),
                     time=now, eval_set_hash=res.eval_set_hash,
                     prompt_version=res.prompt_version, decoding=decoding_json(res.decoding))
                for m, v in res.metrics.items()]

    @staticmethod
    def _prediction_rows(base: dict, p: PlannedSet, res: SuiteResult) -> list[dict]:
        rows = []
        main = {"prompt", "prediction", "reference", "score", "correct", "id"}
        for i, s in enumerate(res.predictions):
            correct = s.get("score", s.get("correct", math.nan))
            ref = s.get("reference", s.get("gold", s.get("target", "")))
            out = s.get("prediction", s.get("pred", ""))
            rows.append({"run_id": base["run_id"], "trained_task_index": base["trained_task_index"],
                         "eval_task": p.eval_task, "dataset": res.dataset,
                         "sample_id": str(s.get("id", i)), "prompt": str(s.get("prompt", "")),
                         "output": str(out),
                         "reference": ref if isinstance(ref, str) else json.dumps(ref),
                         "correct": float(correct if correct is not None else math.nan),
                         "extra": {k: v for k, v in s.items() if k not in main},
                         "epoch": base["epoch"]})
        return rows
