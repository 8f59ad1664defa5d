"""The eval-kind registry: one entry per scoring kind of an `EvalSet`.

An `EvalKind` says, for one ``EvalSet.kind``:

* ``suite``: which suite runs it (``vl`` generation + scorer, ``emt`` the EMT suite,
  ``nl`` the language suite with its own log-likelihood scoring);
* ``reference``: how to read the reference (answers, letter, box, label) from a record;
* ``scorer``: ``(prediction, reference) -> float`` in [0, 1] (`eval/scoring.py`);
* ``max_new_tokens``: the default generation budget (``EvalSet.max_new_tokens=None``);
* ``outcome``: optional ``(prediction, reference) -> str`` per-sample outcome; each
  outcome named in ``outcome_metrics`` becomes a result metric (the share of samples
  with that outcome), e.g. ``grounding_truncated``;
* ``source``: where the rule comes from (paper section or released file), for docs;
* ``judge_rule``: the CoIN judge rule for its answers (``CoIN_Grounding`` for boxes).

Adding a kind: one `register(EvalKind(...))` call here and its test in
tests/eval/test_eval_suites.py; the VL suite, the evaluator, config validation and
docs/evaluation.md read this table. ``mllmcl_ray.config`` validates ``EvalSet.kind`` with
`check_kind` (a ConfigError that lists the known kinds).

NL kinds also match by prefix (``arc_easy`` is ``arc``, ``lambada_openai`` is
``lambada``), as the NL suite names its datasets.

Generation budgets: a two-decimal box ``[0.12, 0.34, 0.56, 0.78]`` is 24 tokens with the
Llama-2 tokenizer (sentencepiece splits digits: measured with its ``tokenizer.json``),
17 with GPT-2's BPE (= Phi-2's CodeGen tokenizer on this text: measured), and at most
24 with GPT-NeoX-20B's byte-level BPE (a byte-level BPE never makes more tokens than
the text has bytes; 24 ASCII bytes). A three-decimal box is 28 (Llama-2) / 18 (GPT-2)
/ ≤ 28 bytes. ``grounding`` gets 40: the worst case plus the end-of-text token plus a
short lead-in such as "The box is ".
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import scoring


class UnknownKindError(ValueError):
    """An eval kind name is not registered (the config layer turns it into ConfigError)."""


def gt_answer(rec: dict) -> str:
    """The record's last assistant answer."""
    return next((t["value"] for t in reversed(rec["conversations"]) if t["from"] == "gpt"), "")


def _answers(rec: dict) -> list[str]:
    return [str(a) for a in (rec.get("answers") or [gt_answer(rec)])]


def _answers_required(rec: dict) -> list[str]:
    if not rec.get("answers"):
        raise ValueError(f"record {rec.get('id')!r} has no 'answers' (the 10 human answers)")
    return [str(a) for a in rec["answers"]]


def _answer(rec: dict) -> str:
    return str(rec.get("answer", gt_answer(rec)))


def _label(rec: dict) -> str:
    return str(rec.get("label", rec.get("answer", gt_answer(rec))))


def _bbox(rec: dict) -> list[float]:
    if "bbox" not in rec:
        raise ValueError(f"grounding record {rec.get('id')!r} has no 'bbox'")
    return [float(v) for v in rec["bbox"]]


@dataclass(frozen=True)
class EvalKind:
    """How one kind of test set is read, generated and scored (see module docstring)."""

    name: str
    suite: str  # "vl", "emt" or "nl"
    doc: str  # one line: what the kind scores
    source: str  # the paper section or released file the rule reproduces
    max_new_tokens: int = 32  # default generation budget per answer
    reference: Callable[[dict], Any] | None = None  # record -> reference
    scorer: Callable[[str, Any], float] | None = None  # (prediction, reference) -> [0, 1]
    reference_field: str = ""  # the record field(s) the reference comes from (docs)
    outcome: Callable[[str, Any], str] | None = None  # per-sample outcome label
    outcome_metrics: dict[str, str] = field(default_factory=dict)  # outcome -> metric name
    prefix_match: bool = False  # NL kinds: a dataset name starting with the kind matches
    judge_rule: str = "CoIN"  # CoIN judge rule (rule.json key) for this kind's answers

    def score(self, prediction: str, ref: Any) -> float:
        if self.scorer is None:
            raise ValueError(f"eval kind {self.name!r} ({self.suite} suite) has no "
                             "per-answer scorer")
        return float(self.scorer(prediction, ref))


KINDS: dict[str, EvalKind] = {}


def register(kind: EvalKind) -> EvalKind:
    if kind.name in KINDS:
        raise ValueError(f"eval kind {kind.name!r} is already registered")
    if kind.suite not in ("vl", "emt", "nl"):
        raise ValueError(f"eval kind {kind.name!r}: suite must be vl, emt or nl")
    KINDS[kind.name] = kind
    return kind


def known_kinds(suite: str | None = None) -> list[str]:
    return [k for k, v in KINDS.items() if suite is None or v.suite == suite]


def get_kind(name: str) -> EvalKind:
    """The registered kind `name` (NL kinds also by prefix); UnknownKindError else."""
    if name in KINDS:
        return KINDS[name]
    low = str(name).lower()
    for k in KINDS.values():
        if k.prefix_match and low.startswith(k.name):
            return k
    raise UnknownKindError(f"unknown eval kind {name!r}; known kinds: "
                           f"{', '.join(KINDS)} (NL kinds also as a name prefix, e.g. arc_easy)")


def check_kind(name: str) -> str:
    """`name` if it is a registered kind, else UnknownKindError naming the known ones."""
    get_kind(name)
    return name


def default_max_new_tokens(name: str) -> int:
    return get_kind(name).max_new_tokens


def max_new_tokens(eval_set) -> int:
    """The EvalSet's generation budget: its own, else its kind's default."""
    if getattr(eval_set, "max_new_tokens", None) is not None:
        return int(eval_set.max_new_tokens)
    return default_max_new_tokens(eval_set.kind)


# ---------------------------------------------------------------------------------------
# the kinds
# ---------------------------------------------------------------------------------------
register(EvalKind(
    "vqa", "vl", "VQAv2 accuracy over the 10 human answers (official rule as TRI "
    "vlm-evaluation has it: prediction fully normalised, references punctuation-processed "
    "when they disagree)",
    "GT-Vision-Lab/VQA vqaEval.py (before its 2021 fix) = TRI vlm-evaluation; Srivastava §4",
    max_new_tokens=16, reference=_answers, reference_field="answers (else the gpt turn)",
    scorer=lambda p, r: scoring.vqa_accuracy(p, r, official_gt=True)))
register(EvalKind(
    "vqa_2021", "vl", "VQAv2 accuracy by the current vqaEval.py (both sides normalised only "
    "when the references disagree)",
    "GT-Vision-Lab/VQA vqaEval.py after its March 2021 fix",
    max_new_tokens=16, reference=_answers, reference_field="answers (else the gpt turn)",
    scorer=scoring.vqa_accuracy_2021))
register(EvalKind(
    "textvqa", "vl", "TextVQA accuracy over its 10 answers (m4c evaluator, EvalAI answer "
    "processor)",
    "mmf/m4c TextVQAAccuracyEvaluator (CoIN ETrain/Eval/LLaVA/CoIN/m4c_evaluator.py, "
    "eval_textvqa.py); vlm-evaluation TextVQA",
    max_new_tokens=16, reference=_answers_required, reference_field="answers (10, required)",
    scorer=scoring.textvqa_accuracy))
register(EvalKind(
    "exact_ci", "vl", "case-insensitive exact match (CoIN VQAv2, VizWiz, OCR-VQA)",
    "CoIN eval_vqav2.py, eval_vizwiz.py, eval_ocrvqa.py",
    max_new_tokens=48,  # OCR-VQA answers are book titles / author names
    reference=_answer, reference_field="answer (else the gpt turn)",
    scorer=scoring.exact_match_ci))
register(EvalKind(
    "label_contain", "vl", "label contained in the answer or the answer in the label "
    "(CoIN ImageNet)",
    "CoIN eval_ImagetNet.py", max_new_tokens=32, reference=_label,
    reference_field="label (else answer, else the gpt turn)", scorer=scoring.label_contain))
register(EvalKind(
    "option", "vl", "ScienceQA option letter, read by CoIN's rule",
    "CoIN eval_science_qa.py", max_new_tokens=8, reference=_answer,
    reference_field="answer letter (else the gpt turn)", scorer=scoring.coin_option_match))
register(EvalKind(
    "gqa", "vl", "GQA accuracy (trailing periods dropped, lower-cased, equal to the answer)",
    "CoIN convert_gqa_for_eval.py + GQA eval.py (CoIN eval_gqa.py)", max_new_tokens=16,
    reference=_answer, reference_field="answer (else the gpt turn)", scorer=scoring.gqa_match))
register(EvalKind(
    "grounding", "vl", "IoU > 0.5 on the parsed [x1, y1, x2, y2] box; parse failures wrong; "
    "cut-off boxes counted separately (grounding_truncated)",
    "CoIN App. E and eval_grounding.py (iou > 0.5); Srivastava App. B.3 RefCOCO",
    max_new_tokens=40, reference=_bbox, reference_field="bbox [x1, y1, x2, y2] in [0, 1]",
    scorer=lambda p, r: float(scoring.grounding_correct(p, r)),
    outcome=scoring.grounding_outcome, judge_rule="CoIN_Grounding",
    outcome_metrics={scoring.GROUNDING_TRUNCATED: "grounding_truncated",
                     scoring.GROUNDING_UNPARSEABLE: "grounding_unparseable"}))
register(EvalKind(
    "vqa_norm", "vl", "VQA accuracy over the 10 answers with prediction and references fully "
    "normalised (for references that were not normalised as VQAv2's annotations were: "
    "the micro world's 'two' / '2')",
    "vqaEval.py normalisation and leave-one-out accuracy (project rule for raw references)",
    max_new_tokens=16, reference=_answers, reference_field="answers (else the gpt turn)",
    scorer=scoring.vqa_accuracy))
register(EvalKind(
    "exact", "vl", "exact match after full VQA normalisation (micro world tasks)",
    "vqaEval.py normalisation (project rule for single-answer synthetic tasks)",
    max_new_tokens=16, reference=_answer, reference_field="answer (else the gpt turn)",
    scorer=scoring.exact_match))
register(EvalKind(
    "classification", "emt", "single label, exact match after normalisation (EMT sets; "
    "the EMT suite adds its hallucination decisions)",
    "EMT (Zhai et al.) §4; CoIN App. E", max_new_tokens=16, reference=_label,
    reference_field="label (else answer, else the gpt turn)",
    scorer=scoring.classification_match))
register(EvalKind("nl", "nl", "language-suite dataset whose task the NL suite infers from its "
                  "name or fields (lambada*, arc*, winogrande*, wsc*)",
                  "lm-evaluation-harness", max_new_tokens=16))
for _nl, _doc in (("lambada", "LAMBADA last-word accuracy (NLG)"),
                  ("arc", "ARC multiple choice by log-likelihood (NLU)"),
                  ("winogrande", "WinoGrande partial scoring (NLU)"),
                  ("wsc", "WSC273 (NLU)")):
    register(EvalKind(_nl, "nl", _doc, "lm-evaluation-harness task of the same name",
                      max_new_tokens=16, prefix_match=True))
