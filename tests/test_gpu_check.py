"""benchmarks/gpu_check.py: the CPU smoke run of every section, and its section runner."""
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_smoke_runs_every_section_on_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    # Three methods keep CI fast (test_methods.py covers every method's behaviour); the
    # budget is generous so a loaded machine skips nothing.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out),
                           "--methods", "naive", "lora", "lwf", "--budget-s", "600"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["smoke"] is True
    s = res["sections"]
    assert list(s) == ["train", "cache", "generate", "roundtrip", "methods"]
    assert all(v["ok"] for v in s.values()), {k: v.get("error") for k, v in s.items()}
    rows = s["train"]["result"]["rows"]
    got = [(r["stage"], r["strategy"], r["attn"]) for r in rows]
    assert got == [("finetune", "full_shard", "sdpa"), ("align", "shard_grad_op", "sdpa"),
                   ("finetune", "full_shard", "eager")]
    for r in rows:
        assert r["precision"] == "bf16" and r["activation_checkpointing"] is True
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["first_loss"] > 0
    cache = s["cache"]["result"]
    assert cache["on"]["feature_cache"] and not cache["off"]["feature_cache"]
    assert cache["on"]["cache_images"] == 16 and cache["same_first_loss"]
    gen = s["generate"]["result"]
    assert gen["identical_answers"] == gen["answers"] == 4
    rt = s["roundtrip"]["result"]
    assert rt["dtype"] == ["torch.bfloat16"] and rt["identical"] and rt["max_abs_logit_diff"] == 0
    m = s["methods"]["result"]["rows"]
    assert set(m) == {"naive", "lora", "lwf"} and m["naive"]["relative_to_naive"] == 1.0
    assert "[methods] ok" in proc.stdout and "identical answers 4/4" in proc.stdout


def test_sections_fail_independently_and_respect_the_budget():
    gc = _module()
    ran = []

    def ok(name):
        def f(budget):
            ran.append(name)
            return {"name": name}
        return f

    def broken(budget):
        ran.append("b")
        raise KeyError("boom")

    res = gc.run_sections({"a": ok("a"), "b": broken, "c": ok("c")}, gc.Budget(60))
    assert ran == ["a", "b", "c"]
    assert res["a"]["ok"] and res["c"]["result"] == {"name": "c"}
    assert res["b"]["ok"] is False and res["b"]["error"] == "KeyError: 'boom'"
    assert "raise KeyError" in res["b"]["traceback"]
    res = gc.run_sections({"a": ok("late")}, gc.Budget(0))
    assert res["a"] == {"ok": False, "skipped": "time budget spent", "seconds": 0.0}
    assert "late" not in ran


def test_builder_attn_implementation(tmp_path):
    from train_world import make_world, tiny_config

    from mllmcl_ray.config import ConfigError
    from mllmcl_ray.models.build import build_mllm

    spec = tiny_config(make_world(tmp_path), tmp_path / "o").model
    m = build_mllm(dataclasses.replace(spec, attn_implementation="eager"))
    inner = m.model.model
    assert inner.language_model.config._attn_implementation == "eager"
    assert inner.vision_tower.config._attn_implementation == "eager"
    assert build_mllm(spec).model.model.language_model.config._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="attn_implementation"):
        build_mllm(dataclasses.replace(spec, attn_implementation="fast"))


def test_ray_worker_threads_follow_its_assigned_cpus():
    import os

    from mllmcl_ray.config import TrainerConfig
    from mllmcl_ray.train.ray_trainer import threads_per_worker

    t = TrainerConfig(cpus_per_worker=2.0)
    assert threads_per_worker(t, 1, assigned_cpus=2.0) == 2  # Ray's CPU resources
    assert threads_per_worker(t, 1, assigned_cpus=0.5) == 1
    assert threads_per_worker(t, 2, assigned_cpus=None) == max(1, (os.cpu_count() or 1) // 2)
    t.threads_per_worker = 3  # an explicit setting wins
    assert threads_per_worker(t, 1, assigned_cpus=2.0) == 3
