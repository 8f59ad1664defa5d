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
    # task 2 = the alignment captions + the first task: later tasks know both (rehearsal)
    steps = plan_steps(cfg)
    assert steps[1].align_sources == cfg.align and steps[1].previous_align == {}
    assert steps[2].align_sources == [] and steps[2].previous_align == {"colour": cfg.align}
    assert steps[2].previous_sources == {"colour": cfg.tasks[0].train}


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


def test_epoch_end_steps():
    from mllmcl_ray.config import StageConfig
    from mllmcl_ray.train.loop import epoch_end_steps
    from mllmcl_ray.train.schedule import num_optimizer_steps

    def ends(n, epochs, max_steps=None, gbs=8):
        st = StageConfig(global_batch_size=gbs, epochs=epochs, max_steps=max_steps)
        return epoch_end_steps(n, st, num_optimizer_steps(st, n))

    assert ends(48, 3.0) == {6: 1, 12: 2, 18: 3}  # 48 / 8 = 6 steps an epoch
    assert ends(50, 2.0) == {7: 1, 12: 2}  # ceil(50/8) = 7; floor(100/8) = 12 steps in all
    assert ends(48, 0.5) == {3: 1}  # a part of an epoch ends at the stage's end
    assert ends(48, 2.0, max_steps=4) == {4: 1}  # cut short inside epoch 1


def test_eval_every_epoch_checkpoints_inside_one_task(tmp_path):
    """EMT protocol: one task, one lr schedule, one optimizer, one (LoRA) adapter,
    evaluated after every epoch: the epoch-1 checkpoint is the model a run stopped after
    epoch 1 ends with, and checkpointing does not disturb training."""
    import dataclasses

    base = tiny_run_config(tmp_path / "w", steps=None, n_train=16)
    base = merge(base, {"method": {"name": "lora", "params": {"lora": {"rank": 4, "dropout": 0.0}}},
                        "stages": {"finetune": {"schedule": "constant", "epochs": 3.0}}})
    base.tasks, base.align = base.tasks[:1], []
    epochs_cfg = merge(base, {"output_dir": str(tmp_path / "epochs")})
    epochs_cfg.tasks = [dataclasses.replace(base.tasks[0], eval_every_epoch=True)]
    calls = []

    def evaluate(cfg, step, ckpt, run_id):
        if step is not None and step.stage == "finetune":
            calls.append((step.epoch, Path(ckpt).name))

    out = ContinualRun(epochs_cfg, evaluate=evaluate, log=lambda s: None).run()
    assert calls == [(1, "02-colour-epoch01"), (2, "02-colour-epoch02"), (0, "02-colour")]
    summary = out[-1].summary
    assert summary["total_steps"] == 6 and len(summary["losses"]) == 6  # one schedule
    plain = ContinualRun(merge(base, {"output_dir": str(tmp_path / "plain")}),
                         log=lambda s: None).run()
    assert plain[-1].summary["losses"] == summary["losses"]  # training undisturbed
    final = load_mllm(Path(out[-1].checkpoint) / "model").model.state_dict()
    ref = load_mllm(Path(plain[-1].checkpoint) / "model").model.state_dict()
    assert all(torch.equal(final[k], ref[k]) for k in ref)
    # the epoch-1 checkpoint = the model of a run stopped after 2 steps (16 / 8 = 1 epoch)
    short = ContinualRun(merge(base, {"output_dir": str(tmp_path / "short"),
                                      "stages": {"finetune": {"max_steps": 2}}}),
                         log=lambda s: None).run()
    assert short[-1].summary["losses"] == summary["losses"][:2]
    epoch1 = Path(out[-1].checkpoint).parent / "02-colour-epoch01"
    got = load_mllm(epoch1 / "model").model.state_dict()  # a plain LLaVA: LoRA merged
    want = load_mllm(Path(short[-1].checkpoint) / "model").model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
    assert not (epoch1 / "method_state").exists()
    # a rerun skips training and evaluates the same checkpoints again, in the same order
    calls.clear()
    again = ContinualRun(epochs_cfg, evaluate=evaluate, log=lambda s: None).run()
    assert all(o.skipped for o in again)
    assert calls == [(1, "02-colour-epoch01"), (2, "02-colour-epoch02"), (0, "02-colour")]


@pytest.mark.gpu
def test_step_on_gpu_in_bf16_learns_and_saves_a_cpu_loadable_checkpoint(tmp_path):
    from mllmcl_ray.train.strategies import make_strategy
    from mllmcl_ray.train.task import run_step

    cfg = merge(tiny_run_config(tmp_path, steps=6), {"trainer": {"use_gpu": True}})
    strategy = make_strategy("none", cfg.trainer, torch.device("cuda", 0))
    assert strategy.mixed_precision == "bf16"  # "auto" on a GPU
    step = plan_steps(cfg)[1]  # the first VL task, from the base model
    summary = run_step(cfg, step, None, tmp_path / "ckpt", strategy=strategy, progress=False)
    losses = summary["losses"]
    assert len(losses) == 6 and all(l == l for l in losses) and losses[-1] < losses[0]
    back = load_mllm(tmp_path / "ckpt" / "model")
    assert next(back.model.parameters()).device.type == "cpu"


def test_callbacks_see_every_hook_in_order(tmp_path):
    from mllmcl_ray.train.callbacks import TrainCallback
    from mllmcl_ray.train.task import run_step

    class Record(TrainCallback):
        def __init__(self):
            self.log = []

        def on_stage_start(self):
            self.log.append(("start", self.state.step.key, self.state.rank))

        def on_step_end(self, step, loss):
            self.log.append(("step", step))

        def on_log(self, metrics):
            self.log.append(("log", metrics["step"]))

        def on_checkpoint(self, step, optimizer_state):
            self.log.append(("ckpt", step, sorted(optimizer_state)))

        def on_epoch_end(self, epoch, step):
            self.log.append(("epoch", epoch, step))

        def on_train_end(self):
            self.log.append(("end",))

        def on_save(self, path):
            self.log.append(("save", Path(path).name))

    # 16 samples, global batch 8: 2 steps an epoch, 2 epochs = 4 steps
    cfg = merge(tiny_run_config(tmp_path, n_train=16),
                {"trainer": {"log_every": 2, "checkpoint_every": 3}})
    rec = Record()
    run_step(cfg, plan_steps(cfg)[1], None, tmp_path / "ck", callbacks=[rec], progress=False)
    assert rec.log == [("start", "02-colour", 0), ("step", 1), ("step", 2), ("log", 2),
                       ("epoch", 1, 2), ("step", 3), ("ckpt", 3, ["optimizer", "scheduler"]),
                       ("step", 4), ("log", 4), ("epoch", 2, 4), ("end",), ("save", "ck")]


def test_eval_every_epoch_rows_reach_the_store_keyed_by_epoch(tmp_path):
    """run_and_evaluate with `eval_every_epoch`: rows after epochs 1 and 2 (epoch column
    1, 2) and at the task's end (epoch 0, the epoch-3 model) are all stored, none skipped
    as "already there"; their predictions carry the epoch too; a rerun writes nothing."""
    import dataclasses

    from mllmcl_ray.results import PredictionStore, ResultStore
    from mllmcl_ray.runner import results_dir, run_and_evaluate

    cfg = tiny_run_config(tmp_path / "w", steps=None, n_train=16)
    cfg = merge(cfg, {"stages": {"finetune": {"schedule": "constant", "epochs": 3.0}},
                      "eval": {"nl": False, "placement": "driver"}})
    cfg.align = []
    cfg.tasks = [dataclasses.replace(cfg.tasks[0], eval_every_epoch=True)]
    run_id = run_and_evaluate(cfg, progress=False, log=lambda s: None)
    df = ResultStore(results_dir(cfg)).read()
    acc = df[(df["run_id"] == run_id) & (df["metric"] == "accuracy")
             & (df["trained_task_index"] == 2)]
    assert sorted(acc["epoch"].tolist()) == [0, 1, 2]
    ckpts = dict(zip(acc["epoch"], acc["checkpoint_id"]))
    assert Path(ckpts[1]).name.endswith("epoch01") and Path(ckpts[2]).name.endswith("epoch02")
    assert not Path(ckpts[0]).name.endswith(("epoch01", "epoch02"))
    preds = PredictionStore(results_dir(cfg)).read()
    preds = preds[(preds["run_id"] == run_id) & (preds["trained_task_index"] == 2)]
    n = int(acc["n"].iloc[0])
    assert preds.groupby("epoch").size().to_dict() == {0: n, 1: n, 2: n}
    before = len(df)
    run_and_evaluate(cfg, progress=False, log=lambda s: None)
    assert len(ResultStore(results_dir(cfg)).read()) == before


def test_task_epochs_apply_to_continual_task_steps_only(tmp_path):
    """stages.finetune.task_epochs: each continual task step passes over its data that many
    times; the LLaVA recipe's mixture and the align stage keep `epochs`. With 48 records per
    task, global batch 8 and epochs 2: 12 optimizer steps; task_epochs 3: 18 steps."""
    from mllmcl_ray.train.schedule import num_optimizer_steps
    from mllmcl_ray.train.task import stage_path

    cfg = tiny_run_config(tmp_path)
    cont = merge(cfg, {"stages": {"finetune": {"task_epochs": 3.0}}})
    llava = merge(cont, {"recipe": "llava"})
    epochs = {c.recipe: {s.key: stage_path(s).config(c).epochs for s in plan_steps(c)}
              for c in (cont, llava)}
    assert epochs["continual"] == {"02-align": 1.0, "02-colour": 3.0, "03-position": 3.0}
    assert epochs["llava"] == {"02-align": 1.0, "02-llava": 2.0}
    step = plan_steps(cont)[1]
    assert num_optimizer_steps(stage_path(step).config(cont), 48) == 18
    assert num_optimizer_steps(stage_path(step).config(cfg), 48) == 12  # unset: epochs
    with pytest.raises(Exception, match="task_epochs"):
        merge(cfg, {"stages": {"finetune": {"task_epochs": 0}}})


def test_method_revision_enters_the_run_id(tmp_path, monkeypatch):
    """A method whose code changed what it learns (revision > 1) gets new run ids, so a
    rerun does not resume checkpoints the old code made; revision-1 methods keep the plain
    config hash (ids of existing runs unchanged). Rehearsal is at revision 2 (its task-2
    buffer keeps the alignment captions); mSGM + Rehearsal inherits it through its stack."""
    from mllmcl_ray.config import config_hash, to_dict
    from mllmcl_ray.methods.base import METHODS, method_revisions

    def plain_id(c):
        data = to_dict(c)
        for k in ("output_dir", "trainer", "eval"):
            data.pop(k, None)
        return f"{c.name}-{config_hash(data)}"

    cfg = tiny_run_config(tmp_path)
    naive, msgm = merge(cfg, {"method": {"name": "naive"}}), merge(cfg, {"method": {"name": "msgm"}})
    reh = merge(cfg, {"method": {"name": "rehearsal"}})
    both = merge(cfg, {"method": {"name": "msgm+rehearsal"}})
    assert run_id_for(naive) == plain_id(naive) and run_id_for(msgm) == plain_id(msgm)
    assert method_revisions(reh.method) == {"rehearsal": 2} == method_revisions(both.method)
    assert run_id_for(reh) != plain_id(reh) and run_id_for(both) != plain_id(both)
    before = run_id_for(reh)
    monkeypatch.setattr(METHODS["rehearsal"], "revision", 3)
    assert run_id_for(reh) != before and run_id_for(naive) == plain_id(naive)
    monkeypatch.setattr(METHODS["soft_targets"], "revision", 2)  # a component of msgm
    assert method_revisions(msgm.method) == {"soft_targets": 2} and run_id_for(msgm) != plain_id(msgm)
