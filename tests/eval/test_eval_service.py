"""Evaluation in engine actors (eval/service.py): placement, exactly-once jobs, a killed
actor's job rerun elsewhere, and a tiny Ray Tune study whose trial drivers load no model."""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from mllmcl_ray.config import EvalConfig, EvalSet, RunConfig, TrainerConfig  # noqa: E402
from mllmcl_ray.eval.service import pool_size, uses_actors  # noqa: E402


def test_pool_size_per_gpu_or_cpu_budget():
    # one actor per GPU of the cluster (8 GPUs, 1 per actor), or two per GPU pair
    assert pool_size(EvalConfig(), {"CPU": 64, "GPU": 8}) == (8, 1)
    assert pool_size(EvalConfig(actor_gpus=2), {"CPU": 64, "GPU": 8}) == (4, 2)
    # CPU: floor(cpu_budget / actor_cpus) actors without GPUs
    assert pool_size(EvalConfig(cpu_budget=3, actor_cpus=1), {"CPU": 16}) == (3, 0)
    assert pool_size(EvalConfig(cpu_budget=1, actor_cpus=0.5), {"CPU": 2}) == (2, 0)
    assert pool_size(EvalConfig(num_actors=5), {"CPU": 2}) == (5, 0)


def test_placement_rule():
    from mllmcl_ray.config import ConfigError

    local = RunConfig(trainer=TrainerConfig(num_workers=0))
    assert uses_actors(RunConfig(trainer=TrainerConfig(num_workers=1)))
    assert not uses_actors(local)  # a plain in-process run outside Ray: evaluate here
    local.eval.placement = "actors"
    assert uses_actors(local)
    local.eval.placement = "gpu"
    with pytest.raises(ConfigError, match="eval.placement"):
        uses_actors(local)
    local.eval.placement, local.eval.nl_backend = "auto", "harness"
    with pytest.raises(ConfigError, match="eval.nl_backend"):
        uses_actors(local)


def _lambada(path: Path, n: int) -> str:
    words = ["red", "green", "blue", "circle", "square", "left", "right", "of", "the", "is"]
    rows = [{"id": str(i), "context": " ".join(words[(i + j) % 10] for j in range(24)),
             "target": words[i % 10]} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_actor_job_reruns_elsewhere_without_duplicates(ray_local, tmp_path):
    """Kill the only engine actor while it runs a job: the queue starts a fresh actor, the
    job runs again there, finishes once, and the store holds each key once."""
    import ray
    from spine_world import tiny_run_config

    from mllmcl_ray.eval.engine.actors import split_job
    from mllmcl_ray.eval.evaluator import EvalJob
    from mllmcl_ray.eval.service import EvalClient, ModelRef, read_eval_log
    from mllmcl_ray.models.build import build_mllm, save_mllm
    from mllmcl_ray.results import ResultStore
    from mllmcl_ray.runner import RunEvaluation, results_dir, run_meta

    cfg = tiny_run_config(tmp_path)
    cfg.eval.placement = "actors"
    cfg.eval.service_idle_s = 5
    ckpt = tmp_path / "ckpt"
    save_mllm(build_mllm(cfg.model), ckpt / "model")
    nl = [EvalSet(name=f"lambada{i}", path=_lambada(tmp_path / f"l{i}.jsonl", 300), kind="lambada",
                  max_samples=None) for i in range(3)]
    job = EvalJob(ModelRef("step", cfg, str(ckpt)), run_meta(cfg, "r1", "t", 1.0), 2, "colour",
                  nl_sets=nl, vl_tasks=[(2, "colour", cfg.tasks[0].eval)], checkpoint_id=str(ckpt))
    todo = split_job(job, RunEvaluation._planner(cfg), "dataset")
    assert len(todo) == 4  # 3 NL sets + 1 VL set, one job each
    client = EvalClient(cfg, log=lambda s: None)
    client.submit(todo)
    root = results_dir(cfg)
    victim = None
    end = time.time() + 120
    while victim is None and time.time() < end:  # the first job_start in an actor's records
        starts = [r for r in read_eval_log(root) if r["event"] == "job_start"]
        if starts:
            victim = starts[0]
        time.sleep(0.02)
    assert victim is not None
    assert client.pinned_checkpoints() == [str(ckpt)]  # jobs pending on it: keep it
    running = ray.get(client.handle.running_on.remote())
    assert [k for k, _ in running] == [victim["job"]]
    ray.kill(running[0][1])
    st = client.finish(progress=False)
    assert st["done"] == 4 and not st["failed"]

    recs = read_eval_log(root)
    done = Counter(r["job"] for r in recs if r["event"] == "job_done")
    assert set(done) == set(client.keys) and set(done.values()) == {1}
    started = [r for r in recs if r["event"] == "job_start" and r["job"] == victim["job"]]
    assert len(started) == 2 and started[0]["pid"] != started[1]["pid"]  # rerun on a new actor
    finisher = next(r for r in recs if r["event"] == "job_done" and r["job"] == victim["job"])
    assert finisher["pid"] != victim["pid"]
    df = ResultStore(root).read()
    keys = list(zip(df.run_id, df.trained_task_index, df.eval_task, df.dataset, df.metric))
    assert len(keys) == len(set(keys))
    assert set(df.dataset) == {"lambada0", "lambada1", "lambada2", "colour"}
    assert (df.checkpoint_id == str(ckpt)).all()
    # a rerun submits nothing (every key stored); the pool is gone once released
    assert split_job(job, RunEvaluation._planner(cfg), "dataset") == []
    time.sleep(1)
    with pytest.raises(ValueError):
        ray.get_actor(client.name, namespace="mllmcl")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_study_evaluates_in_actors_exactly_once(ray_local, tmp_path):
    """Two concurrent Tune trials of the real continual run (tiny world) share one pool:
    the trial drivers submit jobs and load no model (their own records); one engine actor
    ran every submitted (checkpoint, dataset) job exactly once, loading each model once;
    every expected result row is there once."""
    from spine_world import tiny_run_config

    from mllmcl_ray.eval.service import read_eval_log
    from mllmcl_ray.results import ResultStore
    from mllmcl_ray.runner import results_dir
    from mllmcl_ray.sweep import SweepSpec, run_sweep

    base = tiny_run_config(tmp_path, steps=2)
    base.tasks = base.tasks[:1]
    base.stages.align.max_steps = 1
    base.trainer.threads_per_worker = 1
    base.eval.service_idle_s = 5
    base.nl_sets = [EvalSet(name="lambada", path=_lambada(tmp_path / "l.jsonl", 20),
                            kind="lambada", max_samples=None)]
    df = run_sweep(base, SweepSpec(space={"stages.finetune.lr": [1e-3, 2e-3]}, max_concurrent=2),
                   tmp_path / "tune", "evalplace", verbose=0)
    assert df.attrs["num_finished"] == 2, df["error"].tolist()
    root = results_dir(base)
    recs = read_eval_log(root)
    driver = [r for r in recs if r["role"] == "driver"]
    actor = [r for r in recs if r["role"] == "actor"]
    assert {r["event"] for r in driver} == {"submit"}  # no load / hold in a trial driver
    assert len({r["pid"] for r in driver}) == 2  # one trial driver process per trial
    submitted = [k for r in driver for k in r["jobs"]]
    done = Counter(r["job"] for r in actor if r["event"] == "job_done")
    assert sorted(submitted) == sorted(done) and set(done.values()) == {1}
    # per run: base (NL), after task 2 (NL + colour): 1 + 2 jobs
    assert len(submitted) == 2 * 3
    assert {r["event"] for r in actor} >= {"load", "hold", "job_start", "job_done"}
    # a checkpoint stays loaded for its consecutive jobs: one load per (actor, model)
    loads = Counter((r["pid"], r["model"]) for r in actor if r["event"] == "load")
    assert set(loads.values()) == {1} and len({m for _, m in loads}) == 3  # base + 2 ckpts
    assert len({r["pid"] for r in actor}) == 1  # both trials' jobs on the shared pool's actor
    rows = ResultStore(root).read()
    keys = list(zip(rows.run_id, rows.trained_task_index, rows.eval_task, rows.dataset, rows.metric))
    assert len(keys) == len(set(keys))
    for rid in set(df["run_id"]):
        got = {(k, d) for r, k, _, d, m in keys if r == rid and m == "accuracy"}
        assert got == {(1, "lambada"), (2, "lambada"), (2, "colour")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_served_judge_actor_scores_and_caches(ray_local, tmp_path):
    """With eval.judge set, the judge model loads in its own actor (role "judge"), not in
    the engine actor; judge rows carry the judge id, prompt version and sampling; the
    replies land in the SQLite cache, so a second run of the same answers asks nothing."""
    from spine_world import tiny_run_config

    from mllmcl_ray.eval.engine.actors import split_job
    from mllmcl_ray.eval.evaluator import EvalJob
    from mllmcl_ray.eval.judge import JUDGE_PROMPT_VERSION, JudgeCache
    from mllmcl_ray.eval.service import EvalClient, ModelRef, read_eval_log
    from mllmcl_ray.models.build import build_mllm, save_mllm
    from mllmcl_ray.results import ResultStore
    from mllmcl_ray.runner import RunEvaluation, results_dir, run_meta

    cfg = tiny_run_config(tmp_path)
    cfg.eval.placement = "actors"
    cfg.eval.judge_cpus = 0.5
    ckpt = tmp_path / "ckpt"
    save_mllm(build_mllm(cfg.model), ckpt / "model")
    judge_dir = tmp_path / "judge"
    save_mllm(build_mllm(cfg.model), judge_dir)
    cfg.eval.judge = str(judge_dir)

    def run(run_id):
        job = EvalJob(ModelRef("step", cfg, str(ckpt)), run_meta(cfg, run_id, "t", 1.0), 2,
                      "colour", vl_tasks=[(2, "colour", cfg.tasks[0].eval)], checkpoint_id=str(ckpt))
        client = EvalClient(cfg, log=lambda s: None)
        client.submit(split_job(job, RunEvaluation._planner(cfg), "dataset"))
        client.finish(progress=False)

    run("r1")
    root = results_dir(cfg)
    df = ResultStore(root).read()
    j = df[df.metric == "judge_score"]
    assert len(j) == 1
    dec = json.loads(j.iloc[0].decoding)
    assert dec["judge"] == str(judge_dir) and dec["judge_prompt_version"] == JUDGE_PROMPT_VERSION
    # CoIN's judge samples (its Qwen run: temperature 0.7, top-p 0.8); the cache keeps replies
    assert dec["judge_sampling"]["do_sample"] is True and dec["judge_sampling"]["temperature"] == 0.7
    recs = read_eval_log(root)
    loads = [(r["role"], r["model"]) for r in recs if r["event"] == "load"]
    assert ("judge", str(judge_dir)) in loads
    assert all(m != str(judge_dir) for role, m in loads if role != "judge")
    n_cached = len(JudgeCache(root / "judge_cache.sqlite"))
    assert 0 < n_cached <= 12  # one reply per distinct prompt of the 12-sample set
    batches = sum(r["event"] == "judge_batch" for r in recs)
    # the same checkpoint's answers again (another run id): every reply from the cache
    run("r2")
    recs = read_eval_log(root)
    assert sum(r["event"] == "judge_batch" for r in recs) == batches
    assert len(ResultStore(root).read().query("metric == 'judge_score'")) == 2
