"""EMT on an off-the-shelf llava-hf checkpoint (Zhai §4.1, Fig. 4): a tiny LLaVA saved in
exactly the llava-hf layout (config, LlavaProcessor with its own image processor and a
llava-1.5-style chat template, no project metadata) runs through
`studies/emt.py --models DIR --preset micro` and yields EMT rows and its tower's CLIP
zero-shot rows."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from llava_hf_world import make_llava_hf

def load_emt_study():
    path = Path(__file__).resolve().parents[2] / "studies" / "emt.py"
    spec = importlib.util.spec_from_file_location("emt_study_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_llava_hf_checkpoint_through_emt_study(tmp_path):
    from mllmcl_ray.results import PredictionStore, ResultStore

    llava_dir, clip_dir = make_llava_hf(tmp_path)
    assert not (llava_dir / "mllmcl.json").exists()  # nothing of the project's
    out = tmp_path / "out"
    rc = load_emt_study().main(["--models", str(llava_dir), "--preset", "micro",
                                "--world-size", "tiny", "--clip", str(clip_dir),
                                "--eval-samples", "4", "--out", str(out), "--quiet"])
    assert rc == 0
    df = ResultStore(out / "results").read()
    emt = df[df.method == "off_the_shelf"]
    got = set(zip(emt.dataset, emt.metric))
    for ds in ("digits", "shapes"):
        assert {(ds, "emt_exact"), (ds, "emt_nearest"), (ds, "emt_exact_extrinsic")} <= got
    assert set(emt.trained_task) == {"zero_shot"} and (emt.n == 4).all()
    # the nearest-label decider embeds with the tower's own CLIP text model (EMT §7 (1))
    near = emt[emt.metric == "emt_nearest"]
    assert {json.loads(d)["embedder"] for d in near.decoding} == {f"clip-text:{clip_dir}"}
    assert set(emt.model) == {str(llava_dir)}
    assert json.loads(emt.method_params.iloc[0])["vision_tower"] == "clip-h32-l2-32px-p8"
    # the prompt is the checkpoint's own chat template, EMT's noun per dataset, no brackets
    assert all(v.startswith("chat_template:") for v in emt.prompt_version)
    preds = PredictionStore(out / "results").read()
    digit = preds[preds.dataset == "digits"].prompt.iloc[0]
    assert digit.startswith("USER: <image>\nWhat is the number in the image? Please only "
                            "answer a single number in zero, one, two,")
    assert digit.endswith("nine. ASSISTANT:")
    clip = df[df.metric == "clip_zero_shot"]
    assert set(clip.dataset) == {"digits", "shapes"} and (clip.n == 4).all()
    assert set(clip.model) == {str(clip_dir)}
    assert json.loads(clip.method_params.iloc[0])["vision_tower"] == "clip-h32-l2-32px-p8"
    assert (out / "emt_models-report.html").exists()
