"""`mllmcl data prepare` / `mllmcl data check` on schema-exact fixtures (no hub access).

Expected values are derived in the comments from the fixtures in
mllmcl_ray/data/prepare/fixtures.py and the rules the converters implement.
"""
from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import pytest

from mllmcl_ray.config import ConfigError
from mllmcl_ray.presets.data_check import check_study_data
from mllmcl_ray.data.prepare import prepare_data
from mllmcl_ray.data.prepare.base import (SourceError, slim_positions, slim_positions_grouped,
                                          vlm_eval_order)
from mllmcl_ray.data.prepare.coin import parse_box
from mllmcl_ray.data.prepare.fixtures import build_fixture_sources
from mllmcl_ray.data.prepare.srivastava import check_table4, classify_mix_record
from mllmcl_ray.data.prepare.vl_eval import box_xywh_to_xyxy_norm

REPO = Path(__file__).resolve().parents[2]
STUDIES = ("scale_pythia", "mitigation", "coin", "emt")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A complete fixture data root (`prepare all --fixtures`), built once for reading."""
    r = tmp_path_factory.mktemp("data") / "root"
    with pytest.MonkeyPatch.context() as mp:  # offline while building; nothing leaks out
        mp.setenv("HF_HUB_OFFLINE", "1")
        prepare_data("all", r, fixtures=True, progress=False, log=lambda s: None)
    return r


def _load(path: Path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------
# the slim rule, against an independent transcription of vlm-evaluation's code
# ---------------------------------------------------------------------------------------
def _vlm_eval_slim(qids: list, n_slim: int, seed: int = 21) -> list:
    """vlm_eval/tasks/harnesses/vqav2.py (same in gqa.py, textvqa.py): `index` is a dict
    filled in the source's order; `all_qids = list(index.keys());
    Random(seed).shuffle(all_qids)`; metadata-slim-N = all_qids[:N]."""
    index = {q: {"question_id": q} for q in qids}
    all_qids = list(index.keys())
    random.Random(seed).shuffle(all_qids)
    return all_qids[:n_slim]


def _vlm_eval_refcoco_slim(examples: list[tuple], n_slim: int, seed: int = 21) -> list:
    """vlm_eval/tasks/harnesses/refcoco.py: shuffle all example ids once, then take the
    first n_slim per refer_dataset, stopping when all three are full."""
    index = {ex_id: {"refer_dataset": ds} for ds, ex_id in examples}
    all_ex_ids = list(index.keys())
    random.Random(seed).shuffle(all_ex_ids)
    slim, counts = [], {"RefCOCO": 0, "RefCOCO+": 0, "RefCOCOg": 0}
    for ex_id in all_ex_ids:
        ds = index[ex_id]["refer_dataset"]
        if counts[ds] < n_slim:
            slim.append(ex_id)
            counts[ds] += 1
        if all(c == n_slim for c in counts.values()):
            break
    return slim


@pytest.mark.parametrize("n,size", [(214354, 1024), (12578, 1024), (5000, 1024), (5000, 2048),
                                    (700, 1024), (1, 1024)])
def test_slim_selection_is_vlm_evaluations(n, size):
    # ids that are neither sorted nor positions (VQAv2 question ids, GQA string ids, ...)
    rng = random.Random(n)
    qids = rng.sample(range(10 ** 9), n)
    ours = [qids[p] for p in slim_positions(n, size)]
    assert ours == _vlm_eval_slim(qids, size)
    assert len(ours) == min(n, size) and len(set(ours)) == len(ours)


def test_refcoco_slim_selection_is_vlm_evaluations():
    # RefCOCO / RefCOCO+ / RefCOCOg val: 3811 / 3805 / 2573 refs; a few sentences per ref
    rng = random.Random(0)
    examples = []
    for ds, refs in (("RefCOCO", 3811), ("RefCOCO+", 3805), ("RefCOCOg", 2573)):
        for r in range(refs):
            for s in range(rng.randint(1, 3)):
                examples.append((ds, f"{ds}-{r}-{s}"))
    ours = [examples[p][1] for p in slim_positions_grouped([d for d, _ in examples], 1024)]
    assert ours == _vlm_eval_refcoco_slim(examples, 1024)
    assert len(ours) == 3 * 1024


def test_slim_order_depends_only_on_length_and_seed():
    assert vlm_eval_order(10) == vlm_eval_order(10)
    assert vlm_eval_order(10, 21) != vlm_eval_order(10, 22)
    assert sorted(vlm_eval_order(100)) == list(range(100))


# ---------------------------------------------------------------------------------------
# boxes
# ---------------------------------------------------------------------------------------
def test_refcoco_box_normalisation():
    # [x, y, w, h] = [10, 20, 30, 40] in a 100 x 200 image: x1 10/100, y1 20/200,
    # x2 (10+30)/100, y2 (20+40)/200
    assert box_xywh_to_xyxy_norm([10, 20, 30, 40], (100, 200), what="t") == [0.1, 0.1, 0.4, 0.3]
    # vlm-evaluation rounds to 2 decimals: 1/3 -> 0.33, 2/3 -> 0.67
    assert box_xywh_to_xyxy_norm([1, 1, 1, 1], (3, 3), what="t") == [0.33, 0.33, 0.67, 0.67]
    with pytest.raises(SourceError, match="outside"):
        box_xywh_to_xyxy_norm([90, 0, 20, 10], (100, 100), what="refcoco row 3")
    with pytest.raises(SourceError, match="outside"):
        box_xywh_to_xyxy_norm([0, 0, 0, 10], (100, 100), what="t")  # empty box


def test_coin_record_without_answer():
    from mllmcl_ray.data.prepare.coin import normalize_coin_record

    rec = {"question_id": 7, "image": "a.jpg", "conversations": [{"from": "human", "value": "Q"}]}
    with pytest.raises(SourceError, match=r"test.json: record 4 \(id=7\): the record has no answer"):
        normalize_coin_record(rec, task="VQAv2", split="test", what="test.json: record 4")
    out = normalize_coin_record(dict(rec, answer="2"), task="VQAv2", split="test", what="t")
    assert out["id"] == 7 and out["conversations"][-1] == {"from": "gpt", "value": "2"}


def test_coin_grounding_box():
    assert parse_box("[0.12, 0.2, 0.56, 0.9]", what="t") == [0.12, 0.2, 0.56, 0.9]
    with pytest.raises(SourceError, match="outside"):
        parse_box("[0.5, 0.2, 1.4, 0.9]", what="t")
    with pytest.raises(SourceError, match="not a box"):
        parse_box("the man in red", what="t")


# ---------------------------------------------------------------------------------------
# Table 4 split
# ---------------------------------------------------------------------------------------
def test_mix665k_sources_and_table4():
    def rec(image, q):
        r = {"id": "1", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "a"}]}
        if image:
            r["image"] = image
        return r

    short = "What?\nAnswer the question using a single word or phrase."
    assert classify_mix_record(rec(None, "hi")) == "ShareGPT"
    assert classify_mix_record(rec("coco/train2017/1.jpg", "<image>\nDescribe.")) == "LLaVA-Instruct"
    assert classify_mix_record(rec("coco/train2017/1.jpg", short)) == "VQAv2+OKVQA"
    assert classify_mix_record(rec("coco/train2017/1.jpg", "Q\nA. x\nB. y\nAnswer with the "
                                   "option's letter from the given choices directly.")) == "A-OKVQA"
    assert classify_mix_record(rec("coco/train2017/1.jpg", "Please provide a short description "
                                   "for this region: [0.1, 0.2, 0.3, 0.4]")) == "RefCOCO"
    assert classify_mix_record(rec("vg/VG_100K/1.jpg", "Please provide a short description "
                                   "for this region: [0.1, 0.2, 0.3, 0.4]")) == "Visual Genome"
    assert classify_mix_record(rec("gqa/images/1.jpg", short)) == "GQA"
    assert classify_mix_record(rec("ocr_vqa/images/1.jpg", short)) == "OCR-VQA"
    assert classify_mix_record(rec("textvqa/train_images/1.jpg", "Provide a one-sentence "
                                   "caption for the provided image.")) == "TextCaps"
    with pytest.raises(SourceError, match="no known source"):
        classify_mix_record(rec("sam/1.jpg", short))
    # LLaVA-1.5's per-source record counts (sum 665,298) are within Table 4's rounding
    real = {"LLaVA-Instruct": 157712, "ShareGPT": 40688, "VQAv2+OKVQA": 82783 + 8998,
            "A-OKVQA": 66160, "GQA": 72140, "OCR-VQA": 80000, "TextCaps": 21953,
            "RefCOCO": 48447, "Visual Genome": 86417}
    assert sum(real.values()) == 665298 and check_table4(real) == []
    assert check_table4({**real, "GQA": 60000}) == ["GQA 60000 (Table 4: 72K)"]


def _lm_eval_task_yaml(task_file: str) -> dict:
    """An installed lm-eval task YAML (with its `include`), `!function` tags kept as text."""
    lm_eval = pytest.importorskip("lm_eval")
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, tag, node: f"{tag} {node.value}")
    path = Path(lm_eval.__file__).parent / "tasks" / task_file
    cfg = yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 (SafeLoader subclass)
    if "include" in cfg:
        base = _lm_eval_task_yaml(str(Path(task_file).parent / cfg.pop("include")))
        cfg = {**base, **cfg}
    return cfg


@pytest.mark.parametrize("name,task_file", [
    ("lambada", "lambada/lambada_standard.yaml"), ("arc_easy", "arc/arc_easy.yaml"),
    ("arc_challenge", "arc/arc_challenge.yaml"), ("winogrande", "winogrande/default.yaml"),
    ("wsc", "wsc273/default.yaml")])
def test_nl_sources_are_lm_evals(name, task_file):
    from mllmcl_ray.data.prepare.nl import NL_SETS

    cfg = _lm_eval_task_yaml(task_file)
    s = NL_SETS[name]
    assert s.task == cfg["task"]
    assert (s.hub_id, s.config) == (cfg["dataset_path"], cfg.get("dataset_name"))
    # lm-eval scores the test split when it has one, else the validation split
    assert s.split == (cfg.get("test_split") or cfg["validation_split"])


# ---------------------------------------------------------------------------------------
# every converter on its fixture
# ---------------------------------------------------------------------------------------
def test_nl_converter(root):
    lam = _load(root / "nl" / "lambada.jsonl")
    # lm-eval lambada_standard: context = all but the last word, target = the last word
    assert lam[0] == {"id": "0", "context": "the cat sat on the warm", "target": "mat",
                      "text": "the cat sat on the warm mat"}
    arc = _load(root / "nl" / "arc_easy.jsonl")
    # fixture row i has answerKey "ABCD"[i % 4] -> label index i % 4
    assert [r["label"] for r in arc] == [0, 1, 2, 3]
    assert arc[1]["choices"] == ["luster", "mass", "weight", "hardness"]
    assert len(_load(root / "nl" / "arc_challenge.jsonl")) == 3
    wg = _load(root / "nl" / "winogrande.jsonl")
    assert wg[0]["answer"] == "1" and "_" in wg[0]["sentence"]
    wsc = _load(root / "nl" / "wsc.jsonl")
    assert wsc[0]["text"][wsc[0]["pronoun_loc"]:].startswith("they") and wsc[0]["label"] == 0
    man = json.loads((root / "nl" / "manifest.json").read_text())["datasets"]
    assert man["wsc"]["lm_eval_task"] == "wsc273" and man["wsc"]["split"] == "test"
    assert man["winogrande"]["config"] == "winogrande_xl" and man["winogrande"]["split"] == "validation"


def test_srivastava_converter(root):
    groups = {g: _load(root / "continual" / f"{g}.json") for g in ("instruct", "vqa", "ocr", "ref")}
    # fixture mix: 9 records, one per source (Table 4 groups 2 / 3 / 2 / 2)
    assert {g: sorted(r["source"] for r in recs) for g, recs in groups.items()} == {
        "instruct": ["LLaVA-Instruct", "ShareGPT"], "vqa": ["A-OKVQA", "GQA", "VQAv2+OKVQA"],
        "ocr": ["OCR-VQA", "TextCaps"], "ref": ["RefCOCO", "Visual Genome"]}
    align = _load(root / "continual" / "align.json")
    assert len(align) == 4 and all(r["image"].startswith("llava_pretrain/") for r in align)
    assert all((root / "images" / r["image"]).exists() for r in align)


def test_vl_eval_converter(root):
    vqa = _load(root / "eval" / "vqav2_slim.json")
    # 5 fixture rows, question_id 262148000 + row; slim = vlm-evaluation order of 5 rows
    assert [r["question_id"] for r in vqa] == [262148000 + p for p in vlm_eval_order(5)]
    assert all(len(r["answers"]) == 10 for r in vqa)
    assert vqa[0]["conversations"][0]["value"].endswith(
        "\nAnswer the question using a single word or phrase.")
    assert all((root / "images" / r["image"]).exists() for r in vqa)
    tv = _load(root / "eval" / "textvqa_slim.json")
    assert tv[0]["ocr_tokens"] == ["NIKON", "D40"] and len(tv[0]["answers"]) == 10
    # images keep the source's bytes (JPEG stays JPEG, no re-encoding)
    import datasets

    src = datasets.Dataset.from_parquet(str(next((root / ".fixtures-src" / "vl" / "textvqa")
                                                 .rglob("*.parquet"))))
    src = src.cast_column("image", datasets.Image(decode=False))
    by_qid = {q: im["bytes"] for q, im in zip(src["question_id"], src["image"])}
    assert tv[0]["image"].endswith(".jpg")
    assert (root / "images" / tv[0]["image"]).read_bytes() == by_qid[tv[0]["question_id"]]
    gqa = _load(root / "eval" / "gqa_slim.json")
    assert all(len(r["answers"]) == 1 for r in gqa)
    ref = _load(root / "eval" / "refcoco_slim.json")
    # 3 sets x 3 refs x 2 sentences = 18 (< 1024 per set: all kept)
    assert len(ref) == 18
    one = next(r for r in ref if r["id"] == "RefCOCO-1001-10")
    # ref r=1: bbox [5, 6, 30, 21] in an 80 x 60 image -> [5/80, 6/60, 35/80, 27/60]
    assert one["bbox"] == [round(5 / 80, 2), 0.1, round(35 / 80, 2), 0.45]
    assert json.loads(one["conversations"][1]["value"]) == one["bbox"]


def test_official_files_select_the_same_slim_sets(root, tmp_path):
    # the same questions as the hub-layout fixture, in the same order, as vlm-evaluation's
    # official files: the slim selection (and records) must be the same
    sources = json.loads((root / ".fixtures-src" / "sources.json").read_text())
    r = tmp_path / "r"
    prepare_data("vl-eval", r, fixtures=True, progress=False, log=lambda s: None,
                 sources={"vqav2": sources["vqav2_official"], "gqa": sources["gqa_official"]})
    for name in ("vqav2", "gqa"):
        off, hub = _load(r / "eval" / f"{name}_slim.json"), _load(root / "eval" / f"{name}_slim.json")
        assert [x["id"] for x in off] == [x["id"] for x in hub]
        assert [x["answers"] for x in off] == [x["answers"] for x in hub]
        assert [x["conversations"] for x in off] == [x["conversations"] for x in hub]
    img = _load(r / "eval" / "vqav2_slim.json")[0]["image"]
    assert img.startswith("coco/val2014/COCO_val2014_") and (r / "images" / img).exists()
    files = {f.rel: f for f in check_study_data("scale_pythia", r).files}
    assert files["eval/vqav2_slim.json"].problems == [] and files["eval/vqav2_slim.json"].images == 5


def test_coin_and_emt_converters(root):
    g = _load(root / "Instructions" / "Grounding" / "test.json")
    # CoIN test records carry "answer" and no gpt turn: it is appended; Grounding gets bbox
    assert g[0]["conversations"][-1] == {"from": "gpt", "value": "[0.12, 0.2, 0.56, 0.9]"}
    assert g[0]["bbox"] == [0.12, 0.2, 0.56, 0.9] and g[0]["id"] == "Grounding_test_0"
    assert (root / "Instructions" / "OCR-VQA" / "train.json").exists()  # release dir OCRVQA
    tv = _load(root / "Instructions" / "TextVQA" / "test.json")
    # CoIN scores TextVQA against the 10 TextVQA val answers of the question id
    assert tv[1]["question_id"] == 34603 and tv[1]["answers"] == ["nikon"] * 8 + ["canon", "nikon d40"]
    c100 = _load(root / "emt" / "cifar100" / "test.json")
    assert c100[1]["labels"] == ["apple", "aquarium fish", "baby", "bear", "beaver"]
    assert c100[1]["label"] == "aquarium fish"  # fine_label 1
    mini = _load(root / "emt" / "miniimagenet" / "train.json")
    assert sorted({r["label"] for r in mini}) == ["house finch", "robin", "triceratops"]
    mn = _load(root / "emt" / "mnist" / "test.json")
    # EMT's prompt as the paper prints it: the labels without brackets, "number" for MNIST
    assert mn[3]["conversations"][0]["value"] == (
        "<image>\nWhat is the number in the image? Please only answer a single number in "
        "0, 1, 2, 3, 4, 5, 6, 7, 8, 9.")


# ---------------------------------------------------------------------------------------
# the check
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("study", STUDIES)
def test_check_passes_on_fixture_root(root, study):
    report = check_study_data(study, root)
    assert report.ok, report.text()
    assert all(f.records and f.records == f.expected for f in report.files)


def _srivastava_root(tmp_path) -> Path:
    r = tmp_path / "r"
    prepare_data("all", r, fixtures=True, progress=False, log=lambda s: None)
    return r


def test_check_names_missing_image_by_source(tmp_path):
    r = _srivastava_root(tmp_path)
    (r / ".fixtures-src" / "images" / "ocr_vqa" / "images" / "1590593332.jpg").unlink()
    report = check_study_data("scale_pythia", r)
    assert not report.ok
    assert report.missing_counts == {"OCR-VQA": 1}
    [line] = [p for p in report.problems if "missing image" in p]
    assert "from OCR-VQA" in line and "continual/ocr.json: record" in line
    assert "ocr_vqa/images/1590593332.jpg" in line


def test_check_truncated_json_and_wrong_count(tmp_path):
    r = _srivastava_root(tmp_path)
    p = r / "eval" / "gqa_slim.json"
    text = p.read_text()
    p.write_text(text[: len(text) // 2])
    recs = _load(r / "eval" / "vqav2_slim.json")
    (r / "eval" / "vqav2_slim.json").write_text(json.dumps(recs[:-1]))
    report = check_study_data("scale_pythia", r)
    probs = report.problems
    assert any(x.startswith("eval/gqa_slim.json: malformed JSON after record") for x in probs), probs
    assert "eval/vqav2_slim.json: 4 records, the manifest recorded 5" in " ".join(probs)


def test_check_missing_scorer_field_and_file(tmp_path):
    r = _srivastava_root(tmp_path)
    recs = _load(r / "eval" / "refcoco_slim.json")
    del recs[2]["bbox"]
    (r / "eval" / "refcoco_slim.json").write_text(json.dumps(recs))
    (r / "emt" / "cifar10" / "test.json").unlink()
    probs = check_study_data("scale_pythia", r).problems
    assert f"eval/refcoco_slim.json: record 2 (id={recs[2]['id']}): field 'bbox' is missing " \
           "(the scorer needs it)" in probs
    assert f"emt/cifar10/test.json: file is missing (run `mllmcl data prepare emt --root {r}`)" \
        in check_study_data("emt", r).problems


def test_check_undecodable_image(tmp_path):
    r = _srivastava_root(tmp_path)
    img = r / "images" / "emt" / "mnist" / "test" / "000002.png"
    img.write_bytes(img.read_bytes()[:40])  # a truncated PNG
    report = check_study_data("emt", r)
    assert report.bad_images == [f"emt/mnist/test.json: record 2 (id=mnist-test-2): {img}"]
    assert check_study_data("emt", r, decode=False).ok  # existence only


# ---------------------------------------------------------------------------------------
# bad sources: one clear error each
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    d = tmp_path_factory.mktemp("fx")
    sources, images = build_fixture_sources(d)
    return d, sources, images


def _parquet(rows: dict, features: dict, path: Path):
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=datasets.Features(features)).to_parquet(str(path))


def _copy_with(ds_dir: Path, tmp: Path, edit) -> Path:
    """A copy of a fixture source whose (single) parquet file is rewritten by `edit`."""
    import datasets

    out = tmp / ds_dir.name
    shutil.copytree(ds_dir, out)
    for p in out.rglob("*.parquet"):
        ds = datasets.Dataset.from_parquet(str(p))
        edit(ds, p)
    return out


def test_missing_split(fx, tmp_path):
    d, sources, _ = fx
    src = tmp_path / "lambada"
    shutil.copytree(sources["lambada"], src)
    f = next(src.rglob("*.parquet"))
    f.rename(f.with_name("validation-00000-of-00001.parquet"))
    with pytest.raises(SourceError, match=r"nl/lambada .*split 'test' is missing"):
        prepare_data("nl", tmp_path / "r", sources={"lambada": str(src)},
                     fixtures=True, progress=False)


def test_renamed_field(fx, tmp_path):
    d, sources, _ = fx

    def rename(ds, p):
        ds.rename_column("answerKey", "answer_key").to_parquet(str(p))

    src = _copy_with(Path(sources["arc_easy"]), tmp_path, rename)
    with pytest.raises(SourceError, match=r"field 'answerKey' is missing in .*ai2_arc"):
        prepare_data("nl", tmp_path / "r", sources={"arc_easy": str(src)},
                     fixtures=True, progress=False)


def test_record_without_answers(fx, tmp_path):
    d, sources, _ = fx

    def empty_answers(ds, p):
        ds.map(lambda r, i: {"answers": [] if i == 3 else r["answers"]}, with_indices=True,
               features=ds.features).to_parquet(str(p))

    src = _copy_with(Path(sources["textvqa"]), tmp_path, empty_answers)
    with pytest.raises(SourceError, match=r"vl-eval/textvqa .*row 3: the record has no reference answers"):
        prepare_data("vl-eval", tmp_path / "r", sources={"textvqa": str(src)},
                     fixtures=True, progress=False)


def test_box_outside_image(fx, tmp_path):
    d, sources, images = fx

    def big_box(ds, p):
        ds.map(lambda r: {"bbox": [50.0, 6.0, 60.0, 20.0]}, features=ds.features).to_parquet(str(p))

    src = _copy_with(Path(sources["refcocog"]), tmp_path, big_box)
    with pytest.raises(SourceError, match=r"refcocog .*lies outside the 80x60 image"):
        prepare_data("vl-eval", tmp_path / "r", sources={"refcocog": str(src)},
                     fixtures=True, progress=False)


def test_image_that_does_not_decode(fx, tmp_path):
    import datasets

    d, sources, _ = fx
    src = tmp_path / "mnist"
    _parquet({"image": [{"bytes": b"\x89PNG not really", "path": None}], "label": [3]},
             {"image": datasets.Image(), "label": datasets.ClassLabel(names=list("0123456789"))},
             src / "mnist" / "train-00000-of-00001.parquet")
    _parquet({"image": [{"bytes": b"junk", "path": None}], "label": [3]},
             {"image": datasets.Image(), "label": datasets.ClassLabel(names=list("0123456789"))},
             src / "mnist" / "test-00000-of-00001.parquet")
    with pytest.raises(SourceError, match=r"emt/mnist .*row 0: image does not decode"):
        prepare_data("emt", tmp_path / "r", sources={"mnist": str(src)},
                     fixtures=True, progress=False)


# ---------------------------------------------------------------------------------------
# resumable and atomic
# ---------------------------------------------------------------------------------------
def test_rerun_skips_finished_datasets(tmp_path):
    r = tmp_path / "r"
    first = prepare_data("nl", r, fixtures=True, progress=False, log=lambda s: None)
    assert [x.skipped for x in first] == [False] * 5
    mtimes = {p.name: p.stat().st_mtime_ns for p in (r / "nl").glob("*.jsonl")}
    again = prepare_data("nl", r, fixtures=True, progress=False, log=lambda s: None)
    assert [x.skipped for x in again] == [True] * 5
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (r / "nl").glob("*.jsonl")}
    # a dataset whose manifest entry is gone (never finished) is rebuilt, alone
    man = json.loads((r / "nl" / "manifest.json").read_text())
    del man["datasets"]["wsc"]
    (r / "nl" / "manifest.json").write_text(json.dumps(man))
    third = prepare_data("nl", r, fixtures=True, progress=False, log=lambda s: None)
    assert [(x.name, x.skipped) for x in third if not x.skipped] == [("wsc", False)]


def test_killed_write_leaves_old_file_and_no_temps(tmp_path, monkeypatch):
    from mllmcl_ray.data.prepare import srivastava

    r = tmp_path / "r"
    prepare_data("srivastava", r, fixtures=True, progress=False, log=lambda s: None)
    before = (r / "continual" / "vqa.json").read_bytes()
    man = json.loads((r / "continual" / "manifest.json").read_text())
    del man["datasets"]["mix665k"]
    (r / "continual" / "manifest.json").write_text(json.dumps(man))

    calls = {"n": 0}
    real = srivastava.classify_mix_record

    def dies(rec):  # the process "dies" in the middle of the mixture
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(rec)

    monkeypatch.setattr(srivastava, "classify_mix_record", dies)
    with pytest.raises(KeyboardInterrupt):
        prepare_data("srivastava", r, fixtures=True, progress=False, log=lambda s: None)
    assert (r / "continual" / "vqa.json").read_bytes() == before  # old file intact
    assert not list((r / "continual").glob(".*.tmp"))  # no half-written file left
    # a stale temp file (a SIGKILL leaves one) is removed by the next run, which finishes
    (r / "continual" / ".ocr.json.dead.tmp").write_text("[{")
    monkeypatch.setattr(srivastava, "classify_mix_record", real)
    res = prepare_data("srivastava", r, fixtures=True, progress=False, log=lambda s: None)
    assert [(x.name, x.skipped) for x in res] == [("align", True), ("mix665k", False)]
    assert not list((r / "continual").glob(".*.tmp"))
    assert (r / "continual" / "vqa.json").read_bytes() == before


# ---------------------------------------------------------------------------------------
# CLI and the studies' dry runs
# ---------------------------------------------------------------------------------------
def test_cli(root, tmp_path, capsys):
    from mllmcl_ray.cli import main

    assert main(["data", "check", "emt", "--root", str(root), "--quiet"]) == 0
    assert "emt: complete" in capsys.readouterr().out
    assert main(["data", "check", "coin", "--root", str(tmp_path), "--quiet"]) == 1
    assert "file is missing" in capsys.readouterr().out
    r = tmp_path / "cli"
    assert main(["data", "prepare", "emt", "--root", str(r), "--fixtures", "--quiet"]) == 0
    assert "data prepare emt: 4 dataset(s) written, 0 already done" in capsys.readouterr().out
    assert main(["data", "prepare", "emt", "--root", str(r), "--fixtures", "--quiet"]) == 0
    assert "0 dataset(s) written, 4 already done" in capsys.readouterr().out
    assert main(["data", "prepare", "nl", "--root", str(tmp_path), "--source", "oops"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "KEY=DIR_OR_HUB_ID" in err
    with pytest.raises(ConfigError, match="unknown data part"):
        prepare_data("nope", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_paper_dry_run_on_prepared_root(root, name, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(f"_study_{name}", REPO / "studies" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    models = tmp_path / "models"  # local model dirs: validation needs no hub (offline here)
    from mllmcl_ray.presets.paper import CLIP_L14_336, PAPER_MODELS

    for hub_id, mt in [(m.hub_id, m.family) for m in PAPER_MODELS.values()] + [(CLIP_L14_336, "clip")]:
        (models / hub_id.split("/")[-1]).mkdir(parents=True)
        (models / hub_id.split("/")[-1] / "config.json").write_text(json.dumps({"model_type": mt}))
    rc = mod.SPEC.main(["--preset", "paper", "--data-root", str(root), "--out", str(tmp_path / "o"),
                   "--model-root", str(models), "--dry-run"])
    text = capsys.readouterr().out
    assert rc == 0 and "ERROR" not in text, text
