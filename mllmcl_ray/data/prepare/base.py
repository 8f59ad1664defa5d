"""What every converter shares: sources, loading through `datasets`, atomic writes,
manifests, images, and TRI vlm-evaluation's slim-subset rule.

A *part* (`nl`, `srivastava`, `vl-eval`, `coin`, `emt`) writes one directory of the data
root and a ``manifest.json`` in it; inside a part each *dataset* (``lambada``,
``vqav2``, ...) is written atomically (temp file + rename) and then recorded in the
manifest (source, revision or file hashes, counts, subset seed, conversion version). A
rerun skips every dataset whose manifest entry has the same conversion version and
source; a kill leaves at most temp files, which the next run removes.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ...config import ConfigError

MANIFEST = "manifest.json"
VLM_EVAL_SEED = 21  # TRI vlm-evaluation scripts/datasets/prepare.py: `seed: int = 21`
SLIM_SIZE = 1024  # Prismatic / Srivastava B.3: "slim" sets of 1024 examples


class SourceError(ConfigError):
    """A source dataset is missing, renamed or malformed; the message says which and what."""


# ---------------------------------------------------------------------------------------
# atomic files
# ---------------------------------------------------------------------------------------
def _tmp_beside(path: Path) -> Path:
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"


def atomic_write_bytes(path: str | Path, data: bytes, *, sync: bool = True) -> None:
    """Write `data` to a temp file beside `path` (fsync'd unless `sync` is False: images,
    where a kill, not a power cut, is the case to survive), then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj, *, lines: bool = False) -> None:
    """A JSON document (or JSON Lines when `lines`), written atomically."""
    if lines:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in obj)
    else:
        text = json.dumps(obj, ensure_ascii=False, indent=None if isinstance(obj, list) else 1)
    atomic_write_bytes(path, text.encode())


def clean_temps(root: str | Path) -> int:
    """Remove the temp files a killed writer left under `root` (symlinked image trees are
    not entered); returns how many."""
    n = 0
    for dirpath, _, files in os.walk(root, followlinks=False):
        for f in files:
            if f.startswith(".") and f.endswith(".tmp"):
                Path(dirpath, f).unlink(missing_ok=True)
                n += 1
    return n


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        read = 0
        while chunk := f.read(1 << 20):
            h.update(chunk)
            read += len(chunk)
            if limit and read >= limit:
                break
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# manifests
# ---------------------------------------------------------------------------------------
@dataclass
class Manifest:
    """``<part dir>/manifest.json``: one entry per finished dataset."""

    path: Path
    part: str
    datasets: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, part_dir: str | Path, part: str) -> Manifest:
        p = Path(part_dir) / MANIFEST
        if p.exists():
            try:
                data = json.loads(p.read_text())
                return cls(p, part, dict(data.get("datasets", {})))
            except json.JSONDecodeError:
                pass  # a foreign or broken manifest: rebuild every dataset
        return cls(p, part)

    def finished(self, name: str, version: str, source: str) -> dict | None:
        e = self.datasets.get(name)
        if e and e.get("conversion_version") == version and e.get("source") == source:
            return e
        return None

    def record(self, name: str, entry: dict) -> None:
        self.datasets[name] = entry
        atomic_write_json(self.path, {"part": self.part, "datasets": self.datasets})


# ---------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------
def is_local(source: str) -> bool:
    return Path(source).exists()


def source_id(source: str) -> dict:
    """How a manifest names a source: a local path, or a hub id with its revision (a
    ``key=src;key=src`` list of several sources gives one entry per key)."""
    if ("=" in source and ";" in source) or (source.count("=") == 1 and not is_local(source)):
        return {k: source_id(v) for k, _, v in (p.partition("=") for p in source.split(";"))}
    if is_local(source):
        return {"path": str(Path(source).resolve()), **local_fingerprint(Path(source))}
    rev = None
    if not os.environ.get("HF_HUB_OFFLINE") and not os.environ.get("HF_DATASETS_OFFLINE"):
        try:  # the revision now on the hub, which `datasets` just downloaded
            from huggingface_hub import HfApi

            rev = HfApi().dataset_info(source, timeout=10).sha
        except Exception:  # offline / private: the manifest says so (revision null)
            rev = None
    return {"hub_id": source, "revision": rev}


def local_fingerprint(path: Path, max_files: int = 200) -> dict:
    """File hashes of a local source (sha256 of each data file's first MiB, and its size);
    a tree of more than `max_files` files (an image folder) is summarised by count and bytes."""
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if len(files) > max_files:
        return {"n_files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    return {"files": {(p.name if p == path else str(p.relative_to(path))):
                      {"bytes": p.stat().st_size, "sha256_first_mib": file_sha256(p, 1 << 20)}
                      for p in files}}


def load_split(source: str, split: str, name: str | None = None, *, what: str):
    """One split of a dataset through `datasets`: a hub id (downloaded and cached by
    `datasets`), a `save_to_disk` directory, or a local directory of parquet/json files
    laid out as on the hub (``[<name>/]<split>-*.parquet`` or ``data/<split>-*``)."""
    import datasets

    try:
        if is_local(source):
            src = Path(source)
            if (src / "dataset_dict.json").exists() or (src / "state.json").exists():
                dd = datasets.load_from_disk(str(src))
                if isinstance(dd, datasets.Dataset):
                    return dd
                if split not in dd:
                    raise SourceError(f"{what}: split {split!r} is missing in {src} (has "
                                      f"{', '.join(dd)}); point --source at the right copy")
                return dd[split]
            if (src / "README.md").exists():  # a hub snapshot: its card declares configs
                return datasets.load_dataset(str(src), name, split=split)
            kw = {"data_dir": name} if name and (src / name).is_dir() else {}
            return datasets.load_dataset(str(src), split=split, **kw)
        return datasets.load_dataset(source, name, split=split)
    except SourceError:
        raise
    except ValueError as e:
        if "split" in str(e).lower() or "Unknown split" in str(e):
            raise SourceError(f"{what}: split {split!r} is missing in {source}: "
                              f"{str(e).splitlines()[0]}") from None
        raise SourceError(f"{what}: cannot load {source} ({name or 'default'}, split "
                          f"{split}): {str(e).splitlines()[0]}") from None
    except ConnectionError as e:
        raise SourceError(f"{what}: cannot reach {source} on the hub "
                          f"({str(e).splitlines()[0]}); run where the hub is reachable or give "
                          "a local copy with --source") from None
    except FileNotFoundError as e:
        raise SourceError(f"{what}: {source} not found ({str(e).splitlines()[0]}); give a "
                          "local copy with --source or run where the hub is reachable") from None


def require_fields(ds, fields: Iterable[str], *, what: str, source: str) -> None:
    """Raise naming the first expected column the dataset lacks (a renamed field)."""
    cols = set(ds.column_names)
    for f in fields:
        if f not in cols:
            raise SourceError(f"{what}: field {f!r} is missing in {source} (columns: "
                              f"{', '.join(sorted(cols))}); the source's schema changed or "
                              "the wrong dataset was given")


def hub_file(source: str, filename: str, *, what: str) -> Path:
    """A file of a hub dataset repo (downloaded into the hub cache by huggingface_hub), or
    the same relative path under a local directory."""
    if is_local(source):
        p = Path(source) / filename
        if not p.exists():
            raise SourceError(f"{what}: {filename} is missing under {source}")
        return p
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, filename, repo_type="dataset"))
    except Exception as e:  # network / missing file: one line
        raise SourceError(f"{what}: cannot download {filename} from {source}: "
                          f"{str(e).splitlines()[0]}") from None


def hub_snapshot(source: str, patterns: list[str], *, what: str) -> Path:
    """A local directory holding the files of a hub dataset repo matching `patterns`."""
    if is_local(source):
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, repo_type="dataset", allow_patterns=patterns))
    except Exception as e:
        raise SourceError(f"{what}: cannot download {source}: {str(e).splitlines()[0]}") from None


# ---------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------
IMAGE_EXT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp",
             "TIFF": ".tif"}


def undecoded(ds, column: str):
    """`ds` with its image column left as the source's bytes (``Image(decode=False)``), so
    `write_image` can keep them unchanged (no lossy re-encoding)."""
    import datasets

    if isinstance(ds.features.get(column), datasets.Image):
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def write_image(value, image_root: Path, stem: str, *, what: str) -> str:
    """Write one source image under `image_root` as ``stem`` + its format's extension and
    return that relative path. The image is decoded by `datasets` (`Image.decode_example`)
    to prove it decodes; the source's own bytes are written (atomically; an existing file
    is kept, so reruns resume). A decoded PIL image (no bytes) is written as PNG."""
    import io

    import datasets
    from PIL import Image as PILImage

    for ext in IMAGE_EXT.values():
        if (image_root / (stem + ext)).exists():
            return stem + ext
    if value is None:
        raise SourceError(f"{what}: the record has no image")
    if isinstance(value, PILImage.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        data, ext = buf.getvalue(), ".png"
    else:
        try:
            img = datasets.Image().decode_example(value)
            img.load()
        except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated), ...
            raise SourceError(f"{what}: image does not decode ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
        data, ext = value.get("bytes"), IMAGE_EXT.get(img.format or "")
        if data is None and value.get("path"):
            data = Path(value["path"]).read_bytes()
        if data is None or ext is None:  # an unusual format: store it losslessly as PNG
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            data, ext = buf.getvalue(), ".png"
    atomic_write_bytes(image_root / (stem + ext), data, sync=False)
    return stem + ext


def link_images(images: str | Path | None, root: Path) -> list[str]:
    """Symlink every top-level entry of the user's image directory into ``<root>/images``
    (existing entries are kept); returns the names linked."""
    if not images:
        return []
    src = Path(images)
    if not src.is_dir():
        raise ConfigError(f"--images {src} is not a directory; give the directory holding "
                          "the image trees (coco/, gqa/, ocr_vqa/, textvqa/, vg/, ...)")
    dst = root / "images"
    dst.mkdir(parents=True, exist_ok=True)
    done = []
    if src.resolve() == dst.resolve():
        return done
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if not target.exists() and not target.is_symlink():
            target.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
            done.append(entry.name)
    return done


# ---------------------------------------------------------------------------------------
# TRI vlm-evaluation's slim subsets
# ---------------------------------------------------------------------------------------
def vlm_eval_order(n: int, seed: int = VLM_EVAL_SEED) -> list[int]:
    """Positions 0..n-1 in the order vlm-evaluation visits them: its index builders put
    the examples in the source file's order, then `Random(seed).shuffle(all_ids)` once;
    the permutation depends only on n and the seed (not on the id values)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def slim_positions(n: int, size: int, seed: int = VLM_EVAL_SEED) -> list[int]:
    """vlm-evaluation `metadata-slim-<size>.json`: the first `size` of the shuffled ids,
    kept in shuffled order (VQAv2, GQA, TextVQA)."""
    return vlm_eval_order(n, seed)[:size]


def slim_positions_grouped(groups: list[str], size: int, seed: int = VLM_EVAL_SEED) -> list[int]:
    """RefCOCO's rule: walk the shuffled ids and keep the first `size` of each group
    (RefCOCO, RefCOCO+, RefCOCOg), stopping once every group is full."""
    names = list(dict.fromkeys(groups))
    counts = dict.fromkeys(names, 0)
    out = []
    for i in vlm_eval_order(len(groups), seed):
        g = groups[i]
        if counts[g] < size:
            out.append(i)
            counts[g] += 1
        if all(c == size for c in counts.values()):
            break
    return out


# ---------------------------------------------------------------------------------------
# the part runner
# ---------------------------------------------------------------------------------------
@dataclass
class PrepareContext:
    """What a converter gets: where to write and where its sources are."""

    root: Path  # the data root
    sources: dict[str, str]  # dataset key -> hub id or local dir/file
    images: str | None = None  # --images: the user's image trees (linked into root/images)
    progress: bool = True  # tqdm bars
    fixtures: bool = False  # sources are schema-exact fixtures (no full-size count checks)
    log: Callable[[str], None] = print

    @property
    def image_root(self) -> Path:
        return self.root / "images"

    def source(self, key: str, default: str) -> str:
        return self.sources.get(key, default)

    def bar(self, it, total=None, desc=""):
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=desc, disable=not self.progress, leave=False)


@dataclass
class DatasetResult:
    part: str
    name: str
    skipped: bool  # already finished (manifest entry matched)
    entry: dict


def run_dataset(ctx: PrepareContext, manifest: Manifest, name: str, version: str,
                source: str, build: Callable[[], dict]) -> DatasetResult:
    """Build one dataset unless the manifest already has it; record what `build` returns
    (files written, counts, ...) with the source, its revision and the version."""
    done = manifest.finished(name, version, source)
    if done is not None:
        ctx.log(f"[{manifest.part}] {name}: done already ({done.get('counts')}), skipped")
        return DatasetResult(manifest.part, name, True, done)
    entry = build()
    entry = {"source": source, "source_id": source_id(source), "conversion_version": version,
             **entry}
    manifest.record(name, entry)
    ctx.log(f"[{manifest.part}] {name}: wrote {entry.get('counts')}")
    return DatasetResult(manifest.part, name, False, entry)


def check_expected(ctx: PrepareContext, what: str, n: int, expected: int | None) -> None:
    """Full-size sources must have the documented number of records."""
    if ctx.fixtures or expected is None:
        return
    if n != expected:
        raise SourceError(f"{what}: {n} records, expected {expected}; the source is not the "
                          "release docs/data.md names (wrong split or version?)")


def llava_record(rid, prompt: str, reply: str, image: str | None = None, **extra) -> dict:
    """A LLaVA conversation record (the layout docs/data.md describes): one human turn
    (with ``<image>`` first when there is an image), one gpt turn, then `extra` fields."""
    rec = {"id": str(rid)}
    if image is not None:
        rec["image"] = image
        prompt = "<image>\n" + prompt
    rec["conversations"] = [{"from": "human", "value": prompt},
                            {"from": "gpt", "value": reply}]
    rec.update(extra)
    return rec
