"""Sweeps (mllmcl_ray/sweep.py): param spaces without Ray; slow: Tune sweeps whose trials
run a fake run function (marker files count executions), error/interrupt + restore, and
one trial of a real tiny continual run (`runner.run_and_evaluate`)."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from mllmcl_ray.config import ConfigError, ModelSpec, RunConfig, to_dict
from mllmcl_ray.sweep import (
    SweepSpec,
    apply_overrides,
    build_param_space,
    check_key,
    final_metrics,
    grid_size,
    lora_rank_space,
    model_scale_space,
    moelora_experts_space,
    run_trial,
    soft_target_alpha_space,
    trial_overrides,
)

LR = "stages.finetune.lr"


# ---------------------------------------------------------------------------------------
# without Ray
# ---------------------------------------------------------------------------------------
def test_grid_space_is_grid_search():
    space = build_param_space(SweepSpec(space={LR: [1e-4, 2e-5], "seed": [0, 1, 2]}))
    assert space == {"overrides": {LR: {"grid_search": [1e-4, 2e-5]},
                                   "seed": {"grid_search": [0, 1, 2]}}}
    assert grid_size(SweepSpec(space={LR: [1e-4, 2e-5], "seed": [0, 1, 2]}, num_samples=2)) == 12


def test_random_space_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    space = build_param_space(SweepSpec(space={
        LR: {"loguniform": [1e-5, 1e-3]},
        "method.params.soft_targets.alpha": {"uniform": [0.0, 0.1]},
        "method.params.lora.rank": {"choice": [8, 16]},
        "seed": {"randint": [0, 100]}}, num_samples=4))["overrides"]
    assert isinstance(space[LR], Float) and space[LR].lower == 1e-5 and space[LR].upper == 1e-3
    assert isinstance(space["method.params.soft_targets.alpha"], Float)
    assert isinstance(space["method.params.lora.rank"], Categorical)
    assert space["method.params.lora.rank"].categories == [8, 16]
    assert isinstance(space["seed"], Integer)


@pytest.mark.parametrize("key", ["stages.finetune.lrr", "nope", "model.nam", "trainer.num_workers.x",
                                 "stages..lr", ""])
def test_unknown_key_is_a_config_error(key):
    with pytest.raises(ConfigError, match="sweep key"):
        build_param_space(SweepSpec(space={key: [1, 2]}))


@pytest.mark.parametrize("bad", [{"uniform": [1.0]}, {"gauss": [0, 1]}, {"loguniform": [0.0, 1.0]},
                                 {"uniform": [2.0, 1.0]}, {"choice": []}, [], "1e-4",
                                 {"uniform": [0, 1], "choice": [1]}])
def test_bad_domain_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        build_param_space(SweepSpec(space={LR: bad}))


def test_values_are_checked_against_the_base_config():
    with pytest.raises(ConfigError, match="stages.finetune.lr"):
        build_param_space(SweepSpec(space={LR: [1e-4, "fast"]}), RunConfig())
    with pytest.raises(ConfigError, match="trainer.num_workers"):
        build_param_space(SweepSpec(space={"trainer.num_workers": {"uniform": [0.5, 2.0]}}), RunConfig())
    build_param_space(SweepSpec(space={"trainer.num_workers": {"randint": [1, 3]}}), RunConfig())


def test_free_form_mappings_accept_any_subkey():
    check_key("method.params.anything.at_all")
    check_key("model.llm_config.hidden_size")
    with pytest.raises(ConfigError):
        check_key("method.name.x")  # a string is not a mapping


def test_spec_validation_and_strict_from_dict():
    with pytest.raises(ConfigError):
        SweepSpec(num_samples=0)
    with pytest.raises(ConfigError):
        SweepSpec(metric="final_vl_accuracy")  # mode missing
    with pytest.raises(ConfigError, match="unknown"):
        SweepSpec.from_dict({"space": {LR: [1]}, "samples": 3})
    s = SweepSpec.from_dict({"space": {LR: [1e-4]}, "num_samples": 2, "max_concurrent": 1,
                             "metric": "final_vl_accuracy", "mode": "max"})
    assert s.num_samples == 2 and s.max_concurrent == 1


def test_apply_overrides_keeps_siblings():
    base = RunConfig()
    base.method.params = {"soft_targets": {"alpha": 0.01, "other": 1}, "lora": {"rank": 8}}
    cfg = apply_overrides(base, {"method.params.soft_targets.alpha": 0.1, LR: 3e-4, "seed": 5})
    assert cfg.method.params == {"soft_targets": {"alpha": 0.1, "other": 1}, "lora": {"rank": 8}}
    assert cfg.stages.finetune.lr == 3e-4 and cfg.seed == 5
    assert cfg.stages.align.lr == base.stages.align.lr
    assert base.method.params["soft_targets"]["alpha"] == 0.01  # base untouched
    with pytest.raises(ConfigError):
        apply_overrides(base, {"stages.finetune.lrr": 1.0})


def test_model_scale_space_replaces_whole_specs():
    specs = [ModelSpec(name="pythia-160m", llm="EleutherAI/pythia-160m"),
             {"name": "pythia-410m", "llm": "EleutherAI/pythia-410m"}]
    space = model_scale_space(specs)
    assert [m["name"] for m in space["model"]] == ["pythia-160m", "pythia-410m"]
    base = RunConfig(model=ModelSpec(name="micro", llm_config={"hidden_size": 32}))
    cfg = apply_overrides(base, {"model": space["model"][1]})
    assert cfg.model.name == "pythia-410m" and cfg.model.llm == "EleutherAI/pythia-410m"
    assert cfg.model.llm_config is None  # nothing left over from the base spec
    with pytest.raises(ConfigError):
        model_scale_space([{"name": "x", "layers": 3}])


def test_paper_spaces_use_valid_keys():
    for space in (soft_target_alpha_space(), lora_rank_space([4, 8]), moelora_experts_space()):
        build_param_space(SweepSpec(space=space), RunConfig())
    assert lora_rank_space([4, 8]) == {"method.params.lora.rank": [4, 8]}


def test_trial_overrides_nested_and_flat():
    assert trial_overrides({"overrides": {LR: 1.0}, "seed": 2, "base_config": "{}",
                            "trial_resources": {"cpu": 1}}) == {LR: 1.0, "seed": 2}


def _result_rows(run_id, task_index, split, dataset, value):
    from mllmcl_ray.results import RESULT_SCHEMA

    row = {f.name: None for f in RESULT_SCHEMA}
    row.update(run_id=run_id, study="t", model="m", scale=1.0, method="naive", method_params="{}",
               seed=0, trained_task_index=task_index, trained_task=f"t{task_index}",
               eval_task="nl" if split != "vl" else "vqa", eval_task_index=1 if split != "vl" else 2,
               dataset=dataset, split=split, metric="accuracy", value=value, n=10, time=0.0,
               checkpoint_id="c", eval_set_hash="h", prompt_version="v", decoding="{}")
    return row


def test_run_trial_without_ray_reads_final_metrics(tmp_path):
    from mllmcl_ray.results import ResultStore

    seen = []

    def fake_run(cfg, progress=False):
        seen.append(cfg)
        run_id = f"{cfg.name}-{cfg.seed}"
        ResultStore(Path(cfg.output_dir) / "results").append([
            _result_rows(run_id, 1, "nlg", "lambada", 0.6), _result_rows(run_id, 1, "nlu", "arc", 0.4),
            _result_rows(run_id, 3, "nlg", "lambada", 0.3), _result_rows(run_id, 3, "vl", "vqa", 0.8),
            _result_rows(run_id, 3, "vl", "ocr", 0.6)])
        return run_id

    base = RunConfig(name="r", output_dir=str(tmp_path / "out"))
    config = {"overrides": {"seed": 3}, "base_config": json.dumps(to_dict(base))}
    m = run_trial(config, run_fn=fake_run)
    assert seen[0].seed == 3 and seen[0].output_dir == str(tmp_path / "out")
    assert m["run_id"] == "r-3" and m["tasks_trained"] == 3
    assert m["base_nlg_accuracy"] == pytest.approx(0.6) and m["base_nlu_accuracy"] == pytest.approx(0.4)
    assert m["final_nlg_accuracy"] == pytest.approx(0.3)
    assert m["final_vl_accuracy"] == pytest.approx(0.7)
    assert final_metrics(tmp_path / "out" / "results", "missing") == {"run_id": "missing", "tasks_trained": 0}
    with pytest.raises(ConfigError):
        run_trial({"overrides": {"seed": 1}}, run_fn=fake_run)  # no base config anywhere
    got = run_trial({"seed": 4, "run_kwargs": {"study": "s"}}, base,
                    run_fn=lambda cfg, progress, study: {"study": study, "seed": cfg.seed})
    assert got == {"study": "s", "seed": 4, "run_name": "r"}


# ---------------------------------------------------------------------------------------
# slow: Ray Tune
# ---------------------------------------------------------------------------------------
def marking_run_fn(marks: Path, fail_flag: Path | None = None):
    """A fake continual run: writes a marker file per execution and one result file into
    the run's output_dir; raises for lr 2.0 while `fail_flag` exists. (A nested function,
    so Ray pickles it by value.)"""
    marks = str(marks)
    flag = str(fail_flag) if fail_flag else None

    def run(cfg, progress=False, **kwargs):
        lr = cfg.stages.finetune.lr
        os.makedirs(marks, exist_ok=True)
        with open(os.path.join(marks, f"lr={lr}-{time.time_ns()}"), "w") as fh:
            fh.write(cfg.name)
        if flag and lr == 2.0 and os.path.exists(flag):
            raise RuntimeError("injected failure")
        out = os.path.join(cfg.output_dir, "results")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"{cfg.name}-lr{lr}.json"), "w") as fh:
            json.dump({"lr": lr}, fh)
        return {"score": 10 * lr, "cwd": os.getcwd(), "study": kwargs.get("study")}

    return run


def _runs(marks: Path) -> dict[float, int]:
    out: dict[float, int] = {}
    for p in marks.iterdir() if marks.exists() else []:
        lr = float(p.name.split("-")[0].split("=")[1])
        out[lr] = out.get(lr, 0) + 1
    return out


@pytest.mark.slow
def test_sweep_runs_one_trial_per_value(ray_local, tmp_path, monkeypatch):
    from mllmcl_ray.sweep import run_sweep

    monkeypatch.chdir(tmp_path)
    base = RunConfig(name="sw", output_dir="shared")  # relative: resolved on the driver
    df = run_sweep(base, SweepSpec(space={LR: [1.0, 2.0]}), tmp_path / "tune", "two",
                   run_fn=marking_run_fn(tmp_path / "marks"), study="st", verbose=0)
    assert sorted(df[f"config/overrides/{LR}"]) == [1.0, 2.0]
    assert list(df["study"]) == ["st", "st"]  # run kwargs reach the run function
    assert sorted(df["score"]) == [10.0, 20.0]
    assert df["error"].isna().all() and df.attrs["num_finished"] == 2 == df.attrs["num_expected"]
    assert not any(c.startswith("config/base_config") for c in df.columns)
    assert _runs(tmp_path / "marks") == {1.0: 1, 2.0: 1}
    # both trials wrote into the ONE shared output dir, although Tune ran them elsewhere
    assert sorted(p.name for p in (tmp_path / "shared" / "results").iterdir()) == \
        ["sw-lr1.0.json", "sw-lr2.0.json"]
    assert all(Path(c) != tmp_path / "shared" for c in df["cwd"])
    exp = tmp_path / "tune" / "two"
    assert (exp / "tuner.pkl").exists()
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return
    assert list(exp.glob("*/events.out.tfevents.*")), "Tune writes TensorBoard files with tensorboardX"


@pytest.mark.slow
def test_failed_trial_is_rerun_by_restore_and_finished_one_is_not(ray_local, tmp_path):
    from mllmcl_ray.sweep import can_restore, restore_sweep, run_sweep

    marks, flag = tmp_path / "marks", tmp_path / "fail"
    flag.touch()
    run_fn = marking_run_fn(marks, flag)
    base = RunConfig(name="sw", output_dir=str(tmp_path / "out"))
    df = run_sweep(base, SweepSpec(space={LR: [1.0, 2.0]}, max_concurrent=1), tmp_path / "tune", "err",
                   run_fn=run_fn, verbose=0)
    assert df.attrs["num_errors"] == 1 and df.attrs["num_finished"] == 1
    failed = df[df["error"].notna()]
    assert list(failed[f"config/overrides/{LR}"]) == [2.0] and "injected failure" in failed["error"].iloc[0]
    assert _runs(marks) == {1.0: 1, 2.0: 1}

    flag.unlink()
    assert can_restore(tmp_path / "tune" / "err")
    df2 = restore_sweep(tmp_path / "tune" / "err", run_fn)
    assert sorted(df2["score"].dropna()) == [10.0, 20.0] and df2.attrs["num_errors"] == 0
    assert _runs(marks) == {1.0: 1, 2.0: 2}  # only the failed trial ran again


@pytest.mark.slow
def test_interrupted_sweep_resumes_only_unfinished_trials(ray_local, tmp_path):
    """Ctrl-C after the first trial (a driver-side callback sends SIGINT, which Tune
    handles by saving state and ending the fit); `run_sweep(resume=True)` finishes."""
    from ray import tune

    from mllmcl_ray.sweep import run_sweep

    once = tmp_path / "interrupt-once"
    once.touch()
    seen_handler = []

    class InterruptAfterFirstTrial(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            if once.exists():
                once.unlink()
                handler = signal.getsignal(signal.SIGINT)
                seen_handler.append(handler)
                # only Tune's own handler (installed in the main thread) turns SIGINT into
                # "save and stop"; never send it to Python's default (KeyboardInterrupt)
                if handler not in (signal.default_int_handler, signal.SIG_DFL, signal.SIG_IGN, None):
                    os.kill(os.getpid(), signal.SIGINT)

    marks = tmp_path / "marks"
    base = RunConfig(name="sw", output_dir=str(tmp_path / "out"))
    spec = SweepSpec(space={LR: [1.0, 2.0, 3.0]}, max_concurrent=1)
    df = run_sweep(base, spec, tmp_path / "tune", "int", run_fn=marking_run_fn(marks), verbose=0,
                   callbacks=[InterruptAfterFirstTrial()])
    if seen_handler and seen_handler[0] in (signal.default_int_handler, signal.SIG_DFL, signal.SIG_IGN, None):
        pytest.skip("Tune installed no SIGINT handler here (not the main thread)")
    assert df.attrs["num_finished"] == 1 < df.attrs["num_expected"] == 3
    assert _runs(marks).get(1.0) == 1

    df2 = run_sweep(base, spec, tmp_path / "tune", "int", run_fn=marking_run_fn(marks), resume=True)
    assert sorted(df2["score"].dropna()) == [10.0, 20.0, 30.0]
    runs = _runs(marks)
    assert runs[1.0] == 1 and runs[3.0] == 1  # the finished trial did not run again
    assert runs[2.0] in (1, 2)  # it may have started before the interrupt reached Tune


@pytest.mark.slow
def test_sweep_trial_runs_the_real_continual_run(ray_local, tmp_path):
    """A trial of the real `runner.run_and_evaluate` (tiny LLaVA, in-process trainer, ~25 s):
    its result rows land in the base config's result store and Tune gets final metrics."""
    from spine_world import tiny_run_config

    from mllmcl_ray.results import ResultStore
    from mllmcl_ray.sweep import run_sweep

    base = tiny_run_config(tmp_path, steps=2)  # two tasks: colour, then position
    base.stages.align.max_steps = 1
    base.trainer.threads_per_worker = 1
    df = run_sweep(base, SweepSpec(space={"stages.finetune.lr": [1e-3]}), tmp_path / "tune", "real",
                   verbose=0)
    assert df.attrs["num_finished"] == 1, df["error"].tolist()
    row = df.iloc[0]
    assert row["tasks_trained"] == 3 and 0.0 <= row["final_vl_accuracy"] <= 1.0
    rows = ResultStore(Path(base.output_dir) / "results").read()
    assert set(rows["run_id"]) == {row["run_id"]}
    assert (rows["trained_task_index"] == 3).any()
    # one Tune result per trained task that has rows (what --tracker plots; this run has no NL
    # suite, so no base rows), the last with the final metrics
    results = [json.loads(line) for line in
               next((tmp_path / "tune" / "real").glob("*/result.json")).read_text().splitlines()]
    assert [r["trained_task_index"] for r in results] == [2, 3]
    assert "vl_accuracy" in results[0] and "final_vl_accuracy" not in results[0]
    assert results[1]["final_vl_accuracy"] == row["final_vl_accuracy"] == results[1]["vl_accuracy"]
    assert "final_maa" in results[1] and "final_bwt" in results[1]


# ---------------------------------------------------------------------------------------
# grids, overrides, per-task metrics and trackers (no Ray)
# ---------------------------------------------------------------------------------------
def test_task_metrics_and_final_cl_metrics(tmp_path):
    """Per trained task: means per (split, metric) and NL Δ; final: Δ, MAA.
    Base ω = 2/(1/0.6 + 1/0.4) = 0.48; after task 2, ω = 2/(1/0.3 + 1/0.5) = 0.375, so
    Δ = 0.105 (Srivastava Eq. 1); NLU Δ = 0.4 − 0.5 = −0.1, NLG Δ = 0.6 − 0.3 = 0.3; one
    VL task scored 0.8 after its own training: MAA = 0.8."""
    from mllmcl_ray.results import ResultStore
    from mllmcl_ray.sweep import task_metrics

    rows = [_result_rows("r", 1, "nlg", "lambada", 0.6), _result_rows("r", 1, "nlu", "arc", 0.4),
            _result_rows("r", 2, "nlg", "lambada", 0.3), _result_rows("r", 2, "nlu", "arc", 0.5),
            _result_rows("r", 2, "vl", "vqa", 0.8)]
    ResultStore(tmp_path).append(rows)
    hist = task_metrics(tmp_path, "r")
    assert [h["trained_task_index"] for h in hist] == [1, 2]
    assert hist[0] == {"run_id": "r", "trained_task_index": 1, "trained_task": "t1",
                       "nlg_accuracy": 0.6, "nlu_accuracy": 0.4, "delta_nl": 0.0}
    assert hist[1]["vl_accuracy"] == pytest.approx(0.8)
    assert hist[1]["delta_nl"] == pytest.approx(0.105)
    m = final_metrics(tmp_path, "r")
    assert m["final_delta_nl"] == pytest.approx(0.105)
    assert m["final_delta_nlu"] == pytest.approx(-0.1) and m["final_delta_nlg"] == pytest.approx(0.3)
    assert m["final_maa"] == pytest.approx(0.8)
    assert task_metrics(tmp_path, "missing") == []


def test_expand_grid_and_cli_overrides(tmp_path):
    from mllmcl_ray.sweep import apply_config_overrides, expand_grid, load_run_config

    assert expand_grid({"seed": [0, 1], "recipe": ["continual", "llava"]}) == [
        {"seed": 0, "recipe": "continual"}, {"seed": 0, "recipe": "llava"},
        {"seed": 1, "recipe": "continual"}, {"seed": 1, "recipe": "llava"}]
    with pytest.raises(ConfigError, match="grid key 'seed'"):
        expand_grid({"seed": []})
    yml = tmp_path / "c.yaml"
    yml.write_text("stages:\n  finetune:\n    lr: 0.5\nname: from-yaml\n")
    cfg = apply_config_overrides(RunConfig(), yml, ["stages.finetune.lr=0.25", "seed=7"], workers=3)
    assert (cfg.name, cfg.stages.finetune.lr, cfg.seed, cfg.trainer.num_workers) == ("from-yaml", 0.25, 7, 3)
    assert cfg.stages.align.lr == RunConfig().stages.align.lr  # siblings kept
    with pytest.raises(ConfigError, match="has no key 'lrr'"):
        apply_config_overrides(RunConfig(), sets=["stages.finetune.lrr=1"])
    assert load_run_config(yml, ["seed=2"]).seed == 2


def test_tracker_callbacks(tmp_path):
    from ray.tune.logger import TBXLoggerCallback

    from mllmcl_ray.sweep import run_study, tracker_callbacks

    assert tracker_callbacks(None, tmp_path, "s") == []
    assert isinstance(tracker_callbacks("tensorboard", tmp_path, "s")[0], TBXLoggerCallback)
    for name in ("wandb", "mlflow"):
        try:
            __import__(name)
        except ImportError:
            with pytest.raises(ConfigError, match=f"--tracker {name} needs {name}: pip install {name}"):
                tracker_callbacks(name, tmp_path, "s")
    with pytest.raises(ConfigError, match="unknown tracker"):
        tracker_callbacks("neptune", tmp_path, "s")
    with pytest.raises(ConfigError, match="drop --no-tune"):
        run_study(RunConfig(), {"seed": [0]}, study="s", use_tune=False, tracker="tensorboard")


def test_combo_label_names_configs_instead_of_dumping_them():
    from mllmcl_ray.sweep import combo_label

    combo = {"model": {"name": "micro-xs", "llm": "/bases/llm", "scale": 5e5},
             "method": {"name": "soft_targets", "params": {"soft_targets": {"alpha": 0.1}}},
             "seed": 1, "recipe": "llava"}
    assert combo_label(combo) == ("model=micro-xs, method=soft_targets "
                                  "{'soft_targets': {'alpha': 0.1}}, seed=1, recipe=llava")
    assert combo_label({"method": {"name": "naive", "params": {}}}) == "method=naive"
