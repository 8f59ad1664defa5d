"""The EMT figures of the report (Fig. 4, §5 per epoch with failure shares) read exactly
the rows the EMT studies write."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from mllmcl_ray.report.figures import FIGURES, fig_emt, fig_emt_epochs, fig_emt_models


def row(**kw):
    base = dict(run_id="r", study="emt_models", model="m", scale=1.0, method="off_the_shelf",
                method_params="{}", seed=0, trained_task_index=1, trained_task="zero_shot",
                eval_task="zero_shot", eval_task_index=1, dataset="mnist", split="emt",
                metric="emt_exact", value=0.5, n=10, time=0.0, checkpoint_id="c",
                eval_set_hash="h", prompt_version="p", decoding="{}")
    base.update(kw)
    return base


def _y(t):
    return [None if v is None else round(float(v), 6) for v in t.y]


def test_fig4_groups_models_by_tower_with_clip_bars():
    tower_a = json.dumps({"vision_tower": "clip-vit-large-patch14-336"})
    tower_b = json.dumps({"vision_tower": "clip-h32"})
    rows = [row(run_id="a", model="llava-7b", method_params=tower_a, dataset="mnist", value=0.4),
            row(run_id="a", model="llava-7b", method_params=tower_a, dataset="cifar10", value=0.6),
            row(run_id="b", model="llava-13b", method_params=tower_a, dataset="mnist", value=0.5),
            row(run_id="b", model="llava-13b", method_params=tower_a, dataset="cifar10", value=0.7),
            row(run_id="c", model="tiny", method_params=tower_b, dataset="mnist", value=0.1),
            row(run_id="a", model="llava-7b", method_params=tower_a, dataset="mnist",
                metric="emt_nearest", value=0.9),  # not the Fig. 4 decider
            row(run_id="k", model="openai/clip", method="clip_zero_shot", method_params=tower_a,
                dataset="mnist", metric="clip_zero_shot", value=0.8),
            row(run_id="k", model="openai/clip", method="clip_zero_shot", method_params=tower_a,
                dataset="cifar10", metric="clip_zero_shot", value=0.95)]
    fig = fig_emt_models(pd.DataFrame(rows))
    bars = {(t.meta["kind"], t.meta.get("model"), t.meta["tower"]): (list(t.x), _y(t)) for t in fig.data}
    # datasets sorted: cifar10, mnist; accuracies in %
    assert bars[("emt", "llava-7b", "clip-vit-large-patch14-336")] == (["cifar10", "mnist"], [60.0, 40.0])
    assert bars[("emt", "llava-13b", "clip-vit-large-patch14-336")] == (["cifar10", "mnist"], [70.0, 50.0])
    assert bars[("clip_zero_shot", None, "clip-vit-large-patch14-336")] == (["cifar10", "mnist"], [95.0, 80.0])
    assert bars[("emt", "tiny", "clip-h32")] == (["mnist"], [10.0])
    assert len(bars) == 4  # no CLIP bar for a tower without CLIP rows
    assert fig_emt_models(pd.DataFrame([row(method="lora")])) is None


def test_fig_emt_epochs_stacks_failure_shares_and_marks_in_domain():
    rows = []
    shares = {1: (0.5, 0.2, 0.1, 0.2), 2: (0.3, 0.1, 0.2, 0.4)}
    for k, (c, w, i, e) in shares.items():
        for ds in ("digits", "shapes"):
            for metric, v in (("emt_exact", c), ("emt_exact_wrong", w),
                              ("emt_exact_intrinsic", i), ("emt_exact_extrinsic", e)):
                rows.append(row(run_id="e", study="emt-digits", model="micro-s", method="lora",
                                trained_task_index=k, trained_task=f"epoch-{k}", dataset=ds,
                                metric=metric, value=v))
    df = pd.DataFrame(rows)
    fig = fig_emt_epochs(df)
    lines = {t.meta["dataset"]: t for t in fig.data if t.meta["kind"] == "emt_epoch"}
    assert lines["digits"].meta["in_domain"] is True and lines["digits"].line.dash == "solid"
    assert lines["shapes"].meta["in_domain"] is False and lines["shapes"].line.dash == "dash"
    assert _y(lines["digits"]) == [50.0, 30.0]
    stack = {(t.meta["dataset"], t.meta["mode"]): _y(t) for t in fig.data
             if t.meta["kind"] == "emt_failure_share"}
    assert stack[("shapes", "correct")] == [50.0, 30.0]
    assert stack[("shapes", "extrinsic")] == [20.0, 40.0]
    for k in (0, 1):  # the four shares of an epoch add up to 100 %
        assert sum(stack[("digits", m)][k] for m in ("correct", "wrong", "intrinsic", "extrinsic")) \
            == pytest.approx(100.0)
    assert fig.layout.barmode == "stack"
    # the nearest-label decider is plotted by fig_emt (issue 10 item 6d)
    df2 = pd.concat([df, pd.DataFrame([row(run_id="e", study="emt-digits", method="lora",
                                           metric="emt_nearest", value=0.7)])])
    assert "emt_nearest" in {t.meta.get("metric") for t in fig_emt(df2).data}
    assert {"emt-models", "emt-epochs", "emt-vision-resnet", "emt-vision-clip"} <= {f.name for f in FIGURES}
