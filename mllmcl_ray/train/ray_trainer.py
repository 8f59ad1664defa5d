"""Ray Train backend: each step of a continual run is one `TorchTrainer.fit()`.

`RayBackend` has the interface of `continual.LocalBackend` (`run(cfg, step,
prev_checkpoint, out_dir, run_dir) -> summary`), so `ContinualRun` drives either. For
one step it starts `trainer.num_workers` Ray Train workers (gloo on CPU, nccl on GPU;
Ray sets up the process group) and runs `task.run_step` on each with the strategy the
stage's `parallel` setting names (`full_shard`, `shard_grad_op`, `ddp`; with one worker
always the plain single-process loop). Data are not sharded by Ray Data: every worker
reads the same tokenised task and `train/loop.py` gives rank r of W its slice of each
optimizer step's seeded global batch.

What each worker reports to Ray Train (and so to the Ray dashboard's Train page):

- every `trainer.log_every` optimizer steps, `ray.train.report(metrics)` with loss, lr,
  tokens/s (all workers), samples seen, step, task index/name, stage and step key;
- every `trainer.checkpoint_every` steps (if > 0) a mid-task checkpoint: a Ray Train
  `Checkpoint` directory holding

  ``model/``                 HF-format LLaVA dir (plain models), or
  ``model_state.pt``         the state dict of a method-wrapped model (e.g. peft), and
  ``optimizer-rank<r>.pt``   each worker's optimizer + scheduler state (FSDP: its shards),
  ``position.json``          step key, step within the stage, world size, strategy.

  The last `trainer.keep_last` of them are kept (`CheckpointConfig(num_to_keep=...)`)
  under ``<run_dir>/ray/<run_id>-<step key>/``.

Resume: a worker failure makes Ray Train restart the worker group (up to
`trainer.max_failures` times); the new workers find the latest checkpoint through
`ray.train.get_checkpoint()`, load its weights and optimizer state and continue at its
step. A driver that dies mid-step and is started again re-runs the same
`RunConfig(name, storage_path)`, so Ray Train hands it the same latest checkpoint; steps
that finished earlier are skipped by `ContinualRun` (run_state.json). The step's final
checkpoint (`<run_dir>/checkpoints/<step key>/`) is written by rank 0 into `out_dir`,
which must therefore be on storage the driver can read (local disk for one node, a
shared file system on a cluster).

The backend works from inside a Ray Tune trial (a function that builds and fits its own
TorchTrainer): it only calls `ray.init` when Ray is not initialised yet.

Reporting and mid-task checkpoints are `TrainCallback`s (train/callbacks.py) the worker
adds; `RayBackend(callbacks=[...])` adds the caller's own (pickled to every worker), e.g.
the tests' injected worker failure and logits probe.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..validate import check_cluster_resources
from .callbacks import TrainCallback
from .checkpoint import POSITION_FILE
from .task import StepPlan, stage_path

MID_POSITION = "position.json"


def ensure_ray(**init_kwargs) -> bool:
    """`ray.init` unless Ray is initialised already (e.g. inside a Tune trial).

    With `RAY_ADDRESS` set this connects to that cluster; otherwise it starts a local
    Ray whose dashboard listens on 127.0.0.1 only. Returns True if it initialised Ray.
    """
    import ray

    if ray.is_initialized():
        return False
    if not os.environ.get("RAY_ADDRESS") and init_kwargs.get("include_dashboard", True) is not False:
        init_kwargs.setdefault("dashboard_host", "127.0.0.1")
    ray.init(**init_kwargs)
    return True


def threads_per_worker(trainer, local_workers: int, assigned_cpus: float | None = None) -> int:
    """torch threads for one worker: `trainer.threads_per_worker`, else the CPUs Ray
    assigned to the worker (`trainer.cpus_per_worker`), else cores / workers here."""
    if trainer.threads_per_worker:
        return int(trainer.threads_per_worker)
    if assigned_cpus:
        return max(1, int(assigned_cpus))
    return max(1, (os.cpu_count() or 1) // max(1, local_workers))


def stage_of(cfg: RunConfig, step: StepPlan):
    return stage_path(step).config(cfg)


# ---------------------------------------------------------------------------------------
# mid-task checkpoints
# ---------------------------------------------------------------------------------------
def write_mid_checkpoint(path: Path, *, strategy, mllm, step: StepPlan, done: int,
                         opt_state: dict) -> None:
    """Write this worker's part of a mid-task checkpoint into `path` (all ranks call it).

    Gathering full weights is a collective under FSDP, so every rank takes part; rank 0
    writes the model and the position, every rank its own optimizer state.
    """
    from ..models.build import save_mllm, unwrap

    rank = strategy.rank
    plain = strategy.full_model(strategy.wrapped)  # a collective under sharding
    if rank == 0:
        if unwrap(plain) is plain:
            save_mllm(dataclasses.replace(mllm, model=plain), path / "model")
        else:
            torch.save({k: v.detach().cpu() for k, v in plain.state_dict().items()},
                       path / "model_state.pt")
        (path / MID_POSITION).write_text(json.dumps({
            "step_key": step.key, "task_index": step.task_index, "task": step.task_name,
            "stage": step.stage, "step": done, "world_size": strategy.world_size,
            "strategy": strategy.name}, indent=1))
    torch.save(opt_state, path / f"optimizer-rank{rank}.pt")


def read_mid_checkpoint(path: Path, step: StepPlan, rank: int, world_size: int,
                        strategy_name: str) -> dict | None:
    """`resume_state` for run_step from a mid-task checkpoint dir (None if not this step's)."""
    from ..models.build import load_mllm

    pos_file = path / MID_POSITION
    if not pos_file.exists():
        return None
    pos = json.loads(pos_file.read_text())
    if pos.get("step_key") != step.key:
        return None
    if (path / "model").exists():
        model_state = load_mllm(path / "model").model.state_dict()
    else:
        model_state = torch.load(path / "model_state.pt", weights_only=True)
    state: dict[str, Any] = {"step": int(pos["step"]), "model_state": model_state}
    opt_file = path / f"optimizer-rank{rank}.pt"
    if pos.get("world_size") == world_size and pos.get("strategy") == strategy_name \
            and opt_file.exists():
        # FSDP optimizer state holds DTensors (this rank's shards): not weights_only.
        state["optimizer_state"] = torch.load(opt_file, weights_only=False)
    else:
        warnings.warn(f"{path}: written by {pos.get('world_size')} worker(s) with "
                      f"{pos.get('strategy')!r}, now {world_size} with {strategy_name!r}: "
                      "resuming the weights and position with a fresh optimizer state")
    return state


# ---------------------------------------------------------------------------------------
# the per-worker function
# ---------------------------------------------------------------------------------------
def train_loop_per_worker(config: dict) -> None:
    """What each Ray Train worker runs: one step of the continual run."""
    import ray.train

    from .strategies import make_strategy
    from .task import run_step

    cfg: RunConfig = config["cfg"]
    step: StepPlan = config["step"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # In this (Ray Train's training) thread: OpenMP thread counts are per calling thread.
    torch.set_num_threads(threads_per_worker(
        cfg.trainer, ctx.get_local_world_size(),
        ray.get_runtime_context().get_assigned_resources().get("CPU")))
    device = torch.device("cpu")
    if cfg.trainer.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    strategy = make_strategy(stage_of(cfg, step).parallel, cfg.trainer, device, world)

    resume = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = read_mid_checkpoint(Path(d), step, rank, world, strategy.name)
        if resume is not None and rank == 0:
            print(f"[{step.key}] resuming at optimizer step {resume['step']} from {ckpt.path}")

    callbacks = [_RayReport(step)] + list(config.get("callbacks") or [])
    if cfg.trainer.checkpoint_every:
        callbacks.append(_RayMidCheckpoint(step))
    run_step(cfg, step, config["prev_checkpoint"], config["out_dir"], strategy=strategy,
             callbacks=callbacks, cache_dir=config["cache_dir"],
             feature_cache_dir=config["feature_cache_dir"], resume_state=resume, progress=False)


class _RayReport(TrainCallback):
    """`ray.train.report` of every logged metrics dict (all ranks, as Ray Train needs)."""

    def __init__(self, step: StepPlan):
        self.step = step

    def on_log(self, metrics: dict) -> None:
        import ray.train

        ray.train.report({**metrics, "step_key": self.step.key})


class _RayMidCheckpoint(TrainCallback):
    """A mid-task Ray Train checkpoint every `trainer.checkpoint_every` steps."""

    def __init__(self, step: StepPlan):
        self.step = step

    def on_checkpoint(self, done: int, optimizer_state: dict) -> None:
        import ray.train
        from ray.train import Checkpoint

        st, step = self.state, self.step
        with tempfile.TemporaryDirectory(prefix="mllmcl-ckpt-") as tmp:
            write_mid_checkpoint(Path(tmp), strategy=st.strategy, mllm=st.mllm, step=step,
                                 done=done, opt_state=optimizer_state)
            ray.train.report({"step": done, "step_key": step.key, "task_index": step.task_index,
                              "checkpoint": 1},
                             checkpoint=Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"{step.key}-step{done:07d}")


# ---------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------
class RayBackend:
    """Runs each step as a Ray Train `TorchTrainer` (the interface of LocalBackend).

    `init_kwargs` go to `ray.init` when Ray is not initialised yet. `callbacks`
    (TrainCallbacks, picklable) run on every worker beside the backend's own.
    """

    name = "ray"

    def __init__(self, init_kwargs: dict | None = None,
                 callbacks: list[TrainCallback] | tuple = ()):
        self.init_kwargs = dict(init_kwargs or {})
        self.callbacks = list(callbacks)
        self.last_result = None

    def trainer(self, cfg: RunConfig, step: StepPlan, prev_checkpoint: str | None,
                out_dir: Path, run_dir: Path):
        from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig
        from ray.train import ScalingConfig
        from ray.train.torch import TorchTrainer

        t = cfg.trainer
        run_dir = Path(run_dir).resolve()
        cache = Path(cfg.output_dir).resolve() / "cache"
        resources = {"CPU": t.cpus_per_worker}
        if t.use_gpu:
            resources["GPU"] = 1
        return TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "cfg": cfg, "step": step, "prev_checkpoint": prev_checkpoint,
                "out_dir": str(Path(out_dir).resolve()), "cache_dir": str(cache),
                "feature_cache_dir": str(cache / "features") if t.feature_cache else None,
                "callbacks": self.callbacks},
            scaling_config=ScalingConfig(num_workers=max(1, t.num_workers), use_gpu=t.use_gpu,
                                         resources_per_worker=resources),
            run_config=RayRunConfig(
                name=f"{run_dir.name}-{step.key}", storage_path=str(run_dir / "ray"),
                failure_config=FailureConfig(max_failures=t.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=max(1, t.keep_last))))

    def run(self, cfg: RunConfig, step: StepPlan, prev_checkpoint: str | None, out_dir: Path,
            run_dir: Path) -> dict:
        ensure_ray(**self.init_kwargs)
        check_cluster_resources(cfg)  # workers the cluster cannot place: an error, not a wait
        try:
            self.last_result = self.trainer(cfg, step, prev_checkpoint, out_dir, run_dir).fit()
        except Exception as e:  # a worker's DataError etc.: the user's one-line error
            from ..errors import user_error_in

            err = user_error_in(e)
            if err is None:
                raise
            raise err from e
        pos = Path(out_dir) / POSITION_FILE
        if not pos.exists():
            raise RuntimeError(f"Ray Train finished step {step.key} without writing {pos}")
        summary = json.loads(pos.read_text())
        summary["ray_path"] = str(self.last_result.path)
        return summary


__all__ = ["RayBackend", "ensure_ray", "read_mid_checkpoint", "threads_per_worker",
           "train_loop_per_worker", "write_mid_checkpoint"]
