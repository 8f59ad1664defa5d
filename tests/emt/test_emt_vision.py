"""EMT §3 vision-encoder forgetting (mllmcl_ray/emt/vision.py, studies/emt_vision.py) on
the tiny micro world with a tiny ResNet and a random tiny CLIP: the rows' layout per
epoch, the class split, the in/out-of-domain labelling, the Ray Tune + Ray Train path,
and the report's figures."""
from __future__ import annotations

import json

import pytest

from mllmcl_ray.data.micro.world import generate_world
from mllmcl_ray.emt.vision import (ResNetSpec, VisionSet, VisionStudyConfig, describe,
                                   run_study, run_trial)
from mllmcl_ray.results import ResultStore
from llava_hf_world import make_llava_hf

TINY = ResNetSpec(name="resnet-tiny", depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 8, 8],
                  embedding_size=8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("emtv")
    w = root / "world"
    generate_world(w, seed=0, size="tiny")
    m = json.loads((w / "manifest.json").read_text())
    sets = [VisionSet(n, str(w / m["vl"][n]["train"]), str(w / m["vl"][n]["test"]),
                      str(w / m["images_dir"])) for n in ("digits", "shapes")]
    _, clip = make_llava_hf(root)
    return root, sets, str(clip)


def _cfg(world, tmp_path, experiment, **kw):
    _, sets, clip = world
    base = dict(experiment=experiment, dataset="digits", sets=sets, results=str(tmp_path / "res"),
                resnet=TINY, pretrain_epochs=2, finetune_epochs=2, batch_size=16, clip=clip,
                clip_lr=1e-3, max_test=8)
    base.update(kw)
    return VisionStudyConfig(**base)


def test_resnet_rows_per_epoch_and_class_split(world, tmp_path):
    cfg = _cfg(world, tmp_path, "resnet")
    assert run_trial(cfg) == 4 * 4  # 4 epochs x {pretrained, finetuned} x {train, test}
    df = ResultStore(cfg.results).read()
    assert sorted(df.trained_task_index.unique()) == [1, 2, 3, 4]
    assert set(df[df.trained_task_index <= 2].trained_task) == {"pretrain"}
    assert set(df[df.trained_task_index > 2].trained_task) == {"finetune"}
    p = json.loads(df.method_params.iloc[0])
    # digits: labels zero..nine in the set's order, first half pretrained
    assert p["pretrain_classes"] == ["zero", "one", "two", "three", "four"]
    assert p["finetune_classes"] == ["five", "six", "seven", "eight", "nine"]
    assert set(df.split) == {"vision"} and set(df.model) == {"resnet-tiny"}
    # n = the training images of each half (32 tiny train images in all)
    tr = df[(df.metric == "train_accuracy") & (df.trained_task_index == 1)]
    assert tr.n.sum() == 32


def test_clip_in_and_out_of_domain_per_epoch(world, tmp_path):
    cfg = _cfg(world, tmp_path, "clip", finetune_epochs=2)
    assert run_trial(cfg) == 3 * 2  # epochs 0 (before), 1, 2 x {digits, shapes}
    df = ResultStore(cfg.results).read()
    assert sorted(df.trained_task_index.unique()) == [1, 2, 3]
    assert set(df.trained_task) == {"epoch-0", "epoch-1", "epoch-2"}
    dom = dict(zip(df.dataset, df.eval_task))
    assert dom == {"digits": "in_domain", "shapes": "out_of_domain"}
    assert (df.n == 8).all() and set(df.metric) == {"clip_zero_shot"}
    assert describe("digits", "seven") == "seven, a handwritten digit"
    assert describe("cifar100", "aquarium_fish") == "aquarium fish, a small photo of an object"


@pytest.mark.slow
def test_tune_trials_with_ray_train_and_report(world, tmp_path, ray_local):
    """Two Tune trials: §3.1 on digits under a 1-worker TorchTrainer, §3.2 on shapes in
    the trial's process; the report draws §3.1 and §3.2 figures from the rows."""
    from mllmcl_ray.report.figures import fig_emt_vision_clip, fig_emt_vision_resnet

    cfgs = [_cfg(world, tmp_path, "resnet", dataset="digits", workers=1, pretrain_epochs=1,
                 finetune_epochs=1),
            _cfg(world, tmp_path, "clip", dataset="shapes", workers=0, finetune_epochs=1)]
    out = run_study(cfgs, storage=str(tmp_path / "tune"))
    assert sorted(r["rows"] for r in out) == [4, 8]
    df = ResultStore(cfgs[0].results).read()
    assert set(df[df.method == "pretrain_finetune"].dataset) == {"digits"}
    f1 = fig_emt_vision_resnet(df)
    assert {(t.meta["eval_task"], t.meta["metric"]) for t in f1.data} == {
        ("pretrained_classes", "train_accuracy"), ("pretrained_classes", "test_accuracy"),
        ("finetuned_classes", "train_accuracy")}
    f2 = fig_emt_vision_clip(df)
    metas = {(t.meta["trained"], t.meta["dataset"], t.meta["domain"]) for t in f2.data}
    assert metas == {("shapes", "shapes", "in-domain"), ("shapes", "digits", "out-of-domain")}
