"""Tests of the micro world generator (size "tiny")."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mllmcl_ray.data.micro import (
    NL_DATASETS,
    VL_TASKS,
    WORLD_SIZES,
    WorldManifest,
    generate_world,
    load_world,
    read_jsonl,
    read_vl,
)
from mllmcl_ray.data.micro import scenes as SC
from mllmcl_ray.data.micro import vocab as V
from mllmcl_ray.data.micro.world import digits_split, resolve_size

# a smaller world for the tests that only exercise generate_world's bookkeeping
NANO = dataclasses.replace(WORLD_SIZES["tiny"], name="nano", corpus_train_docs=40, corpus_val_docs=5,
                           nl_items=12, vl_train=12, caption_train=12, vl_test=10, digits_train=12)
BOX_RE = re.compile(r"^\[(\d\.\d+), (\d\.\d+), (\d\.\d+), (\d\.\d+)\]$")
REPO = Path(__file__).resolve().parents[2]


def tree_hash(root: Path) -> str:
    """sha256 over every file under root (relative path + bytes)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[WorldManifest, float]:
    root = tmp_path_factory.mktemp("world_a")
    t = time.perf_counter()
    m = generate_world(root, seed=0, size="tiny")
    return m, time.perf_counter() - t


@pytest.fixture(scope="module")
def m(world) -> WorldManifest:
    return world[0]


@pytest.fixture(scope="module")
def scenes_by_image(m) -> dict[str, dict]:
    return {s["image"]: s for s in read_jsonl(m.scenes)}


def load_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


# ----------------------------------------------------------------------------- basics
def test_tiny_is_fast_and_complete(world):
    m, seconds = world
    assert seconds < 10, f"tiny world took {seconds:.1f}s (target < 2 s on an idle machine)"
    assert (m.root / "manifest.json").is_file()
    assert set(m.nl) == set(NL_DATASETS) and set(m.vl) == set(VL_TASKS)
    assert m.size == WORLD_SIZES["tiny"] and m.image_size == 32
    assert m.verify()
    loaded = load_world(m.root)
    assert loaded == m


def test_manifest_describes_tasks(m):
    kinds = {k: t.eval for k, t in m.vl.items()}
    assert kinds == {"caption": "exact", "instruct": "exact", "vqa": "vqa_norm", "ocr": "exact",
                     "grounding": "grounding", "digits": "classification", "shapes": "classification"}
    assert m.vl["digits"].labels == list(V.DIGIT_WORDS)
    assert m.vl["shapes"].labels == list(V.CLASS_SHAPES)
    assert {k: d.kind for k, d in m.nl.items()} == {
        "lambada": "nlg", "arc_easy": "nlu", "arc_challenge": "nlu", "winogrande": "nlu", "wsc": "nlu"}
    for d in m.nl.values():
        assert d.path.is_file() and d.n == len(read_jsonl(d.path)) == 50
    for t in m.vl.values():
        assert len(read_vl(t.train)) == t.n_train and len(read_vl(t.test)) == t.n_test == 16
        longest = max(len(re.findall(r"[A-Za-z]+|\d|[^\w\s]", r["conversations"][1]["value"]))
                      for r in read_vl(t.test))
        assert t.max_new_tokens >= max(8, 2 * longest)
    assert m.n_corpus_train == 400 and len(read_jsonl(m.corpus_train)) == 400
    assert m.n_corpus_val == 40 and len(read_jsonl(m.corpus_val)) == 40
    raw = json.loads((m.root / "manifest.json").read_text())
    assert str(m.root) not in json.dumps(raw), "manifest paths must be relative"


# ------------------------------------------------------------------------ determinism
def test_same_seed_byte_identical(m, tmp_path):
    other = generate_world(tmp_path / "b", seed=0, size="tiny")
    assert other.content_hash == m.content_hash
    assert tree_hash(tmp_path / "b") == tree_hash(m.root)


def test_different_seed_differs(m, tmp_path):
    other = generate_world(tmp_path / "c", seed=1, size="tiny")
    assert other.content_hash != m.content_hash
    for rel in ("corpus/train.jsonl", "nl/lambada.jsonl", "vl/vqa/train.json", "images/ocr/train/000000.png"):
        assert (m.root / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes(), rel


def test_independent_of_python_hash_seed(tmp_path):
    here = generate_world(tmp_path / "here", seed=0, size=NANO)
    code = ("import dataclasses, sys; from mllmcl_ray.data.micro import generate_world, WORLD_SIZES; "
            f"size = dataclasses.replace(WORLD_SIZES['tiny'], **{dataclasses.asdict(NANO)!r}); "
            "print(generate_world(sys.argv[1], seed=0, size=size).content_hash)")
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "there")], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == here.content_hash
    assert tree_hash(tmp_path / "there") == tree_hash(tmp_path / "here")


# ------------------------------------------------------------------------ idempotence
def test_second_call_does_not_rewrite(tmp_path):
    root = tmp_path / "w"
    first = generate_world(root, seed=3, size=NANO)
    probe = [root / "manifest.json", root / "corpus/train.jsonl", root / "images/scenes/train/000000.png"]
    before = [p.stat().st_mtime_ns for p in probe]
    time.sleep(0.02)
    second = generate_world(root, seed=3, size=NANO)
    assert second == first
    assert [p.stat().st_mtime_ns for p in probe] == before


def test_dir_without_manifest_is_regenerated(tmp_path):
    root = tmp_path / "w"
    first = generate_world(root, seed=4, size=NANO)
    (root / "manifest.json").unlink()
    (root / "images/digits/train/000000.png").unlink()          # half-written
    (root / "corpus/train.jsonl").write_text("garbage\n")
    (root / "images/stale.png").write_bytes(b"x")                # left over from a bigger run
    (root / "notes.txt").write_text("mine")                      # not ours: must survive
    again = generate_world(root, seed=4, size=NANO)
    assert again.content_hash == first.content_hash and again.verify()
    assert not (root / "images/stale.png").exists()
    assert (root / "notes.txt").read_text() == "mine"


def test_other_seed_or_size_in_dir_is_replaced(tmp_path):
    root = tmp_path / "w"
    generate_world(root, seed=5, size=NANO)
    m6 = generate_world(root, seed=6, size=NANO)
    assert m6.seed == 6 and load_world(root).seed == 6 and m6.verify()
    small = dataclasses.replace(NANO, name="nano-64", image_size=64)
    m64 = generate_world(root, seed=6, size=small)
    assert m64.size == small and load_world(root).size == small
    rec = read_vl(m64.vl["ocr"].test)[0]
    assert load_png(m64.image_path(rec)).shape == (64, 64, 3)
    for rec in read_vl(m64.vl["grounding"].test):
        x1, y1, x2, y2 = rec["bbox"]
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1


def test_size_validation():
    assert resolve_size("micro") is WORLD_SIZES["micro"]
    with pytest.raises(ValueError):
        resolve_size("huge")
    with pytest.raises(ValueError):
        dataclasses.replace(WORLD_SIZES["tiny"], image_size=16)


# ------------------------------------------------------------------------- VL records
def test_vl_records_are_llava_format(m):
    ids = set()
    for task, t in m.vl.items():
        for split, path in (("train", t.train), ("test", t.test)):
            recs = read_vl(path)
            assert isinstance(recs, list) and recs
            for r in recs:
                assert r["id"] not in ids
                ids.add(r["id"])
                assert m.image_path(r).is_file(), r["image"]
                conv = r["conversations"]
                assert len(conv) >= 2 and len(conv) % 2 == 0
                assert [c["from"] for c in conv] == ["human", "gpt"] * (len(conv) // 2)
                assert all(isinstance(c["value"], str) and c["value"] for c in conv)
                assert sum(c["value"].count("<image>") for c in conv) == 1
                first = conv[0]["value"]
                assert first == "<image>" or first.startswith("<image>\n")
                if task == "caption":
                    assert first == "<image>"
                if split == "test":
                    assert len(conv) == 2
                    assert r["answers"] and conv[1]["value"] == r["answers"][0]
                    if t.eval == "vqa":
                        assert len(r["answers"]) == 10
                        assert sum(a == r["answers"][0] for a in r["answers"]) >= 7
                    if t.eval == "classification":
                        assert r["labels"] == t.labels and r["label"] in r["labels"]
                    if t.eval == "grounding":
                        assert len(r["bbox"]) == 4
                else:
                    assert "answers" not in r


def test_vl_images_are_rgb_pngs_of_image_size(m):
    for t in m.vl.values():
        for r in read_vl(t.test)[:4]:
            assert load_png(m.image_path(r)).shape == (32, 32, 3)


def test_images_rerender_from_scenes(m, scenes_by_image):
    assert len(scenes_by_image) == m.n_files - len([f for f in m.files() if not f.suffix == ".png"])
    for rel, scene in scenes_by_image.items():
        img, _ = SC.render(scene)
        np.testing.assert_array_equal(img, load_png(m.images_dir / rel), err_msg=rel)


def _parse_box(text: str) -> list[float]:
    mt = BOX_RE.match(text)
    assert mt, text
    return [float(v) for v in mt.groups()]


def test_grounding_boxes_cover_their_objects(m, scenes_by_image):
    S = m.image_size
    for split, path in (("train", m.vl["grounding"].train), ("test", m.vl["grounding"].test)):
        for r in read_vl(path):
            box = _parse_box(r["conversations"][1]["value"])
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            scene = scenes_by_image[r["image"]]
            _, masks = SC.render(scene)
            if split == "test":
                assert box == r["bbox"]
                idx = [r["object_index"]]
            else:  # the box is exactly one object's box
                idx = [i for i, o in enumerate(scene["objects"])
                       if SC.normalized_bbox(tuple(o["bbox_px"]), S) == box]
                assert len(idx) == 1
            mask = masks[idx[0]]
            ys, xs = np.nonzero(mask)
            assert xs.min() >= x1 * S - 1e-9 and xs.max() + 1 <= x2 * S + 1e-9
            assert ys.min() >= y1 * S - 1e-9 and ys.max() + 1 <= y2 * S + 1e-9
            # tight: the box is the mask's box rounded outward to BOX_DECIMALS decimals
            # (each side moves outward by less than one unit of the last decimal)
            unit = 10.0 ** -SC.BOX_DECIMALS
            assert (x2 - x1) * S <= (xs.max() + 1 - xs.min()) + 2 * unit * S + 1e-9
            assert (y2 - y1) * S <= (ys.max() + 1 - ys.min()) + 2 * unit * S + 1e-9
            assert r["conversations"][1]["value"] == SC.format_bbox(box)
            # the referring expression names this object unambiguously
            obj = scene["objects"][idx[0]]
            ref = r["ref"] if split == "test" else r["conversations"][0]["value"]
            assert obj["shape"] in ref or V.POS_PHRASE[obj["position"]] in ref


def test_vqa_answers_match_scenes(m, scenes_by_image):
    for r in read_vl(m.vl["vqa"].test):
        objs = scenes_by_image[r["image"]]["objects"]
        q, a = r["conversations"][0]["value"], r["answers"][0]
        if r["question_type"] == "count" and "How many shapes" in q:
            assert a == V.NUMBERS[len(objs)]
        if r["question_type"] == "position":
            assert a in [o["position"] for o in objs]
        if r["question_type"] == "color":
            assert a in [o["color"] for o in objs]


def test_ocr_words_and_caption_words(m, scenes_by_image):
    import re

    from mllmcl_ray.data.micro.vltasks import OCR_VERIFY_QUESTION

    verify = re.compile(re.escape(OCR_VERIFY_QUESTION).replace(re.escape("{word}"), "(\\w+)"))
    answers = []
    for split in ("train", "test"):
        for r in read_vl(getattr(m.vl["ocr"], split)):
            word, a = scenes_by_image[r["image"]]["word"], r["conversations"][1]["value"]
            asked = verify.search(r["conversations"][0]["value"])
            if asked:  # a yes/no question about the text: train only, right answer
                assert split == "train" and asked.group(1) in V.OCR_WORDS
                assert a == ("yes" if asked.group(1) == word else "no")
            else:
                assert a == word and a in V.OCR_WORDS
            answers.append((split, a in ("yes", "no")))
    train = [yn for s, yn in answers if s == "train"]
    assert 0 < sum(train) < len(train)  # both kinds of train question (30 % yes/no)
    assert not any(yn for s, yn in answers if s == "test")
    for r in read_vl(m.vl["caption"].train):
        objs = scenes_by_image[r["image"]]["objects"]
        cap = r["conversations"][1]["value"]
        assert all(o["color"] in cap and o["shape"] in cap for o in objs)


# sha256 of scikit-learn 1.9's load_digits().images (float64) and .target (int64), computed
# with sklearn itself; checking against them avoids importing sklearn (1.5-4 s) here
DIGITS_IMAGES_SHA = "20def7f70a702f0af9732fbba4375e147a7d54fe70d8c45569b8e7c1c7010c10"
DIGITS_TARGET_SHA = "a3c91c262eddcf7ba8f0e37507c30284493c9b20412ffe4af30d536401f7ba21"


def test_digits_data_is_load_digits():
    images, target = SC.digits_data()
    assert images.shape == (1797, 8, 8) and np.bincount(target).tolist() == [
        178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert hashlib.sha256(np.ascontiguousarray(images, np.float64).tobytes()).hexdigest() == DIGITS_IMAGES_SHA
    assert hashlib.sha256(np.ascontiguousarray(target, np.int64).tobytes()).hexdigest() == DIGITS_TARGET_SHA


def test_digit_records(m, scenes_by_image):
    images, target = SC.digits_data()
    for split, path in (("train", m.vl["digits"].train), ("test", m.vl["digits"].test)):
        recs = read_vl(path)
        labels = []
        for r in recs:
            scene = scenes_by_image[r["image"]]
            assert V.DIGIT_WORDS[target[scene["index"]]] == r["conversations"][1]["value"]
            np.testing.assert_array_equal(load_png(m.image_path(r)), SC.render_digit(scene["index"], 32))
            labels.append(r["conversations"][1]["value"])
        assert set(labels) == set(V.DIGIT_WORDS), split  # every class present
    # the full split (micro) uses every image exactly once
    tr, te = digits_split(0, 250, None)
    assert len(te) == 250 and len(tr) == len(target) - 250 and not set(tr) & set(te)


def test_train_and_test_are_disjoint(m, scenes_by_image):
    for task, t in m.vl.items():
        train, test = read_vl(t.train), read_vl(t.test)
        tr_img, te_img = {r["image"] for r in train}, {r["image"] for r in test}
        assert not tr_img & te_img, task
        hashes = lambda imgs: {hashlib.sha256((m.images_dir / i).read_bytes()).hexdigest() for i in imgs}  # noqa: E731
        assert not hashes(tr_img) & hashes(te_img), task
        key = lambda i: json.dumps({k: v for k, v in scenes_by_image[i].items() if k != "image"},  # noqa: E731
                                   sort_keys=True)
        assert not {key(i) for i in tr_img} & {key(i) for i in te_img}, task
    corpus = {r["text"] for r in read_jsonl(m.corpus_train)}
    for it in read_jsonl(m.nl["lambada"].path):
        assert f"{it['context']} {it['target']}." not in corpus


# ------------------------------------------------------------------------------- text
def test_corpus_shares_vocabulary_with_vl(m):
    docs = [r["text"] for r in read_jsonl(m.corpus_train)]
    assert all(isinstance(t, str) and t for t in docs)
    words = set(re.findall(r"[A-Za-z]+", " ".join(docs)))
    for w in V.SCENE_SHAPES + V.VL_COLORS + ("left", "right", "top", "bottom", "center", "two", "three"):
        assert w in words, w
    assert any(t.startswith("Question: ") for t in docs) and any("\nAnswer: " in t for t in docs)
    val = {r["text"] for r in read_jsonl(m.corpus_val)}
    assert len(val & set(docs)) <= 1


def test_lambada_targets_are_copied_from_context(m):
    items = read_jsonl(m.nl["lambada"].path)
    assert len({it["id"] for it in items}) == len(items)
    for it in items:
        assert re.fullmatch(r"[A-Za-z]+", it["target"])
        assert not it["context"].endswith(" ")
        assert re.search(rf"\b{it['target']}\b", it["context"]), it  # the skill: copy from context


def test_arc_items(m):
    for name in ("arc_easy", "arc_challenge"):
        items = read_jsonl(m.nl[name].path)
        for it in items:
            assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
            assert 0 <= it["label"] < 4 and it["choices"][it["label"]] == it["answer"]
        assert len({it["label"] for it in items}) == 4
    kb_answers = {(r["question"], r["answer"]) for r in read_jsonl(m.kb)}
    for it in read_jsonl(m.nl["arc_easy"].path):
        assert (it["question"], it["answer"]) in kb_answers


def test_winogrande_items(m):
    items = read_jsonl(m.nl["winogrande"].path)
    assert {it["answer"] for it in items} == {"1", "2"}
    for it in items:
        assert it["sentence"].count("_") == 1 and it["option1"] != it["option2"]
        assert it["option1"] in it["sentence"] and it["option2"] in it["sentence"]


def test_wsc_items(m):
    items = read_jsonl(m.nl["wsc"].path)
    assert {it["label"] for it in items} == {0, 1}
    for it in items:
        text, loc, pron = it["text"], it["pronoun_loc"], it["pronoun"]
        assert text[loc:loc + len(pron)] == pron == it["span2"]
        assert text.split(" ")[it["span2_index"]] == pron
        assert text.split(" ")[it["span1_index"]] == it["span1"].split(" ")[0]
        assert it["span1"] in text
        assert it["label"] == int(it["span1"].lower() == it["options"][it["answer"]].lower())
        for opt in it["options"]:
            assert opt.lower() in text.lower()


def test_png_encoder_roundtrip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(SC.png_bytes(img))))
    np.testing.assert_array_equal(back, img)
