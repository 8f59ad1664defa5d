"""The NL suite (Srivastava B.2): the Hugging Face datasets lm-evaluation-harness's tasks
load, with the same config and split (lm_eval/tasks/*/: ``dataset_path``,
``dataset_name``, ``test_split`` or else ``validation_split``), written as the JSON Lines
`eval/suites/nl.py` reads (``<root>/nl/<name>.jsonl``)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .base import (Manifest, PrepareContext, SourceError, atomic_write_json, check_expected,
                   load_split, require_fields, run_dataset)

NL_VERSION = "nl-v1"


@dataclass(frozen=True)
class NLSet:
    name: str  # file name under nl/ (presets.PAPER_NL)
    task: str  # lm-eval task
    hub_id: str  # lm-eval dataset_path
    config: str | None  # lm-eval dataset_name
    split: str  # lm-eval test_split (else validation_split)
    fields: tuple[str, ...]  # source columns used
    expected: int  # rows of that split in the release
    convert: Callable[[int, dict, str], dict]


def _lambada(i: int, r: dict, what: str) -> dict:
    text = r["text"]
    if not isinstance(text, str) or " " not in text.strip():
        raise SourceError(f"{what}: row {i}: field 'text' has no last word to predict")
    words = text.split(" ")  # lm-eval: text.split(' ')[:-1] | join(' ') / ' ' + last
    return {"id": str(i), "context": " ".join(words[:-1]), "target": words[-1], "text": text}


def _arc(i: int, r: dict, what: str) -> dict:
    labels, texts = list(r["choices"]["label"]), list(r["choices"]["text"])
    if r["answerKey"] not in labels:
        raise SourceError(f"{what}: row {i} (id={r['id']}): answerKey {r['answerKey']!r} is "
                          f"not one of the choice labels {labels} (a record without an answer)")
    return {"id": r["id"], "question": r["question"], "choices": texts,
            "label": labels.index(r["answerKey"]), "answerKey": r["answerKey"]}


def _winogrande(i: int, r: dict, what: str) -> dict:
    if str(r["answer"]).strip() not in ("1", "2"):
        raise SourceError(f"{what}: row {i}: field 'answer' is {r['answer']!r}, not '1' or '2' "
                          "(the test split has no answers; lm-eval uses validation)")
    if "_" not in r["sentence"]:
        raise SourceError(f"{what}: row {i}: field 'sentence' has no '_' blank")
    return {"id": str(i), "sentence": r["sentence"], "option1": r["option1"],
            "option2": r["option2"], "answer": str(r["answer"]).strip()}


def _wsc(i: int, r: dict, what: str) -> dict:
    if int(r["label"]) not in (0, 1) or len(r["options"]) != 2:
        raise SourceError(f"{what}: row {i}: label {r['label']!r} / options {r['options']!r} "
                          "are not a two-way choice")
    return {"id": str(i), "text": r["text"], "pronoun": r["pronoun"],
            "pronoun_loc": int(r["pronoun_loc"]), "options": list(r["options"]),
            "label": int(r["label"])}


NL_SETS: dict[str, NLSet] = {s.name: s for s in (
    NLSet("lambada", "lambada_standard", "cimec/lambada", None, "test", ("text",), 5153,
          _lambada),
    NLSet("arc_easy", "arc_easy", "allenai/ai2_arc", "ARC-Easy", "test",
          ("id", "question", "choices", "answerKey"), 2376, _arc),
    NLSet("arc_challenge", "arc_challenge", "allenai/ai2_arc", "ARC-Challenge", "test",
          ("id", "question", "choices", "answerKey"), 1172, _arc),
    NLSet("winogrande", "winogrande", "allenai/winogrande", "winogrande_xl", "validation",
          ("sentence", "option1", "option2", "answer"), 1267, _winogrande),
    NLSet("wsc", "wsc273", "lighteval/winograd_wsc", "wsc273", "test",
          ("text", "pronoun", "pronoun_loc", "options", "label"), 273, _wsc),
)}


def prepare_nl(ctx: PrepareContext) -> list:
    out_dir = ctx.root / "nl"
    manifest = Manifest.load(out_dir, "nl")
    results = []
    for s in NL_SETS.values():
        source = ctx.source(s.name, s.hub_id)

        def build(s=s, source=source):
            what = f"nl/{s.name} ({s.hub_id}{' ' + s.config if s.config else ''}, split {s.split})"
            ds = load_split(source, s.split, s.config, what=what)
            require_fields(ds, s.fields, what=what, source=source)
            rows = [s.convert(i, r, what) for i, r in
                    ctx.bar(enumerate(ds), total=len(ds), desc=f"nl/{s.name}")]
            check_expected(ctx, what, len(rows), s.expected)
            atomic_write_json(out_dir / f"{s.name}.jsonl", rows, lines=True)
            return {"files": {f"{s.name}.jsonl": len(rows)}, "counts": {s.name: len(rows)},
                    "lm_eval_task": s.task, "hub_id": s.hub_id, "config": s.config,
                    "split": s.split}

        results.append(run_dataset(ctx, manifest, s.name, NL_VERSION, source, build))
    return results
