"""One continual run, evaluated after every task: the runner studies and the CLI share.

- `run_and_evaluate`: train the run's task sequence (in-process or Ray Train), evaluating
  after every task into the Parquet result store; a rerun resumes and skips finished work.
- `make_evaluate`: the evaluation callback `ContinualRun` calls after every task.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import EvalSet, RunConfig


def quiet_libraries() -> None:
    """Keep study output readable: no per-load reports or shard bars from transformers."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# ---------------------------------------------------------------------------------------
def results_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / "results"


def run_meta(cfg: RunConfig, run_id: str, study: str, scale: float | None = None) -> dict:
    from .methods.base import build_methods

    return {"run_id": run_id, "study": study, "model": cfg.model.name,
            "scale": float(scale if scale is not None else (cfg.model.scale or 0.0)),
            "method": cfg.method.name,
            "method_params": json.dumps(build_methods(cfg.method).params_dict(), sort_keys=True),
            "seed": int(cfg.seed)}


def seen_vl_tasks(cfg: RunConfig, step) -> list[tuple[int, str, list[EvalSet]]]:
    """VL tasks evaluated after `step`: every task seen so far (all, for the LLaVA recipe
    and after alignment: the zero-shot evaluation, `eval.zero_shot`)."""
    if cfg.recipe == "llava" or step.stage == "align":
        return [(i + 2, t.name, t.eval) for i, t in enumerate(cfg.tasks) if t.eval]
    return [(i + 2, t.name, t.eval) for i, t in enumerate(cfg.tasks)
            if i + 2 <= step.task_index and t.eval]


def make_evaluate(study: str = "run", progress: bool = True, log=print):
    """The callback ContinualRun calls after every task (and for the base model)."""
    from .eval.evaluator import Evaluator
    from .methods.base import build_methods
    from .models.build import build_mllm, llm_parameter_count
    from .results import PredictionStore, ResultStore
    from .train.task import load_step_model

    state: dict = {}

    def evaluate(cfg: RunConfig, step, checkpoint: str, run_id: str) -> None:
        rdir = results_dir(cfg)
        if "evaluator" not in state:
            state["evaluator"] = Evaluator.from_config(cfg.eval, ResultStore(rdir),
                                                       PredictionStore(rdir))
        ev = state["evaluator"]
        if step is None:
            mllm = build_mllm(cfg.model)  # the base LLM (task 1): NL suite only
            scale = cfg.model.scale or float(llm_parameter_count(mllm.model))
            state["scale"] = scale
            rows = ev.evaluate(mllm, run_meta=run_meta(cfg, run_id, study, scale),
                               trained_task_index=1, trained_task="base", nl_sets=cfg.nl_sets,
                               checkpoint_id=f"{cfg.model.name}:base")
        else:
            scale = state.get("scale") or cfg.model.scale
            mllm = load_step_model(cfg, checkpoint, build_methods(cfg.method))
            vl = seen_vl_tasks(cfg, step)
            emt = [(i, n, [e for e in sets if e.kind == "classification"]) for i, n, sets in vl]
            vl = [(i, n, [e for e in sets if e.kind != "classification"]) for i, n, sets in vl]
            # after alignment (eval.zero_shot): no VL task trained yet, so rows go to task 1
            zero = step.stage == "align"
            rows = ev.evaluate(mllm, run_meta=run_meta(cfg, run_id, study, scale),
                               trained_task_index=1 if zero else step.task_index,
                               trained_task="zero_shot" if zero else step.task_name,
                               nl_sets=[] if zero else cfg.nl_sets,
                               vl_tasks=[v for v in vl if v[2]],
                               emt_tasks=[e for e in emt if e[2]], checkpoint_id=checkpoint)
        if len(rows):
            acc = rows[rows["metric"].isin(["accuracy", "emt_exact"])]
            txt = ", ".join(f"{r.dataset}={r.value:.3f}" for r in acc.itertuples())
            k = 1 if step is None or step.stage == "align" else step.task_index
            log(f"[{run_id}] eval after task {k}: {txt}")

    return evaluate


def run_and_evaluate(cfg: RunConfig, progress: bool = True, study: str = "run", log=print,
                     backend=None) -> str:
    """Train the run's task sequence, evaluating after every task; returns the run id.

    `trainer.num_workers` = 0 trains in this process; ≥ 1 runs every step as a Ray Train
    `TorchTrainer` with that many workers."""
    from .train.continual import ContinualRun, LocalBackend
    from .validate import validate_run_config

    validate_run_config(cfg)  # everything knowable fails here, before any work (errors.py)
    quiet_libraries()
    if backend is None:
        if cfg.trainer.num_workers >= 1:
            from .train.ray_trainer import RayBackend

            backend = RayBackend()
        else:
            backend = LocalBackend(progress=progress)
    run = ContinualRun(cfg, backend=backend, evaluate=make_evaluate(study, progress, log), log=log)
    run.run()
    return run.run_id
