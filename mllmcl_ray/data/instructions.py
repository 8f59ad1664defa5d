"""CoIN's instruction-diversity variants (Chen et al., Sec. 4 "Impact of instruction", App. H).

CoIN builds every task's prompts as ``<question>\\n<instruction>`` with one instruction
template per task type (Tab. 1, "Original"). App. H adds two variants:

- ``diverse``: one *different* template per task (tasks no longer share "Answer the
  question using a single word or phrase");
- ``10type``: each record's template drawn at random from 10 distinct templates of its
  task.

This module holds the App. H table and rewrites records accordingly:

- :func:`choose_template` picks a record's template: seeded by (seed, task type, record
  id), so the choice does not depend on file order, sub-sampling or the reader;
- :func:`rewrite_prompt` swaps the task's original template in a human turn for the chosen
  one (case-insensitive; ``'`` and ``’`` both match; a trailing full stop is kept). A
  prompt without the original template (e.g. the micro world's EMT-style classification
  prompts) gets the chosen template appended as its last line, LLaVA's place for
  instructions. ``original`` never changes a record;
- :func:`rewrite_file` streams a LLaVA/CoIN JSON (or JSONL) file and writes the rewritten
  records as a JSON array, atomically (temp file + rename);
- :func:`variant_path` / :func:`apply_instruction_variant` write rewritten copies of a
  run's train and test files into a cache directory (keyed by the source file's path,
  size and mtime, the variant, the seed and :data:`INSTRUCTIONS_VERSION`, so a second call
  reuses them) and point the RunConfig's DataSources / EvalSets at the copies. Image paths
  stay relative; the sources keep their ``image_root``.

Notes on the App. H table (what the paper prints and what is used):

- ``10type`` cells print 11 templates per task while the text says "10 distinct
  instruction templates"; the first 10 printed are used (:data:`TEN_TYPE`).
- OCR-VQA's ``10type`` cell repeats ScienceQA's option-letter templates, an evident
  copy error (OCR-VQA answers are titles and names, not letters). TextVQA's 10 templates
  (the other OCR question-answering task, same answer form) are used instead; the
  printed cell is kept as :data:`OCRVQA_10TYPE_AS_PRINTED` for reference.
- The paper typesets ``option’s`` with a typographic apostrophe; the templates here use
  ``'`` as LLaVA's released ScienceQA prompts do, and matching accepts both.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, DataSource, EvalSet, RunConfig

INSTRUCTIONS_VERSION = "coin-apph-v1"
VARIANTS = ("original", "diverse", "10type")

# CoIN's task types (the Instructions/<Task>/ directory names of its release).
TASK_TYPES = ("ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2",
              "OCR-VQA")

_SINGLE = "Answer the question using a single word or phrase"
_LETTER = "Answer with the option's letter from the given choices directly"
_GROUND = "Please provide the bounding box coordinate of the region this sentence describes"

ORIGINAL: dict[str, str] = {
    "ScienceQA": _LETTER,
    "TextVQA": _SINGLE,
    "ImageNet": _SINGLE,
    "GQA": _SINGLE,
    "VizWiz": _SINGLE,
    "Grounding": _GROUND,
    "VQAv2": _SINGLE,
    "OCR-VQA": _SINGLE,
}

DIVERSE: dict[str, str] = {
    "ScienceQA": _LETTER,
    "TextVQA": "Capture the essence of your response in a single word or a concise phrase",
    "ImageNet": "Express your answer in a single word or a short, descriptive phrase",
    "GQA": "Respond to the question briefly, using only one word or a phrase",
    "VizWiz": "Provide a succinct response with a single word or phrase",
    "Grounding": _GROUND,
    "VQAv2": _SINGLE,
    "OCR-VQA": "Condense your answer for each question into a single word or concise phrase",
}

_LETTER_10 = (
    _LETTER,
    "Select the correct answer from the given choices and respond with the letter of the "
    "chosen option",
    "Determine the correct option from the provided choices and reply with its corresponding "
    "letter",
    "Pick the correct answer from the listed options and provide the letter of the selected "
    "option",
    "Identify the correct choice from the options below and respond with the letter of the "
    "correct option",
    "From the given choices, choose the correct answer and respond with the letter of that "
    "choice",
    "Choose the right answer from the options and respond with its letter",
    "Select the correct answer from the provided options and reply with the letter associated "
    "with it",
    "From the given choices, select the correct answer and reply with the letter of the chosen "
    "option",
    "Identify the correct option from the choices provided and respond with the letter of the "
    "correct option",
)
_TEXTVQA_10 = (
    "Answer the question with just one word or a brief phrase",
    "Use one word or a concise phrase to respond to the question",
    "Answer using only one word or a short, descriptive phrase",
    "Provide your answer in the form of a single word or a brief phrase",
    "Use a single word or a short phrase to respond to the question",
    "Summarize your response in one word or a concise phrase",
    "Respond to the question using a single word or a brief phrase",
    "Provide your answer in one word or a short, descriptive phrase",
    "Answer the question with a single word or a brief, descriptive phrase",
    "Capture the essence of your response in one word or a short phrase",
)

TEN_TYPE: dict[str, tuple[str, ...]] = {
    "ScienceQA": _LETTER_10,
    "Grounding": (
        "Identify and provide the bounding box coordinates that match the description given "
        "in this sentence",
        "Extract and provide the bounding box coordinates based on the region described in "
        "the sentence",
        _GROUND,
        "Find and provide the bounding box coordinates for the region mentioned in the sentence",
        "Provide the coordinates of the bounding box that correspond to the region described "
        "in the sentence",
        "Give the bounding box coordinates as described in the sentence",
        "Determine and provide the bounding box coordinates based on the description in the "
        "sentence",
        "Identify and provide the coordinates of the bounding box described in the sentence",
        "Provide the coordinates for the bounding box based on the region described in the "
        "sentence",
        "Extract and provide the coordinates for the bounding box described in the sentence",
    ),
    "GQA": (
        "Respond to the question with a single word or a short phrase",
        "Respond to the question using only one word or a concise phrase",
        "Answer the question with a single word or a brief phrase",
        "Respond with one word or a short phrase",
        "Provide your answer in the form of a single word or a concise phrase",
        "Respond to the question with just one word or a brief phrase",
        "Answer the question using a single word or a concise phrase",
        "Provide your response using only one word or a short phrase",
        "Respond to the question with a single word or a brief phrase",
        "Respond to the question using just one word or a concise phrase",
    ),
    "ImageNet": (
        "Express your answer in a single word or a short, descriptive phrase",
        "Provide your answer using a single word or a brief phrase",
        "Describe the content of the image using one word or a concise phrase",
        "Respond to the question with a single word or a short, descriptive phrase",
        "Classify the image content using only one word or a brief phrase",
        "Give your answer in the form of a single word or a concise phrase",
        "Use a single word or a short phrase to categorize the image content",
        "Express your answer with one word or a short, descriptive phrase",
        "Identify the type of content in the image using one word or a concise phrase",
        "Summarize your response in a single word or a brief phrase",
    ),
    "OCR-VQA": _TEXTVQA_10,  # see the module notes: the printed cell is ScienceQA's list
    "TextVQA": _TEXTVQA_10,
    "VizWiz": (
        "Answer the question using only one word or a concise phrase",
        "Respond to the question using only one word or a concise phrase",
        "Respond to the question with a single word or a brief phrase",
        "Provide your answer using just one word or a short phrase",
        "Respond with one word or a concise phrase",
        "Answer the question with just one word or a brief phrase",
        "Use a single word or a short phrase to answer the question",
        "Provide your answer in the form of one word or a brief phrase",
        "Reply to the question using one word or a concise phrase",
        "Answer with a single word or a short phrase",
    ),
    "VQAv2": (
        _SINGLE,
        "Answer the question with a single word or a brief phrase",
        "Use one word or a short phrase to respond to the question",
        "Answer the question using just one word or a concise phrase",
        "Provide your answer to the question using only one word or a brief phrase",
        "Respond to the question with a single word or a short phrase",
        "Use a single word or phrase to answer the question",
        "Provide an answer using only one word or a brief phrase",
        "Answer the question succinctly with one word or a brief phrase",
        "Answer the question with just one word or a short phrase",
    ),
}
OCRVQA_10TYPE_AS_PRINTED = _LETTER_10

_ALIASES = {re.sub(r"[^a-z0-9]", "", t.lower()): t for t in TASK_TYPES}


def task_type(name: str) -> str:
    """The CoIN task type for a name (case and punctuation ignored: "ocrvqa" → "OCR-VQA")."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    if key not in _ALIASES:
        raise ConfigError(f"unknown CoIN task type {name!r}; known: {', '.join(TASK_TYPES)}")
    return _ALIASES[key]


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ConfigError(f"instruction variant {variant!r} must be one of {', '.join(VARIANTS)}")
    return variant


def templates(task: str, variant: str) -> tuple[str, ...]:
    """The templates a record of `task` may get under `variant` (1, or 10 for 10type)."""
    t = task_type(task)
    check_variant(variant)
    if variant == "original":
        return (ORIGINAL[t],)
    if variant == "diverse":
        return (DIVERSE[t],)
    return TEN_TYPE[t]


def choose_template(task: str, variant: str, seed: int, record_id: str) -> str:
    """The record's template: seeded by (seed, task type, record id), order-independent."""
    options = templates(task, variant)
    if len(options) == 1:
        return options[0]
    h = hashlib.sha256(f"{int(seed)}\x00{task_type(task)}\x00{record_id}".encode()).digest()
    return options[int.from_bytes(h[:8], "big") % len(options)]


def _pattern(template: str) -> re.Pattern:
    body = re.sub(r"['’]", lambda _: "['’]", re.escape(template))
    return re.compile(body + r"(\.?)", re.IGNORECASE)


def rewrite_prompt(text: str, task: str, new_template: str) -> tuple[str, bool]:
    """Replace `task`'s original template in `text` by `new_template`; (text, found)."""
    pat = _pattern(ORIGINAL[task_type(task)])
    out, n = pat.subn(lambda m: new_template + m.group(1), text)
    return out, n > 0


def rewrite_record(rec: dict, task: str, variant: str, seed: int) -> dict:
    """A copy of `rec` whose human prompts carry the variant's template (see module doc)."""
    if check_variant(variant) == "original":
        return rec
    new = choose_template(task, variant, seed, str(rec.get("id", "")))
    convs = [dict(t) for t in rec.get("conversations") or []]
    found = False
    for turn in convs:
        if turn.get("from") == "human" and isinstance(turn.get("value"), str):
            turn["value"], hit = rewrite_prompt(turn["value"], task, new)
            found = found or hit
    if not found:
        first = next((t for t in convs if t.get("from") == "human"), None)
        if first is not None and isinstance(first.get("value"), str):
            first["value"] = first["value"].rstrip() + "\n" + new + "."
    out = dict(rec)
    out["conversations"] = convs
    out["instruction_variant"] = variant
    return out


@dataclass
class RewriteStats:
    path: str
    records: int = 0
    appended: int = 0  # records whose prompt had no original template (template appended)


def rewrite_file(src: str | Path, dst: str | Path, task: str, variant: str, seed: int
                 ) -> RewriteStats:
    """Stream `src` (JSON array or JSONL), rewrite every record, write a JSON array at
    `dst` atomically. Records are not validated here (the reader does that later)."""
    from .instruct import iter_raw

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    stats = RewriteStats(str(dst))
    pat = _pattern(ORIGINAL[task_type(task)])
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("[")
            for idx, rec in iter_raw(src):
                if isinstance(rec, dict) and variant != "original":
                    had = any(pat.search(t.get("value", "")) for t in rec.get("conversations") or []
                              if isinstance(t, dict) and t.get("from") == "human"
                              and isinstance(t.get("value"), str))
                    stats.appended += 0 if had else 1
                    rec = rewrite_record(rec, task, variant, seed)
                f.write(("," if idx else "") + "\n" + json.dumps(rec, ensure_ascii=False))
                stats.records += 1
            f.write("\n]\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return stats


def _source_key(path: Path, task: str, variant: str, seed: int) -> str:
    st = path.stat()
    blob = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, task_type(task), variant,
                       int(seed), INSTRUCTIONS_VERSION])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def variant_path(src: str | Path, task: str, variant: str, seed: int, cache_dir: str | Path
                 ) -> Path:
    """The rewritten copy of `src` in `cache_dir` (written once; `src` itself for original)."""
    src = Path(src)
    if check_variant(variant) == "original":
        return src
    if not src.exists():
        raise ConfigError(f"instruction variant {variant}: data file {src} does not exist")
    key = _source_key(src, task, variant, seed)
    dst = Path(cache_dir) / f"{variant}-s{int(seed)}" / task_type(task) / f"{src.stem}-{key}.json"
    if not dst.exists():
        rewrite_file(src, dst, task, variant, seed)
    return dst


def apply_instruction_variant(cfg: RunConfig, task_types: dict[str, str | None], variant: str,
                              seed: int, cache_dir: str | Path) -> RunConfig:
    """Point every task's train sources and eval sets at rewritten copies (in place; returns
    `cfg`). `task_types` maps a task name to its CoIN task type; a task mapped to None (or
    missing) keeps its prompts."""
    check_variant(variant)
    if variant == "original":
        return cfg
    for t in cfg.tasks:
        tt = task_types.get(t.name)
        if tt is None:
            continue
        t.train = [DataSource(path=str(variant_path(s.path, tt, variant, seed, cache_dir)),
                              image_root=s.image_root or str(Path(s.path).parent),
                              fraction=s.fraction, missing_image=s.missing_image)
                   for s in t.train]
        t.eval = [EvalSet(name=e.name, path=str(variant_path(e.path, tt, variant, seed, cache_dir)),
                          image_root=e.image_root or str(Path(e.path).parent), kind=e.kind,
                          max_samples=e.max_samples, max_new_tokens=e.max_new_tokens)
                  for e in t.eval]
    return cfg
