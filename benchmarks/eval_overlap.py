"""Evaluation in the driver (before) vs in engine actors overlapped with training (after).

The same micro continual run (tiny world, nano base LLM by default: alignment + the four
Srivastava tasks, the NL suite and every VL task seen so far after each task) twice, in
one process, each into its own output dir:

- **before**: ``eval.placement: driver``: after every task the run's process loads the
  checkpoint and scores it before training the next task;
- **after**: ``eval.placement: actors``: after every task the run queues (checkpoint,
  dataset) jobs on a CPU engine actor (``eval.actor_cpus`` CPUs) and trains on; it waits
  for the queue at the end.

Training runs in-process (``trainer.num_workers: 0``, one thread) in both, so the only
difference is where evaluation runs; ``--epochs`` (fine-tuning epochs per task, default
20) makes the tiny world's training last about as long as its evaluation. Printed: both wall times and their ratio; the evaluation time of
the before run (the driver's model-holding time, from its own records) and the share of
it hidden by the overlap, ``(wall_before − wall_after) / eval_before``; and the time the
driver process spent holding a model in each (goal: 0 s with actors). On 2 shared CPU
cores the actor competes with training for the same cores, so the ratio stays near 1;
on a cluster the actors sit on their own GPUs.

    python benchmarks/eval_overlap.py [--out benchmarks/eval_overlap.json] [--size nano]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def held(recs: list[dict], role: str) -> float:
    return sum(r["seconds"] for r in recs if r["event"] == "hold" and r["role"] == role)


def job_seconds(recs: list[dict]) -> float:
    start = {}
    total = 0.0
    for r in sorted(recs, key=lambda r: r["time"]):
        if r["event"] == "job_start":
            start[(r["pid"], r["job"])] = r["time"]
        elif r["event"] == "job_done" and (r["pid"], r["job"]) in start:
            total += r["time"] - start.pop((r["pid"], r["job"]))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/eval_overlap.json", help="JSON results file")
    ap.add_argument("--size", default="nano", help="base LLM size (data/micro/pretrain.py)")
    ap.add_argument("--world", default="tiny", help="micro world size")
    ap.add_argument("--eval-samples", type=int, default=200, help="samples per eval set")
    ap.add_argument("--epochs", type=float, default=20.0,
                    help="fine-tuning epochs per task (the tiny world trains in seconds at 1: "
                         "more makes a task's training comparable to its evaluation)")
    ap.add_argument("--work", default=None, help="work dir (default: a temp dir)")
    args = ap.parse_args()

    import ray
    import torch

    from mllmcl_ray.eval.service import read_eval_log
    from mllmcl_ray.runner import results_dir, run_and_evaluate
    from mllmcl_ray.presets.micro import micro_run_config, prepare_micro

    work = Path(args.work or tempfile.mkdtemp(prefix="eval-overlap-"))
    prep = prepare_micro(work / "prep", sizes=[args.size], world_size=args.world, progress=False,
                         log=lambda s: None)
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out: dict = {"host": platform.node(), "cpus": 2, "size": args.size, "world": args.world,
                 "finetune_epochs": args.epochs, "eval_samples": args.eval_samples,
                 "load_average_at_start": list(os.getloadavg())}
    for label, placement in (("before", "driver"), ("after", "actors")):
        cfg = micro_run_config(prep, args.size, out=work / label, workers=0,
                               eval_samples=args.eval_samples)
        cfg.stages.finetune.epochs = args.epochs
        cfg.eval.placement = placement
        cfg.eval.service_idle_s = 5
        cfg.trainer.threads_per_worker = 1
        t0, t_start = time.perf_counter(), time.time()
        run_and_evaluate(cfg, progress=False, study="eval_overlap", log=lambda s: None)
        wall = time.perf_counter() - t0
        recs = read_eval_log(results_dir(cfg))
        subs = [r["time"] for r in recs if r["event"] == "submit"]
        starts = [r["time"] for r in recs if r["event"] == "job_start"]
        timeline = {"training_done_s": round(max(subs) - t_start, 2),  # last task's jobs queued
                    "first_actor_job_s": round(min(starts) - t_start, 2)} if subs and starts else {}
        out[label] = {"wall_s": round(wall, 2), "driver_model_s": round(held(recs, "driver"), 2),
                      **timeline,
                      "actor_model_s": round(held(recs, "actor"), 2),
                      "actor_job_s": round(job_seconds([r for r in recs if r["role"] == "actor"]), 2),
                      "jobs": sum(r["event"] == "job_done" for r in recs)
                      if placement == "actors" else None}
    ray.shutdown()
    b, a = out["before"], out["after"]
    eval_before = b["driver_model_s"]
    out["ratio_after_over_before"] = round(a["wall_s"] / b["wall_s"], 3)
    out["eval_before_s"] = eval_before
    out["eval_hidden_share"] = round(max(0.0, min(1.0, (b["wall_s"] - a["wall_s"]) / eval_before)), 3) \
        if eval_before else None
    print(f"before (eval in the driver):         {b['wall_s']:.1f} s wall, driver held a model "
          f"{b['driver_model_s']:.1f} s")
    print(f"after  (actors, overlapped):         {a['wall_s']:.1f} s wall, driver held a model "
          f"{a['driver_model_s']:.1f} s; actor jobs {a['actor_job_s']:.1f} s ({a['jobs']} jobs); "
          f"training done at {a.get('training_done_s')} s, first actor job at "
          f"{a.get('first_actor_job_s')} s (actor start-up)")
    print(f"ratio after/before: {out['ratio_after_over_before']:.3f}; evaluation time hidden: "
          f"{out['eval_hidden_share']}")
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
