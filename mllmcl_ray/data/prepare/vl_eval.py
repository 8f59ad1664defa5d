"""Srivastava's VL evaluation sets: Prismatic's "slim" subsets of VQAv2, GQA, TextVQA and
RefCOCO, chosen as TRI's vlm-evaluation chooses them, as LLaVA JSON with scorer fields.

Rule (vlm-evaluation ``vlm_eval/tasks/harnesses/*.py``, seed 21 from
``scripts/datasets/prepare.py``): the examples in the source file's order, shuffled
once with ``random.Random(21).shuffle``; the slim set is the first 1024 (RefCOCO: the
first 1024 of each of RefCOCO, RefCOCO+, RefCOCOg in that shuffled order). RefCOCO boxes
are COCO ``[x, y, w, h]`` pixels → ``[x1, y1, x2, y2]`` divided by the image's width and
height and rounded to 2 decimals (vlm-evaluation ``box_xywh2xyxy``).

Sources (docs/data.md): ``lmms-lab/VQAv2`` validation, ``lmms-lab/GQA`` testdev balanced
(instructions + images configs), ``lmms-lab/textvqa`` validation, ``jxu124/refcoco``,
``jxu124/refcocoplus``, ``jxu124/refcocog`` validation (the REFER refs as parquet, no
pickle) + COCO train2014 images under ``--images`` (``coco/train2014/``).
"""
from __future__ import annotations

import json

from .base import (SLIM_SIZE, VLM_EVAL_SEED, Manifest, PrepareContext, SourceError,
                   atomic_write_json, check_expected, link_images, llava_record, load_split,
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


def build_vqav2(ctx: PrepareContext) -> dict:
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
