"""The plain continual trainer: loss falls, task k's checkpoint starts task k+1, resume
skips finished steps, the feature cache gives the same training as pixels."""
import json
from pathlib import Path

import pytest
import torch

from mllmcl_ray.config import merge
from mllmcl_ray.models.build import load_mllm
from mllmcl_ray.train.checkpoint import RunState
from mllmcl_ray.train.continual import ContinualRun, run_id_for
from mllmcl_ray.train.task import plan_steps
from spine_world import tiny_run_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cont")
    cfg = tiny_run_config(root)
    torch.manual_seed(0)
    logs = []
    outcomes = ContinualRun(cfg, log=logs.append).run()
    return cfg, outcomes, logs


def test_plan_is_align_then_tasks(trained):
    cfg, outcomes, _ = trained
    assert [s.key for s in plan_steps(cfg)] == ["02-align", "02-colour", "03-position"]
    assert [o.step.key for o in outcomes] == ["02-align", "02-colour", "03-position"]
    llava = merge(cfg, {"recipe": "llava"})
    assert [s.key for s in plan_steps(llava)] == ["02-align", "02-llava"]
    assert len(plan_steps(llava)[1].sources) == 2


def test_loss_falls_on_each_task(trained):
    _, outcomes, _ = trained
    for o in outcomes[1:]:
        losses = o.summary["losses"]
        assert len(losses) == 12  # 48 samples × 2 epochs / global batch 8
        assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, (o.step.key, losses)


def test_checkpoint_of_task_k_is_start_of_task_k_plus_1(trained, tmp_path):
    cfg, outcomes, _ = trained
    from mllmcl_ray.train.task import run_step

    ck2 = outcomes[1].checkpoint
    # run task 3 for zero optimizer steps from task 2's checkpoint: weights unchanged
    step3 = plan_steps(cfg)[2]
    # (lr 0 is rejected by the config; one warm-up step starts at lr factor 0 instead)
    cfg0 = merge(cfg, {"stages": {"finetune": {"max_steps": 1, "warmup_ratio": 0.5}}})
    run_step(cfg0, step3, ck2, tmp_path / "t3", progress=False)
    a, b = load_mllm(Path(ck2) / "model"), load_mllm(tmp_path / "t3" / "model")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # and the real task 3 changed the LLM starting from there
    c = load_mllm(Path(outcomes[2].checkpoint) / "model").model.state_dict()
    assert any(not torch.equal(sa[k], c[k]) for k in sa if "language_model" in k)
    # the vision tower never changes
    assert all(torch.equal(sa[k], c[k]) for k in sa if "vision_tower" in k)


def test_alignment_trains_projector_only(trained):
    cfg, outcomes, _ = trained
    from mllmcl_ray.models.build import build_mllm

    torch.manual_seed(0)
    aligned = load_mllm(Path(outcomes[0].checkpoint) / "model").model.state_dict()
    colour = load_mllm(Path(outcomes[1].checkpoint) / "model").model.state_dict()
    changed = [k for k in aligned if not torch.equal(aligned[k], colour[k])]
    assert any("language_model" in k for k in changed)
    assert not any("vision_tower" in k for k in changed)


def test_rerun_skips_finished_steps(trained):
    cfg, outcomes, _ = trained
    logs = []
    again = ContinualRun(cfg, log=logs.append).run()
    assert all(o.skipped for o in again)
    assert sum("skipped" in l for l in logs) == 3
    state = RunState.load(Path(cfg.output_dir) / "runs" / run_id_for(cfg), run_id_for(cfg))
    assert [d["key"] for d in state.done] == ["02-align", "02-colour", "03-position"]


def test_stopped_run_resumes_with_remaining_tasks(tmp_path):
    cfg = tiny_run_config(tmp_path, steps=2)
    first = merge(cfg, {"tasks": [json.loads(json.dumps(c)) for c in
                                  [__import__("dataclasses").asdict(cfg.tasks[0])]]})
    # a run of the same config, interrupted after its second step
    run = ContinualRun(cfg, log=lambda s: None)

    class Stop(Exception):
        pass

    calls = []
    real = run.backend.run

    def flaky(c, step, prev, out, run_dir):
        if step.key == "03-position":
            raise Stop()
        calls.append(step.key)
        return real(c, step, prev, out, run_dir)

    run.backend.run = flaky
    with pytest.raises(Stop):
        run.run()
    assert calls == ["02-align", "02-colour"]
    logs = []
    resumed = ContinualRun(cfg, log=logs.append).run()
    assert [o.skipped for o in resumed] == [True, True, False]
    assert resumed[2].step.key == "03-position"


def test_feature_cache_matches_pixels(tmp_path):
    base = tiny_run_config(tmp_path / "a", steps=3)
    cached = merge(base, {"trainer": {"feature_cache": True}, "output_dir": str(tmp_path / "b")})
    torch.manual_seed(0)
    o1 = ContinualRun(base, log=lambda s: None).run()
    torch.manual_seed(0)
    o2 = ContinualRun(cached, log=lambda s: None).run()
    for x, y in zip(o1, o2):
        assert x.summary["losses"] == pytest.approx(y.summary["losses"], rel=1e-4, abs=1e-5)
    shards = list((tmp_path / "b" / "cache" / "features").rglob("shard-*.safetensors"))
    assert shards
