"""Vision-language test sets: slim subset → template prompt → greedy answer → scorer.

An `EvalSet` names a LLaVA-format test file (records ``{id, image, conversations}`` plus
scorer fields) and its scorer `kind`, an entry of the eval-kind registry
(`eval/kinds.py`): the kind says which record field is the reference, which scorer of
`eval/scoring.py` scores an answer, the default generation budget
(``EvalSet.max_new_tokens=None``) and, for some kinds, per-sample outcomes reported as
extra metrics (``grounding_truncated``: the box was cut off by the budget).
docs/evaluation.md lists every kind with its source.

The subset is ``max_samples`` records chosen by the seed (`common.select_subset`, the
slim sets of Srivastava et al. / Prismatic hold 1024). The prompt is the record's
conversation without its answer, rendered by the model's template (`template.prompt`).

TextVQA "OCR" vs "Pure" are two EvalSets over the same file: with ``ocr_tokens=True``
the record's ``ocr_tokens`` are added to the question as in LLaVA-1.5's TextVQA eval
(``"\\nReference OCR token: a, b, c"`` before the answer-format line). `EvalSet` has no
prompt-option field, so ``ocr_tokens=None`` (the default) turns it on for a set whose
name ends in ``_ocr`` (e.g. ``textvqa_ocr``) and off otherwise.
"""
from __future__ import annotations

import math
from pathlib import Path

from ...config import DataSource, EvalSet
from ...data.instruct import read_instructions
from .. import kinds
from ..kinds import gt_answer
from ..engine.base import GenRequest
from .common import SuiteResult, content_hash, select_subset

OCR_PREFIX = "Reference OCR token: "


def load_eval_records(eval_set: EvalSet, seed: int = 0,
                      max_samples: int | None = -1) -> list[dict]:
    """The slim subset of an EvalSet (validated records, absolute image paths)."""
    recs = list(read_instructions(DataSource(path=eval_set.path, image_root=eval_set.image_root)))
    limit = eval_set.max_samples if max_samples == -1 else max_samples
    return select_subset(recs, limit, seed)


def vl_kind(name: str) -> kinds.EvalKind:
    """The registered kind `name`, which must have a per-answer scorer."""
    k = kinds.get_kind(name)
    if k.scorer is None or k.reference is None:
        raise ValueError(f"eval kind {name!r} belongs to the {k.suite} suite and cannot score "
                         f"a VL set; VL kinds: {', '.join(VL_KINDS)}")
    return k


VL_KINDS = tuple(n for n, k in kinds.KINDS.items() if k.scorer is not None)


def reference(rec: dict, kind: str):
    """The record's reference for `kind` (answers, letter, box or label)."""
    return vl_kind(kind).reference(rec)


def score(kind: str, prediction: str, ref) -> float:
    return vl_kind(kind).score(prediction, ref)


def add_ocr_tokens(question: str, tokens) -> str:
    """Insert ``Reference OCR token: ...`` before a trailing "Answer ..." line, else append."""
    toks = ", ".join(str(t) for t in (tokens or []))
    lines = question.split("\n")
    line = OCR_PREFIX + toks
    if len(lines) > 1 and lines[-1].strip().lower().startswith("answer"):
        return "\n".join(lines[:-1] + [line, lines[-1]])
    return question + "\n" + line


def use_ocr(eval_set: EvalSet, ocr_tokens: bool | None) -> bool:
    """OCR tokens in the prompt: the call's choice, else the set's `ocr_tokens`, else on for
    sets named ``*_ocr`` (TextVQA "OCR" vs "Pure" are two EvalSets of the same records)."""
    if ocr_tokens is not None:
        return bool(ocr_tokens)
    if eval_set.ocr_tokens is not None:
        return bool(eval_set.ocr_tokens)
    return eval_set.name.lower().endswith("_ocr")


def record_conversation(rec: dict, ocr: bool) -> list[dict]:
    convs = [dict(t) for t in rec["conversations"]]
    if ocr:
        first = next(i for i, t in enumerate(convs) if t["from"] == "human")
        convs[first]["value"] = add_ocr_tokens(convs[first]["value"], rec.get("ocr_tokens"))
    return convs


def judge_question(rec: dict, full: bool = False) -> str:
    """The question as CoIN's judge sees it: the first human message without the image
    placeholder and without its last line (the answer-format instruction); ``full``
    keeps every line (create_prompt.py's Grounding branch)."""
    text = next(t["value"] for t in rec["conversations"] if t["from"] == "human")
    text = text.replace("<image>", "").strip()
    lines = text.split("\n")
    if full:
        return text
    return "\n".join(lines[:-1]).strip() if len(lines) > 1 else text


def record_fingerprint(rec: dict) -> dict:
    """What identifies a test record's content (image by file name, not by absolute path)."""
    fp = {k: rec.get(k) for k in ("id", "conversations", "answers", "answer", "bbox", "label",
                                  "labels", "ocr_tokens") if k in rec}
    if rec.get("image"):
        fp["image"] = Path(rec["image"]).name
    return fp


def build_requests(template, records: list[dict], eval_set: EvalSet, ocr: bool
                   ) -> list[GenRequest]:
    reqs = []
    for rec in records:
        prompt = template.prompt(record_conversation(rec, ocr))
        reqs.append(GenRequest(prompt=prompt, image=rec.get("image"),
                               max_new_tokens=kinds.max_new_tokens(eval_set)))
    return reqs


def vl_set_hash(eval_set: EvalSet, records: list[dict], ocr: bool) -> str:
    """The `eval_set_hash` of a VL set: kind, OCR-token prompts, records."""
    return content_hash([eval_set.kind, ocr, [record_fingerprint(r) for r in records]])


def run_vl_set(engine, eval_set: EvalSet, *, template=None, seed: int = 0,
               ocr_tokens: bool | None = None, max_samples: int | None = -1) -> SuiteResult:
    """Generate and score one VL EvalSet; per-sample predictions keep what the judge needs."""
    template = template or getattr(engine, "template", None)
    if template is None:
        raise ValueError("run_vl_set needs the model's conversation template")
    kind = vl_kind(eval_set.kind)
    ocr = use_ocr(eval_set, ocr_tokens)
    records = load_eval_records(eval_set, seed, max_samples)
    reqs = build_requests(template, records, eval_set, ocr)
    outs = engine.generate(reqs) if reqs else []
    preds = []
    for rec, req, out in zip(records, reqs, outs):
        ref = kind.reference(rec)
        p = {"id": rec["id"], "prompt": req.prompt, "prediction": out, "reference": ref,
             "score": kind.score(out, ref),
             "question": judge_question(rec, full=kind.judge_rule == "CoIN_Grounding"),
             "answer": gt_answer(rec)}
        if kind.outcome is not None:
            p["outcome"] = kind.outcome(out, ref)
        preds.append(p)
    n = len(preds)
    metrics = {"accuracy": sum(p["score"] for p in preds) / n if n else math.nan}
    for outcome, metric in kind.outcome_metrics.items():
        metrics[metric] = (sum(p.get("outcome") == outcome for p in preds) / n if n
                           else math.nan)
    return SuiteResult(dataset=eval_set.name, split="vl", metrics=metrics, n=n,
                       eval_set_hash=vl_set_hash(eval_set, records, ocr),
                       prompt_version=template.version + ("+ocr" if ocr else ""),
                       decoding=engine.decoding(max_new_tokens=kinds.max_new_tokens(eval_set)),
                       predictions=preds)
