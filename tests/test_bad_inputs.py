"""The battery of bad inputs (issue 11): each case gives a one-line error naming the problem,
exit code 2, no traceback, and writes nothing; none hangs (each test has a 60 s timeout,
far below the old hang, which grew without end).

Configs come from the spine's tiny world (tests/spine_world.py: real LLaVA-format files,
a trained tokenizer, models built from configs). Almost every case is validation only;
the few that must reach training or evaluation call the component directly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from mllmcl_ray import cli
from mllmcl_ray.config import ConfigError, from_dict, to_dict, RunConfig
from mllmcl_ray.errors import DataError, main_guard

from spine_world import tiny_run_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny world (files + tokenizer) and its run config as a plain mapping."""
    root = tmp_path_factory.mktemp("bad-inputs")
    cfg = tiny_run_config(root)
    return root, to_dict(cfg)


def _write(path: Path, obj) -> str:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def _rec(i, q="<image>\nWhat colour is the image?", a="red", image="images/colour-r0.png", **kw):
    r = {"id": f"x{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}],
         **kw}
    if image:
        r["image"] = image
    return r


def _eval_recs(n=3, **kw):
    return [_rec(i, **kw) for i in range(n)]


def _llm_dir(root: Path, name: str, conf: dict) -> str:
    d = root / name
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(conf))
    return str(d)


# Each case: (id, edit(data, data_dir, root) -> None, --set overrides, message fragment).
def _train_file(d, path):
    d["tasks"][0]["train"][0]["path"] = path


def _eval_file(d, path, kind="vqa"):
    d["tasks"][0]["eval"][0].update(path=path, kind=kind)


CASES = [
    ("lr-zero", lambda d, dd, r: d["stages"]["finetune"].update(lr=0), [],
     "stages.finetune.lr: must be > 0"),
    ("lr-negative", lambda d, dd, r: None, ["stages.finetune.lr=-0.001"],
     "stages.finetune.lr: must be > 0"),
    ("batch-zero", lambda d, dd, r: d["stages"]["finetune"].update(per_device_batch_size=0), [],
     "stages.finetune.per_device_batch_size: must be ≥ 1"),
    ("fraction-zero", lambda d, dd, r: d["tasks"][0]["train"][0].update(fraction=0), [],
     "tasks[0].train[0].fraction: must be in (0, 1]"),
    ("lr-not-a-number", lambda d, dd, r: None, ["stages.finetune.lr=fast"],
     "stages.finetune.lr: expected a number, got 'fast'"),
    ("lr-rule-conflict", lambda d, dd, r: None,
     ["stages.finetune.lr=0.5", "stages.finetune.lr_rule=scaled"],
     "stages.finetune.lr is set explicitly but stages.finetune.lr_rule is 'scaled'"),
    ("method-conflict", lambda d, dd, r: d["method"].update(name="lora+moelora"), [],
     "'lora' and 'moelora' both take the 'trainable' role"),
    ("method-typo", lambda d, dd, r: None, ["method.name=navie"], "unknown method(s) ['navie']"),
    ("recipe-typo", lambda d, dd, r: d.update(recipe="contiual"), [],
     "recipe: must be one of 'continual', 'llava', got 'contiual'"),
    ("family-typo", lambda d, dd, r: d["model"].update(family="gpt_neo"), [], "unknown LLM family 'gpt_neo'"),
    ("template-typo", lambda d, dd, r: d["model"].update(template="vicuna"), [],
     "model.template: unknown conversation template 'vicuna'"),
    ("parallel-typo", lambda d, dd, r: d["stages"]["finetune"].update(parallel="fsdp"), [],
     "parallel strategy 'fsdp' is unknown"),
    ("eval-kind-typo", lambda d, dd, r: d["tasks"][0]["eval"][0].update(kind="vqa2"), [],
     "EvalSet 'colour': unknown eval kind 'vqa2'"),
    ("llm-missing-dir", lambda d, dd, r: d["model"].update(llm=str(r / "no" / "such-llm")), [],
     "no/such-llm does not exist"),
    ("llm-dir-without-config", lambda d, dd, r: (r / "emptydir").mkdir(exist_ok=True)
     or d["model"].update(llm=str(r / "emptydir")), [], "has no config.json"),
    ("llm-needs-remote-code", lambda d, dd, r: d["model"].update(llm=_llm_dir(
        r, "remote-llm", {"model_type": "gpt_neox", "auto_map": {"AutoModelForCausalLM": "m.M"}})),
     [], "needs remote code"),
    ("llm-family-mismatch", lambda d, dd, r: d["model"].update(llm=_llm_dir(
        r, "llama-llm", {"model_type": "llama"})), [], "set model.family: llama"),
    ("train-file-missing", lambda d, dd, r: _train_file(d, str(dd / "nope.json")), [],
     "nope.json does not exist"),
    ("train-file-empty-array", lambda d, dd, r: _train_file(d, _write(dd / "empty.json", "[]")), [],
     "empty.json has no records"),
    ("train-file-zero-bytes", lambda d, dd, r: _train_file(d, _write(dd / "zero.json", "")), [],
     "zero.json is empty"),
    ("train-all-skipped", lambda d, dd, r: d["tasks"][0]["train"][0].update(
        path=_write(dd / "noimg.json", [_rec(i, image=f"images/none{i}.png") for i in range(4)]),
        missing_image="skip"), [], "every record of"),
    ("train-empty-answer", lambda d, dd, r: _train_file(d, _write(dd / "noans.json", [_rec(0, a=" ")])),
     [], "empty answer"),
    ("train-truncated-json", lambda d, dd, r: _train_file(d, _write(dd / "trunc.json",
                                                                     '[{"id": "a", "conv')), [],
     "malformed JSON"),
    ("eval-empty", lambda d, dd, r: _eval_file(d, _write(dd / "eval-empty.json", "[]")), [],
     "an empty eval set cannot be scored"),
    ("eval-duplicate-ids", lambda d, dd, r: _eval_file(d, _write(dd / "eval-dup.json",
                                                                  [_rec(0), _rec(1), _rec(0)])), [],
     "id 'x0' appears twice"),
    ("box-outside", lambda d, dd, r: _eval_file(d, _write(dd / "box1.json", _eval_recs(
        bbox=[0.1, 0.2, 1.4, 0.5])), "grounding"), [], "outside [0, 1]"),
    ("box-swapped", lambda d, dd, r: _eval_file(d, _write(dd / "box2.json", _eval_recs(
        bbox=[0.6, 0.2, 0.1, 0.5])), "grounding"), [], "x1 < x2 and y1 < y2"),
    ("box-three-numbers", lambda d, dd, r: _eval_file(d, _write(dd / "box3.json", _eval_recs(
        bbox=[0.1, 0.2, 0.5])), "grounding"), [], "has 3 numbers"),
    ("box-missing", lambda d, dd, r: _eval_file(d, _write(dd / "box4.json", _eval_recs()),
                                                "grounding"), [], "has no 'bbox'"),
    ("vqa-empty-answers", lambda d, dd, r: _eval_file(d, _write(dd / "vqa-empty.json", _eval_recs(
        answers=[]))), [], "'answers' must be a non-empty list"),
    ("nl-bad-line", lambda d, dd, r: d.update(nl_sets=[{
        "name": "arc_easy", "path": _write(dd / "arc.jsonl", '{"question": "q", "choices": ["a", "b"], '
                                           '"label": 0}\n{"question": \n'), "kind": "arc"}]), [],
     "arc.jsonl: line 2 is not valid JSON"),
    ("nl-bad-record", lambda d, dd, r: d.update(nl_sets=[{
        "name": "arc_easy", "path": _write(dd / "arc2.jsonl", '{"question": "q", "label": 0}\n'),
        "kind": "arc"}]), [], "field 'choices' is missing"),
    ("workers-negative", lambda d, dd, r: d["trainer"].update(num_workers=-1), [],
     "trainer.num_workers: must be ≥ 0"),
    ("unknown-key", lambda d, dd, r: d["stages"]["finetune"].update(lrate=1), [],
     "unknown key(s) 'lrate'"),
]


def _run_cli(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc, err, fragment):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert ": error: " in lines[0] and fragment in lines[0], lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_input_is_one_line_exit_2_nothing_written(case, command, world, tmp_path, capsys):
    name, edit, sets, fragment = case
    root, base = world
    data = json.loads(json.dumps(base))
    out = tmp_path / "out"
    data["output_dir"] = str(out)
    edit(data, root / "data", tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    rc, _, err = _run_cli([command, str(path), *[a for s in sets for a in ("--set", s)]], capsys)
    _assert_one_line_error(rc, err, fragment)
    assert not out.exists()  # nothing written: no results, no checkpoints, no caches


def test_debug_shows_the_traceback(world, tmp_path, capsys):
    root, base = world
    data = dict(base, recipe="contiual")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    rc, _, err = _run_cli(["--debug", "validate", str(path)], capsys)
    assert rc == 2 and "Traceback" in err and "recipe" in err
    rc, _, err = _run_cli(["validate", str(path), "--debug"], capsys)
    assert rc == 2 and "Traceback" in err


def test_good_config_and_float_spellings_pass(world, tmp_path, capsys):
    root, base = world
    text = yaml.safe_dump(base).replace("lr: 0.003", "lr: 3e-3")  # PyYAML: a string
    assert "lr: 3e-3" in text
    path = tmp_path / "c.yaml"
    path.write_text(text)
    rc, out, err = _run_cli(["validate", str(path), "--set", "stages.align.lr=1e-4"], capsys)
    assert rc == 0, err
    assert "config OK" in out and "records OK" in out
    cfg = from_dict(RunConfig, yaml.safe_load(text))
    assert cfg.stages.finetune.lr == 3e-3


def test_explicit_lr_wins_over_the_scaled_rule(world, tmp_path, capsys):
    from mllmcl_ray.sweep import load_run_config

    root, base = world
    data = json.loads(json.dumps(base))
    data["stages"]["finetune"].update(lr_rule="scaled", lr=1e-4)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_run_config(path, ["stages.finetune.lr=0.5"])
    assert (cfg.stages.finetune.lr, cfg.stages.finetune.lr_rule) == (0.5, "fixed")
    assert "lr_rule 'scaled' → 'fixed'" in capsys.readouterr().out
    # the Tune path applies the same rule
    from mllmcl_ray.sweep import apply_overrides

    got = apply_overrides(from_dict(RunConfig, data), {"stages.finetune.lr": 0.25})
    assert (got.stages.finetune.lr, got.stages.finetune.lr_rule) == (0.25, "fixed")


@pytest.mark.parametrize("argv,fragment", [
    (["micro", "--method", "navie"], "unknown method(s) ['navie']"),
    (["micro", "--size", "huge"], "--size 'huge' is not a micro LLM size"),
    (["micro", "--tasks", "vqa,ocrr"], "['ocrr'] not micro VL tasks"),
    (["micro", "--workers", "-1"], "--workers -1 must be ≥ 0"),
    (["bases", "--sizes", "micro-s,huge"], "['huge'] not micro LLM sizes"),
])
def test_micro_arguments_rejected_before_any_work(argv, fragment, tmp_path, capsys):
    out = tmp_path / "micro"
    rc, _, err = _run_cli([*argv, "--out", str(out)], capsys)
    _assert_one_line_error(rc, err, fragment)
    assert not out.exists()  # no world written, no base model pretrained


def test_world_size_rejected(tmp_path, capsys):
    rc, _, err = _run_cli(["world", str(tmp_path / "w"), "--size", "huge"], capsys)
    _assert_one_line_error(rc, err, "--size 'huge' is not a world size")
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------
# results directories and report paths
# ---------------------------------------------------------------------------------------
def _store_with_rows(root: Path):
    from mllmcl_ray.results import ResultStore
    from test_results import row

    store = ResultStore(root)
    store.append([row(run="r1", k=2, eval_task="vqa", dataset="vqa", value=0.5)])
    store.append([row(run="r1", k=3, eval_task="vqa", dataset="vqa", value=0.4)])
    return store


def test_results_skip_corrupt_part_and_repair(tmp_path, capsys):
    store = _store_with_rows(tmp_path / "res")
    bad = store._parts()[0]
    bad.write_bytes(b"PAR1 not really parquet")
    (tmp_path / "res" / "part-00000000000000000000-empty.parquet").write_bytes(b"")
    rc, out, err = _run_cli(["results", str(tmp_path / "res")], capsys)
    assert rc == 0 and "0.4" in out  # the readable part is shown
    warned = [ln for ln in err.splitlines() if "warning: skipping unreadable" in ln]
    assert len(warned) == 2 and bad.name in warned[0] + warned[1], err  # one line per part
    rc, out, err = _run_cli(["results", "--repair", str(tmp_path / "res")], capsys)
    assert rc == 0 and "2 unreadable part(s) moved aside" in err and bad.name in err
    assert sorted(p.name for p in (tmp_path / "res" / "quarantine").iterdir()) == sorted(
        [bad.name, "part-00000000000000000000-empty.parquet"])
    assert len(store.read()) == 1  # no warning now: the bad parts are gone


def test_report_to_a_directory_or_unwritable_path(tmp_path, capsys):
    _store_with_rows(tmp_path / "res")
    rc, _, err = _run_cli(["report", str(tmp_path / "res"), "-o", str(tmp_path)], capsys)
    _assert_one_line_error(rc, err, "is a directory")
    rc, _, err = _run_cli(["report", str(tmp_path / "res"), "-o", str(tmp_path / "no" / "r.html")],
                          capsys)
    _assert_one_line_error(rc, err, "does not exist; create it first")
    rc, _, err = _run_cli(["report", str(tmp_path / "nores"), "-o", str(tmp_path / "r.html")], capsys)
    _assert_one_line_error(rc, err, "results directory")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:  # root ignores the permission bits; nobody can create files in /proc
        target = ro / "r.html" if not os.access(ro, os.W_OK) else Path("/proc/mllmcl-r.html")
        rc, _, err = _run_cli(["report", str(tmp_path / "res"), "-o", str(target)], capsys)
        _assert_one_line_error(rc, err, "is not writable")
    finally:
        os.chmod(ro, 0o700)


# ---------------------------------------------------------------------------------------
# the hang, skips at training time, truncation (components directly)
# ---------------------------------------------------------------------------------------
def test_empty_stage_raises_instead_of_hanging():
    from mllmcl_ray.config import StageConfig
    from mllmcl_ray.train.loop import step_indices

    with pytest.raises(DataError, match="no training samples"):
        step_indices(0, StageConfig(global_batch_size=8, per_device_batch_size=4), 0, 1)


def test_fully_skipped_step_is_a_data_error_before_training(world, tmp_path, capsys):
    """A step whose records are all skipped stops before training (the validation check
    bypassed: e.g. images deleted after validation) and says how many were skipped."""
    from mllmcl_ray.train.task import plan_steps, run_step

    root, base = world
    data = json.loads(json.dumps(base))
    data["output_dir"] = str(tmp_path / "out")
    data["tasks"][0]["train"][0].update(
        path=_write(root / "data" / "noimg2.json", [_rec(i, image=f"images/gone{i}.png")
                                                     for i in range(5)]),
        missing_image="skip")
    cfg = from_dict(RunConfig, data)
    step = plan_steps(cfg)[1]
    with pytest.raises(DataError, match=r"no training records .*kept 0 of 5 records; skipped 5 with missing"):
        run_step(cfg, step, None, tmp_path / "ck", progress=False)
    assert not (tmp_path / "ck").exists()


def test_partly_skipped_step_counts_skips_in_its_summary(world, tmp_path, capsys):
    from mllmcl_ray.train.task import plan_steps, run_step

    root, base = world
    data = json.loads(json.dumps(base))
    data["output_dir"] = str(tmp_path / "out")
    recs = [_rec(i, image="images/colour-r0.png" if i % 2 else f"images/gone{i}.png")
            for i in range(8)]
    data["tasks"][0]["train"][0].update(path=_write(root / "data" / "half.json", recs),
                                        missing_image="skip")
    data["stages"]["finetune"].update(max_steps=1)
    cfg = from_dict(RunConfig, data)
    summary = run_step(cfg, plan_steps(cfg)[1], None, tmp_path / "ck", progress=False)
    assert (summary["records_kept"], summary["skipped_missing_image"]) == (4, 4)
    assert summary["skipped_ids"] == ["x0", "x2", "x4", "x6"]
    assert "skipped 4 with missing images" in capsys.readouterr().out
    pos = json.loads((tmp_path / "ck" / "position.json").read_text())
    assert pos["skipped_missing_image"] == 4  # stored with the step (run_state.json copies it)


def test_question_that_truncates_the_image_is_a_data_error(world):
    from mllmcl_ray.models.templates import get_template
    from mllmcl_ray.models.tokenizers import encode_conversation, ensure_special_tokens, load_tokenizer

    root, _ = world
    tok = ensure_special_tokens(load_tokenizer(str(root / "tok")))
    conv = [{"from": "human", "value": "red " * 80 + "<image>\nWhat colour?"},
            {"from": "gpt", "value": "red"}]
    with pytest.raises(DataError, match="truncation would cut the image"):
        encode_conversation(tok, get_template("micro"), conv, n_image_tokens=16, max_len=64)


def test_main_guard_is_reusable(capsys):
    import io

    buf = io.StringIO()

    def bad():
        raise DataError("x.json: record 3 is broken;\nfix it")

    assert main_guard(bad, prog="study", stream=buf) == 2
    assert buf.getvalue() == "study: error: x.json: record 3 is broken; fix it\n"
    assert main_guard(lambda: None) == 0 and main_guard(lambda: 3) == 3
    with pytest.raises(KeyError):  # bugs keep their traceback
        main_guard(lambda: {}["k"])
    assert issubclass(DataError, ConfigError)


@pytest.mark.slow  # starts the session's local Ray (2 CPUs); the check itself is instant
@pytest.mark.timeout(180)
def test_more_workers_than_the_cluster_has_is_rejected_with_the_numbers(ray_local, world, tmp_path,
                                                                        capsys):
    """3 Ray Train workers on a 2-CPU cluster: an error before fit(), not a wait forever."""
    from mllmcl_ray.errors import ResourceError
    from mllmcl_ray.train.ray_trainer import RayBackend
    from mllmcl_ray.train.task import plan_steps
    from mllmcl_ray.validate import check_cluster_resources

    root, base = world
    data = json.loads(json.dumps(base))
    data["output_dir"] = str(tmp_path / "out")
    data["trainer"].update(num_workers=3, cpus_per_worker=1.0)
    data["stages"]["finetune"].update(global_batch_size=12, per_device_batch_size=4)
    data["stages"]["align"].update(global_batch_size=24, per_device_batch_size=8)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    msg = ("trainer.num_workers 3 × 1 CPU per worker = 3 CPU, but the Ray cluster has 2 CPU; "
           "use at most 2 worker(s)")
    rc, _, err = _run_cli(["run", str(path)], capsys)
    _assert_one_line_error(rc, err, msg)
    assert not (tmp_path / "out").exists()
    cfg = from_dict(RunConfig, data)
    with pytest.raises(ResourceError, match="use at most 2 worker"):  # the backend checks too
        RayBackend().run(cfg, plan_steps(cfg)[1], None, tmp_path / "ck", tmp_path / "run")
    cfg.trainer.num_workers = 2
    assert "2 worker(s) × 1 CPU fit the cluster (2 CPU)" in check_cluster_resources(cfg)


def test_a_worker_data_error_surfaces_as_the_user_error():
    """Ray Train wraps a worker's exception (WorkerGroupError.worker_failures, a task
    error's cause); the backend re-raises the user error inside."""
    from ray.train.v2.api.exceptions import WorkerGroupError

    from mllmcl_ray.errors import user_error_in

    inner = DataError("step 02-colour: no training records")
    wrapped = WorkerGroupError("training failed", {0: RuntimeError("rank 0"), 1: inner})
    assert user_error_in(wrapped) is inner
    try:
        try:
            raise inner
        except DataError as e:
            raise RuntimeError("outer") from e
    except RuntimeError as outer:
        assert user_error_in(outer) is inner
    assert user_error_in(RuntimeError("a bug")) is None


def test_report_on_a_results_dir_without_readable_rows(tmp_path, capsys):
    res = tmp_path / "res"
    res.mkdir()
    (res / "part-00000000000000000001-x.parquet").write_bytes(b"")  # an empty part
    rc, _, err = _run_cli(["report", str(res), "-o", str(tmp_path / "r.html")], capsys)
    warn, error = err.splitlines()
    assert "warning: skipping unreadable result row part" in warn and "x.parquet" in warn
    _assert_one_line_error(rc, error, str(res))
    assert not (tmp_path / "r.html").exists()


def test_uncached_hub_id_offline_is_a_one_line_error(world, tmp_path, capsys, monkeypatch):
    """Offline (HF_HUB_OFFLINE=1), a hub id that is not in the local cache is an error up
    front (looked up in the cache only: no network)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    root, base = world
    data = json.loads(json.dumps(base))
    data["output_dir"] = str(tmp_path / "out")
    data["model"]["llm"] = "nobody/none"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    rc, _, err = _run_cli(["validate", str(path)], capsys)
    _assert_one_line_error(rc, err, "hub id 'nobody/none' is not in the local cache")
