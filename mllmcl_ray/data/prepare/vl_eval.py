"""Srivastava's VL evaluation sets: Prismatic's "slim" subsets of VQAv2, GQA, TextVQA and
RefCOCO, chosen as TRI's vlm-evaluation chooses them, as LLaVA JSON with scorer fields.

Rule (vlm-evaluation ``vlm_eval/tasks/harnesses/*.py``, seed 21 from
``scripts/datasets/prepare.py``): the examples in the source file's order, shuffled
once with ``random.Random(21).shuffle``; the slim set is the first 1024 (RefCOCO: the
first 1024 of each of RefCOCO, RefCOCO+, RefCOCOg in that shuffled order). RefCOCO boxes
are COCO ``[x, y, w, h]`` pixels → ``[x1, y1, x2, y2]`` divided by the image's width and
height and rounded to 2 decimals (vlm-evaluation ``box_xywh2xyxy``).

Sources (docs/data.md): ``lmms-lab/VQAv2`` validation (or, with ``--source vqav2=DIR``,
the official ``v2_OpenEnded_mscoco_val2014_questions.json`` +
``v2_mscoco_val2014_annotations.json`` and COCO val2014 under ``--images``/coco/val2014),
``lmms-lab/GQA`` testdev balanced (instructions + images configs; or the official
``testdev_balanced_questions.json`` with images under ``--images``/gqa/images), ``lmms-lab/textvqa`` validation, ``jxu124/refcoco``,
``jxu124/refcocoplus``, ``jxu124/refcocog`` validation (the REFER refs as parquet, no
pickle) + COCO train2014 images under ``--images`` (``coco/train2014/``).
"""
from __future__ import annotations

import json
from pathlib import Path

from .base import (SLIM_SIZE, VLM_EVAL_SEED, Manifest, PrepareContext, SourceError,
                   atomic_write_json, check_expected, is_local, link_images, llava_record,
                   load_split,
                   require_fields, run_dataset, slim_positions, slim_positions_grouped,
                   undecoded, write_image)

VL_EVAL_VERSION = "vl-eval-v1"
SHORT = "\nAnswer the question using a single word or phrase."
REF_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: "

SOURCES = {  # dataset key -> (default hub id, config, split, expected rows)
    "vqav2": ("lmms-lab/VQAv2", None, "validation", 214354),
    "gqa": ("lmms-lab/GQA", "testdev_balanced_instructions", "testdev", 12578),
    "gqa_images": ("lmms-lab/GQA", "testdev_balanced_images", "testdev", 398),
    "textvqa": ("lmms-lab/textvqa", None, "validation", 5000),
    "refcoco": ("jxu124/refcoco", None, "validation", 3811),
    "refcocoplus": ("jxu124/refcocoplus", None, "validation", 3805),
    "refcocog": ("jxu124/refcocog", None, "validation", 2573),
}
REFER_SETS = (("refcoco", "RefCOCO"), ("refcocoplus", "RefCOCO+"), ("refcocog", "RefCOCOg"))


def box_xywh_to_xyxy_norm(bbox, size: tuple[int, int], *, what: str) -> list[float]:
    """COCO [x, y, w, h] pixels → [x1, y1, x2, y2] / (w, h), 2 decimals (vlm-evaluation);
    a box outside the image raises."""
    if len(bbox) != 4:
        raise SourceError(f"{what}: bbox {list(bbox)} does not have 4 numbers")
    x, y, w, h = (float(v) for v in bbox)
    x2, y2 = x + w, y + h
    width, height = size
    if not (0 <= x < x2 <= width and 0 <= y < y2 <= height):
        raise SourceError(f"{what}: box [x, y, w, h] = {list(bbox)} lies outside the "
                          f"{width}x{height} image (or is empty)")
    return [round(v, 2) for v in (x / width, y / height, x2 / width, y2 / height)]


def _load(ctx: PrepareContext, key: str, fields: tuple[str, ...]):
    hub, config, split, expected = SOURCES[key]
    source = ctx.source(key, hub)
    what = f"vl-eval/{key} ({hub}{' ' + config if config else ''}, split {split})"
    ds = load_split(source, split, config, what=what)
    require_fields(ds, fields, what=what, source=source)
    check_expected(ctx, what, len(ds), expected)
    return ds, source, what


def _vqa_like(ctx, key, fields, make) -> dict:
    ds, source, what = _load(ctx, key, fields)
    pos = slim_positions(len(ds), SLIM_SIZE, VLM_EVAL_SEED)
    sub = undecoded(ds.select(pos), "image")
    recs = []
    for i in ctx.bar(range(len(sub)), desc=key):
        recs.append(make(pos[i], sub[i], what))
    return {"records": recs, "positions": pos, "source_rows": len(ds)}


def _answers(row_idx, answers, what) -> list[str]:
    out = [a["answer"] if isinstance(a, dict) else a for a in (answers or [])]
    out = [str(a) for a in out if a is not None and str(a).strip()]
    if not out:
        raise SourceError(f"{what}: row {row_idx}: the record has no reference answers")
    return out


# The official files vlm-evaluation indexes (used when --source names a directory holding
# them; images then come from the --images tree, as vlm-evaluation reads them)
VQAV2_QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
VQAV2_ANNOTATIONS = "v2_mscoco_val2014_annotations.json"
GQA_QUESTIONS = "testdev_balanced_questions.json"


def _official_dir(ctx: PrepareContext, key: str, filename: str) -> Path | None:
    src = ctx.source(key, SOURCES[key][0])
    return Path(src) if is_local(src) and (Path(src) / filename).exists() else None


def _tree_image(ctx: PrepareContext, rel: str, what: str) -> str:
    if not (ctx.image_root / rel).exists():
        raise SourceError(f"{what}: image {ctx.image_root / rel} is missing; give the image "
                          "tree with --images DIR")
    return rel


def _official_vqav2(ctx: PrepareContext, src: Path) -> dict:
    """VQAv2 from the official files, indexed in the annotation file's order (vlm-evaluation
    `build_vqav2_indices`), read by `datasets`' json loader."""
    import datasets

    what = f"vl-eval/vqav2 ({src / VQAV2_ANNOTATIONS})"
    qs = datasets.load_dataset("json", data_files=str(src / VQAV2_QUESTIONS), field="questions",
                               split="train")
    ann = datasets.load_dataset("json", data_files=str(src / VQAV2_ANNOTATIONS),
                                field="annotations", split="train")
    require_fields(ann, ("question_id", "image_id", "answers", "multiple_choice_answer"),
                   what=what, source=str(src))
    check_expected(ctx, what, len(ann), SOURCES["vqav2"][3])
    question = dict(zip(qs["question_id"], qs["question"]))
    pos = slim_positions(len(ann), SLIM_SIZE, VLM_EVAL_SEED)
    recs = []
    for p in ctx.bar(pos, desc="vqav2"):
        r = ann[p]
        answers = _answers(p, r["answers"], what)
        if r["question_id"] not in question:
            raise SourceError(f"{what}: row {p}: question {r['question_id']} is not in "
                              f"{VQAV2_QUESTIONS}")
        rel = _tree_image(ctx, f"coco/val2014/COCO_val2014_{int(r['image_id']):012d}.jpg",
                          f"{what}: row {p}")
        recs.append(llava_record(r["question_id"], question[r["question_id"]] + SHORT,
                                 r["multiple_choice_answer"], rel, answers=answers,
                                 answer=r["multiple_choice_answer"],
                                 question_id=r["question_id"]))
    return {"records": recs, "positions": pos, "source_rows": len(ann)}


def _official_gqa(ctx: PrepareContext, src: Path) -> dict:
    """GQA testdev-balanced from the official questions file, in its key order
    (vlm-evaluation `build_gqa_indices`: ``qid2question.items()``)."""
    path = src / GQA_QUESTIONS
    what = f"vl-eval/gqa ({path})"
    try:
        items = list(json.loads(path.read_text()).items())
    except json.JSONDecodeError as e:
        raise SourceError(f"{what}: not valid JSON ({e.msg})") from None
    check_expected(ctx, what, len(items), SOURCES["gqa"][3])
    pos = slim_positions(len(items), SLIM_SIZE, VLM_EVAL_SEED)
    recs = []
    for p in ctx.bar(pos, desc="gqa"):
        qid, r = items[p]
        if not str(r.get("answer", "")).strip():
            raise SourceError(f"{what}: question {qid}: the record has no answer")
        rel = _tree_image(ctx, f"gqa/images/{r['imageId']}.jpg", f"{what}: question {qid}")
        recs.append(llava_record(qid, r["question"] + SHORT, r["answer"], rel,
                                 answers=[r["answer"]], answer=r["answer"], question_id=qid))
    return {"records": recs, "positions": pos, "source_rows": len(items)}


def build_vqav2(ctx: PrepareContext) -> dict:
    official = _official_dir(ctx, "vqav2", VQAV2_ANNOTATIONS)
    if official is not None:
        return _official_vqav2(ctx, official)

    def make(idx, r, what):
        answers = _answers(idx, r["answers"], what)
        rel = write_image(r["image"], ctx.image_root,
                          f"eval/vqav2/COCO_val2014_{int(r['image_id']):012d}",
                          what=f"{what}: row {idx}")
        return llava_record(r["question_id"], r["question"] + SHORT,
                            r["multiple_choice_answer"], rel, answers=answers,
                            answer=r["multiple_choice_answer"], question_id=r["question_id"])

    return _vqa_like(ctx, "vqav2", ("question_id", "question", "image", "image_id", "answers",
                                    "multiple_choice_answer"), make)


def build_textvqa(ctx: PrepareContext) -> dict:
    def make(idx, r, what):
        answers = _answers(idx, r["answers"], what)
        rel = write_image(r["image"], ctx.image_root, f"eval/textvqa/{r['image_id']}",
                          what=f"{what}: row {idx}")
        return llava_record(r["question_id"], r["question"] + SHORT, answers[0], rel,
                            answers=answers, ocr_tokens=list(r["ocr_tokens"] or []),
                            question_id=r["question_id"])

    return _vqa_like(ctx, "textvqa", ("question_id", "question", "image", "image_id", "answers",
                                      "ocr_tokens"), make)


def build_gqa(ctx: PrepareContext) -> dict:
    official = _official_dir(ctx, "gqa", GQA_QUESTIONS)
    if official is not None:
        return _official_gqa(ctx, official)
    imgs, _, what_i = _load(ctx, "gqa_images", ("id", "image"))
    imgs = undecoded(imgs, "image")
    by_id = {str(v): i for i, v in enumerate(imgs["id"])}

    def make(idx, r, what):
        if not str(r["answer"]).strip():
            raise SourceError(f"{what}: row {idx} (id={r['id']}): the record has no answer")
        j = by_id.get(str(r["imageId"]))
        if j is None:
            raise SourceError(f"{what}: row {idx} (id={r['id']}): image {r['imageId']} is not "
                              "in the testdev_balanced_images config")
        rel = write_image(imgs[j]["image"], ctx.image_root, f"eval/gqa/{r['imageId']}",
                          what=f"{what_i}: row {j}")
        return llava_record(r["id"], r["question"] + SHORT, r["answer"], rel,
                            answers=[r["answer"]], answer=r["answer"], question_id=r["id"])

    return _vqa_like(ctx, "gqa", ("id", "imageId", "question", "answer"), make)


def build_refcoco(ctx: PrepareContext) -> dict:
    from PIL import Image

    examples, groups, sources = [], [], {}
    for key, label in REFER_SETS:
        ds, source, what = _load(ctx, key, ("ref_id", "image_id", "sentences", "bbox",
                                            "raw_image_info"))
        sources[key] = source
        for idx, r in ctx.bar(enumerate(ds), total=len(ds), desc=key):
            for sent in r["sentences"] or []:
                examples.append((label, idx, r, sent, what))
                groups.append(label)
    pos = slim_positions_grouped(groups, SLIM_SIZE, VLM_EVAL_SEED)
    recs, sizes = [], {}
    for p in pos:
        label, idx, r, sent, what = examples[p]
        where = f"{what}: row {idx} (ref_id={r['ref_id']})"
        rel = f"coco/train2014/COCO_train2014_{int(r['image_id']):012d}.jpg"
        path = ctx.image_root / rel
        if not path.exists():
            raise SourceError(f"{where}: image {path} is missing; give the COCO image tree "
                              "with --images DIR (DIR/coco/train2014/...)")
        if rel not in sizes:
            try:
                with Image.open(path) as im:
                    sizes[rel] = im.size
            except Exception as e:
                raise SourceError(f"{where}: image {path} does not decode "
                                  f"({type(e).__name__})") from None
        bbox = box_xywh_to_xyxy_norm(r["bbox"], sizes[rel], what=where)
        rid = f"{label}-{r['ref_id']}-{sent['sent_id']}"
        recs.append(llava_record(rid, REF_PROMPT + sent["sent"], json.dumps(bbox), rel,
                                 bbox=bbox, refer_dataset=label, ref_id=int(r["ref_id"]),
                                 sent_id=int(sent["sent_id"])))
    return {"records": recs, "positions": pos, "source_rows": len(examples),
            "sources": sources}


BUILDERS = {"vqav2": build_vqav2, "gqa": build_gqa, "textvqa": build_textvqa,
            "refcoco": build_refcoco}
EXPECTED_SLIM = {"vqav2": SLIM_SIZE, "gqa": SLIM_SIZE, "textvqa": SLIM_SIZE,
                 "refcoco": 3 * SLIM_SIZE}


def prepare_vl_eval(ctx: PrepareContext) -> list:
    out_dir = ctx.root / "eval"
    manifest = Manifest.load(out_dir, "vl-eval")
    link_images(ctx.images, ctx.root)
    results = []
    for name, builder in BUILDERS.items():
        keys = [k for k in SOURCES if k == name or k.startswith(name)] if name != "refcoco" \
            else [k for k, _ in REFER_SETS]
        source = ";".join(f"{k}={ctx.source(k, SOURCES[k][0])}" for k in keys)

        def build(name=name, builder=builder):
            out = builder(ctx)
            recs = out["records"]
            if not ctx.fixtures and len(recs) != EXPECTED_SLIM[name]:
                raise SourceError(f"vl-eval/{name}: {len(recs)} slim records, expected "
                                  f"{EXPECTED_SLIM[name]}")
            fname = f"{name}_slim.json"
            atomic_write_json(out_dir / fname, recs)
            return {"files": {fname: len(recs)}, "counts": {name: len(recs)},
                    "source_rows": out["source_rows"], "subset_seed": VLM_EVAL_SEED,
                    "subset_rule": "vlm-evaluation: Random(seed).shuffle(source order)[:1024]"
                    + (" per RefCOCO/RefCOCO+/RefCOCOg" if name == "refcoco" else ""),
                    "selected_ids": [r["id"] for r in recs]}

        results.append(run_dataset(ctx, manifest, name, VL_EVAL_VERSION, source, build))
    return results
