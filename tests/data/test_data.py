"""Instruction reader: good inputs, each malformed case with its own clear error, skip
policy, deterministic sub-sampling, streaming JSON arrays and JSONL; tokenised cache."""
import json

import pytest

from mllmcl_ray.config import DataSource
from mllmcl_ray.data.instruct import DataError, ReadStats, read_instructions, subsample_mask
from mllmcl_ray.data.tokenized import build_tokenized
from mllmcl_ray.models.templates import get_template
from mllmcl_ray.models.tokenizers import load_tokenizer
from spine_world import make_task, make_tokenizer


def _rec(i, image="images/colour-r0.png", **kw):
    r = {"id": f"r{i}", "image": image, "conversations": [
        {"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A"}]}
    r.update(kw)
    return r


@pytest.fixture()
def root(tmp_path):
    make_task(tmp_path, "colour", 3)
    return tmp_path


def _write(root, recs, name="d.json"):
    p = root / name
    p.write_text(json.dumps(recs))
    return p


def test_reads_good_json_array_and_jsonl(root):
    p = _write(root, [_rec(i) for i in range(3)])
    recs = list(read_instructions(DataSource(path=str(p))))
    assert [r["id"] for r in recs] == ["r0", "r1", "r2"]
    assert recs[0]["image"] == str(root / "images/colour-r0.png")
    jl = root / "d.jsonl"
    jl.write_text("\n".join(json.dumps(_rec(i)) for i in range(3)))
    assert [r["id"] for r in read_instructions(str(jl))] == ["r0", "r1", "r2"]


def test_text_only_records_and_missing_placeholder(root):
    text_only = {"id": 7, "conversations": [{"from": "human", "value": "hi"},
                                            {"from": "gpt", "value": "yo"}]}
    no_placeholder = _rec(1)
    no_placeholder["conversations"][0]["value"] = "Q?"
    recs = list(read_instructions(str(_write(root, [text_only, no_placeholder]))))
    assert recs[0]["id"] == "7" and "image" not in recs[0]
    assert recs[1]["conversations"][0]["value"].startswith("<image>\n")


@pytest.mark.parametrize("bad, message", [
    ({"image": "images/colour-r0.png", "conversations": []}, r"record 0: field 'id' is missing"),
    ({"id": "x", "conversations": "no"}, r"\(id=x\): field 'conversations' must be a non-empty list"),
    ({"id": "x", "conversations": [{"from": "gpt", "value": "a"}]},
     r"field 'conversations\[0\].from' must be 'human'"),
    ({"id": "x", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}]},
     r"field 'conversations\[0\].value' must be a string"),
    ({"id": "x", "conversations": [{"from": "human", "value": "q"}]},
     r"must end with a 'gpt' answer"),
    ({"id": "x", "conversations": [{"from": "human", "value": "<image> q"},
                                   {"from": "gpt", "value": "a"}]},
     r"field 'image' is missing but the conversation has '<image>'"),
    ({"id": "x", "image": "images/colour-r0.png",
      "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "a"}]},
     r"2 '<image>' placeholders"),
    ("just a string", r"record 0: expected an object"),
])
def test_malformed_records_name_file_record_and_field(root, bad, message):
    p = _write(root, [bad])
    with pytest.raises(DataError, match=message) as e:
        list(read_instructions(str(p)))
    assert str(p) in str(e.value)


def test_malformed_json_and_missing_file(root):
    p = root / "broken.json"
    p.write_text('[{"id": "a", "conversations": [{"from": "human", "value": "q"}, '
                 '{"from": "gpt", "value": "a"}]}, {"id": "b", "conv')
    with pytest.raises(DataError, match=r"broken.json: malformed JSON after record 0"):
        list(read_instructions(str(p)))
    with pytest.raises(DataError, match="does not exist"):
        list(read_instructions(str(root / "nope.json")))
    jl = root / "bad.jsonl"
    jl.write_text(json.dumps(_rec(0)) + "\n{oops\n")
    with pytest.raises(DataError, match=r"line 2 \(record 1\) is not valid JSON"):
        list(read_instructions(str(jl)))


def test_missing_image_error_and_skip_policy(root):
    p = _write(root, [_rec(0), _rec(1, image="images/gone.png"), _rec(2)])
    with pytest.raises(DataError, match=r"record 1 \(id=r1\): field 'image': file .*gone.png does not exist"):
        list(read_instructions(str(p)))
    stats = ReadStats(str(p))
    recs = list(read_instructions(DataSource(path=str(p), missing_image="skip"), stats=stats))
    assert [r["id"] for r in recs] == ["r0", "r2"]
    assert stats.skipped_missing_image == 1 and stats.skipped_ids == ["r1"]
    assert "skipped 1 with missing images (e.g. r1)" in stats.summary()


def test_subsample_is_exact_and_deterministic(root):
    p = _write(root, [_rec(i) for i in range(50)])
    a = [r["id"] for r in read_instructions(DataSource(path=str(p), fraction=0.2), seed=3)]
    b = [r["id"] for r in read_instructions(DataSource(path=str(p), fraction=0.2), seed=3)]
    c = [r["id"] for r in read_instructions(DataSource(path=str(p), fraction=0.2), seed=4)]
    assert len(a) == 10 and a == b and a != c
    assert subsample_mask(7, 0.5, 0).sum() == 4  # round(3.5) = 4 (banker's rounding to even)
    with pytest.raises(DataError, match="fraction"):
        subsample_mask(5, 1.5, 0)


def test_tokenized_cache_is_reused_and_masks_labels(root):
    tok = make_tokenizer(root / "tok")
    tok = load_tokenizer(str(root / "tok"))
    p = make_task(root, "colour", 6)
    kw = dict(n_image_tokens=16, max_len=64, seed=0, cache_dir=root / "cache")
    ds = build_tokenized([DataSource(path=str(p))], tok, get_template("micro"), **kw)
    assert len(ds) == 6
    s = ds[0]
    assert s["image"].endswith("colour-r0.png")
    answer = [t for t, l in zip(s["input_ids"], s["labels"]) if l != -100]
    assert tok.decode(answer) == "red<|endoftext|>"
    ds2 = build_tokenized([DataSource(path=str(p))], tok, get_template("micro"), **kw)
    assert ds2.path == ds.path  # same key: cached file reused
    assert len(list((root / "cache").glob("*.tmp"))) == 0
