"""The micro base models' pretraining data: CLIP sees the scene captions and the OCR images
as "the word X" (so its tower can read, as real CLIP can), keyed by a data version."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mllmcl_ray.data.micro.world import generate_world
from mllmcl_ray.presets import micro_pretrain as P


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("w") / "world"
    generate_world(d, seed=0, size="tiny")
    return d


def _vl(world: Path, task: str, split: str) -> Path:
    m = json.loads((world / "manifest.json").read_text())
    return world / m["vl"][task][split]


def test_clip_pairs_are_captions_then_ocr_words(tiny_world):
    cap, ocr = _vl(tiny_world, "caption", "train"), _vl(tiny_world, "ocr", "train")
    caps, ocrs = json.loads(cap.read_text()), json.loads(ocr.read_text())
    scenes = {json.loads(line)["image"]: json.loads(line)
              for line in (tiny_world / "vl" / "scenes.jsonl").read_text().splitlines()}
    pairs = P.clip_pairs(cap, ocr, tiny_world / "images", tiny_world / "vl" / "scenes.jsonl")
    assert len(pairs) == len(caps) + len(ocrs)
    assert [t for _, t in pairs[:len(caps)]] == [r["conversations"][-1]["value"] for r in caps]
    for (img, text), r in zip(pairs[len(caps):], ocrs):
        # the caption names the word drawn in the image (also for yes/no train records)
        assert img == str(tiny_world / "images" / r["image"])
        assert text == "the word " + scenes[r["image"]]["word"]
    assert P.clip_pairs(cap, None, tiny_world / "images") == pairs[:len(caps)]


def test_prepare_micro_keys_clip_by_data_version_and_reports_reading(tmp_path):
    from mllmcl_ray.presets.micro import prepare_micro

    prep = prepare_micro(tmp_path, sizes=["nano"], world_size="tiny", progress=False,
                         log=lambda s: None)
    clip_dirs = list((tmp_path / "bases").glob("clip-nano-*"))
    clip_key = P.settings_key(P.CLIP_SIZES["nano"])
    assert len(clip_dirs) == 1 and clip_dirs[0].name.endswith(f"-d{P.CLIP_DATA_VERSION}-{clip_key}")
    skill = prep.skill["clip"]
    m = prep.manifest
    n_pairs = sum(len(json.loads((prep.world_dir / m["vl"][t]["train"]).read_text()))
                  for t in ("caption", "ocr"))
    assert skill["pairs"] == n_pairs and skill["data_version"] == P.CLIP_DATA_VERSION
    assert 0.0 <= skill["ocr_top1"] <= 1.0 and skill["ocr_chance"] == pytest.approx(1 / 16, abs=0.05)
    assert str(clip_dirs[0]) == prep.specs["nano"].vision


def test_changed_size_settings_pretrain_a_new_base(tmp_path, monkeypatch):
    """A base's cache directory names its size settings: a changed token budget (or lr,
    width, CLIP steps) makes a new base; the same settings reuse the cached one."""
    from dataclasses import replace

    from mllmcl_ray.presets.micro import prepare_micro

    def prep():
        return prepare_micro(tmp_path, sizes=["nano"], world_size="tiny", progress=False,
                             log=lambda s: None)

    first = prep().specs["nano"]
    assert prep().specs["nano"].llm == first.llm  # reused
    nano = P.LLM_SIZES["nano"]
    monkeypatch.setitem(P.LLM_SIZES, "nano", replace(nano, tokens=nano.tokens // 2))
    second = prep().specs["nano"]
    assert second.llm != first.llm and second.vision == first.vision
    assert json.loads((Path(second.llm) / "skill.json").read_text())["tokens"] < \
        json.loads((Path(first.llm) / "skill.json").read_text())["tokens"]
    assert P.settings_key(nano) != P.settings_key(replace(nano, lr=nano.lr * 2))
    assert P.settings_key(P.CLIP_SIZES["nano"]) != P.settings_key(replace(P.CLIP_SIZES["nano"], steps=1))
