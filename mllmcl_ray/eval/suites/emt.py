"""EMT (Zhai et al.): the MLLM as an image classifier, and why it fails.

Each test image is asked with EMT's prompt (§4, App. C.1): "What is the {noun} in the
image? Please only answer a single {noun} in {labels}." — the labels comma-separated
without brackets, as the paper's example shows; the noun is "number" for MNIST (and the
micro world's digits, `EMT_NOUNS`, or any set whose labels are all numerals) and "object"
otherwise. The prompt goes through the model's own conversation format
(`Engine.conversation_prompt`: the project template, or an off-the-shelf checkpoint's chat
template). The free-form answer is decided three ways:

- ``emt_exact`` — label names in the answer (`scoring.emt_exact`, §7 (2)): correct /
  wrong / intrinsic hallucination (several labels) / extrinsic hallucination (no label,
  or one label plus claims that are not answer framing); accuracy and the share of each
  failure mode are reported (``emt_exact_<mode>``);
- ``emt_nearest`` — the label whose CLIP text embedding is nearest the answer's (§7 (1),
  `scoring.emt_nearest`), with the text tower of the vision tower's own CLIP checkpoint
  (`Engine.clip_source`, `clip_zero_shot.clip_text_embedder`); skipped when that CLIP is
  unknown (an explicit `embedder` overrides);
- ``emt_judge`` — an LLM judge's yes/no (`judge.Judge.judge_emt`, §4 step 3), when a judge
  is given; unparseable replies count as not correct and their share is reported.

Records: LLaVA-format test JSON with ``label`` (the true class) and ``labels`` (the class
set; if absent, the sorted set of all records' labels).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ...config import EvalSet
from .. import scoring
from ..engine.base import GenRequest
from ..kinds import max_new_tokens
from .common import SuiteResult, content_hash
from .vl import load_eval_records, record_fingerprint

EMT_PROMPT = "What is the {noun} in the image? Please only answer a single {noun} in {labels}."
EMT_PROMPT_VERSION = "emt-v2"
EMT_NOUNS = {"mnist": "number", "digits": "number"}  # dataset name -> noun; default "object"

Embedder = Callable[[list[str]], np.ndarray]


def emt_prompt(labels: Sequence[str], noun: str = "object") -> str:
    return EMT_PROMPT.format(noun=noun, labels=", ".join(str(x) for x in labels))


def emt_noun(dataset: str, labels: Sequence[str]) -> str:
    """"number" for MNIST-like sets (`EMT_NOUNS`, or all labels numerals), else "object"."""
    if dataset.lower() in EMT_NOUNS:
        return EMT_NOUNS[dataset.lower()]
    return "number" if labels and all(str(x).isdigit() for x in labels) else "object"


def default_embedder(engine, clip: str | None = None) -> Embedder | None:
    """The CLIP text tower of `clip` (default: the engine's vision tower's own CLIP,
    `Engine.clip_source`) as an embedder, or None when there is none."""
    clip = clip or getattr(engine, "clip_source", None)
    if not clip:
        return None
    from ..clip_zero_shot import clip_text_embedder

    try:
        return clip_text_embedder(clip)
    except FileNotFoundError:
        return None


def record_labels(records: list[dict]) -> list[list[str]]:
    every = sorted({str(r["label"]) for r in records if "label" in r})
    out = []
    for r in records:
        if "label" not in r:
            raise ValueError(f"EMT record {r.get('id')!r} has no 'label'")
        out.append([str(x) for x in r.get("labels") or every])
    return out


def emt_set_hash(eval_set: EvalSet, records: list[dict], noun: str | None = None) -> str:
    """The `eval_set_hash` of an EMT set: its records and the noun(s) its prompts use
    (the evaluator compares it with stored rows to find stale ones)."""
    nouns = {noun or emt_noun(eval_set.name, labels) for labels in record_labels(records)}
    return content_hash(["emt", sorted(nouns), [record_fingerprint(r) for r in records]])


def run_emt_set(engine, eval_set: EvalSet, *, template=None, seed: int = 0,
                embedder: Embedder | None = None, judge=None, noun: str | None = None,
                max_samples: int | None = -1) -> SuiteResult:
    """Generate EMT answers for one classification set and decide them (see module doc).
    `template`: a ConversationTemplate overriding the engine's format; `noun`: None picks
    it per dataset (`emt_noun`)."""
    make_prompt = template.prompt if template is not None else engine.conversation_prompt
    records = load_eval_records(eval_set, seed, max_samples)
    label_sets = record_labels(records)
    reqs = []
    for rec, labels in zip(records, label_sets):
        nn = noun or emt_noun(eval_set.name, labels)
        conv = [{"from": "human", "value": "<image>\n" + emt_prompt(labels, nn)}]
        reqs.append(GenRequest(make_prompt(conv), rec.get("image"), max_new_tokens(eval_set)))
    outs = engine.generate(reqs) if reqs else []
    preds = []
    for rec, req, out, labels in zip(records, reqs, outs, label_sets):
        preds.append({"id": rec["id"], "prompt": req.prompt, "prediction": out,
                      "reference": str(rec["label"]),
                      "emt_exact": scoring.emt_exact(out, labels, str(rec["label"]))})
    n = len(preds)
    summ = scoring.emt_summary(p["emt_exact"] for p in preds)
    metrics = {"emt_exact": summ["accuracy"]}
    for mode in (scoring.EMT_WRONG, scoring.EMT_INTRINSIC, scoring.EMT_EXTRINSIC):
        metrics[f"emt_exact_{mode}"] = summ[mode]
    decoding = engine.decoding(max_new_tokens=max_new_tokens(eval_set))
    if embedder is not None:
        for p, rec, labels in zip(preds, records, label_sets):
            p["emt_nearest"] = scoring.emt_nearest(p["prediction"], labels, str(rec["label"]),
                                                   embedder)
        metrics["emt_nearest"] = (sum(p["emt_nearest"] == scoring.EMT_CORRECT for p in preds) / n
                                  if n else math.nan)
        decoding["embedder"] = getattr(embedder, "name", getattr(embedder, "__name__", "embedder"))
    counts = {}
    if judge is not None:
        from ..judge import EMT_JUDGE_PROMPT_VERSION

        decisions, replies = judge.judge_emt([(p["reference"], p["prediction"]) for p in preds])
        for p, d, r in zip(preds, decisions, replies):
            p["emt_judge"] = d
            p["judge_reply"] = r
        bad = sum(d is None for d in decisions)
        metrics["emt_judge"] = sum(d is True for d in decisions) / n if n else math.nan
        metrics["emt_judge_unparseable"] = bad / n if n else math.nan
        counts["judge_unparseable"] = bad
        decoding.update(judge.info(EMT_JUDGE_PROMPT_VERSION))
    for p in preds:
        p["score"] = float(p["emt_exact"] == scoring.EMT_CORRECT)
    return SuiteResult(dataset=eval_set.name, split="emt", metrics=metrics, n=n,
                       eval_set_hash=emt_set_hash(eval_set, records, noun),
                       prompt_version=f"{_format_version(engine, template)}+{EMT_PROMPT_VERSION}",
                       decoding=decoding, predictions=preds, counts=counts)


def _format_version(engine, template) -> str:
    """The conversation format's version: the project template's, or ``chat_template:<hash>``
    of an off-the-shelf checkpoint's chat template."""
    if template is not None:
        return template.version
    if getattr(engine, "prompt_version", ""):
        return engine.prompt_version
    proc = getattr(engine, "processor", None)
    chat = getattr(proc, "chat_template", None)
    return f"chat_template:{content_hash(chat)}" if chat else "no-template"
