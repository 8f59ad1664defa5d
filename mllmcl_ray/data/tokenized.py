"""Tokenised task datasets backed by Parquet (memory-mapped Arrow), built by streaming.

Records from the reader are tokenised with the model's template and written in chunks to
a Parquet file under a cache directory, keyed by everything that changes the tokens
(source files, sub-sample, seed, tokenizer, template, image tokens, max length). The
dataset then gives random access without holding Python lists of the whole task.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import Dataset

from ..config import DataSource
from ..models.tokenizers import encode_conversation
from .instruct import DataError, ReadStats, read_instructions

SCHEMA = pa.schema([("id", pa.string()), ("image", pa.string()),
                    ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
_CHUNK = 2048


def _source_key(src: DataSource) -> dict:
    st = os.stat(src.path)
    return {"path": str(Path(src.path).resolve()), "size": st.st_size, "mtime": st.st_mtime_ns,
            "fraction": src.fraction, "image_root": src.image_root, "missing": src.missing_image}


def _tokenizer_key(tok) -> str:
    vocab = json.dumps(sorted(tok.get_vocab().items()))
    return hashlib.sha256((tok.name_or_path + vocab).encode()).hexdigest()[:16]


def dataset_key(sources: list[DataSource], tok, template, n_image_tokens: int, max_len: int,
                seed: int) -> str:
    blob = json.dumps({"sources": [_source_key(s) for s in sources], "tok": _tokenizer_key(tok),
                       "template": template.version, "n_img": n_image_tokens, "max_len": max_len,
                       "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class TokenizedDataset(Dataset):
    """Random access to a tokenised Parquet file (memory-mapped)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.table = pq.read_table(self.path, memory_map=True)
        self._ids = self.table.column("id")
        self._images = self.table.column("image")
        self._input_ids = self.table.column("input_ids")
        self._labels = self.table.column("labels")

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict:
        return {"id": self._ids[i].as_py(), "image": self._images[i].as_py(),
                "input_ids": self._input_ids[i].as_py(), "labels": self._labels[i].as_py()}

    def num_tokens(self) -> int:
        import pyarrow.compute as pc

        return int(pc.sum(pc.list_value_length(self._input_ids)).as_py() or 0)

    def image_paths(self) -> list[str]:
        return sorted({p for p in self._images.to_pylist() if p})


def build_tokenized(sources: Iterable[DataSource], tok, template, *, n_image_tokens: int,
                    max_len: int, seed: int, cache_dir: str | Path,
                    stats: list[ReadStats] | None = None) -> TokenizedDataset:
    """Tokenise sources into a cached Parquet file (atomic write) and open it."""
    sources = list(sources)
    key = dataset_key(sources, tok, template, n_image_tokens, max_len, seed)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"tok-{key}.parquet"
    stats_file = out.with_suffix(".stats.json")  # the read's counts (skips), kept with the cache
    if out.exists():
        if stats is not None and stats_file.exists():
            stats.extend(ReadStats(**d) for d in json.loads(stats_file.read_text()))
        return TokenizedDataset(out)
    read: list[ReadStats] = []
    tmp = cache_dir / f".tok-{key}.{uuid.uuid4().hex}.tmp"
    writer = pq.ParquetWriter(tmp, SCHEMA)
    buf: dict[str, list] = {k: [] for k in SCHEMA.names}

    def flush():
        if buf["id"]:
            writer.write_table(pa.table(buf, schema=SCHEMA))
            for v in buf.values():
                v.clear()

    try:
        for src in sources:
            st = ReadStats(src.path)
            for rec in read_instructions(src, seed=seed, stats=st):
                try:
                    ids, labels = encode_conversation(tok, template, rec["conversations"],
                                                      n_image_tokens=n_image_tokens,
                                                      max_len=max_len)
                except DataError as e:
                    raise DataError(f"{src.path}: record id={rec['id']}: {e}") from None
                buf["id"].append(rec["id"])
                buf["image"].append(rec.get("image"))
                buf["input_ids"].append(ids)
                buf["labels"].append(labels)
                if len(buf["id"]) >= _CHUNK:
                    flush()
            read.append(st)
        flush()
        writer.close()
        stats_file.write_text(json.dumps([dataclasses.asdict(st) for st in read]))
        os.replace(tmp, out)
        if stats is not None:
            stats.extend(read)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return TokenizedDataset(out)
