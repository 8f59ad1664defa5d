"""EMT (Zhai et al.) classification sets as images + LLaVA JSON with ``label``/``labels``.

MNIST (``ylecun/mnist``), CIFAR-10 (``uoft-cs/cifar10``) and CIFAR-100
(``uoft-cs/cifar100``, fine labels) from the hub; miniImageNet from a local copy
(``--source miniimagenet=DIR``: an image folder ``DIR/{train,test}/<class name>/*.jpg``
read by `datasets`' imagefolder loader; name the class folders by their readable class
names, which are what the prompt lists and the answer is checked against).
Images go to ``<root>/images/emt/<set>/<split>/<row>.<ext>`` (the source's bytes); records to
``<root>/emt/<set>/{train,test}.json``: the EMT prompt listing every class, the label as
the answer, ``label`` and ``labels``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import (Manifest, PrepareContext, SourceError, check_expected, llava_record,
                   load_split, require_fields, run_dataset, undecoded, write_image)
from .srivastava import JSONArrayWriter

EMT_VERSION = "emt-v1"


@dataclass(frozen=True)
class EMTSet:
    name: str
    hub_id: str | None  # None: local copy only
    image_col: str
    label_col: str
    noun: str  # EMT prompt noun ("number" for MNIST)
    expected: dict[str, int] | None  # rows per split in the release


EMT_SETS: dict[str, EMTSet] = {s.name: s for s in (
    EMTSet("mnist", "ylecun/mnist", "image", "label", "number", {"train": 60000, "test": 10000}),
    EMTSet("cifar10", "uoft-cs/cifar10", "img", "label", "object", {"train": 50000, "test": 10000}),
    EMTSet("cifar100", "uoft-cs/cifar100", "img", "fine_label", "object",
           {"train": 50000, "test": 10000}),
    EMTSet("miniimagenet", None, "image", "label", "object", None),
)}


def _label_names(ds, col: str, what: str) -> list[str]:
    feat = ds.features[col]
    names = getattr(feat, "names", None)
    if not names:
        raise SourceError(f"{what}: field {col!r} is not a class label (no class names)")
    return [str(n).replace("_", " ") for n in names]


def prepare_emt(ctx: PrepareContext) -> list:
    from ...eval.suites.emt import emt_prompt

    out_dir = ctx.root / "emt"
    manifest = Manifest.load(out_dir, "emt")
    results = []
    for s in EMT_SETS.values():
        source = ctx.sources.get(s.name) or s.hub_id
        if source is None:
            ctx.log(f"[emt] {s.name}: no source (give --source {s.name}=DIR, a local "
                    "image folder); skipped")
            continue

        def build(s=s, source=source):
            counts = {}
            for split in ("train", "test"):
                what = f"emt/{s.name} ({source} {split})"
                ds = load_split(source, split, what=what)
                require_fields(ds, (s.image_col, s.label_col), what=what, source=source)
                if s.expected:
                    check_expected(ctx, what, len(ds), s.expected[split])
                labels = _label_names(ds, s.label_col, what)
                question = emt_prompt(labels, s.noun)
                w = JSONArrayWriter(out_dir / s.name / f"{split}.json")
                try:
                    raw = undecoded(ds, s.image_col)
                    for i in ctx.bar(range(len(raw)), desc=f"emt/{s.name}/{split}"):
                        row = raw[i]
                        rel = write_image(row[s.image_col], ctx.image_root,
                                          f"emt/{s.name}/{split}/{i:06d}", what=f"{what}: row {i}")
                        label = labels[int(row[s.label_col])]
                        w.write(llava_record(f"{s.name}-{split}-{i}", question, label, rel,
                                             label=label, labels=labels))
                    w.commit()
                except BaseException:
                    w.abort()
                    raise
                counts[split] = w.n
            return {"files": {f"{s.name}/{k}.json": n for k, n in counts.items()},
                    "counts": counts}

        results.append(run_dataset(ctx, manifest, s.name, EMT_VERSION, source, build))
    return results
