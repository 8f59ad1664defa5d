"""Srivastava et al.'s training data: LLaVA-1.5's alignment captions and its 665K
instruction mixture split into the Table 4 task groups.

- ``continual/align.json``: ``blip_laion_cc_sbu_558k.json`` of ``liuhaotian/LLaVA-Pretrain``
  (image paths prefixed ``llava_pretrain/``: extract its ``images.zip`` there).
- ``continual/{instruct,vqa,ocr,ref}.json``: ``llava_v1_5_mix665k.json`` of
  ``liuhaotian/LLaVA-Instruct-150K``, each record put in its Table 4 group by its source,
  read from the image path and, for COCO images, the LLaVA-1.5 task prompt
  (`classify_mix_record`). Every record gains a ``source`` field naming its dataset.

Table 4 (sizes in K): Instruct = LLaVA-Inst + ShareGPT 198; VQA = VQAv2 83, OKVQA 9,
A-OKVQA 66, GQA 72; OCR = OCR-VQA 80, TextCaps 22; Ref = RefCOCO 48, Visual Genome 86.
VQAv2 and OKVQA share COCO images and LLaVA-1.5's short-answer prompt, so they are
counted together (92K). The counts are printed and checked (±1K per source: Table 4
rounds to thousands).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..instruct import iter_raw
from .base import (Manifest, PrepareContext, SourceError, _tmp_beside, file_sha256, hub_file,
                   link_images, run_dataset)

SRIVASTAVA_VERSION = "srivastava-v1"
PRETRAIN_HUB = "liuhaotian/LLaVA-Pretrain"
PRETRAIN_FILE = "blip_laion_cc_sbu_558k.json"
MIX_HUB = "liuhaotian/LLaVA-Instruct-150K"
MIX_FILE = "llava_v1_5_mix665k.json"
ALIGN_PREFIX = "llava_pretrain/"
ALIGN_EXPECTED = 558128

GROUPS = ("instruct", "vqa", "ocr", "ref")
# source -> (Table 4 group, size in K as Table 4 prints it)
TABLE4: dict[str, tuple[str, int]] = {
    "LLaVA-Instruct": ("instruct", 158), "ShareGPT": ("instruct", 40),
    "VQAv2+OKVQA": ("vqa", 83 + 9), "A-OKVQA": ("vqa", 66), "GQA": ("vqa", 72),
    "OCR-VQA": ("ocr", 80), "TextCaps": ("ocr", 22),
    "RefCOCO": ("ref", 48), "Visual Genome": ("ref", 86),
}
# LLaVA-1.5's task prompts (paper Table 7; the 665K file says "Please provide ..."), matched
# case-insensitively
REF_PROMPTS = ("provide the bounding box coordinate of the region this sentence describes",
               "provide a short description for this region")
AOKVQA_PROMPT = "answer with the option's letter from the given choices directly"
SHORT_PROMPT = "answer the question using a single word or phrase"
IMAGE_SOURCES = {"gqa/": "GQA", "ocr_vqa/": "OCR-VQA", "textvqa/": "TextCaps",
                 "vg/": "Visual Genome"}


def classify_mix_record(rec: dict) -> str:
    """The dataset a llava_v1_5_mix665k record comes from (a TABLE4 key)."""
    image = rec.get("image")
    if not image:
        return "ShareGPT"  # the only text-only part of the mixture
    for prefix, src in IMAGE_SOURCES.items():
        if image.startswith(prefix):
            return src
    if not image.startswith("coco/"):
        raise SourceError(f"{MIX_FILE}: record id={rec.get('id')}: image {image!r} is from no "
                          "known source (coco/, gqa/, ocr_vqa/, textvqa/, vg/)")
    first = next((t.get("value", "") for t in rec.get("conversations", [])
                  if t.get("from") == "human"), "").lower()
    if any(p in first for p in REF_PROMPTS):
        return "RefCOCO"
    if AOKVQA_PROMPT in first:
        return "A-OKVQA"
    if SHORT_PROMPT in first:
        return "VQAv2+OKVQA"
    return "LLaVA-Instruct"


def check_table4(counts: dict[str, int], tol: int = 1000) -> list[str]:
    """Sources whose count is more than `tol` records off Table 4's size."""
    bad = []
    for src, (_, k) in TABLE4.items():
        n = counts.get(src, 0)
        if abs(n - 1000 * k) > tol:
            bad.append(f"{src} {n} (Table 4: {k}K)")
    return bad


class JSONArrayWriter:
    """Stream records into a JSON array in a temp file; `commit` renames it into place."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _tmp_beside(path)
        self.f = open(self.tmp, "w")
        self.f.write("[")
        self.n = 0

    def write(self, rec: dict) -> None:
        self.f.write(("," if self.n else "") + "\n" + json.dumps(rec, ensure_ascii=False))
        self.n += 1

    def commit(self) -> None:
        self.f.write("\n]\n")
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def prepare_srivastava(ctx: PrepareContext) -> list:
    out_dir = ctx.root / "continual"
    manifest = Manifest.load(out_dir, "srivastava")
    link_images(ctx.images, ctx.root)
    results = []

    src_align = ctx.source("llava_pretrain", PRETRAIN_HUB)

    def build_align():
        path = hub_file(src_align, PRETRAIN_FILE, what="srivastava/align")
        w = JSONArrayWriter(out_dir / "align.json")
        try:
            for _, rec in ctx.bar(iter_raw(path), desc="align"):
                if not isinstance(rec, dict) or "conversations" not in rec:
                    raise SourceError(f"{path}: record {w.n}: field 'conversations' is missing")
                if rec.get("image"):
                    rec["image"] = ALIGN_PREFIX + rec["image"]
                rec["source"] = "LCS-558K"
                w.write(rec)
            if not ctx.fixtures and w.n != ALIGN_EXPECTED:
                raise SourceError(f"{path}: {w.n} records, expected {ALIGN_EXPECTED}")
            w.commit()
        except BaseException:
            w.abort()
            raise
        return {"files": {"align.json": w.n}, "counts": {"align": w.n},
                "file_sha256": {PRETRAIN_FILE: file_sha256(path)}}

    results.append(run_dataset(ctx, manifest, "align", SRIVASTAVA_VERSION, src_align, build_align))

    src_mix = ctx.source("llava_mix", MIX_HUB)

    def build_mix():
        path = hub_file(src_mix, MIX_FILE, what="srivastava/mix665k")
        writers = {g: JSONArrayWriter(out_dir / f"{g}.json") for g in GROUPS}
        counts: dict[str, int] = {}
        try:
            for _, rec in ctx.bar(iter_raw(path), desc="mix665k"):
                src = classify_mix_record(rec)
                counts[src] = counts.get(src, 0) + 1
                rec["source"] = src
                writers[TABLE4[src][0]].write(rec)
            groups = {g: w.n for g, w in writers.items()}
            ctx.log("[srivastava] Table 4 split: " + "; ".join(
                f"{g} {groups[g]} (" + ", ".join(f"{s} {counts.get(s, 0)}" for s, (gg, _) in
                                              TABLE4.items() if gg == g) + ")" for g in GROUPS))
            bad = check_table4(counts)
            if bad and not ctx.fixtures:
                raise SourceError(f"{path}: the Table 4 split is off: {'; '.join(bad)}; is this "
                                  f"LLaVA-1.5's {MIX_FILE}?")
            for w in writers.values():
                w.commit()
        except BaseException:
            for w in writers.values():
                if not w.f.closed:
                    w.abort()
            raise
        return {"files": {f"{g}.json": n for g, n in groups.items()}, "counts": groups,
                "sources": counts, "file_sha256": {MIX_FILE: file_sha256(path)}}

    results.append(run_dataset(ctx, manifest, "mix665k", SRIVASTAVA_VERSION, src_mix, build_mix))
    return results
