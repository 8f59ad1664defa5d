"""Ray actors around the engines, and `evaluate_many` over an actor pool: batch
(re-)evaluation of stored checkpoints. Runs and studies evaluate through the study's
shared pool in `eval/service.py` instead (queued while training goes on); `split_job`
here is what both use to cut a checkpoint's evaluation into pending per-dataset jobs.

One `EvalActor` per GPU (``use_gpu=True``: ``num_gpus=1`` each) or per CPU slot
(``cpus_per_actor`` CPUs each, torch threads set to match). Each holds an `Evaluator`
without stores (it computes; the driver writes) and keeps the engine of the last
checkpoint it loaded, so consecutive jobs on the same checkpoint load it once.

`evaluate_many(jobs, ...)`:

1. drops every (checkpoint × dataset) whose metric keys are all in the ResultStore
   (a rerun submits nothing and starts no actor);
2. splits the rest into one job per (checkpoint, dataset) (``granularity="dataset"``) or
   one per checkpoint (``"checkpoint"``), ordered by checkpoint;
3. runs them on a `ray.util.ActorPool`, and as each job finishes appends its result rows
   to the ResultStore and its per-sample rows to the PredictionStore (streaming: a crash
   loses only unfinished jobs; the rerun does just those).

Jobs name checkpoints by directory (an in-memory MLLM would be pickled to each actor).
The engines themselves know nothing of Ray.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from ...config import EvalConfig
from ..evaluator import EvalJob, Evaluator
from .base import engine_factory


class _EvalWorker:
    """The plain class each actor runs (also usable without Ray, e.g. in tests)."""

    def __init__(self, backend: str, engine_kwargs: dict, cfg: EvalConfig,
                 judge_cache: str | None = None, threads: int | None = None,
                 embedder: Any = "auto"):
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.evaluator = Evaluator(engine_factory(backend, **engine_kwargs), None, None, cfg,
                                   judge_cache=judge_cache, embedder=embedder)

    def run(self, job: EvalJob) -> tuple[EvalJob, list[dict], list[dict]]:
        rows, preds = self.evaluator.run_job(job)
        return job, rows, preds

    def engines_built(self) -> int:
        return self.evaluator.engines_built

    def ping(self) -> bool:
        return True


def split_job(job: EvalJob, evaluator: Evaluator, granularity: str = "dataset") -> list[EvalJob]:
    """The pending part of `job`, as one job per dataset (or one per checkpoint)."""
    plan = evaluator.pending(
        evaluator.plan(nl_sets=job.nl_sets, vl_tasks=job.vl_tasks, emt_tasks=job.emt_tasks),
        str(job.run_meta["run_id"]), job.trained_task_index, epoch=job.epoch)
    if not plan:
        return []

    def sub(ps) -> EvalJob:
        nl = [p.eval_set for p in ps if p.suite == "nl"]
        vl: dict[tuple[int, str], list] = {}
        emt: dict[tuple[int, str], list] = {}
        for p in ps:
            if p.suite in ("vl", "emt"):
                (vl if p.suite == "vl" else emt).setdefault(
                    (p.eval_task_index, p.eval_task), []).append(p.eval_set)
        return dataclasses.replace(job, nl_sets=nl,
                                   vl_tasks=[(i, t, s) for (i, t), s in vl.items()],
                                   emt_tasks=[(i, t, s) for (i, t), s in emt.items()])

    if granularity == "checkpoint":
        return [sub(plan)]
    if granularity != "dataset":
        raise ValueError(f"granularity {granularity!r} must be 'dataset' or 'checkpoint'")
    return [sub([p]) for p in plan]


def evaluate_many(jobs: Sequence[EvalJob], *, store, predictions=None,
                  cfg: EvalConfig | None = None, backend: str | None = None,
                  engine_kwargs: dict | None = None, num_actors: int | None = None,
                  use_gpu: bool | None = None, cpus_per_actor: float = 1.0,
                  granularity: str = "dataset", judge_cache: str | None = None,
                  on_result: Callable[[EvalJob, list[dict]], None] | None = None
                  ) -> pd.DataFrame:
    """Evaluate many checkpoints × datasets in parallel on Ray actors; returns the new rows.

    Args:
        jobs: one `EvalJob` per checkpoint (datasets inside; split per dataset here).
        store / predictions: ResultStore / PredictionStore the driver appends to.
        cfg: EvalConfig (backend, batch size, suites, subset seed, judge).
        backend, engine_kwargs: override cfg.backend; extra engine arguments.
        num_actors: pool size (default: GPUs, or CPUs // cpus_per_actor, capped by jobs).
        use_gpu: one GPU per actor (default: the cluster has GPUs).
        on_result: called with (job, rows) after each job's rows are written.
    """
    import ray
    from ray.util import ActorPool

    cfg = cfg or EvalConfig()
    backend = backend or cfg.backend
    kwargs = dict(engine_kwargs or {})
    kwargs.setdefault("batch_size", cfg.batch_size)
    if cfg.judge and judge_cache is None:
        judge_cache = str(store.root / "judge_cache.sqlite")
    # plans only: its engine factory and (lazy) judge are never called
    planner = Evaluator(engine_factory(backend, **kwargs), store, predictions, cfg,
                        judge_cache=judge_cache)
    todo = [j for job in jobs for j in split_job(job, planner, granularity)]
    if not todo:
        return pd.DataFrame()
    todo.sort(key=lambda j: str(j.checkpoint))
    if not ray.is_initialized():
        ray.init()
    resources = ray.cluster_resources()
    if use_gpu is None:
        use_gpu = resources.get("GPU", 0) > 0
    if num_actors is None:
        slots = int(resources.get("GPU", 0)) if use_gpu else int(
            resources.get("CPU", 1) // max(cpus_per_actor, 1e-6))
        num_actors = max(1, min(slots, len(todo)))
    remote = ray.remote(_EvalWorker).options(num_gpus=1 if use_gpu else 0,
                                             num_cpus=cpus_per_actor)
    threads = None if use_gpu else max(1, int(cpus_per_actor))
    actors = [remote.remote(backend, kwargs, cfg, judge_cache, threads)
              for _ in range(num_actors)]
    pool = ActorPool(actors)
    written: list[dict] = []
    try:
        for job in todo:
            pool.submit(lambda a, j: a.run.remote(j), job)
        while pool.has_next():
            job, rows, preds = pool.get_next_unordered()
            from ...results import commit_rows

            commit_rows(store, predictions, rows, preds)  # predictions first, rows last
            written.extend(rows)
            if on_result is not None:
                on_result(job, rows)
    finally:
        for a in actors:
            ray.kill(a)
    return pd.DataFrame(written)
