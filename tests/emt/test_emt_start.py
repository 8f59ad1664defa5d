"""EMT starts from an instruction-tuned MLLM (Zhai et al. §5 fine-tunes LLaVA; issue 10
item 6b): `studies/emt.py --start instruct` (default) on the micro preset makes the LLaVA
recipe's output once (alignment on the caption task + one fine-tune on the world's
``instruct`` task, mllmcl_ray/emt/start.py) and every EMT run starts from it with no
alignment of its own; ``--start aligned`` keeps the align-only start. The paper preset's
default is in tests/study/test_studies.py (offline dry run).

The micro world is the tiny one; the base models are a randomly initialised 32-wide
LLaVA (tests/spine_world.py) standing in for the pretrained micro bases, so nothing is
pretrained here (`prepare_micro` is replaced by the prepared world + spec).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_emt_study():
    spec = importlib.util.spec_from_file_location("_emt_start_study", REPO / "studies" / "emt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    """The tiny micro world with a tokenizer trained on it and a tiny model named "nano"."""
    from spine_world import tiny_spec

    from mllmcl_ray.data.micro.world import generate_world
    from mllmcl_ray.models.tokenizers import load_tokenizer
    from mllmcl_ray.presets import micro_pretrain as P
    from mllmcl_ray.presets.micro import MicroPrep, _world_path

    root = tmp_path_factory.mktemp("emt-start")
    world = root / "world-tiny-s0"
    generate_world(world, seed=0, size="tiny")
    manifest = json.loads((world / "manifest.json").read_text())
    vl = [Path(_world_path(world, t["train"])) for t in manifest["vl"].values()]
    P.train_tokenizer(Path(_world_path(world, manifest["corpus"]["train"])), vl, root / "tok",
                      vocab_size=400)
    spec = dataclasses.replace(tiny_spec(root / "tok", vocab=len(load_tokenizer(str(root / "tok")))),
                               name="nano", max_seq_len=96)
    spec.llm_config["max_position_embeddings"] = 128
    return MicroPrep(world, manifest, {"nano": spec})


@pytest.fixture()
def study(prep, tmp_path, monkeypatch):
    """(emt study module, context maker): contexts on the micro preset over `prep`."""
    from mllmcl_ray.study.cli import make_context

    monkeypatch.setattr("mllmcl_ray.presets.micro.prepare_micro", lambda out, **kw: prep)
    emt = load_emt_study()
    out = tmp_path / "out"

    def ctx(*argv, log=None):
        args = emt.SPEC.parse_args(["--preset", "micro", "--world-size", "tiny", "--model", "nano",
                                    "--out", str(out), "--quiet", *argv])
        return make_context(emt.SPEC, args, log=log or (lambda s: None))

    return emt, ctx, out


def test_default_micro_start_is_the_llava_recipe_checkpoint(study, prep):
    """Default (--start instruct): model.init is the LLaVA-recipe run's last checkpoint
    (<out>/runs/<its run id>/checkpoints/02-llava/model), the EMT run has no alignment,
    and one log line says where the start comes from."""
    from mllmcl_ray.train.continual import run_id_for

    emt, ctx, out = study
    logs = []
    c = ctx(log=logs.append)
    cfg = emt.base(c)
    start = c.preset.instruct_start("nano")
    rec = start.recipe
    assert rec.recipe == "llava" and [t.name for t in rec.tasks] == ["instruct"]
    caption = prep.manifest["vl"]["caption"]["train"]
    assert [Path(a.path).name for a in rec.align] == [Path(caption).name]
    assert rec.nl_sets == [] and rec.model == prep.specs["nano"]
    # the start is made from the base LLM, never from itself: the EMT config's model.init
    # does not leak into the preset's shared spec
    assert rec.model.init is None and prep.specs["nano"].init is None
    assert cfg.model.init == start.init == str(
        out / "runs" / run_id_for(rec) / "checkpoints" / "02-llava" / "model")
    assert cfg.align == [] and cfg.eval.zero_shot
    assert [l for l in logs if "start:" in l] == [f"[emt] start: {start.source}"]
    assert start.init in start.source and "LLaVA recipe" in start.source


def test_micro_dry_run_names_the_start_and_makes_nothing(study, capsys):
    emt, ctx, out = study
    assert emt.main(["--preset", "micro", "--world-size", "tiny", "--model", "nano",
                     "--out", str(out), "--dry-run", "--quiet"]) == 0
    text = capsys.readouterr().out
    start = ctx().preset.instruct_start("nano")
    assert f"[emt] start: {start.source}" in text
    assert f"would make (or reuse) the instruction-tuned start {start.init}" in text
    assert not (out / "runs").exists()


def test_start_flag_keeps_the_aligned_start_and_rejects_unknown_values(study, prep):
    from mllmcl_ray.config import ConfigError

    emt, ctx, _ = study
    cfg = emt.base(ctx("--start", "aligned"))
    assert cfg.model.init is None
    assert [Path(a.path).name for a in cfg.align] == [Path(prep.manifest["vl"]["caption"]["train"]).name]
    cfg = emt.base(ctx("--init", "/some/llava"))  # another instruction-tuned checkpoint
    assert cfg.model.init == "/some/llava" and cfg.align == []
    with pytest.raises(ConfigError, match=r"--start 'instrct': choose among instruct, aligned"):
        emt.base(ctx("--start", "instrct"))
    with pytest.raises(ConfigError, match=r"--init '/some/llava'.*--start is aligned"):
        emt.base(ctx("--start", "aligned", "--init", "/some/llava"))


def test_start_is_made_once_reused_and_rebuilt_when_a_setting_changes(study):
    """make_start trains the LLaVA recipe (alignment, then the instruct fine-tune) into
    model.init; a second call reuses it (no training: the files stay the same inodes and
    mtimes); a changed stage setting or world path is another key, made anew."""
    from mllmcl_ray.emt.start import make_start
    from mllmcl_ray.models.build import build_mllm
    from mllmcl_ray.presets.micro import llava_start

    emt, ctx, _ = study
    c = ctx()
    start = c.preset.instruct_start("nano")
    logs = []
    assert make_start(start, progress=False, log=logs.append) == start.init
    assert logs[0] == f"[emt] start: making {start.source}"
    ckpts = Path(start.init).parents[1]
    pos = json.loads((ckpts / "02-llava" / "position.json").read_text())
    n_instruct = len(json.loads(Path(start.recipe.tasks[0].train[0].path).read_text()))
    assert pos["stage"] == "finetune" and pos["samples"] == n_instruct and pos["complete"]
    assert json.loads((ckpts / "02-align" / "position.json").read_text())["stage"] == "align"
    files = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(start.init).iterdir()}
    m = build_mllm(dataclasses.replace(start.recipe.model, init=start.init))
    assert m.template.name == "micro"

    logs = []
    again = ctx().preset.instruct_start("nano")  # a rerun computes the same start
    assert again.init == start.init
    assert make_start(again, progress=False, log=logs.append) == start.init
    assert logs == [f"[emt] start: reusing {start.init}"]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(start.init).iterdir()} == files

    other_world = copy.deepcopy(start.recipe)
    other_world.align[0].path = other_world.align[0].path.replace("world-tiny-s0", "world-tiny-s1")
    assert llava_start(other_world).init != start.init
    changed = copy.deepcopy(start.recipe)
    changed.stages.finetune.lr = 5e-4
    new = llava_start(changed)
    assert new.init != start.init and Path(new.init).parents[2] != Path(start.init).parents[2]
    logs = []
    make_start(new, progress=False, log=logs.append)
    assert logs[0].startswith("[emt] start: making") and (Path(new.init) / "config.json").exists()
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(start.init).iterdir()} == files


def test_before_fine_tuning_rows_are_emt_of_the_start(study):
    """runner.eval_jobs: with model.init and eval.zero_shot the base model's evaluation
    (task 1, "zero_shot") is EMT of the start on every set; without init it stays the NL
    suite of the base LLM."""
    from mllmcl_ray.runner import eval_jobs

    emt, ctx, _ = study
    cfg = emt.base(ctx())
    job = eval_jobs(cfg, None, "", "r", "emt", 1.0)
    assert (job.trained_task_index, job.trained_task) == (1, "zero_shot")
    assert job.checkpoint.kind == "base" and job.checkpoint_id == cfg.model.init
    assert [(i, n, [e.name for e in s]) for i, n, s in job.emt_tasks] == [(2, "finetune", ["digits", "shapes"])]
    assert job.vl_tasks == [] and job.nl_sets == []
    aligned = eval_jobs(emt.base(ctx("--start", "aligned")), None, "", "r", "emt", 1.0)
    assert (aligned.trained_task, aligned.emt_tasks, aligned.vl_tasks) == ("base", [], [])


def test_micro_emt_study_runs_from_the_made_start(study):
    """The whole study (linear, 1 epoch, 4 samples per set): the start is made before the
    runs, the EMT run has no alignment step, and its task-1 rows are EMT of the start."""
    from mllmcl_ray.results import ResultStore

    emt, ctx, out = study
    argv = ["--preset", "micro", "--world-size", "tiny", "--model", "nano", "--out", str(out),
            "--methods", "linear", "--epochs", "1", "--no-clip", "--no-tune", "--eval-samples", "4",
            "--quiet"]
    assert emt.main(argv) == 0
    start = ctx().preset.instruct_start("nano")
    df = ResultStore(out / "results").read()
    runs = {r for r in df.run_id.unique() if r.startswith("emt-")}
    assert len(runs) == 1
    run = runs.pop()
    assert sorted(p.name for p in (out / "runs" / run / "checkpoints").iterdir()) == ["02-finetune"]
    before = df[(df.run_id == run) & (df.trained_task_index == 1) & (df.metric == "emt_exact")]
    assert set(before.dataset) == {"digits", "shapes"}
    assert set(before.trained_task) == {"zero_shot"} and set(before.checkpoint_id) == {start.init}
    after = df[(df.run_id == run) & (df.trained_task_index == 2) & (df.metric == "emt_exact")]
    assert set(after.dataset) == {"digits", "shapes"}
