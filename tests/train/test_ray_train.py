"""Ray Train backend on 2 CPU workers (FSDP2 over gloo): one shared two-task run.

The run (module fixture) trains task `colour` with a worker failure injected at step 3
(after the step-2 checkpoint), then the driver "crashes" after task 1 is recorded; a
second ContinualRun with the same config trains only task `name`. Three Ray Train
worker-group starts in all (~15 s each on 2 cores).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


class _DriverCrash(Exception):
    pass


class _Counting:
    """Wraps a backend and records the step keys it trains."""

    def __init__(self, backend):
        self.backend, self.keys = backend, []

    def run(self, cfg, step, prev, out, run_dir):
        self.keys.append(step.key)
        return self.backend.run(cfg, step, prev, out, run_dir)


def _probe_batch(root: Path) -> dict:
    from mllmcl_ray.data.images import pixel_values
    from mllmcl_ray.models.build import make_image_processor
    from mllmcl_ray.models.tokenizers import image_token_id, load_tokenizer

    torch.manual_seed(5)
    ids = torch.randint(3, 200, (2, 24))
    ids[:, 2:18] = image_token_id(load_tokenizer(str(root / "tok")))
    pv = pixel_values(make_image_processor(32), [str(root / "images/name0.png"),
                                                 str(root / "images/name3.png")])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pv}


@pytest.fixture(scope="module")
def ray_run(ray_local, tmp_path_factory):
    import ray.cloudpickle
    import train_world
    from train_world import FailOnce, SaveLogits, make_world, tiny_config

    from mllmcl_ray.train.checkpoint import RunState
    from mllmcl_ray.train.continual import ContinualRun
    from mllmcl_ray.train.ray_trainer import RayBackend

    tmp = tmp_path_factory.mktemp("ray-train")
    root = make_world(tmp / "world")
    cfg = tiny_config(root, tmp / "out", tasks=("colour", "name"), parallel="full_shard",
                      num_workers=2, checkpoint_every=2, keep_last=2, max_failures=1,
                      max_steps=6)
    torch.save(_probe_batch(root), tmp / "probe-batch.pt")
    ray.cloudpickle.register_pickle_by_value(train_world)  # the workers cannot import tests/
    backend = RayBackend(callbacks=[SaveLogits(tmp / "probe-batch.pt", tmp / "probe.pt"),
                                    FailOnce(rank=1, step=3, marker=tmp / "failed-once")])

    def crash_after_first_task(cfg_, step, ckpt, run_id):
        if step is not None and step.key == "02-colour":
            raise _DriverCrash("driver stopped after task 1")

    first = _Counting(backend)
    with pytest.raises(_DriverCrash):
        ContinualRun(cfg, backend=first, evaluate=crash_after_first_task, log=lambda m: None).run()
    run = ContinualRun(cfg, backend=(second := _Counting(backend)), log=lambda m: None)
    outcomes = run.run()
    return {"cfg": cfg, "tmp": tmp, "root": root, "first": first.keys, "second": second.keys,
            "outcomes": outcomes, "run": run, "state": RunState.load(run.run_dir, run.run_id)}


def test_stopped_run_resumes_with_the_remaining_tasks_only(ray_run):
    assert ray_run["first"] == ["02-colour"]
    assert ray_run["second"] == ["03-name"]  # task 1 is not trained again
    assert [o.skipped for o in ray_run["outcomes"]] == [True, False]
    assert [d["key"] for d in ray_run["state"].done] == ["02-colour", "03-name"]
    for d in ray_run["state"].done:
        assert json.loads((Path(d["checkpoint"]) / "position.json").read_text())["complete"]


def test_loss_falls_under_fsdp_with_two_workers(ray_run):
    summary = ray_run["outcomes"][1].summary  # 03-name, trained without interruption
    losses = summary["losses"]
    assert summary["steps"] == 6 and len(losses) == 6
    assert losses[-1] < losses[0] - 0.3


def test_injected_worker_failure_is_survived_from_the_mid_task_checkpoint(ray_run):
    from mllmcl_ray.train.task import plan_steps, run_step

    assert (ray_run["tmp"] / "failed-once").exists()  # the failure happened
    pos = json.loads((Path(ray_run["state"].done[0]["checkpoint"]) / "position.json").read_text())
    # the restarted workers resumed at the step-2 checkpoint and ran steps 3..6 only
    assert pos["total_steps"] == 6 and pos["steps"] == 4 and len(pos["losses"]) == 4
    # ... on the same trajectory as an uninterrupted single-process run
    cfg = ray_run["cfg"]
    ref = run_step(cfg, plan_steps(cfg)[0], None, ray_run["tmp"] / "single-ref",
                   progress=False)["losses"]
    assert pos["losses"] == pytest.approx(ref[2:], abs=2e-4)
    # Ray Train kept the last `keep_last` mid-task checkpoints, each complete
    ray_dir = ray_run["run"].run_dir / "ray" / f"{ray_run['run'].run_id}-02-colour"
    ckpts = sorted(ray_dir.glob("02-colour-step*"))
    assert [c.name for c in ckpts] == ["02-colour-step0000002", "02-colour-step0000004"]
    for c in ckpts:
        assert (c / "model" / "config.json").exists() and (c / "position.json").exists()
        assert (c / "optimizer-rank0.pt").exists() and (c / "optimizer-rank1.pt").exists()


def test_distributed_checkpoint_loads_in_plain_transformers_with_the_trainers_logits(ray_run):
    from transformers import LlavaForConditionalGeneration

    final = Path(ray_run["state"].done[-1]["checkpoint"]) / "model"
    model = LlavaForConditionalGeneration.from_pretrained(str(final)).eval()
    batch = torch.load(ray_run["tmp"] / "probe-batch.pt")
    with torch.no_grad():
        got = model(**batch).logits
    want = torch.load(ray_run["tmp"] / "probe.pt")  # the sharded trainer's logits, task end
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
