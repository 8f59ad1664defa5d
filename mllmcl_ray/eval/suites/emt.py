"""EMT (Zhai et al.): the MLLM as an image classifier, and why it fails.

Each test image is asked with EMT's prompt ("What is the object in the image? Please
only answer a single object in [labels]."; ``noun="number"`` gives the MNIST form) and the
free-form answer is decided three ways:

- ``emt_exact`` — label names in the answer (`scoring.emt_exact`): correct / wrong /
  intrinsic hallucination (several labels named) / extrinsic hallucination (none named);
  the accuracy and the share of each failure mode are reported;
- ``emt_nearest`` — the label whose embedding is nearest the answer's (EMT §7 (1),
  `scoring.emt_nearest`) with a pluggable embedder `texts -> (N, D) array`. Default
  (`default_embedder`): a sentence-transformers model when one is named and the package
  is installed; otherwise, offline, the mean of the evaluated MLLM's own LM
  input-embedding vectors over the text's tokens (`Engine.embed`). The fallback is a
  bag-of-tokens embedding: it matches surface forms, not meanings — documented as such;
- ``emt_judge`` — an LLM judge's yes/no (`judge.Judge.judge_emt`), when a judge is given;
  unparseable replies count as not correct and their share is reported.

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

EMT_PROMPT = "What is the {noun} in the image? Please only answer a single {noun} in [{labels}]."
EMT_PROMPT_VERSION = "emt-v1"

Embedder = Callable[[list[str]], np.ndarray]


def emt_prompt(labels: Sequence[str], noun: str = "object") -> str:
    return EMT_PROMPT.format(noun=noun, labels=", ".join(str(x) for x in labels))


def default_embedder(engine, model_name: str | None = None) -> Embedder | None:
    """sentence-transformers `model_name` if given and installed, else `engine.embed`
    (the MLLM's mean input embedding), else None (no nearest decision)."""
    if model_name:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            pass
        else:
            st = SentenceTransformer(model_name)
            return lambda texts: np.asarray(st.encode(list(texts)))
    try:
        engine.embed(["probe"])
    except (NotImplementedError, AttributeError):
        return None
    return lambda texts: np.asarray(engine.embed(list(texts)))


def record_labels(records: list[dict]) -> list[list[str]]:
    every = sorted({str(r["label"]) for r in records if "label" in r})
    out = []
    for r in records:
        if "label" not in r:
            raise ValueError(f"EMT record {r.get('id')!r} has no 'label'")
        out.append([str(x) for x in r.get("labels") or every])
    return out


def run_emt_set(engine, eval_set: EvalSet, *, template=None, seed: int = 0,
                embedder: Embedder | None = None, judge=None, noun: str = "object",
                max_samples: int | None = -1) -> SuiteResult:
    """Generate EMT answers for one classification set and decide them (see module doc)."""
    template = template or getattr(engine, "template", None)
    if template is None:
        raise ValueError("run_emt_set needs the model's conversation template")
    records = load_eval_records(eval_set, seed, max_samples)
    label_sets = record_labels(records)
    reqs = []
    for rec, labels in zip(records, label_sets):
        conv = [{"from": "human", "value": "<image>\n" + emt_prompt(labels, noun)}]
        reqs.append(GenRequest(template.prompt(conv), rec.get("image"), max_new_tokens(eval_set)))
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
        decoding["embedder"] = getattr(embedder, "__name__", "embedder")
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
                       eval_set_hash=content_hash(["emt", noun, [record_fingerprint(r)
                                                                 for r in records]]),
                       prompt_version=f"{template.version}+{EMT_PROMPT_VERSION}",
                       decoding=decoding, predictions=preds, counts=counts)
