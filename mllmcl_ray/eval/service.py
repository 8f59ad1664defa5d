"""Evaluation where the accelerators are: a shared pool of engine actors fed by a queue of
(checkpoint, dataset) jobs, and a served judge.

Layout (one pool per study, i.e. per result store and evaluation settings)::

    trial driver (0.01 CPU, never loads a model)      EvalQueue "mllmcl-eval-<hash>"
      evaluate(task k) ──submit (ckpt k × datasets)──▶  (detached named actor, 0 CPU):
      train task k+1 …                                  queue, warm-checkpoint scheduling,
      finish() ──wait for this run's jobs──────────▶    retries when an actor dies
                                                          │ one job at a time per actor
                                ┌─────────────────────────┼──────────────────────┐
                                ▼                         ▼                      ▼
                          EngineWorker 0            EngineWorker 1     …   JudgeServer
                          (num_gpus=1, or           (keeps its last        (vLLM, TP over
                          actor_cpus CPUs)          checkpoint warm)       judge_gpus; or CPU)
                                │ rows of each finished job
                                ▼
                          ResultStore / PredictionStore (Parquet parts, keyed, flock'ed)

Why a named detached actor and not Ray Serve: jobs are few and long (a checkpoint load
then one dataset), results go to files rather than back over HTTP, and the scheduling
that matters — the same checkpoint's jobs on the actor that already holds it — is a few
lines here but a custom router in Serve; Serve's autoscaling and HTTP ingress buy nothing
for a batch queue. The queue actor is *detached* so that it outlives any one Tune trial
(a trial's process owns nothing the others need), and reference-counted: every run
attaches as a client and releases when its jobs are done; the last release shuts the
pool down (workers and judge are owned by the queue and die with it). A study driver may
hold the pool open across trials with `eval_pool_scope`; a pool left by a crashed
driver exits after `eval.service_idle_s` without clients.

Exactly-once rows: a job's rows are appended by the worker that computed them, and the
stores drop keys already present, so a job rerun after its actor died mid-job (the queue
resubmits it to another actor, at most `eval.max_job_retries` times) writes each key
once; a crashed run loses only unfinished jobs, and its rerun submits only those (jobs
whose keys are all stored are never submitted).

Checkpoints: jobs are queued only for complete task checkpoints, which nothing deletes
(training replaces a checkpoint dir only when re-running a step that never finished);
`EvalQueue.pinned_checkpoints` lists those with unfinished jobs for any future pruning.

Records: every process that evaluates writes JSON lines to
``<results>/eval_log/<role>-<pid>.jsonl`` — ``hold`` (a model was held: model, seconds),
``job_start`` / ``job_done`` (job key, checkpoint, dataset, rows written) — so a study can
show where models were loaded and that each job finished once.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, EvalConfig, RunConfig, config_hash
from .engine.base import Engine, GenRequest, make_engine
from .evaluator import EvalJob, Evaluator

NAMESPACE = "mllmcl"
PLACEMENTS = ("auto", "actors", "driver")


# ---------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------
class EvalLog:
    """Append-only JSON-lines record of one process's evaluation work."""

    def __init__(self, results_root: str | Path, role: str):
        self.role = role
        self.pid = os.getpid()
        self.path = Path(results_root) / "eval_log" / f"{role}-{socket.gethostname()}-{self.pid}.jsonl"
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        rec = {"event": event, "role": self.role, "pid": self.pid, "time": time.time(), **fields}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(rec, default=str) + "\n")
                f.flush()


def read_eval_log(results_root: str | Path) -> list[dict]:
    """Every record of every process under `results_root` (for tests and benchmarks)."""
    out = []
    for p in sorted((Path(results_root) / "eval_log").glob("*.jsonl")):
        for line in p.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a killed process
                    pass
    return out


# ---------------------------------------------------------------------------------------
# what a job evaluates
# ---------------------------------------------------------------------------------------
@dataclass
class ModelRef:
    """A model named by reference; the engine actor loads it (the driver never does).

    ``kind="base"``: the run's base MLLM built from ``cfg.model``; ``"step"``: a task
    checkpoint (``<checkpoint>/model``, loaded with the run's method stack)."""

    kind: str
    cfg: RunConfig
    checkpoint: str = ""

    @property
    def key(self) -> str:
        return f"base:{config_hash(self.cfg.model)}" if self.kind == "base" else self.checkpoint

    def __str__(self) -> str:  # the checkpoint_id fallback and log lines
        return self.key

    def model_dir(self) -> Path:
        return Path(self.checkpoint) / "model"

    def load(self):
        from ..methods.base import build_methods
        from ..models.build import build_mllm

        if self.kind == "base":
            return build_mllm(self.cfg.model)
        from ..train.task import load_step_model

        return load_step_model(self.cfg, self.checkpoint, build_methods(self.cfg.method))

    def vllm_servable(self) -> tuple[bool, str]:
        """(servable, why not): vLLM serves plain LLaVA checkpoints (LoRA is merged at
        every task end; EWC/LwF keep their extra state in ``method_state/``, beside the
        plain model); a method without plain checkpoints (MoELoRA's unmergeable experts,
        `ContinualMethod.plain_checkpoints`) needs its own loading code."""
        from ..methods.base import build_methods

        if self.kind == "base":
            return False, "the base model is built from its spec, not read from a directory"
        owners = [m.name for m in build_methods(self.cfg.method).methods
                  if not m.plain_checkpoints]
        if owners:
            return False, f"method {'+'.join(owners)} keeps unmerged weights in its checkpoints"
        return True, ""


def job_key(job: EvalJob) -> str:
    """One (checkpoint, dataset) job's identity: run, trained task, epoch, eval task, dataset."""
    sets = ([("nl", "nl", e.name) for e in job.nl_sets]
            + [("vl", t, e.name) for _, t, es in job.vl_tasks for e in es]
            + [("emt", t, e.name) for _, t, es in job.emt_tasks for e in es])
    return json.dumps([job.run_meta["run_id"], int(job.trained_task_index), int(job.epoch), sets])


# ---------------------------------------------------------------------------------------
# the engine worker (one per GPU, or per CPU slot)
# ---------------------------------------------------------------------------------------
class RemoteEngine(Engine):
    """An Engine whose model lives in another actor (the served judge)."""

    name = "remote"

    def __init__(self, handle, model_id: str):
        self.handle = handle
        self._model_id = model_id

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        import ray

        return ray.get(self.handle.generate.remote(list(requests)))

    def loglikelihood(self, pairs):
        raise NotImplementedError("the served judge only generates")

    def chat_prompt(self, message: str, system: str | None = None) -> str:
        import ray

        return ray.get(self.handle.chat_prompt.remote(message, system))


class JudgeServer:
    """The judge model in its own actor: vLLM with tensor parallelism across the GPUs it
    holds (32B-class judges), or transformers (the micro judge, on CPU)."""

    def __init__(self, cfg: EvalConfig, results_root: str, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.cfg = cfg
        self.log = EvalLog(results_root, "judge")
        self.engine: Engine | None = None
        self.calls = 0

    def _load(self) -> Engine:
        """The judge model, loaded on the first request (a fully cached study never loads it)."""
        if self.engine is None:
            t0 = time.time()
            backend = self.cfg.judge_backend or self.cfg.backend
            kwargs: dict[str, Any] = {"batch_size": self.cfg.batch_size}
            if backend == "vllm" and self.cfg.judge_gpus > 1:
                # TP over the GPUs this actor holds: vLLM's own worker processes ("mp"), not
                # a second Ray placement inside the actor
                kwargs["tensor_parallel_size"] = int(self.cfg.judge_gpus)
                kwargs["distributed_executor_backend"] = "mp"
            self.engine = make_engine(backend, self.cfg.judge, **kwargs)
            self.log.write("load", model=self.cfg.judge, seconds=time.time() - t0,
                           backend=backend, tensor_parallel_size=kwargs.get("tensor_parallel_size", 1))
        return self.engine

    def generate(self, requests: list[GenRequest]) -> list[str]:
        self.calls += 1
        self.log.write("judge_batch", model=self.cfg.judge, n=len(requests))
        return self._load().generate(requests)

    def chat_prompt(self, message: str, system: str | None) -> str:
        return self._load().chat_prompt(message, system)


class EngineWorker:
    """Runs jobs: loads the job's model (kept warm for the next job on the same one),
    scores the dataset and appends the rows to the stores itself."""

    def __init__(self, cfg: EvalConfig, results_root: str, judge_handle=None,
                 threads: int | None = None, role: str = "actor"):
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        from ..results import PredictionStore, ResultStore
        from .engine.base import engine_factory
        from .judge import Judge, make_judge

        self.cfg = cfg
        self.log = EvalLog(results_root, role)
        self._warm: tuple[str, Engine, float] | None = None
        self._said: set[str] = set()
        judge = None
        cache = Path(results_root) / "judge_cache.sqlite"
        if cfg.judge and judge_handle is not None:
            judge = Judge(RemoteEngine(judge_handle, cfg.judge), judge_id=cfg.judge,
                          cache_path=cache)
        elif cfg.judge:  # in-process (placement "driver"): the judge loads on its first miss
            judge = make_judge(cfg.judge, engine_factory(cfg.judge_backend or cfg.backend,
                                                         batch_size=cfg.batch_size), cache)
        self.evaluator = Evaluator(self._engine, ResultStore(results_root),
                                   PredictionStore(results_root), cfg, judge=judge)

    def _engine(self, ref: ModelRef) -> Engine:
        if self._warm is not None and self._warm[0] == ref.key:
            return self._warm[1]
        self._release()
        t0 = time.time()
        engine = None
        if self.cfg.backend == "vllm":
            ok, why = ref.vllm_servable()
            if ok:
                engine = make_engine("vllm", str(ref.model_dir()))
            elif why not in self._said:
                self._said.add(why)
                print(f"[eval] {ref.key}: vLLM cannot serve it ({why}); using transformers")
        if engine is None:
            engine = make_engine("transformers", ref.load(), batch_size=self.cfg.batch_size,
                                 model_id=ref.key)
        self.log.write("load", model=ref.key, seconds=time.time() - t0)
        self._warm = (ref.key, engine, t0)
        return engine

    def _release(self) -> None:
        if self._warm is not None:
            key, engine, t0 = self._warm
            engine.close()
            self.log.write("hold", model=key, seconds=time.time() - t0)
            self._warm = None

    def run(self, job: EvalJob) -> dict:
        key = job_key(job)
        self.log.write("job_start", job=key, checkpoint=str(job.checkpoint))
        rows, _ = self.evaluator.run_job(job, write=True)
        self.log.write("job_done", job=key, checkpoint=str(job.checkpoint), rows=len(rows))
        return {"job": key, "rows": len(rows), "pid": os.getpid()}

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self._release()


# ---------------------------------------------------------------------------------------
# the queue
# ---------------------------------------------------------------------------------------
@dataclass
class _Entry:
    job: EvalJob
    key: str
    model: str
    state: str = "queued"  # queued, running, done, failed
    attempts: int = 0
    error: str = ""


class EvalQueue:
    """The pool's scheduler (a threaded actor, 0 CPU): jobs in, workers out.

    Jobs are dispatched in submission order, except that an idle worker first takes a
    queued job on the checkpoint it already holds. A job whose worker died is queued
    again (at most `max_job_retries` times) and the worker replaced."""

    def __init__(self, cfg: EvalConfig, results_root: str, num_actors: int, actor_gpus: int):
        import ray

        self.cfg = cfg
        self.root = results_root
        self.num_actors = max(1, int(num_actors))
        self.actor_gpus = int(actor_gpus)
        self.entries: dict[str, _Entry] = {}
        self.order: collections.deque[str] = collections.deque()
        self.clients: set[str] = set()
        self.workers: list[dict] = []  # {"handle", "warm", "job", "ref"}
        self.cv = threading.Condition()
        self.last_client_time = time.time()
        self.judge = None
        if cfg.judge:
            opts: dict[str, Any] = {"num_gpus": cfg.judge_gpus, "num_cpus": cfg.judge_cpus
                                    if cfg.judge_gpus or cfg.reserve_cpus else 0}
            self.judge = ray.remote(JudgeServer).options(**opts).remote(
                cfg, results_root, None if cfg.judge_gpus else max(1, int(cfg.judge_cpus)))
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    # -- client API ------------------------------------------------------------------
    def attach(self, client: str) -> None:
        with self.cv:
            self.clients.add(client)

    def release(self, client: str) -> bool:
        """Detach a client; True when it was the last one and nothing is pending (the
        caller then shuts the pool down)."""
        with self.cv:
            self.clients.discard(client)
            self.last_client_time = time.time()
            return not self.clients and not any(
                e.state in ("queued", "running") for e in self.entries.values())

    def submit(self, jobs: list[EvalJob]) -> list[str]:
        keys = []
        with self.cv:
            for job in jobs:
                key = job_key(job)
                keys.append(key)
                e = self.entries.get(key)
                if e is not None and e.state in ("queued", "running", "done"):
                    continue  # already known (a resubmission from a rerun)
                self.entries[key] = _Entry(job, key, str(job.checkpoint))
                self.order.append(key)
            self.cv.notify_all()
        return keys

    def status(self, keys: list[str]) -> dict:
        with self.cv:
            es = [self.entries[k] for k in keys if k in self.entries]
            return {"queued": sum(e.state == "queued" for e in es),
                    "running": sum(e.state == "running" for e in es),
                    "done": sum(e.state == "done" for e in es),
                    "failed": [(e.key, e.error) for e in es if e.state == "failed"]}

    def wait(self, keys: list[str], timeout: float = 10.0) -> dict:
        """Block until the jobs are done or failed (or `timeout` passes); their status."""
        end = time.time() + timeout
        with self.cv:
            while time.time() < end and any(
                    self.entries[k].state in ("queued", "running") for k in keys if k in self.entries):
                self.cv.wait(timeout=max(0.0, min(1.0, end - time.time())))
        return self.status(keys)

    def pinned_checkpoints(self) -> list[str]:
        """Checkpoints with unfinished jobs (must not be deleted)."""
        with self.cv:
            return sorted({e.model for e in self.entries.values()
                           if e.state in ("queued", "running")})

    def worker_handles(self) -> list:
        with self.cv:
            return [w["handle"] for w in self.workers]

    def running_on(self) -> list[tuple[str, Any]]:
        """(job key, worker handle) of running jobs."""
        with self.cv:
            return [(w["job"], w["handle"]) for w in self.workers if w["job"] is not None]

    def shutdown(self) -> None:
        import ray

        with self.cv:
            self._stop = True
            workers, self.workers = self.workers, []
        for w in workers:
            try:
                ray.get(w["handle"].close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - a dead or busy worker is killed below
                pass
            ray.kill(w["handle"])
        if self.judge is not None:
            ray.kill(self.judge)

    # -- scheduling ------------------------------------------------------------------
    def _new_worker(self) -> dict:
        import ray

        gpus = self.actor_gpus
        threads = None if gpus else max(1, int(self.cfg.actor_cpus))
        cpus = self.cfg.actor_cpus if gpus or self.cfg.reserve_cpus else 0
        h = ray.remote(EngineWorker).options(num_cpus=cpus, num_gpus=gpus,
                                             max_restarts=0).remote(
            self.cfg, self.root, self.judge, threads)
        return {"handle": h, "warm": None, "job": None, "ref": None}

    def _pick(self, warm: str | None) -> str | None:
        queued = [k for k in self.order if self.entries[k].state == "queued"]
        if not queued:
            return None
        same = [k for k in queued if self.entries[k].model == warm]
        return (same or queued)[0]

    def _dispatch(self) -> None:
        with self.cv:
            while len(self.workers) < self.num_actors:  # at start, and for dead workers
                self.workers.append(self._new_worker())
            for w in self.workers:
                if w["job"] is not None:
                    continue
                key = self._pick(w["warm"])
                if key is None:
                    break
                e = self.entries[key]
                e.state, e.attempts = "running", e.attempts + 1
                w["job"], w["warm"] = key, e.model
                w["ref"] = w["handle"].run.remote(e.job)
            while self.order and self.entries[self.order[0]].state in ("done", "failed"):
                self.order.popleft()

    def _collect(self) -> None:
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        with self.cv:
            busy = [w for w in self.workers if w["ref"] is not None]
        if not busy:
            time.sleep(0.2)
            return
        ready, _ = ray.wait([w["ref"] for w in busy], num_returns=1, timeout=0.5)
        for ref in ready:
            w = next(w for w in busy if w["ref"] == ref)
            with self.cv:
                e = self.entries[w["job"]]
            try:
                ray.get(ref)
                state, err = "done", ""
            except (RayActorError, ActorDiedError, ActorUnavailableError) as ex:
                state, err = "died", f"{type(ex).__name__}: {ex}"
            except Exception as ex:  # noqa: BLE001 - the job's own error: report it
                state, err = "failed", f"{type(ex).__name__}: {ex}"
            with self.cv:
                w["job"], w["ref"] = None, None
                if state == "died":
                    self.workers.remove(w)  # a fresh worker takes its place on dispatch
                    if e.attempts > self.cfg.max_job_retries:
                        e.state, e.error = "failed", f"worker died {e.attempts} times: {err}"
                    else:
                        e.state = "queued"
                else:
                    e.state, e.error = state, err
                self.cv.notify_all()

    def _loop(self) -> None:
        import ray

        while not self._stop:
            try:
                self._dispatch()
                self._collect()
            except Exception as ex:  # noqa: BLE001 - keep the scheduler alive; log it
                print(f"[eval queue] {type(ex).__name__}: {ex}")
                time.sleep(0.5)
            with self.cv:
                idle = (not self.clients and not any(
                    e.state in ("queued", "running") for e in self.entries.values())
                    and time.time() - self.last_client_time > self.cfg.service_idle_s)
            if idle:  # left behind by a crashed driver: free the resources
                self.shutdown()
                ray.kill(ray.get_runtime_context().current_actor)
                return


# ---------------------------------------------------------------------------------------
# the client (a run's driver)
# ---------------------------------------------------------------------------------------
def pool_name(cfg: RunConfig) -> str:
    """One pool per result store and evaluation settings (the trials of a study share it)."""
    from ..runner import results_dir

    blob = json.dumps([str(Path(results_dir(cfg)).resolve()),
                       dataclasses.asdict(cfg.eval)], sort_keys=True, default=str)
    return "mllmcl-eval-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def pool_size(cfg: EvalConfig, cluster: dict) -> tuple[int, int]:
    """(actors, GPUs per actor) for this cluster and these settings."""
    gpus = cfg.actor_gpus if cfg.actor_gpus is not None else (1 if cluster.get("GPU", 0) > 0 else 0)
    if cfg.num_actors is not None:
        return max(1, cfg.num_actors), gpus
    if gpus:
        return max(1, int(cluster.get("GPU", 0)) // gpus), gpus
    return max(1, int(cfg.cpu_budget // max(cfg.actor_cpus, 1e-6))), 0


def validate_placement(cfg: EvalConfig) -> None:
    """Fail before training starts on evaluation settings a job would only reject later."""
    if cfg.nl_backend not in ("project", "lm_eval"):
        raise ConfigError(f"eval.nl_backend {cfg.nl_backend!r} must be 'project' or 'lm_eval'")
    if cfg.placement not in PLACEMENTS:
        raise ConfigError(f"eval.placement {cfg.placement!r} must be one of {', '.join(PLACEMENTS)}")
    if cfg.actor_cpus <= 0 or cfg.cpu_budget < cfg.actor_cpus:
        raise ConfigError(f"eval.cpu_budget ({cfg.cpu_budget}) must be at least eval.actor_cpus "
                          f"({cfg.actor_cpus}) > 0")


def uses_actors(cfg: RunConfig) -> bool:
    """Where this run evaluates: actors whenever it runs with Ray (see EvalConfig.placement)."""
    validate_placement(cfg.eval)
    if cfg.eval.placement != "auto":
        return cfg.eval.placement == "actors"
    if cfg.trainer.num_workers >= 1:
        return True
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def _get_or_create(name: str, cfg: EvalConfig, root: str):
    import ray

    if not ray.is_initialized():
        ray.init()
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        pass
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    n, gpus = pool_size(cfg, ray.cluster_resources())
    # outside the caller's placement group (a Tune trial's): the pool outlives the trial
    return ray.remote(EvalQueue).options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
        max_concurrency=64,
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None)).remote(
        cfg, root, n, gpus)


class EvalClient:
    """A run's handle on the study's pool: submit jobs as tasks finish, `finish` at the end."""

    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = print):
        from ..runner import results_dir

        self.name = pool_name(cfg)
        self.root = str(Path(results_dir(cfg)).resolve())
        self.cfg = cfg
        self.log = log
        self.id = uuid.uuid4().hex
        self.keys: list[str] = []
        self.handle = None
        self._connect()

    def _connect(self) -> None:
        import ray

        for attempt in range(3):
            self.handle = _get_or_create(self.name, self.cfg.eval, self.root)
            try:
                ray.get(self.handle.attach.remote(self.id))
                return
            except ray.exceptions.RayActorError:  # the pool was shutting down: make a new one
                time.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"could not attach to evaluation pool {self.name}")

    def submit(self, jobs: Sequence[EvalJob]) -> None:
        import ray

        if not jobs:
            return
        try:
            self.keys += ray.get(self.handle.submit.remote(list(jobs)))
        except ray.exceptions.RayActorError:  # the pool was shut down by its last client
            self._connect()
            self.keys += ray.get(self.handle.submit.remote(list(jobs)))

    def pinned_checkpoints(self) -> list[str]:
        import ray

        return ray.get(self.handle.pinned_checkpoints.remote())

    def finish(self, progress: bool = True) -> dict:
        """Wait for every job this run submitted; release the pool (the last client shuts
        it down). Raises if a job failed."""
        import ray

        keys = list(dict.fromkeys(self.keys))
        bar = None
        if progress and keys:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(keys), desc="evaluation jobs", leave=False)
        try:
            while True:
                st = ray.get(self.handle.wait.remote(keys, 5.0))
                if bar is not None:
                    bar.n = st["done"] + len(st["failed"])
                    bar.refresh()
                if st["queued"] == 0 and st["running"] == 0:
                    break
        finally:
            if bar is not None:
                bar.close()
            self.close()
        if st["failed"]:
            k, err = st["failed"][0]
            raise RuntimeError(f"{len(st['failed'])} evaluation job(s) failed; first {k}: {err}")
        return st

    def close(self) -> None:
        import ray

        if self.handle is None:
            return
        try:
            if ray.get(self.handle.release.remote(self.id)):
                shutdown_pool(self.name)
        except ray.exceptions.RayActorError:
            pass
        self.handle = None


def shutdown_pool(name: str) -> bool:
    """Stop pool `name` (its workers and judge too); False when there is none."""
    import ray

    try:
        h = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    try:
        ray.get(h.shutdown.remote(), timeout=60)
    except Exception:  # noqa: BLE001 - killed below either way
        pass
    ray.kill(h)
    return True


class eval_pool_scope:
    """Hold a study's pool open across its trials (a study driver wraps `Tuner.fit`):
    ``with eval_pool_scope(base_cfg): tuner.fit()``; the pool shuts down on exit."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.client: EvalClient | None = None

    def __enter__(self) -> EvalClient:
        self.client = EvalClient(self.cfg)
        return self.client

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
