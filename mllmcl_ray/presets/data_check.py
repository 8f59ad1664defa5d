"""`mllmcl data check STUDY --root DIR`: is a data root complete for a study's paper preset?

Every file the preset reads (the layout of docs/data.md, from `presets.PAPER_TASKS` /
`PAPER_NL`, CoIN's tasks and EMT's sets) must exist, parse (each record validated as the
readers will), hold the count its ``manifest.json`` recorded, carry the scorer's fields,
and name images that exist under ``<root>/images`` and decode. Missing images are
reported by their source dataset (a record's ``source``, else its image tree: ``coco/``,
``ocr_vqa/``, ...), since a whole source's images missing (LLaVA's OCR-VQA gap) is the
usual cause. `check_study_data` returns a `CheckReport`; the CLI exits non-zero unless it
is ok.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..data.instruct import DataError, iter_raw, validate_record

IMAGE_TREES = {  # first path component -> source dataset
    "coco": "COCO (LLaVA-Instruct / VQAv2 / OKVQA / A-OKVQA / RefCOCO)", "gqa": "GQA",
    "ocr_vqa": "OCR-VQA", "textvqa": "TextCaps / TextVQA", "vg": "Visual Genome",
    "llava_pretrain": "LCS-558K (LLaVA-Pretrain)", "COCO2014": "COCO", "GQA": "GQA",
    "OCR-VQA": "OCR-VQA", "TextVQA": "TextVQA", "ScienceQA": "ScienceQA", "VizWiz": "VizWiz",
    "ImageNet": "ImageNet",
}
EVAL_FIELDS = {"vqav2": ("answers",), "gqa": ("answers",), "textvqa": ("answers", "ocr_tokens"),
               "refcoco": ("bbox",)}
NL_FIELDS = {"lambada": ("context", "target"), "arc_easy": ("question", "choices", "label"),
             "arc_challenge": ("question", "choices", "label"),
             "winogrande": ("sentence", "option1", "option2", "answer"),
             "wsc": ("text", "pronoun", "pronoun_loc", "options", "label")}
STUDY_LAYOUTS = {"scale_pythia": "srivastava", "mitigation": "srivastava",
                 "srivastava": "srivastava", "coin": "coin", "emt": "emt"}
PART_OF_DIR = {"continual": "srivastava", "eval": "vl-eval", "nl": "nl", "Instructions": "coin",
               "emt": "emt"}  # the `mllmcl data prepare` part writing each directory
MAX_LISTED = 5  # problems listed per file / missing images listed per source


@dataclass
class FileSpec:
    """One file a preset reads and what its records must carry."""

    rel: str  # path under the data root
    part_dir: str  # directory holding the manifest that counts it
    manifest_key: str  # its name in that manifest's "files"
    fields: tuple[str, ...] = ()  # scorer fields every record must have
    jsonl: bool = False  # NL JSON Lines (no conversations / images)


@dataclass
class FileResult:
    rel: str
    records: int | None = None  # None: not readable
    expected: int | None = None  # from the manifest; None: no manifest entry
    images: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    """What `check_study_data` found; `ok` when nothing is wrong."""

    study: str
    root: str
    files: list[FileResult] = field(default_factory=list)
    missing_images: dict[str, list[str]] = field(default_factory=dict)  # source -> where
    missing_counts: dict[str, int] = field(default_factory=dict)
    bad_images: list[str] = field(default_factory=list)  # exist but do not decode
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = [f"{f.rel}: {p}" for f in self.files for p in f.problems]
        for src, n in self.missing_counts.items():
            out.append(f"{n} missing image(s) from {src}: " + "; ".join(self.missing_images[src]))
        out += [f"image does not decode: {b}" for b in self.bad_images]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [f"data check for {self.study} under {self.root}:"]
        for f in self.files:
            cnt = "unreadable" if f.records is None else f"{f.records} records"
            exp = "" if f.expected is None else f" (manifest {f.expected})"
            lines.append(f"  {'OK ' if not f.problems else 'BAD'} {f.rel}: {cnt}{exp}, "
                         f"{f.images} images")
        lines += [f"  note: {n}" for n in self.notes]
        probs = self.problems
        lines += [f"  PROBLEM: {p}" for p in probs]
        lines.append(f"{self.study}: {'complete' if not probs else f'{len(probs)} problem(s)'}")
        return "\n".join(lines)


def study_files(study: str) -> list[FileSpec]:
    """The files `study`'s paper preset reads, with what their records must carry."""
    layout = STUDY_LAYOUTS.get(study)
    if layout is None:
        raise ConfigError(f"unknown study {study!r}; choose among {', '.join(STUDY_LAYOUTS)}")
    align = FileSpec("continual/align.json", "continual", "align.json")
    if layout == "srivastava":
        from .paper import PAPER_NL, PAPER_TASKS

        specs = [align]
        for task in PAPER_TASKS.values():
            specs += [FileSpec(f"continual/{f}", "continual", f) for f in task["train"]]
        evals = dict.fromkeys(n.split("_")[0] for t in PAPER_TASKS.values() for n, _ in t["eval"])
        specs += [FileSpec(f"eval/{n}_slim.json", "eval", f"{n}_slim.json", EVAL_FIELDS.get(n, ()))
                  for n in evals]
        specs += [FileSpec(f"nl/{n}.jsonl", "nl", f"{n}.jsonl", NL_FIELDS.get(n, ()), jsonl=True)
                  for n in PAPER_NL]
        return specs
    if layout == "coin":
        from ..data.prepare.coin import COIN_TASKS

        specs = [align]
        for t in COIN_TASKS:
            specs.append(FileSpec(f"Instructions/{t}/train.json", "Instructions", f"{t}/train.json"))
            specs.append(FileSpec(f"Instructions/{t}/test.json", "Instructions", f"{t}/test.json",
                                  {"Grounding": ("answer", "bbox"), "TextVQA": ("answer", "answers")
                                   }.get(t, ("answer",))))
        return specs
    from ..data.prepare.emt import EMT_SETS

    return [align] + [FileSpec(f"emt/{s}/{sp}.json", "emt", f"{s}/{sp}.json", ("label", "labels"))
                      for s in EMT_SETS for sp in ("train", "test")]


def _manifest_counts(root: Path, part_dir: str) -> dict[str, int] | None:
    p = root / part_dir / "manifest.json"
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    out = {}
    for entry in data.get("datasets", {}).values():
        out.update(entry.get("files", {}))
    return out


def _image_source(rec: dict, image: str) -> str:
    if rec.get("source"):
        return str(rec["source"])
    parts = Path(image).parts
    if parts and parts[0] in ("eval", "emt") and len(parts) > 1:
        return f"{parts[1]} ({parts[0]} images)"
    return IMAGE_TREES.get(parts[0], parts[0]) if parts else "?"


def _check_file(root: Path, spec: FileSpec, res: FileResult, report: CheckReport,
                seen: dict[str, bool], decode: bool, bar) -> None:
    path = root / spec.rel
    if not path.exists():
        res.problems.append(f"file is missing (run `mllmcl data prepare "
                            f"{PART_OF_DIR.get(spec.part_dir, 'all')} --root {root}`)")
        return
    n = 0
    refs: list[tuple] = []  # (record index, id, image, source, full path) per image use
    try:
        for idx, raw in bar(iter_raw(path), desc=spec.rel):
            n = idx + 1
            if len(res.problems) >= MAX_LISTED:
                continue
            try:
                if not spec.jsonl:
                    raw = validate_record(raw, path, idx)
                elif not isinstance(raw, dict):
                    raise DataError(f"{path}: record {idx}: expected an object")
            except DataError as e:
                res.problems.append(str(e).replace(f"{path}: ", ""))
                continue
            rid = raw.get("id", idx)
            for f in spec.fields:
                if raw.get(f) in (None, "", []):
                    res.problems.append(f"record {idx} (id={rid}): field {f!r} is missing "
                                        "(the scorer needs it)")
            if "bbox" in spec.fields and isinstance(raw.get("bbox"), list):
                b = raw["bbox"]
                if len(b) != 4 or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in b):
                    res.problems.append(f"record {idx} (id={rid}): bbox {b} is not a normalised "
                                        "[x1, y1, x2, y2]")
            image = raw.get("image")
            if spec.jsonl or not image:
                continue
            res.images += 1
            img = Path(image)
            full = img if img.is_absolute() else root / "images" / img
            refs.append((idx, rid, image, _image_source(raw, image), str(full)))
    except DataError as e:
        res.problems.append(str(e).replace(f"{path}: ", ""))
        res.records = None
        return
    except json.JSONDecodeError as e:
        res.problems.append(f"not valid JSON: {e.msg} (line {e.lineno})")
        return
    res.records = n
    _check_images(refs, spec, report, seen, decode, bar)
    if res.expected is not None and n != res.expected:
        res.problems.append(f"{n} records, the manifest recorded {res.expected} (a truncated "
                            f"or replaced file: rerun `mllmcl data prepare "
                            f"{PART_OF_DIR.get(spec.part_dir, 'all')}`)")


def _check_images(refs: list[tuple], spec: FileSpec, report: CheckReport,
                  seen: dict[str, bool | None], decode: bool, bar) -> None:
    """Check each image path once (threads: decoding releases the GIL) and record the
    missing ones by source and the undecodable ones by record."""
    from concurrent.futures import ThreadPoolExecutor

    todo = list(dict.fromkeys(r[4] for r in refs if r[4] not in seen))
    if todo:
        with ThreadPoolExecutor(max_workers=min(32, 2 * (os.cpu_count() or 1))) as pool:
            results = pool.map(lambda k: _image_ok(Path(k), decode), todo, chunksize=64)
            for key, ok in zip(todo, bar(results, desc=f"{spec.rel} images")):
                seen[key] = ok
    reported = set()
    for idx, rid, image, src, key in refs:
        ok = seen[key]
        if ok is None and key not in reported:  # exists, does not decode
            reported.add(key)
            report.bad_images.append(f"{spec.rel}: record {idx} (id={rid}): {key}")
        elif ok is False:
            report.missing_counts[src] = report.missing_counts.get(src, 0) + 1
            where = report.missing_images.setdefault(src, [])
            if len(where) < MAX_LISTED:
                where.append(f"{spec.rel}: record {idx} (id={rid}): {image}")


def _image_ok(path: Path, decode: bool) -> bool | None:
    """True: exists (and decodes); False: missing; None: exists but does not decode."""
    if not path.exists():
        return False
    if not decode:
        return True
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return None


def check_study_data(study: str, root: str | Path, *, decode: bool = True,
                     progress: bool = False) -> CheckReport:
    """Check that `root` holds every file `study`'s paper preset reads (see module doc)."""
    from tqdm.auto import tqdm

    root = Path(root)
    report = CheckReport(study=study, root=str(root))
    specs = study_files(study)
    if not root.is_dir():
        raise ConfigError(f"data root {root} is not a directory; run `mllmcl data prepare all "
                          f"--root {root}` first")
    manifests: dict[str, dict[str, int] | None] = {}
    seen: dict[str, bool] = {}

    def bar(it, desc=""):
        return tqdm(it, desc=desc, disable=not progress, leave=False)

    for spec in specs:
        if spec.part_dir not in manifests:
            manifests[spec.part_dir] = _manifest_counts(root, spec.part_dir)
            if manifests[spec.part_dir] is None:
                report.notes.append(f"{spec.part_dir}/manifest.json is missing: record counts "
                                    "not checked (files not written by `mllmcl data prepare`)")
        res = FileResult(spec.rel, expected=(manifests[spec.part_dir] or {}).get(spec.manifest_key))
        report.files.append(res)
        _check_file(root, spec, res, report, seen, decode, bar)
    return report
