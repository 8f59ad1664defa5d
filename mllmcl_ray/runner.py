"""One continual run, evaluated after every task: the runner studies and the CLI share.

- `run_and_evaluate`: train the run's task sequence (in-process or Ray Train), evaluating
  after every task into the Parquet result store; a rerun resumes and skips finished work.
- `make_evaluate`: the evaluation callback `ContinualRun` calls after every task: with Ray,
  it queues (checkpoint, dataset) jobs on the study's engine-actor pool (eval/service.py)
  and training goes on; `finish` waits for them at the end of the run.
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


def llm_scale(spec) -> float:
    """The LLM's parameter count (`models.build.llm_parameter_count` of the built MLLM),
    from its config on the meta device: no weights are loaded or allocated."""
    if spec.scale:
        return float(spec.scale)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models.families import get_family
    from .models.tokenizers import ensure_special_tokens, load_tokenizer

    if spec.llm:
        config = AutoConfig.from_pretrained(spec.llm, trust_remote_code=spec.trust_remote_code)
    else:
        kw = dict(spec.llm_config or {})
        config = AutoConfig.for_model(kw.pop("model_type", get_family(spec.family).model_type), **kw)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(config)
    tok = ensure_special_tokens(load_tokenizer(spec.tokenizer or spec.llm, spec.trust_remote_code))
    emb, head = llm.get_input_embeddings().weight, llm.get_output_embeddings().weight
    tied = head is emb
    n = sum(p.numel() for p in llm.get_decoder().parameters()) + (0 if tied else head.numel())
    extra = max(0, len(tok) - emb.shape[0]) * emb.shape[1]  # build_mllm resizes to the tokenizer
    return float(n + extra * (1 if tied else 2))


def split_emt(tasks):
    """(VL tasks, EMT tasks) of [(index, name, sets)]: classification sets go to EMT's
    suite, the rest to the VL suite; tasks left without sets are dropped."""
    emt = [(i, n, [e for e in sets if e.kind == "classification"]) for i, n, sets in tasks]
    vl = [(i, n, [e for e in sets if e.kind != "classification"]) for i, n, sets in tasks]
    return [v for v in vl if v[2]], [e for e in emt if e[2]]


def eval_jobs(cfg: RunConfig, step, checkpoint: str, run_id: str, study: str, scale: float):
    """The evaluation after `step` (None: the base model) as one EvalJob over a ModelRef."""
    from .eval.evaluator import EvalJob
    from .eval.service import ModelRef

    meta = run_meta(cfg, run_id, study, scale)
    if step is None:  # the base model (task 1): the NL suite; a start that is an MLLM
        # already (model.init, e.g. EMT's instruction-tuned LLaVA) with eval.zero_shot also
        # scores every task's sets before any training, as after alignment ("zero_shot")
        if not (cfg.model.init and cfg.eval.zero_shot):
            return EvalJob(ModelRef("base", cfg), meta, 1, "base", nl_sets=list(cfg.nl_sets),
                           checkpoint_id=f"{cfg.model.name}:base")
        vl, emt = split_emt([(i + 2, t.name, t.eval) for i, t in enumerate(cfg.tasks) if t.eval])
        return EvalJob(ModelRef("base", cfg), meta, 1, "zero_shot", nl_sets=list(cfg.nl_sets),
                       vl_tasks=vl, emt_tasks=emt, checkpoint_id=str(cfg.model.init))
    vl, emt = split_emt(seen_vl_tasks(cfg, step))
    # after alignment (eval.zero_shot): no VL task trained yet, so rows go to task 1
    zero = step.stage == "align"
    return EvalJob(ModelRef("step", cfg, checkpoint), meta, 1 if zero else step.task_index,
                   "zero_shot" if zero else step.task_name,
                   nl_sets=[] if zero else list(cfg.nl_sets),
                   vl_tasks=vl, emt_tasks=emt, checkpoint_id=checkpoint, epoch=int(step.epoch))


class RunEvaluation:
    """The callback ContinualRun calls after every task (and for the base model), and
    `finish`, the wait at the end of the run.

    With engine actors (`eval.service.uses_actors`: whenever the run uses Ray) each call
    splits the checkpoint's evaluation into (checkpoint, dataset) jobs not yet in the
    result store and submits them to the study's pool; it returns at once, so training of
    the next task overlaps them, and `finish` waits for all. Otherwise (placement
    "driver", or a plain in-process run) it evaluates here, before returning."""

    def __init__(self, study: str = "run", progress: bool = True, log=print):
        self.study = study
        self.progress = progress
        self.log = log
        self.scale: float | None = None
        self.client = None
        self.local = None
        self.planner = None
        self.run_id: str | None = None
        self.cfg: RunConfig | None = None

    def __call__(self, cfg: RunConfig, step, checkpoint: str, run_id: str) -> None:
        from .eval.service import uses_actors

        self.cfg, self.run_id = cfg, run_id
        if self.scale is None:
            self.scale = llm_scale(cfg.model)
        job = eval_jobs(cfg, step, checkpoint, run_id, self.study, self.scale)
        k = job.trained_task_index
        if uses_actors(cfg):
            from .eval.engine.actors import split_job
            from .eval.service import EvalClient, EvalLog, job_key

            if self.client is None:
                self.client = EvalClient(cfg, log=self.log)
                self.records = EvalLog(results_dir(cfg), "driver")
                self.planner = self._planner(cfg)
            todo = split_job(job, self.planner, "dataset")
            self.client.submit(todo)
            self.records.write("submit", jobs=[job_key(j) for j in todo], checkpoint=str(job.checkpoint))
            if todo:
                self.log(f"[{run_id}] eval after task {k}: {len(todo)} job(s) queued")
            return
        from .eval.service import EngineWorker

        if self.local is None:
            self.local = EngineWorker(cfg.eval, str(results_dir(cfg)), role="driver")
        try:
            rows, _ = self.local.evaluator.run_job(job, write=True)
        finally:
            self.local.close()  # the driver holds no model between tasks
        self._log_rows(run_id, k, rows)

    @staticmethod
    def _planner(cfg: RunConfig):
        from .eval.engine.base import engine_factory
        from .eval.evaluator import Evaluator
        from .results import PredictionStore, ResultStore

        rdir = results_dir(cfg)
        return Evaluator(engine_factory(cfg.eval.backend), ResultStore(rdir), PredictionStore(rdir),
                         cfg.eval)

    def _log_rows(self, run_id: str, k: int, rows) -> None:
        acc = [r for r in rows if r["metric"] in ("accuracy", "emt_exact")]
        if acc:
            txt = ", ".join(f"{r['dataset']}={r['value']:.3f}" for r in acc)
            epoch = int(acc[0].get("epoch") or 0)  # rows inside a task (eval_every_epoch)
            where = f"task {k}" + (f", epoch {epoch}" if epoch else "")
            self.log(f"[{run_id}] eval after {where}: {txt}")

    def finish(self) -> None:
        """Wait until every submitted job is scored (no-op for in-process evaluation)."""
        if self.client is None:
            return
        client, self.client = self.client, None
        client.finish(progress=self.progress)
        from .results import ResultStore

        df = ResultStore(results_dir(self.cfg)).read()
        if len(df):
            df = df[(df["run_id"] == self.run_id) & df["metric"].isin(["accuracy", "emt_exact"])]
            keys = ["trained_task_index"] + (["epoch"] if "epoch" in df else [])
            for key, part in df.groupby(keys):
                k = key[0] if isinstance(key, tuple) else key
                self._log_rows(self.run_id, int(k), part.to_dict("records"))

    def close(self) -> None:
        """Release the pool without waiting (a failed run: queued jobs still finish while
        the pool lives; a rerun submits whatever is missing)."""
        if self.client is not None:
            self.client.close()
            self.client = None


def make_evaluate(study: str = "run", progress: bool = True, log=print) -> RunEvaluation:
    """The evaluation callback ContinualRun calls after every task (and for the base model)."""
    return RunEvaluation(study, progress, log)


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
    evaluate = make_evaluate(study, progress, log)
    run = ContinualRun(cfg, backend=backend, evaluate=evaluate, log=log)
    try:
        run.run()
        evaluate.finish()  # the run is finished when training and evaluation both are
    finally:
        evaluate.close()
    return run.run_id
