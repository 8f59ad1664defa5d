"""Reader for LLaVA conversation JSON (also CoIN's `Instructions/<Task>/{train,test}.json`).

Records look like ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``;
text-only records have no ``image``. Files are JSON arrays (streamed with ijson, never
loaded whole) or JSON Lines. Every bad record raises `DataError` naming the file, the
record index and id, the field and what is wrong. A missing image is an error unless the
source's policy is ``skip``, which counts and reports skipped records (`ReadStats`).

Sub-sampling (`fraction` < 1, CoIN's data-volume study) keeps exactly
``round(fraction * n)`` records chosen by a seeded permutation of record indices; a first
streaming pass counts records, so memory holds one index array, not the records.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DataSource
from ..errors import DataError  # noqa: F401  (re-exported: `from .instruct import DataError`)


@dataclass
class ReadStats:
    """What a read did: records seen, kept, and skipped (by reason)."""

    path: str
    seen: int = 0
    kept: int = 0
    skipped_missing_image: int = 0
    skipped_ids: list[str] = field(default_factory=list)  # first few skipped ids

    def summary(self) -> str:
        s = f"{self.path}: kept {self.kept} of {self.seen} records"
        if self.skipped_missing_image:
            s += (f"; skipped {self.skipped_missing_image} with missing images "
                  f"(e.g. {', '.join(self.skipped_ids[:3])})")
        return s


def _is_jsonl(path: Path) -> bool:
    if path.suffix == ".jsonl":
        return True
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return not head.startswith(b"[")


def iter_raw(path: str | Path) -> Iterator[tuple[int, object]]:
    """(index, raw record) pairs from a JSON array or JSONL file, streaming."""
    import ijson

    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if _is_jsonl(path):
        with path.open("rb") as f:
            idx = 0
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {lineno} (record {idx}) is not valid JSON: {e.msg}"
                                    ) from None
                yield idx, rec
                idx += 1
        return
    idx = -1
    try:
        with path.open("rb") as f:
            for idx, rec in enumerate(ijson.items(f, "item", use_float=True)):
                yield idx, rec
    except ijson.JSONError as e:
        raise DataError(f"{path}: malformed JSON after record {idx} (record {idx + 1} or the "
                        f"array around it is broken): {e}") from None


def validate_record(rec: object, path: Path, idx: int) -> dict:
    """Check one record's shape; return it. Raises DataError naming file/index/id/field."""
    where = f"{path}: record {idx}"
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object, got {type(rec).__name__}")
    rid = rec.get("id")
    if rid is None:
        raise DataError(f"{where}: field 'id' is missing")
    where += f" (id={rid})"
    convs = rec.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise DataError(f"{where}: field 'conversations' must be a non-empty list")
    for j, turn in enumerate(convs):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: field 'conversations[{j}]' must be an object")
        expected = "human" if j % 2 == 0 else "gpt"
        if turn.get("from") != expected:
            raise DataError(f"{where}: field 'conversations[{j}].from' must be {expected!r} "
                            f"(turns alternate human/gpt), got {turn.get('from')!r}")
        if not isinstance(turn.get("value"), str):
            raise DataError(f"{where}: field 'conversations[{j}].value' must be a string")
        if expected == "gpt" and not turn["value"].strip():
            raise DataError(f"{where}: field 'conversations[{j}].value' is an empty answer; "
                            "give the answer text or drop the record")
    if convs[-1]["from"] != "gpt":
        raise DataError(f"{where}: field 'conversations' must end with a 'gpt' answer")
    image = rec.get("image")
    n_img = sum(t["value"].count("<image>") for t in convs)
    if image is not None:
        if not isinstance(image, str) or not image:
            raise DataError(f"{where}: field 'image' must be a non-empty string path")
        if n_img == 0:
            # LLaVA data sometimes omits the placeholder; put it before the first message.
            convs[0] = {"from": "human", "value": "<image>\n" + convs[0]["value"]}
        elif n_img > 1:
            raise DataError(f"{where}: field 'conversations' has {n_img} '<image>' placeholders; "
                            "one image per record is supported")
    elif n_img:
        raise DataError(f"{where}: field 'image' is missing but the conversation has '<image>'")
    rec["id"] = str(rid)
    return rec


def count_records(path: str | Path) -> int:
    n = 0
    for n, _ in enumerate(iter_raw(path), 1):
        pass
    return n


def subsample_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask keeping exactly round(fraction * n) of n records, chosen by seed."""
    if not 0 < fraction <= 1:
        raise DataError(f"fraction {fraction} must be in (0, 1]")
    keep = np.zeros(n, dtype=bool)
    k = int(round(fraction * n))
    keep[np.random.default_rng(seed).permutation(n)[:k]] = True
    return keep


def read_instructions(source: DataSource | str, seed: int = 0, stats: ReadStats | None = None,
                      image_root: str | None = None) -> Iterator[dict]:
    """Stream validated records of one source; image paths are made absolute."""
    if isinstance(source, str):
        source = DataSource(path=source, image_root=image_root)
    path = Path(source.path)
    if source.missing_image not in ("error", "skip"):
        raise DataError(f"missing_image policy {source.missing_image!r} must be 'error' or 'skip'")
    stats = stats if stats is not None else ReadStats(str(path))
    keep = None
    if source.fraction < 1:
        keep = subsample_mask(count_records(path), source.fraction, seed)
    root = Path(source.image_root) if source.image_root else path.parent
    for idx, raw in iter_raw(path):
        stats.seen += 1
        if keep is not None and not keep[idx]:
            continue
        rec = validate_record(raw, path, idx)
        if rec.get("image") is not None:
            img = Path(rec["image"])
            img = img if img.is_absolute() else root / img
            if not img.exists():
                if source.missing_image == "skip":
                    stats.skipped_missing_image += 1
                    if len(stats.skipped_ids) < 10:
                        stats.skipped_ids.append(rec["id"])
                    continue
                raise DataError(f"{path}: record {idx} (id={rec['id']}): field 'image': file "
                                f"{img} does not exist (image root {root}); fix the path, set "
                                "image_root, or use missing_image: skip")
            rec["image"] = str(img)
        stats.kept += 1
        yield rec
