"""The micro world: a seeded synthetic stand-in for the papers' data, small enough for CPUs.

``generate_world(out_dir, seed=0, size="micro")`` writes everything below and returns a
:class:`WorldManifest` (also saved, last and atomically, as ``out_dir/manifest.json``).
A second call with the same seed, size and :data:`WORLD_VERSION` returns the saved
manifest without touching any file; a directory without a (matching) manifest is
regenerated from scratch. Same seed -> byte-identical files (no timestamps anywhere).

Layout (paths relative to ``out_dir``)::

    manifest.json                 written last (atomic rename)
    corpus/train.jsonl            {"text": ...} documents for pretraining the base LLM (task 1)
    corpus/val.jsonl              held-out documents of the same mixture (NL loss)
    corpus/kb.jsonl               the knowledge base: {"statements", "question", "answer", "category"}
    nl/lambada.jsonl              NLG   {"id", "context", "target", "kind"}
    nl/arc_easy.jsonl             NLU   {"id", "question", "choices", "label", "answer", "category"}
    nl/arc_challenge.jsonl        NLU   same shape, story-reading questions
    nl/winogrande.jsonl           NLU   {"id", "sentence" (with "_"), "option1", "option2", "answer": "1"|"2"}
    nl/wsc.jsonl                  NLU   see below
    vl/<task>/train.json          LLaVA conversation JSON arrays
    vl/<task>/test.json           ... plus the fields the scorer needs
    vl/scenes.jsonl               {"image", "kind", ...} how every image was drawn (re-renderable)
    images/scenes/<split>/NNNNNN.png   shape scenes shared by caption / instruct / vqa / grounding
    images/{ocr,shapes,digits}/<split>/NNNNNN.png

**Text corpus** (Task 1; see :mod:`.text`). Template documents over a shared vocabulary
(24 names, 10 colours, 18 objects of which 6 are shape nouns, 12 places, 5 positions,
numbers): 75 % stories whose last word copies an entity from earlier in the passage
(the Lambada skill: "... Anna gave the red ball to Tom. ... Later, Tom played with the red
ball"), 7.5 % story quizzes in the ARC prompt format, 10 % knowledge-base documents
(80 common-sense facts + 72 seeded facts about the characters, with Question/Answer
pairs), 7.5 % Winograd-style "because/so" sentences. ``micro``: 40,000 docs, ~2.8M
word/punctuation tokens over 400 distinct ones (a ~1k BPE keeps one token per word).
The VL answers use the same colour, shape, number and position words, so VL fine-tuning
shifts probability mass onto words the NL evals need.

**NL suite** (shaped like the papers' Lambada / ARC-E / ARC-C / Winogrande / WSC; all held
out: separate random streams, Lambada contexts never occur in the corpus):

- ``lambada`` (nlg): a held-out story; ``context`` ends before the last word ``target``.
  Accuracy = the greedy continuation's first word equals ``target``.
- ``arc_easy`` (nlu): a knowledge-base question, 4 choices (same-category distractors,
  drawn as often as answers are, so a word-frequency prior scores ~0.32, chance 0.25),
  ``label`` = index of the answer. Prompt ``"Question: {question}\\nAnswer:"``, choices
  scored as ``" {choice}"`` (lm-eval ARC). Items cycle over the 152 facts (several items
  per fact with other distractors / order), so the effective sample is the number of facts.
- ``arc_challenge`` (nlu): ``question`` = a short story + a question that needs tracking it
  (who has the object now, where it was first / is now, which colour is the thing X has,
  how many things Y had, who is tallest / shortest); distractors include the story's other
  entity, and "pick the entity mentioned last" scores ~0.5.
- ``winogrande`` (nlu): lm-eval partial evaluation: context = ``sentence`` up to ``_`` with
  the option substituted, continuation = the rest; schemas give / race / tall / wait / fit.
- ``wsc`` (nlu, two-choice form): ``text`` with a pronoun; ``options`` (two candidates),
  ``pronoun``, ``pronoun_loc`` (char offset), ``answer`` (index of the referent). Score as
  lm-eval's wsc273: context = ``text[:pronoun_loc] + option``, continuation =
  ``text[pronoun_loc + len(pronoun):]``. The SuperGLUE fields are there too: ``span1``
  (a candidate, ``span1_index`` word index), ``span2`` (the pronoun), ``label`` 1 when
  span1 is the referent (balanced). Person schemas use same-gender pairs, so the pronoun
  alone does not decide. Schemas thank / help / ask / fit / fall.

**VL tasks** (all images ``image_size`` px, default 32, RGB PNG; ``<image>`` once, at the
start of the first human turn; test records carry ``answers`` and the fields below):

=========== ============== ============================================================
task        eval           what
=========== ============== ============================================================
caption     exact          alignment stage (LCS-558K stand-in): human ``<image>``,
                           gpt "a small red circle on the left and a large blue square on
                           the right"; 1-3 objects, 4 shapes, 7 colours, dark background
instruct    exact          LLaVA-Instruct stand-in (Srivastava Table 4 task 2): 1-3 turns
                           of varied questions with sentence answers (test: 1 turn; the
                           paper scores no VL set for this task)
vqa         vqa            VQAv2/GQA stand-in: colour / shape / count / position / yes-no /
                           relation questions + "Answer the question using a single word or
                           phrase."; test ``answers`` = 10 references (mostly identical,
                           sometimes a synonym: "violet", "2", "on the left")
ocr         exact          OCR-VQA / TextVQA stand-in: one of 20 short words drawn with
                           PIL's bitmap font; "What word is written in the image?" (train:
                           30 % ask 'Is the word "X" written in the image?' → yes/no, as
                           OCR-VQA's yes/no questions; test: always the word)
grounding   grounding      RefCOCO stand-in: "Give the bounding box of the red circle."
                           -> "[0.12, 0.25, 0.50, 0.62]" (LLaVA's normalised x1, y1, x2, y2,
                           2 decimals, rounded outward so the box covers every object
                           pixel); test ``bbox``; score IoU >= 0.5
digits      classification EMT MNIST stand-in: scikit-learn ``load_digits()`` images,
                           upscaled, EMT prompt "What is the object in the image? Please
                           only answer a single object in zero, one, ..., nine."
shapes      classification EMT CIFAR stand-in: one of 6 shapes, any colour / size / place,
                           slightly rotated, on a noisy gradient; same prompt, 6 labels
=========== ============== ============================================================

Classification test records carry ``label`` and ``labels``. As LLaVA's tasks share COCO
images, caption / instruct / vqa / grounding share one pool of scene images per split
(caption uses every train image, the others a seeded subset; all four test sets use the
same test images with different questions). Train and test come from different random
streams and share no image (no scene) and, for digits, no ``load_digits`` index.

**Sizes** (:data:`WORLD_SIZES`):

- ``tiny`` (unit tests): 400 + 40 corpus docs, 50 items per NL set, 32 train / 16 test
  records per VL task (digits: 32 / 16, every class present); 215 files. ~0.2 s
  (up to ~1 s on a saturated machine).
- ``micro`` (default study): 40,000 + 800 corpus docs (2.3M words, ~2.8M word and
  punctuation tokens, 400 distinct), 500 items per NL set, 3,000 train records per VL
  task (caption 6,000 = the whole scene pool; digits every image not in test: 1,547),
  250 test records per VL task; 14,570 files, ~81 MB. ~7 s of CPU (single process):
  ~8-13 s wall on a 2-core machine, 35-60 s when other jobs saturate it.

A custom size is ``dataclasses.replace(WORLD_SIZES["micro"], image_size=64, ...)``
(``image_size`` >= 32; OCR text is scaled by ``image_size // 32``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import scenes as SC
from . import vltasks as VT
from . import vocab as V
from .rand import Rand
from .text import QUIZ_POOL, WINO_SCHEMAS, WSC_SCHEMAS, TextGen

WORLD_VERSION = "3"  # bump whenever the generator's output changes
MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "mllmcl-micro-world"
_MANAGED = ("corpus", "nl", "vl", "images", MANIFEST_NAME, MANIFEST_NAME + ".tmp")  # regeneration deletes these
_LOCK_NAME = ".world.lock"

VL_TASKS: tuple[str, ...] = ("caption", "instruct", "vqa", "ocr", "grounding", "digits", "shapes")
NL_DATASETS: tuple[str, ...] = ("lambada", "arc_easy", "arc_challenge", "winogrande", "wsc")

VL_TASK_INFO: dict[str, dict[str, str]] = {
    "caption": {"eval": "exact", "analogue": "LCS-558K (alignment)",
                "description": "plain captions; human value is just <image>"},
    "instruct": {"eval": "exact", "analogue": "LLaVA-Instruct (Srivastava task 2)",
                 "description": "1-3 turn questions with short descriptive answers"},
    "vqa": {"eval": "vqa_norm", "analogue": "VQAv2 / GQA (task 3)",
            "description": "colour/shape/count/position/yes-no/relation, single-word answers, 10 references"},
    "ocr": {"eval": "exact", "analogue": "OCR-VQA / TextVQA (task 4)",
            "description": "a word drawn with the PIL bitmap font"},
    "grounding": {"eval": "grounding", "analogue": "RefCOCO (task 5)",
                  "description": "referring expression -> [x1, y1, x2, y2] normalised, 2 decimals; IoU >= 0.5"},
    "digits": {"eval": "classification", "analogue": "EMT MNIST",
               "description": "scikit-learn load_digits images, EMT prompt"},
    "shapes": {"eval": "classification", "analogue": "EMT CIFAR-10",
               "description": "one rendered shape on a noisy gradient, EMT prompt"},
}

NL_INFO: dict[str, dict[str, str]] = {
    "lambada": {"kind": "nlg", "format": "lambada",
                "prompt": "{context}", "scoring": "greedy continuation's first word == target"},
    "arc_easy": {"kind": "nlu", "format": "arc",
                 "prompt": "Question: {question}\nAnswer:", "scoring": "argmax loglik of ' {choice}' == label"},
    "arc_challenge": {"kind": "nlu", "format": "arc",
                      "prompt": "Question: {question}\nAnswer:", "scoring": "argmax loglik of ' {choice}' == label"},
    "winogrande": {"kind": "nlu", "format": "winogrande",
                   "prompt": "sentence[:sentence.index('_')] + option",
                   "scoring": "argmax over options of loglik(sentence after '_' | prompt) == answer"},
    "wsc": {"kind": "nlu", "format": "wsc",
            "prompt": "text[:pronoun_loc] + option",
            "scoring": "argmax over options of loglik(text[pronoun_loc+len(pronoun):] | prompt) == answer"},
}


# ------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class WorldSize:
    """How much of everything to generate."""

    name: str
    corpus_train_docs: int
    corpus_val_docs: int
    nl_items: int          # items per NL dataset
    vl_train: int          # train records per VL task (caption: caption_train)
    caption_train: int
    vl_test: int           # test records per VL task
    digits_train: int | None = None  # None: every load_digits image not in the test split
    image_size: int = 32

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError("image_size must be >= 32 (OCR words need 30 px)")
        if self.vl_test < 10 or self.vl_test > 1000:
            raise ValueError("vl_test must be in [10, 1000]")
        for f in ("corpus_train_docs", "corpus_val_docs", "nl_items", "vl_train", "caption_train"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorldSize":
        return cls(**d)


WORLD_SIZES: dict[str, WorldSize] = {
    "tiny": WorldSize("tiny", corpus_train_docs=400, corpus_val_docs=40, nl_items=50,
                      vl_train=32, caption_train=32, vl_test=16, digits_train=32),
    "micro": WorldSize("micro", corpus_train_docs=40_000, corpus_val_docs=800, nl_items=500,
                       vl_train=3000, caption_train=6000, vl_test=250, digits_train=None),
}


def resolve_size(size: WorldSize | str) -> WorldSize:
    if isinstance(size, WorldSize):
        return size
    try:
        return WORLD_SIZES[size]
    except KeyError:
        raise ValueError(f"unknown world size {size!r}; known: {sorted(WORLD_SIZES)}") from None


# ---------------------------------------------------------------------------- manifest
@dataclass
class NLDataset:
    name: str
    path: Path
    kind: str        # "nlg" | "nlu"
    format: str      # "lambada" | "arc" | "winogrande" | "wsc"
    n: int
    prompt: str
    scoring: str


@dataclass
class VLTask:
    name: str
    train: Path
    test: Path
    eval: str                    # "vqa" | "exact" | "grounding" | "classification"
    n_train: int
    n_test: int
    labels: list[str] | None = None
    analogue: str = ""
    description: str = ""
    max_new_tokens: int = 16     # generation budget that fits every reference answer


@dataclass
class WorldManifest:
    """What a world holds; paths are absolute here, relative to ``root`` in the JSON."""

    root: Path
    version: str
    seed: int
    size: WorldSize
    image_size: int
    corpus_train: Path
    corpus_val: Path
    kb: Path
    n_corpus_train: int
    n_corpus_val: int
    n_corpus_words: int
    nl: dict[str, NLDataset]
    vl: dict[str, VLTask]
    images_dir: Path
    scenes: Path
    vocab: dict[str, list[str]]
    n_files: int
    content_hash: str
    format: str = FORMAT_NAME

    # -- (de)serialisation -------------------------------------------------------------
    def _rel(self, p: Path) -> str:
        return Path(p).relative_to(self.root).as_posix()

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "version": self.version,
            "seed": self.seed,
            "size": self.size.to_dict(),
            "image_size": self.image_size,
            "corpus": {"train": self._rel(self.corpus_train), "val": self._rel(self.corpus_val),
                       "kb": self._rel(self.kb), "n_train": self.n_corpus_train,
                       "n_val": self.n_corpus_val, "n_train_words": self.n_corpus_words},
            "nl": {k: {"path": self._rel(d.path), "kind": d.kind, "format": d.format, "n": d.n,
                       "prompt": d.prompt, "scoring": d.scoring} for k, d in self.nl.items()},
            "vl": {k: {"train": self._rel(t.train), "test": self._rel(t.test), "eval": t.eval,
                       "n_train": t.n_train, "n_test": t.n_test, "labels": t.labels,
                       "max_new_tokens": t.max_new_tokens,
                       "analogue": t.analogue, "description": t.description}
                   for k, t in self.vl.items()},
            "images_dir": self._rel(self.images_dir),
            "scenes": self._rel(self.scenes),
            "vocab": self.vocab,
            "n_files": self.n_files,
            "content_hash": self.content_hash,
        }

    @classmethod
    def from_json_dict(cls, d: dict[str, Any], root: str | os.PathLike) -> "WorldManifest":
        root = Path(root).resolve()
        if d.get("format") != FORMAT_NAME:
            raise ValueError(f"not a micro world manifest: format={d.get('format')!r}")
        c = d["corpus"]
        return cls(
            root=root, version=d["version"], seed=int(d["seed"]),
            size=WorldSize.from_dict(d["size"]), image_size=int(d["image_size"]),
            corpus_train=root / c["train"], corpus_val=root / c["val"], kb=root / c["kb"],
            n_corpus_train=c["n_train"], n_corpus_val=c["n_val"], n_corpus_words=c["n_train_words"],
            nl={k: NLDataset(name=k, path=root / v["path"], kind=v["kind"], format=v["format"],
                             n=v["n"], prompt=v["prompt"], scoring=v["scoring"])
                for k, v in d["nl"].items()},
            vl={k: VLTask(name=k, train=root / v["train"], test=root / v["test"], eval=v["eval"],
                          n_train=v["n_train"], n_test=v["n_test"], labels=v["labels"],
                          analogue=v.get("analogue", ""), description=v.get("description", ""),
                          max_new_tokens=v.get("max_new_tokens", 16))
                for k, v in d["vl"].items()},
            images_dir=root / d["images_dir"], scenes=root / d["scenes"], vocab=d["vocab"],
            n_files=d["n_files"], content_hash=d["content_hash"], format=d["format"],
        )

    @classmethod
    def load(cls, root: str | os.PathLike) -> "WorldManifest":
        root = Path(root)
        with open(root / MANIFEST_NAME, encoding="utf-8") as f:
            return cls.from_json_dict(json.load(f), root)

    # -- helpers -----------------------------------------------------------------------
    def image_path(self, record: dict) -> Path:
        return self.images_dir / record["image"]

    def files(self) -> list[Path]:
        """The files the content hash covers (all but the manifest)."""
        return [self.root / rel for rel in _walk_managed(self.root)]

    def compute_content_hash(self) -> str:
        digests = {}
        for rel in _walk_managed(self.root):
            digests[rel] = hashlib.sha256((self.root / rel).read_bytes()).hexdigest()
        return _combine(digests)

    def verify(self) -> bool:
        """Re-hash every file on disk and compare with the manifest (~1 s for micro)."""
        return self.compute_content_hash() == self.content_hash


def _walk_managed(root: Path) -> list[str]:
    out = []
    for top in _MANAGED:
        p = root / top
        if not p.is_dir():
            continue
        for dirpath, _, files in os.walk(p):
            for fn in files:
                out.append((Path(dirpath) / fn).relative_to(root).as_posix())
    return sorted(out)


def _combine(digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(digests):
        h.update(f"{rel}\t{digests[rel]}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------ writing
class _Writer:
    def __init__(self, root: Path):
        self.root = root
        self.digests: dict[str, str] = {}
        self._dirs: set[str] = set()

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        parent = str(path.parent)
        if parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(parent)
        with open(path, "wb") as f:
            f.write(data)
        self.digests[rel] = hashlib.sha256(data).hexdigest()

    def write_jsonl(self, rel: str, rows) -> int:
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
        self.write_bytes(rel, "".join(lines).encode("utf-8"))
        return len(lines)

    def write_json_array(self, rel: str, rows: list[dict]) -> int:
        body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
        self.write_bytes(rel, ("[\n" + body + "\n]\n").encode("utf-8"))
        return len(rows)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive inter-process lock on ``root`` (POSIX flock; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    with open(root / _LOCK_NAME, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- generation
def _corpus(w: _Writer, seed: int, size: WorldSize, kb) -> tuple[set[str], dict[str, Any]]:
    gen = TextGen(Rand.named(seed, "corpus", "train"), kb)
    train = [gen.document()[1] for _ in range(size.corpus_train_docs)]
    gen = TextGen(Rand.named(seed, "corpus", "val"), kb)
    val = [gen.document()[1] for _ in range(size.corpus_val_docs)]
    w.write_jsonl("corpus/train.jsonl", ({"text": t} for t in train))
    w.write_jsonl("corpus/val.jsonl", ({"text": t} for t in val))
    w.write_jsonl("corpus/kb.jsonl", ({"statements": list(s), "question": q, "answer": a, "category": c}
                                      for s, q, a, c in kb))
    n_words = sum(len(t.split()) for t in train)
    return set(train) | set(val), {"n_train": len(train), "n_val": len(val), "n_words": n_words}


def _unique(make, n: int, seen: set[str], key, max_tries: int = 50) -> list[dict]:
    out = []
    for i in range(n):
        for _ in range(max_tries):
            item = make(i)
            k = key(item)
            if k not in seen:
                break
        seen.add(k)
        out.append(item)
    return out


def _nl_suite(w: _Writer, seed: int, size: WorldSize, kb, corpus_texts: set[str]) -> dict[str, int]:
    n = size.nl_items
    counts = {}

    # lambada: held-out stories (never a corpus document), context without the last word
    gen = TextGen(Rand.named(seed, "nl", "lambada"), kb)
    seen = set(corpus_texts)

    def lam(i):
        s = gen.story()
        return {"id": f"lambada-{i:05d}", "context": s.context, "target": s.target, "kind": s.kind,
                "_text": s.text}

    items = _unique(lam, n, seen, key=lambda it: it["_text"])
    for it in items:
        del it["_text"]
    counts["lambada"] = w.write_jsonl("nl/lambada.jsonl", items)

    # arc_easy: knowledge-base questions, cycling over a seeded order of the facts
    rnd = Rand.named(seed, "nl", "arc_easy")
    gen = TextGen(rnd, kb)
    order = rnd.permutation(len(kb))
    # distractors are drawn like answers are (in proportion to how many facts of the
    # category have them as answer, +0.5), so a word-frequency prior stays near chance
    weights: dict[str, dict[str, float]] = {}
    for _, _, a, cat in kb:
        wc = weights.setdefault(cat, {w: 0.5 for w in V.CATEGORY_WORDS[cat]})
        wc[a] = wc.get(a, 0.5) + 1.0
    items = []
    for i in range(n):
        _, q, a, cat = kb[order[i % len(kb)]]
        qwords = set(q.rstrip("?").lower().split())
        choices, label = gen.mc_choices(a, V.CATEGORY_WORDS[cat], exclude=qwords, weights=weights[cat])
        items.append({"id": f"arc_easy-{i:05d}", "question": q, "choices": choices, "label": label,
                      "answer": a, "category": cat})
    counts["arc_easy"] = w.write_jsonl("nl/arc_easy.jsonl", items)

    # arc_challenge: story-reading questions
    gen = TextGen(Rand.named(seed, "nl", "arc_challenge"), kb)

    def chal(i):
        story, q, strong, a, kind = gen.quiz()
        choices, label = gen.mc_choices(a, QUIZ_POOL[kind], strong=strong)
        return {"id": f"arc_challenge-{i:05d}", "question": f"{story} {q}", "choices": choices,
                "label": label, "answer": a, "category": kind}

    items = _unique(chal, n, set(), key=lambda it: it["question"])
    counts["arc_challenge"] = w.write_jsonl("nl/arc_challenge.jsonl", items)

    # winogrande: balanced over schemas and both alternatives
    rnd = Rand.named(seed, "nl", "winogrande")
    gen = TextGen(rnd, kb)

    def wino(i):
        return {"id": "", **gen.winogrande_item(WINO_SCHEMAS[i % len(WINO_SCHEMAS)],
                                                (i // len(WINO_SCHEMAS)) % 2)}

    items = rnd.shuffled(_unique(wino, n, set(), key=lambda it: it["sentence"]))
    for i, it in enumerate(items):
        it["id"] = f"winogrande-{i:05d}"
    counts["winogrande"] = w.write_jsonl("nl/winogrande.jsonl", items)

    # wsc: balanced over schemas, alternatives and SuperGLUE labels
    rnd = Rand.named(seed, "nl", "wsc")
    gen = TextGen(rnd, kb)
    k = len(WSC_SCHEMAS)

    def wsc(i):
        return {"id": "", **gen.wsc_item(WSC_SCHEMAS[i % k], (i // k) % 2, positive=(i // (2 * k)) % 2 == 0)}

    items = rnd.shuffled(_unique(wsc, n, set(), key=lambda it: it["text"] + it["span1"]))
    for i, it in enumerate(items):
        it["id"] = f"wsc-{i:05d}"
    counts["wsc"] = w.write_jsonl("nl/wsc.jsonl", items)
    return counts


def _conversations(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    conv = []
    for j, (q, a) in enumerate(turns):
        if j == 0:
            q = "<image>" if not q else "<image>\n" + q
        conv.append({"from": "human", "value": q})
        conv.append({"from": "gpt", "value": a})
    return conv


class _VLWriter:
    def __init__(self, w: _Writer, seed: int, size: WorldSize):
        self.w = w
        self.seed = seed
        self.S = size.image_size
        self.scenes: list[dict] = []

    def add(self, task: str, split: str, i: int, scene: dict, img) -> str:
        rel = f"{task}/{split}/{i:06d}.png"
        self.w.write_bytes(f"images/{rel}", SC.png_bytes(img))
        self.scenes.append({"image": rel, **scene})
        return rel

    @staticmethod
    def record(task: str, split: str, i: int, image: str, turns, extra: dict) -> dict:
        rec = {"id": f"{task}-{split}-{i:06d}", "image": image, "conversations": _conversations(turns)}
        if split == "test":
            rec.update(extra)
        return rec


SCENE_TASKS: tuple[str, ...] = ("caption", "instruct", "vqa", "grounding")


def _scene_tasks(vw: _VLWriter, size: WorldSize) -> dict[str, dict[str, list[dict]]]:
    """caption / instruct / vqa / grounding share pools of `scene` images (as LLaVA's
    tasks share COCO): a train pool of max(caption_train, vl_train) images, each task's
    train records on a seeded subset of it, and one test pool used by every task's test."""
    pools: dict[str, list[tuple[str, dict, list]]] = {}
    train_keys: set[str] = set()
    n_pool = {"train": max(size.caption_train, size.vl_train), "test": size.vl_test}
    for split in ("train", "test"):
        rnd = Rand.named(vw.seed, "vl", "scenes", split)
        pool = []
        for i in range(n_pool[split]):
            while True:
                scene = SC.sample_scene(rnd, vw.S)
                key = json.dumps(scene, sort_keys=True)
                if split == "train" or key not in train_keys:
                    break
            if split == "train":
                train_keys.add(key)
            img, masks = SC.render(scene)
            for obj, m in zip(scene["objects"], masks):
                obj["bbox_px"] = list(SC.pixel_bbox(m))
            pool.append((vw.add("scenes", split, i, scene, img), scene, masks))
        pools[split] = pool
    out: dict[str, dict[str, list[dict]]] = {}
    for task in SCENE_TASKS:
        out[task] = {}
        for split in ("train", "test"):
            rnd = Rand.named(vw.seed, "vl", task, split)
            pool = pools[split]
            n = (size.caption_train if task == "caption" else size.vl_train) if split == "train" else len(pool)
            idx = sorted(rnd.pick_k(range(len(pool)), n)) if n < len(pool) else list(range(len(pool)))
            test = split == "test"
            recs = []
            for i, j in enumerate(idx):
                rel, scene, masks = pool[j]
                if task == "caption":
                    turns, extra = VT.build_caption(rnd, scene)
                elif task == "instruct":
                    turns, extra = VT.build_instruct(rnd, scene, max_turns=1 if test else 3)
                elif task == "vqa":
                    turns, extra = VT.build_vqa(rnd, scene)
                else:
                    turns, extra = VT.build_grounding(rnd, scene, masks, test=test)
                recs.append(vw.record(task, split, i, rel, turns, extra))
            out[task][split] = recs
    return out


def _ocr_task(vw: _VLWriter, n_train: int, n_test: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    train_keys: set[str] = set()
    for split, n in (("train", n_train), ("test", n_test)):
        rnd = Rand.named(vw.seed, "vl", "ocr", split)
        words = rnd.shuffled([V.OCR_WORDS[i % len(V.OCR_WORDS)] for i in range(n)])
        recs = []
        for i, word in enumerate(words):
            while True:
                scene = SC.sample_ocr_image(rnd, vw.S, word)
                key = json.dumps(scene, sort_keys=True)
                if split == "train" or key not in train_keys:
                    break
            if split == "train":
                train_keys.add(key)
            img, _ = SC.render(scene)
            turns, extra = VT.build_ocr(rnd, scene, test=split == "test")
            rel = vw.add("ocr", split, i, scene, img)
            recs.append(vw.record("ocr", split, i, rel, turns, extra))
        out[split] = recs
    return out


def _shapes_task(vw: _VLWriter, n_train: int, n_test: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    labels = V.CLASS_SHAPES
    for split, n in (("train", n_train), ("test", n_test)):
        rnd = Rand.named(vw.seed, "vl", "shapes", split)
        ys = rnd.shuffled([labels[i % len(labels)] for i in range(n)])
        recs = []
        for i, y in enumerate(ys):
            scene = SC.sample_shape_image(rnd, vw.S, y)  # continuous draws: no repeats in practice
            img, _ = SC.render(scene)
            turns, extra = VT.build_classification(y, labels)
            rel = vw.add("shapes", split, i, scene, img)
            recs.append(vw.record("shapes", split, i, rel, turns, extra))
        out[split] = recs
    return out


def digits_split(seed: int, n_test: int, n_train: int | None) -> tuple[list[int], list[int]]:
    """Stratified, seeded, disjoint (train, test) index lists into load_digits()."""
    _, target = SC.digits_data()
    rnd = Rand.named(seed, "vl", "digits", "split")
    by_class = [rnd.shuffled([int(i) for i in range(len(target)) if target[i] == c]) for c in range(10)]
    class_order = rnd.permutation(10)
    per_test = [n_test // 10 + (1 if class_order.index(c) < n_test % 10 else 0) for c in range(10)]
    test = [i for c in range(10) for i in by_class[c][: per_test[c]]]
    rest = [by_class[c][per_test[c]:] for c in range(10)]
    if n_train is None:
        train = [i for r in rest for i in r]
    else:  # round-robin over classes so every class is present
        train = []
        depth = 0
        while len(train) < n_train and any(depth < len(r) for r in rest):
            for c in class_order:
                if depth < len(rest[c]) and len(train) < n_train:
                    train.append(rest[c][depth])
            depth += 1
    return rnd.shuffled(train), rnd.shuffled(test)


def _digits_task(vw: _VLWriter, n_train: int | None, n_test: int) -> dict[str, list[dict]]:
    _, target = SC.digits_data()
    labels = V.DIGIT_WORDS
    train_idx, test_idx = digits_split(vw.seed, n_test, n_train)
    out: dict[str, list[dict]] = {}
    for split, idxs in (("train", train_idx), ("test", test_idx)):
        recs = []
        for i, di in enumerate(idxs):
            y = labels[int(target[di])]
            scene = {"kind": "digit", "size": vw.S, "index": di, "label": y}
            img = SC.render_digit(di, vw.S)
            turns, extra = VT.build_classification(y, labels)
            rel = vw.add("digits", split, i, scene, img)
            recs.append(vw.record("digits", split, i, rel, turns, extra))
        out[split] = recs
    return out


def _vl_tasks(w: _Writer, seed: int, size: WorldSize) -> dict[str, dict[str, int]]:
    vw = _VLWriter(w, seed, size)
    counts = {}
    scene_recs = _scene_tasks(vw, size)
    for task in VL_TASKS:
        if task in SCENE_TASKS:
            recs = scene_recs[task]
        elif task == "ocr":
            recs = _ocr_task(vw, size.vl_train, size.vl_test)
        elif task == "shapes":
            recs = _shapes_task(vw, size.vl_train, size.vl_test)
        else:
            recs = _digits_task(vw, size.digits_train, size.vl_test)
        counts[task] = {split: w.write_json_array(f"vl/{task}/{split}.json", r) for split, r in recs.items()}
        counts[task]["max_new_tokens"] = _max_new_tokens(recs)
    w.write_jsonl("vl/scenes.jsonl", vw.scenes)
    return counts


_PIECES = re.compile(r"[A-Za-z]+|\d|[^\w\s]")


def _max_new_tokens(recs: dict[str, list[dict]]) -> int:
    """2 x the most word / digit / punctuation pieces in any answer + 2 (end of text), at
    least 8: a generous budget for any sub-word tokenizer trained on the world."""
    most = max(len(_PIECES.findall(c["value"])) for rs in recs.values() for r in rs
               for c in r["conversations"] if c["from"] == "gpt")
    return max(8, 2 * most + 2)


def _vocab() -> dict[str, list[str]]:
    return {
        "names": list(V.NAMES), "colors": list(V.COLORS), "vl_colors": list(V.VL_COLORS),
        "objects": list(V.OBJECTS), "scene_shapes": list(V.SCENE_SHAPES),
        "class_shapes": list(V.CLASS_SHAPES), "places": list(V.PLACES), "positions": list(V.POSITIONS),
        "numbers": list(V.NUMBERS), "digit_words": list(V.DIGIT_WORDS), "ocr_words": list(V.OCR_WORDS),
    }


def _generate(root: Path, seed: int, size: WorldSize) -> WorldManifest:
    w = _Writer(root)
    kb = V.common_facts() + V.character_facts(Rand.named(seed, "kb"))
    corpus_texts, cstats = _corpus(w, seed, size, kb)
    nl_counts = _nl_suite(w, seed, size, kb, corpus_texts)
    vl_counts = _vl_tasks(w, seed, size)
    labels = {"digits": list(V.DIGIT_WORDS), "shapes": list(V.CLASS_SHAPES)}
    return WorldManifest(
        root=root.resolve(), version=WORLD_VERSION, seed=seed, size=size, image_size=size.image_size,
        corpus_train=root.resolve() / "corpus/train.jsonl", corpus_val=root.resolve() / "corpus/val.jsonl",
        kb=root.resolve() / "corpus/kb.jsonl",
        n_corpus_train=cstats["n_train"], n_corpus_val=cstats["n_val"], n_corpus_words=cstats["n_words"],
        nl={k: NLDataset(name=k, path=root.resolve() / f"nl/{k}.jsonl", n=nl_counts[k], **NL_INFO[k])
            for k in NL_DATASETS},
        vl={k: VLTask(name=k, train=root.resolve() / f"vl/{k}/train.json",
                      test=root.resolve() / f"vl/{k}/test.json", n_train=vl_counts[k]["train"],
                      n_test=vl_counts[k]["test"], labels=labels.get(k),
                      max_new_tokens=vl_counts[k]["max_new_tokens"], **VL_TASK_INFO[k])
            for k in VL_TASKS},
        images_dir=root.resolve() / "images", scenes=root.resolve() / "vl/scenes.jsonl",
        vocab=_vocab(), n_files=len(w.digests), content_hash=_combine(w.digests),
    )


def _matching_manifest(root: Path, seed: int, size: WorldSize) -> WorldManifest | None:
    try:
        m = WorldManifest.load(root)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if m.version != WORLD_VERSION or m.seed != seed or m.size != size:
        return None
    core = [m.corpus_train, m.corpus_val, m.scenes] + [d.path for d in m.nl.values()] + [
        p for t in m.vl.values() for p in (t.train, t.test)]
    return m if all(p.is_file() for p in core) else None


def _clean(root: Path) -> None:
    for name in _MANAGED:
        p = root / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def generate_world(out_dir: str | os.PathLike, seed: int = 0,
                   size: WorldSize | str = "micro") -> WorldManifest:
    """Write the micro world to ``out_dir`` (or return the one already there).

    Idempotent: a complete world with the same seed, size and version (its manifest is
    written last, atomically) is returned as is. Anything else under the managed paths
    (``corpus/ nl/ vl/ images/ manifest.json``) is deleted and regenerated; other files in
    ``out_dir`` are left alone. Concurrent callers on one directory serialise on a lock.
    """
    size = resolve_size(size)
    seed = int(seed)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        existing = _matching_manifest(root, seed, size)
        if existing is not None:
            return existing
        _clean(root)
        manifest = _generate(root, seed, size)
        tmp = root / (MANIFEST_NAME + ".tmp")
        tmp.write_text(json.dumps(manifest.to_json_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, root / MANIFEST_NAME)
        return manifest


def load_world(out_dir: str | os.PathLike) -> WorldManifest:
    """Load the manifest of a generated world (no generation, no checks)."""
    return WorldManifest.load(out_dir)


def read_vl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
