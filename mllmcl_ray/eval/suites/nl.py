"""The language suite (Srivastava et al.: Lambada for NLG; ARC-Easy, ARC-Challenge,
Winogrande and WSC for NLU), scored exactly as lm-evaluation-harness scores them.

Everything is text-only (no image tokens) and goes through `Engine.loglikelihood`, whose
(context, continuation) tokenisation is lm-eval's (`engine.base.encode_pair`).

- **Lambada** (NLG, lm-eval ``lambada_openai``): context = the passage without its last
  word, continuation = ``" " + last word``; a sample is correct when the last word is the
  *greedy* continuation (`is_greedy`: every one of its tokens is the argmax given the
  context). This is lm-eval's ``acc``; it equals "greedy generation starts with the
  target" except that it never depends on what follows the word. ``mode="generate"``
  instead generates greedily and compares the first generated word with the target
  (the informal definition); results record which mode ran. ``perplexity`` =
  exp(−mean log-likelihood of the target), as lm-eval reports it.
- **ARC** (``arc_easy``/``arc_challenge``): context ``"Question: {question}\\nAnswer:"``,
  one continuation ``" {choice}"`` per choice; prediction = argmax of the summed
  log-probability (lm-eval ``acc``).
- **Winogrande** (partial evaluation, lm-eval ``winogrande``): for each option the context
  is the sentence up to ``_`` with the option put in, the continuation is
  ``" " + the rest after "_"`` (stripped); the option whose context makes the shared
  continuation likelier wins.
- **WSC** (lm-eval ``wsc273``, also partial evaluation): context = text up to the pronoun
  with an option put in (options normalised as lm-eval does: possessives get ``'s``,
  a capitalised determiner is lower-cased mid-sentence), continuation = lm-eval's target
  delimiter ``" "`` + the text after the pronoun as it stands (its own leading space
  kept, so the continuation usually starts with two spaces: lm-eval's exact request).

Data: JSON Lines. Lambada ``{"context", "target"}`` (or ``{"text"}``, split at the last
space); ARC ``{"question", "choices": [..] , "label": int}`` (or HF's
``choices: {"text", "label"}`` with ``answerKey``); Winogrande ``{"sentence" with "_",
"option1", "option2", "answer": "1"|"2"}``; WSC ``{"text", "pronoun", "pronoun_loc",
"options": [a, b], "answer": int}`` (HF wsc273 has ``label`` for the answer index).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from ...config import EvalSet
from ...errors import DataError
from .common import SuiteResult, content_hash, select_subset

NL_PROMPT_VERSION = "nl-lmeval-v2"  # v2: WSC scored with lm-eval's exact continuation
NL_KINDS = ("lambada", "arc", "winogrande", "wsc")


class NLDataError(DataError):
    """An NL eval file or record is malformed."""


def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise NLDataError(f"NL eval file {p} does not exist")
    text = p.read_text()
    if text.lstrip().startswith("["):
        try:
            docs = json.loads(text)
        except json.JSONDecodeError as e:
            raise NLDataError(f"{p}: not valid JSON (line {e.lineno}): {e.msg}") from None
        if not all(isinstance(d, dict) for d in docs):
            raise NLDataError(f"{p}: every record must be a JSON object")
        return docs
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise NLDataError(f"{p}: line {lineno} is not valid JSON: {e.msg}") from None
            if not isinstance(out[-1], dict):
                raise NLDataError(f"{p}: line {lineno} must be a JSON object")
    return out


def nl_kind(name: str, kind: str | None = None, doc: dict | None = None) -> str:
    """Which NL scorer a dataset uses: an explicit `kind` in NL_KINDS, else the dataset
    name's prefix (lambada*, arc*, winogrande*, wsc*), else the record's fields."""
    if kind in NL_KINDS:
        return kind  # type: ignore[return-value]
    low = name.lower()
    for k in NL_KINDS:
        if low.startswith(k):
            return k
    if doc is not None:
        if "context" in doc and "target" in doc:
            return "lambada"
        if "question" in doc and "choices" in doc:
            return "arc"
        if "sentence" in doc and "option1" in doc:
            return "winogrande"
        if "pronoun_loc" in doc:
            return "wsc"
    raise NLDataError(f"cannot tell which NL task {name!r} is: name it lambada*/arc*/"
                      "winogrande*/wsc* or set kind to one of " + ", ".join(NL_KINDS))


def nl_split(kind: str) -> str:
    return "nlg" if kind == "lambada" else "nlu"


# ---------------------------------------------------------------------------------------
# request construction (pure)
# ---------------------------------------------------------------------------------------
def lambada_pair(doc: dict) -> tuple[str, str]:
    if "context" in doc and "target" in doc:
        return str(doc["context"]).rstrip(), " " + str(doc["target"]).strip()
    if "text" in doc:
        ctx, _, last = str(doc["text"]).rpartition(" ")
        return ctx, " " + last
    raise NLDataError(f"lambada record {doc.get('id')!r} needs context+target or text")


def arc_requests(doc: dict) -> tuple[list[tuple[str, str]], int]:
    ctx = f"Question: {doc['question']}\nAnswer:"
    choices = doc["choices"]
    if isinstance(choices, dict):  # HF ai2_arc: {"text": [...], "label": ["A", ...]}
        texts, labels = list(choices["text"]), list(choices["label"])
        key = str(doc.get("answerKey"))
        gold = labels.index(key) if key in labels else int(doc.get("label", -1))
    else:
        texts = list(choices)
        gold = int(doc["label"] if "label" in doc else doc["answer"])
    if not 0 <= gold < len(texts):
        raise NLDataError(f"ARC record {doc.get('id')!r}: answer index {gold} out of range")
    return [(ctx, f" {c}") for c in texts], gold


def winogrande_requests(doc: dict) -> tuple[list[tuple[str, str]], int]:
    sent = str(doc["sentence"])
    if "_" not in sent:
        raise NLDataError(f"winogrande record {doc.get('id')!r}: sentence has no '_'")
    idx = sent.index("_")
    cont = " " + sent[idx + 1:].strip()
    pairs = [(sent[:idx] + str(doc["option1"]), cont), (sent[:idx] + str(doc["option2"]), cont)]
    gold = {"1": 0, "2": 1}[str(doc["answer"]).strip()]
    return pairs, gold


_UPPER_PRONOUNS = ("A", "An", "The", "She", "He", "It", "They", "My", "His", "Her", "Their")


def _wsc_option(doc: dict, option: str) -> str:
    """lm-eval wsc273 `__normalize_option` (its indexing and its replace-all included)."""
    if str(doc["pronoun"]).lower() in ("my", "his", "her", "our", "their"):
        option += "'s"
    first = option.split()[0]
    start_of_sentence = doc["text"][int(doc["pronoun_loc"]) - 2] == "."
    if not start_of_sentence and first in _UPPER_PRONOUNS:
        return option.replace(first, first.lower())
    return option


def wsc_requests(doc: dict) -> tuple[list[tuple[str, str]], int]:
    text = str(doc["text"]).replace("  ", " ")
    doc = dict(doc, text=text)
    loc = int(doc["pronoun_loc"])
    head = text[:loc]
    cont = " " + text[loc + len(str(doc["pronoun"])):]  # lm-eval: delimiter + target as is
    options = [_wsc_option(doc, str(o)) for o in doc["options"]]
    gold = int(doc["answer"] if "answer" in doc else doc["label"])
    return [(head + o, cont) for o in options], gold


MC_BUILDERS = {"arc": arc_requests, "winogrande": winogrande_requests, "wsc": wsc_requests}


# ---------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------
def _first_word(text: str) -> str:
    words = text.strip().split()
    return re.sub(r"^\W+|\W+$", "", words[0]) if words else ""


def score_lambada(engine, docs: Sequence[dict], mode: str = "loglikelihood"
                  ) -> tuple[dict[str, float], list[dict]]:
    """(metrics, per-sample predictions) for Lambada-style last-word prediction."""
    pairs = [lambada_pair(d) for d in docs]
    res = engine.loglikelihood(pairs) if pairs else []
    preds = []
    for d, (ctx, cont), (ll, greedy) in zip(docs, pairs, res):
        preds.append({"id": str(d.get("id", len(preds))), "target": cont.strip(),
                      "loglikelihood": ll, "is_greedy": greedy, "correct": float(greedy)})
    if mode == "generate":
        from ..engine.base import GenRequest

        outs = engine.generate([GenRequest(ctx, None, 8) for ctx, _ in pairs]) if pairs else []
        for p, out in zip(preds, outs):
            p["prediction"] = out
            p["correct"] = float(_first_word(out) == p["target"])
    elif mode != "loglikelihood":
        raise ValueError(f"lambada mode {mode!r} must be 'loglikelihood' or 'generate'")
    n = len(preds)
    metrics = {"accuracy": sum(p["correct"] for p in preds) / n if n else math.nan,
               "perplexity": math.exp(-sum(p["loglikelihood"] for p in preds) / n) if n else math.nan}
    return metrics, preds


def score_multiple_choice(engine, kind: str, docs: Sequence[dict]
                          ) -> tuple[dict[str, float], list[dict]]:
    """lm-eval `acc`: the choice with the highest summed log-likelihood (first on ties)."""
    build = MC_BUILDERS[kind]
    built = [build(d) for d in docs]
    flat = [p for pairs, _ in built for p in pairs]
    res = engine.loglikelihood(flat) if flat else []
    preds, k = [], 0
    for d, (pairs, gold) in zip(docs, built):
        lls = [r[0] for r in res[k:k + len(pairs)]]
        k += len(pairs)
        pred = max(range(len(lls)), key=lambda i: (lls[i], -i))
        preds.append({"id": str(d.get("id", len(preds))), "gold": gold, "pred": pred,
                      "loglikelihoods": lls, "correct": float(pred == gold)})
    n = len(preds)
    return {"accuracy": sum(p["correct"] for p in preds) / n if n else math.nan}, preds


def load_nl_docs(eval_set: EvalSet, max_samples: int | None, seed: int) -> list[dict]:
    docs = read_jsonl(eval_set.path)
    for i, d in enumerate(docs):
        d.setdefault("id", str(i))
    return select_subset(docs, max_samples, seed)


def run_nl_set(engine, eval_set: EvalSet, *, max_samples: int | None = None, seed: int = 0,
               lambada_mode: str = "loglikelihood") -> SuiteResult:
    """Score one NL dataset (its kind from `eval_set.kind`/name/fields)."""
    limit = [m for m in (eval_set.max_samples, max_samples) if m is not None]
    docs = load_nl_docs(eval_set, min(limit) if limit else None, seed)
    kind = nl_kind(eval_set.name, eval_set.kind, docs[0] if docs else None)
    if kind == "lambada":
        metrics, preds = score_lambada(engine, docs, lambada_mode)
        decoding = engine.decoding(method="loglikelihood_is_greedy" if lambada_mode ==
                                   "loglikelihood" else "greedy_first_word")
    else:
        metrics, preds = score_multiple_choice(engine, kind, docs)
        decoding = engine.decoding(method="loglikelihood_argmax")
    return SuiteResult(dataset=eval_set.name, split=nl_split(kind), metrics=metrics,
                       n=len(docs), eval_set_hash=content_hash([kind, docs]),
                       prompt_version=NL_PROMPT_VERSION, decoding=decoding, predictions=preds)


def check_nl_set(eval_set: EvalSet) -> int:
    """Up-front check of an NL eval file (validate.py): every record parses and builds its
    requests; returns the record count. Raises NLDataError naming the file and record."""
    docs = read_jsonl(eval_set.path)
    if not docs:
        raise NLDataError(f"NL eval set {eval_set.name!r}: {eval_set.path} has no records; "
                          "point path at a non-empty file or drop the set")
    kind = nl_kind(eval_set.name, eval_set.kind, docs[0])
    build = lambada_pair if kind == "lambada" else MC_BUILDERS[kind]
    ids: set[str] = set()
    for i, d in enumerate(docs):
        try:
            build(d)
        except NLDataError as e:
            raise NLDataError(f"{eval_set.path}: record {i}: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            what = f"field {e.args[0]!r} is missing" if isinstance(e, KeyError) else str(e)
            raise NLDataError(f"{eval_set.path}: record {i} (id={d.get('id', i)!r}) is not a "
                              f"valid {kind} record: {what}") from None
        rid = str(d.get("id", i))
        if rid in ids:
            raise NLDataError(f"{eval_set.path}: record {i}: id {rid!r} appears twice; ids "
                              "must be unique")
        ids.add(rid)
    return len(docs)
