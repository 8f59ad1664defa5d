"""Pure answer scorers: strings in, numbers out (no models, no I/O).

Sources
-------
* VQAv2 answer normalisation and accuracy: the official VQA evaluation script
  (GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``):
  ``processPunctuation`` (punctuation list, ``commaStrip`` / ``periodStrip`` regexes) and
  ``processDigitArticle`` (lower-case, number words → digits via ``manualMap``, drop
  articles a/an/the, contractions map). Reproduced here with its quirks:

  - ``periodStrip`` is ``(?!<=\\d)(\\.)(?!\\d)``: the "lookbehind" is a typo in the
    original and acts as a lookahead that always passes, so every period **not followed
    by a digit** is removed (``"yes."`` → ``"yes"``, ``"3.5"`` kept).
  - the original passes ``re.UNICODE`` as the *count* argument of ``sub``: at most 32
    periods are stripped. Kept for fidelity.
  - the apostrophe is not in the punctuation list (``"cat's"`` stays ``"cat's"``).
  - contraction keys with capitals (``"Im"``, ``"Ive"``, ``"Id've"``) can never match
    because the text is lower-cased first; kept as in the original.

  Deviation (documented): the official script applies full normalisation to the
  prediction but only ``processPunctuation`` to the ground-truth answers, and only when
  they disagree, because the released annotations are already normalised. We normalise
  both sides fully by default (as LLaVA's / EvalAI's m4c evaluators do), so raw reference
  strings such as ``"Two"`` still match; ``official_gt=True`` restores the original rule
  (kind ``vqa``; it equals TRI vlm-evaluation's). :func:`vqa_accuracy_2021` is the rule
  of vqaEval.py after its March 2021 fix (kind ``vqa_2021``): prediction and references
  are stripped, and fully normalised only when the references disagree.
* TextVQA (kind ``textvqa``): m4c's ``TextVQAAccuracyEvaluator`` with the EvalAI answer
  processor (mmf ``EvalAIAnswerProcessor``; CoIN ``ETrain/Eval/LLaVA/CoIN/m4c_evaluator.py``,
  used by its ``eval_textvqa.py``): :func:`evalai_normalize`, :func:`textvqa_accuracy`.
* CoIN's released per-task evaluation (``ETrain/Eval/LLaVA/CoIN/eval_*.py``):
  VQAv2 / VizWiz ``pred.upper() == answer.upper()``, OCR-VQA the same with
  "Unanswerable" replies wrong (:func:`exact_match_ci`); ImageNet ``label in pred or
  pred in label`` (:func:`label_contain`); GQA ``convert_gqa_for_eval.py`` + the official
  GQA ``eval.py`` (:func:`gqa_match`); ScienceQA ``eval_science_qa.py``'s letter rule
  (:func:`coin_option_letter`); Grounding ``eval_grounding.py`` IoU > 0.5.

* VQA accuracy: the VQA paper's ``min(#humans who gave the answer / 3, 1)``. With 10
  reference answers the official script averages this over the 10 leave-one-out subsets
  of 9 answers (``vqa_accuracy``); with any other number of references we use
  ``min(#matches / 3, 1)`` over all of them (note: a single reference can then give at
  most 1/3 — use :func:`exact_match` for single-answer datasets such as GQA).
* GQA / TextVQA-style exact match and classification: equality after the same
  normalisation (CoIN App. E: "comparing predicted labels with real ones").
* ScienceQA: option letter (CoIN Table 1 instruction "Answer with the option's letter
  from the given choices directly"; LLaVA's eval accepts "B", "B. text", "The answer is B").
* Grounding (RefCOCO*): CoIN App. E counts a prediction correct if IoU with the ground
  truth box is **greater than** 0.5 (and CoIN's eval_grounding.py uses ``iou > 0.5``);
  TRI's vlm-evaluation (Srivastava App. B.3) uses ``>= 0.5``: ``inclusive=True``.
  Boxes are normalised ``[x1, y1, x2, y2]`` in [0, 1].
* LLM judge (CoIN §3.1.3 "Reasoning Capability"): the judge returns a score 0..10 and
  the task score is ``100 · Σ score / (10 · N)``. Replies are read by CoIN's
  ``evaluate_score.py`` rule (:func:`coin_judge_score`) and unparseable ones count 0 in
  N, as there; their number is reported beside (``judge_unparseable``).
* EMT (Zhai et al., §4 and §4.2, §7 "Post-processing the outputs"): the MLLM is asked for
  a single label; outputs are classed as correct / wrong (incorrect prediction) /
  intrinsic hallucination (names several labels) / extrinsic hallucination (names no
  label). §7 (1): nearest label by embedding distance ``argmin_i ||e_i − e(y)||_2``;
  §7 (2): "hard code ... finding the existence of the label names" (:func:`emt_exact`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "CONTRACTIONS",
    "MANUAL_MAP",
    "ARTICLES",
    "PUNCT",
    "process_punctuation",
    "process_digit_article",
    "normalize_answer",
    "vqa_accuracy",
    "vqa_accuracy_2021",
    "evalai_normalize",
    "textvqa_accuracy",
    "exact_match_ci",
    "label_contain",
    "gqa_match",
    "coin_option_letter",
    "coin_option_match",
    "box_truncated",
    "grounding_outcome",
    "coin_judge_score",
    "GROUNDING_HIT",
    "GROUNDING_MISS",
    "GROUNDING_TRUNCATED",
    "GROUNDING_UNPARSEABLE",
    "exact_match",
    "classification_match",
    "classification_accuracy",
    "extract_option_letter",
    "option_letter_match",
    "parse_box",
    "iou",
    "grounding_correct",
    "parse_judge_score",
    "JudgeTaskScore",
    "judge_task_score",
    "EMT_CORRECT",
    "EMT_WRONG",
    "EMT_INTRINSIC",
    "EMT_EXTRINSIC",
    "emt_label_mentions",
    "emt_exact",
    "emt_nearest",
    "emt_summary",
]

# ======================================================================================
# Official VQA normalisation (vqaEval.py)
# ======================================================================================

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip

MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip

ARTICLES: tuple[str, ...] = ("a", "an", "the")

PUNCT: tuple[str, ...] = (
    ";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip

_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic, see module docstring
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")


def process_punctuation(text: str, comma_strip: re.Pattern | None = None) -> str:
    """``VQAEval.processPunctuation``: a punctuation mark is deleted where it touches a
    space (or anywhere, if the text has a digit,digit comma) and replaced by a space
    otherwise; then periods not followed by a digit are removed. `comma_strip`: the
    digit-comma pattern (default vqaEval's; m4c's EvalAI processor has its own)."""
    out = text
    has_num_comma = (comma_strip or _COMMA_STRIP).search(text) is not None
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or has_num_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=32)  # the original passes re.UNICODE (=32) as count


def process_digit_article(text: str) -> str:
    """``VQAEval.processDigitArticle``: lower-case, number words → digits, drop
    articles, expand contractions ("dont" → "don't"), single-space join."""
    words = []
    for w in text.lower().split():
        w = MANUAL_MAP.get(w, w)
        if w not in ARTICLES:
            words.append(w)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Full official normalisation of one answer (newline/tab → space, strip,
    punctuation, digits/articles/contractions)."""
    t = str(text).replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(t))


def vqa_accuracy(prediction: str, answers: Sequence[str], *, official_gt: bool = False) -> float:
    """VQA accuracy of one prediction against the human answers.

    * 10 answers (VQAv2, TextVQA, VizWiz): the official procedure, the mean over the
      10 leave-one-out subsets of 9 answers of ``min(#matches / 3, 1)``.
    * any other count: ``min(#matches / 3, 1)`` over all answers (a documented
      simplification; see the module docstring). No answers → ``ValueError``.

    ``official_gt=True`` processes reference answers as vqaEval.py did before 2021 and as
    LAVIS / vlm-evaluation do (as stored, ``processPunctuation`` only, and only when the
    references disagree); by default they get the full normalisation.
    """
    answers = [str(a) for a in answers]
    if not answers:
        raise ValueError("vqa_accuracy: no reference answers")
    pred = normalize_answer(prediction)
    if official_gt:  # vqaEval.py before 2021: references as stored (no strip)
        refs = list(answers)
        if len(set(refs)) > 1:
            refs = [process_punctuation(a) for a in refs]
    else:
        refs = [normalize_answer(a) for a in answers]
    if len(refs) == 10:
        accs = []
        for i in range(10):
            matches = sum(1 for j, r in enumerate(refs) if j != i and r == pred)
            accs.append(min(1.0, matches / 3.0))
        return float(sum(accs) / 10.0)
    matches = sum(1 for r in refs if r == pred)
    return float(min(1.0, matches / 3.0))


def _strip_ws(text: str) -> str:
    return str(text).replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy_2021(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy by vqaEval.py after its March 2021 fix.

    Prediction and references get newline/tab → space and ``strip``; only when the
    references are not all equal are both sides normalised (``processPunctuation`` then
    ``processDigitArticle``). Then the mean over the leave-one-out subsets of
    ``min(1, #matches / 3)`` (with 10 answers: the official procedure; any count ≥ 1 is
    handled by the same loop, so a single reference scores 0). No answers → ValueError.
    """
    refs = [_strip_ws(a) for a in answers]
    if not refs:
        raise ValueError("vqa_accuracy_2021: no reference answers")
    pred = _strip_ws(prediction)
    if len(set(refs)) > 1:
        refs = [process_digit_article(process_punctuation(a)) for a in refs]
        pred = process_digit_article(process_punctuation(pred))
    accs = []
    for i in range(len(refs)):
        matches = sum(1 for j, r in enumerate(refs) if j != i and r == pred)
        accs.append(min(1.0, matches / 3.0))
    return float(sum(accs) / len(accs))


# EvalAI / m4c answer processor (mmf EvalAIAnswerProcessor): like vqaEval's, but the text
# is first lower-cased with "," and "?" removed and "'s" split off, and its comma regex
# is ``(?<=\d)(\,)+(?=\d)``.
_EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")


def evalai_normalize(text: str) -> str:
    """m4c's ``EvalAIAnswerProcessor.__call__`` (word_tokenize, whitespace, punctuation,
    digits/articles/contractions)."""
    t = str(text).lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    t = t.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(t, _EVALAI_COMMA_STRIP))


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """m4c ``TextVQAAccuracyEvaluator``: every answer normalised by
    :func:`evalai_normalize`; the prediction's score is its leave-one-out
    ``mean_i min(1, #matches among the other 9 / 3)``. m4c asserts exactly 10 answers;
    so does this (ValueError otherwise)."""
    refs = [evalai_normalize(a) for a in answers]
    if len(refs) != 10:
        raise ValueError(f"textvqa_accuracy needs the 10 human answers, got {len(refs)}")
    pred = evalai_normalize(prediction)
    accs = [min(1.0, sum(1 for j, r in enumerate(refs) if j != i and r == pred) / 3.0)
            for i in range(10)]
    return float(sum(accs) / 10.0)


def exact_match_ci(prediction: str, answer: str) -> float:
    """CoIN's VQAv2 / VizWiz rule (``eval_vqav2.py``, ``eval_vizwiz.py``):
    ``pred.upper() == answer.upper()``; OCR-VQA's (``eval_ocrvqa.py``) is the same test
    in lower case, and its skip of replies containing "Unanswerable" changes nothing
    (such a reply never equals an OCR-VQA answer). Both sides are stripped first, as
    LLaVA's ``model_vqa`` strips the reply it stores."""
    return 1.0 if str(prediction).strip().upper() == str(answer).strip().upper() else 0.0


def label_contain(prediction: str, label: str) -> float:
    """CoIN ImageNet (``eval_ImagetNet.py``): ``label in pred or pred in label``
    (case-sensitive, as released). Deviation: an empty (or all-space) reply is wrong,
    where the released test counts ``"" in label`` as correct."""
    p, lab = str(prediction).strip(), str(label).strip()
    if not p:
        return 0.0
    return 1.0 if (lab in p or p in lab) else 0.0


def gqa_match(prediction: str, answer: str) -> float:
    """GQA as CoIN runs it: ``convert_gqa_for_eval.py`` (``rstrip('.')``, lower-case, one
    leading space dropped) then the official GQA ``eval.py`` accuracy
    ``predicted == gold``. The reply is stripped first (LLaVA stores stripped replies)."""
    t = str(prediction).strip().rstrip(".").lower()
    t = t[1:] if t[:1] == " " else t
    return 1.0 if t == str(answer) else 0.0


_COIN_WORD_LETTER = re.compile(r"\b(\w)\b")
COIN_OPTIONS = ("A", "B", "C", "D", "E")


def coin_option_letter(prediction: str, options: Sequence[str] = COIN_OPTIONS) -> str | None:
    """The letter CoIN's ``eval_science_qa.py`` reads from a reply: the reply itself if
    it is an option; else its first character when followed by ". "; else the first
    one-character word, upper-cased; None (CoIN's "FAILED") when there is none or it
    is not an option."""
    t = str(prediction).strip()
    if t in options:
        return t
    if len(t) >= 3 and t[0] in options and t[1:3] == ". ":
        return t[0]
    found = _COIN_WORD_LETTER.findall(t)
    if found and found[0].upper() in options:
        return found[0].upper()
    return None


def coin_option_match(prediction: str, answer_letter: str) -> float:
    """1.0 if :func:`coin_option_letter` equals the answer letter ("B", "(B)", "B. x")."""
    truth = extract_option_letter(answer_letter)
    if truth is None:
        raise ValueError(f"not an option letter: {answer_letter!r}")
    return 1.0 if coin_option_letter(prediction) == truth else 0.0


def exact_match(prediction: str, answer: str) -> float:
    """1.0 if prediction and answer are equal after :func:`normalize_answer`, else 0.0
    (GQA, single-reference TextVQA/OCR-VQA style)."""
    return 1.0 if normalize_answer(prediction) == normalize_answer(answer) else 0.0


def classification_match(prediction: str, label: str) -> float:
    """Single-label classification (CoIN ImageNet, App. E): exact match after
    normalisation, so "A goldfish." matches "goldfish"."""
    return exact_match(prediction, label)


def classification_accuracy(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Mean of :func:`classification_match` over aligned lists (empty → ValueError)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("classification_accuracy: empty")
    return float(sum(classification_match(p, l) for p, l in zip(predictions, labels)) / len(labels))


# ======================================================================================
# ScienceQA option letters
# ======================================================================================

_LETTER_ALONE = re.compile(r"^\(?\s*([A-Za-z])\s*\)?\s*[.:)]?$")
_LETTER_LEAD = re.compile(r"^\(?([A-Z])(?:\)|[.:])(?:\s|$)")
_LETTER_PHRASE = re.compile(
    r"\b(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*\(?([A-Z])\)?(?![A-Za-z])",
    re.IGNORECASE,
)


def extract_option_letter(text: str, letters: str | None = None) -> str | None:
    """The option letter a reply gives, or None.

    Accepted: ``"B"``, ``"b"``, ``"B."``, ``"(B)"``, ``"B)"``, ``"B: text"``,
    ``"B. New Hampshire"``, ``"(B) New Hampshire"``, ``"The answer is B."``,
    ``"Answer: (B)"``, ``"The correct option is B"``. A bare leading capital without
    punctuation ("A cat ...") is not a letter. ``letters`` restricts the valid letters
    (e.g. ``"ABCD"``); anything else gives None.
    """
    t = str(text).strip()
    letter = None
    m = _LETTER_ALONE.match(t)
    if m:
        letter = m.group(1).upper()
    else:
        m = _LETTER_LEAD.match(t)
        if m:
            letter = m.group(1)
        else:
            m = _LETTER_PHRASE.search(t)
            if m and m.group(1).isupper():
                letter = m.group(1)
    if letter is None:
        return None
    if letters is not None and letter not in letters.upper():
        return None
    return letter


def option_letter_match(prediction: str, answer_letter: str, letters: str | None = None) -> float:
    """1.0 if the reply's option letter equals ``answer_letter`` (itself "B", "(B)", ...)."""
    truth = extract_option_letter(answer_letter)
    if truth is None:
        raise ValueError(f"not an option letter: {answer_letter!r}")
    return 1.0 if extract_option_letter(prediction, letters) == truth else 0.0


# ======================================================================================
# Grounding boxes
# ======================================================================================

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUM_LIST = re.compile(rf"^\s*{_NUM}(?:\s*,\s*{_NUM})*\s*,?\s*$")


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The first bracketed list of numbers in ``text`` as ``(x1, y1, x2, y2)``, or None.

    The first ``[...]`` that holds only comma-separated numbers is the model's box
    (brackets with words, e.g. "[image]", are skipped). It must hold exactly four numbers,
    all in [0, 1], with x1 < x2 and y1 < y2; otherwise None (no later box is tried).
    """
    for m in _BRACKETS.finditer(str(text)):
        inner = m.group(1)
        if not _NUM_LIST.match(inner):
            continue
        vals = [float(v) for v in re.findall(_NUM, inner)]
        if len(vals) != 4 or any(not math.isfinite(v) for v in vals):
            return None
        x1, y1, x2, y2 = vals
        if not all(0.0 <= v <= 1.0 for v in vals) or not (x1 < x2 and y1 < y2):
            return None
        return (x1, y1, x2, y2)
    return None


def iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (continuous
    coordinates, no +1 pixel); 0 when the union has no area."""
    ax1, ay1, ax2, ay2 = map(float, box_a)
    bx1, by1, bx2, by2 = map(float, box_b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def grounding_correct(
    pred_text: str, gt_box: Sequence[float], threshold: float = 0.5, inclusive: bool = False
) -> bool:
    """Referring-expression hit: IoU(parsed box, gt) > threshold (CoIN App. E), or
    ≥ threshold with ``inclusive=True`` (vlm-evaluation). Unparseable boxes miss."""
    box = parse_box(pred_text)
    if box is None:
        return False
    v = iou(box, gt_box)
    return v >= threshold if inclusive else v > threshold


def box_truncated(text: str) -> bool:
    """True when a reply opens a box and never closes it: the last ``[`` has no ``]``
    after it and is followed only by a number list prefix (digits, ".", ",", spaces,
    sign) — what a reply cut off by the generation budget looks like
    (``"[0.12, 0.34, 0.5"``)."""
    t = str(text)
    i = t.rfind("[")
    if i < 0 or "]" in t[i:]:
        return False
    return re.fullmatch(r"[\s\d.,+\-eE]*", t[i + 1:]) is not None


GROUNDING_HIT, GROUNDING_MISS, GROUNDING_UNPARSEABLE, GROUNDING_TRUNCATED = (
    "hit", "miss", "unparseable", "truncated")


def grounding_outcome(pred_text: str, gt_box: Sequence[float], threshold: float = 0.5,
                      inclusive: bool = False) -> str:
    """``"hit"`` (IoU > threshold), ``"miss"`` (a box, IoU too low), ``"truncated"`` (no
    box parsed and :func:`box_truncated`: the budget cut it off) or ``"unparseable"``.
    Only ``"hit"`` is correct; a truncated box is counted apart from a wrong one."""
    box = parse_box(pred_text)
    if box is None:
        return GROUNDING_TRUNCATED if box_truncated(pred_text) else GROUNDING_UNPARSEABLE
    v = iou(box, gt_box)
    return GROUNDING_HIT if (v >= threshold if inclusive else v > threshold) else GROUNDING_MISS


# ======================================================================================
# LLM-judge scores (CoIN "Reasoning Capability")
# ======================================================================================

_SCORE_NUM = r"(\d+(?:\.\d+)?|\.\d+)"
_JUDGE_PATTERNS = (
    re.compile(rf"score\s*(?:is|of|=|:)?\s*[:=]?\s*(-?){_SCORE_NUM}", re.IGNORECASE),
    re.compile(rf"(-?){_SCORE_NUM}\s*(?:/|out\s+of)\s*10(?![\d.])", re.IGNORECASE),
    re.compile(rf"(?<![\w.])(-?){_SCORE_NUM}"),
)


def parse_judge_score(reply: str) -> float | None:
    """The 0..10 score in a judge's reply, or None if there is none.

    Looked for in order: "Score: 8" / "score is 8", then "7/10" / "7 out of 10", then the
    first number. The first pattern that matches decides: a value outside [0, 10]
    (e.g. "Score: 12", "-1") gives None, never a silent 0 or a clipped 10.
    """
    t = str(reply)
    for pat in _JUDGE_PATTERNS:
        m = pat.search(t)
        if m:
            if m.group(1):  # negative
                return None
            v = float(m.group(2))
            return v if 0.0 <= v <= 10.0 else None
    return None


_COIN_FIRST_DIGIT = re.compile(r"[1-9]")


def coin_judge_score(reply: str) -> float | None:
    """A judge reply's score by CoIN's ``ETrain/Eval/evaluate_score.py``, or None where
    that script adds nothing to the sum (the reply then counts 0 in N):

    1. ``float(reply)`` (Python's float: surrounding whitespace allowed): the value if
       ≤ 10, else None;
    2. else, if the reply has a "/": the text before it if ``isnumeric()`` and ≤ 10
       ("7/10" → 7), else None;
    3. else the first digit 1–9 anywhere in the reply ("Score: 8" → 8; note "Score: 10"
       → 1 and "Score: 0" → None, as released).
    """
    t = str(reply)
    try:
        v = float(t)
    except ValueError:
        if "/" in t:
            head = t.split("/")[0]
            return float(head) if head.isnumeric() and float(head) <= 10.0 else None
        m = _COIN_FIRST_DIGIT.search(t)
        return float(m.group(0)) if m else None
    return v if v <= 10.0 else None


class JudgeTaskScore(NamedTuple):
    score: float  # 100 · Σ s / (10 · N), NaN if nothing was scored
    n_scored: int
    n_unparseable: int


def judge_task_score(scores: Iterable[float | str | None], *, unparseable_as_zero: bool = True) -> JudgeTaskScore:
    """Task score from per-sample judge scores: ``100 · Σ s / (10 · N)``.

    Items are parsed scores (float), raw replies (str, parsed with
    :func:`parse_judge_score`) or None (unparseable). By default (CoIN's
    ``evaluate_score.py``) unparseable items count 0 in N; their number is
    ``n_unparseable`` either way. ``unparseable_as_zero=False`` leaves them out of N.
    """
    vals: list[float] = []
    bad = 0
    for s in scores:
        if isinstance(s, str):
            s = parse_judge_score(s)
        if s is None or (isinstance(s, float) and math.isnan(s)):
            bad += 1
            continue
        s = float(s)
        if not 0.0 <= s <= 10.0:
            bad += 1
            continue
        vals.append(s)
    n = len(vals) + (bad if unparseable_as_zero else 0)
    score = 100.0 * sum(vals) / (10.0 * n) if n else math.nan
    return JudgeTaskScore(score, len(vals), bad)


# ======================================================================================
# EMT (Zhai et al.)
# ======================================================================================

EMT_CORRECT = "correct"
EMT_WRONG = "wrong"
EMT_INTRINSIC = "intrinsic"
EMT_EXTRINSIC = "extrinsic"
EMT_DECISIONS = (EMT_CORRECT, EMT_WRONG, EMT_INTRINSIC, EMT_EXTRINSIC)


def _label_pattern(label: str) -> re.Pattern:
    parts = [re.escape(p) for p in re.split(r"[\s_]+", label.strip()) if p]
    if not parts:
        raise ValueError(f"empty label {label!r}")
    body = r"[\s_\-]+".join(parts)
    return re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])", re.IGNORECASE)


def emt_label_mentions(output: str, labels: Sequence[str]) -> list[str]:
    """Labels named in ``output``: case-insensitive, on word boundaries, "_" in a label
    matching a space or "-" ("aquarium_fish" ~ "aquarium fish"). A mention inside a
    longer named label's mention does not count ("maple tree" names maple_tree, not
    tree). Returned in label-set order."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for lab in labels:
        found = [m.span() for m in _label_pattern(lab).finditer(str(output))]
        if found:
            spans[lab] = found
    named = []
    for lab, ss in spans.items():
        inside_other = all(
            any(o != lab and os_ <= s and e <= oe and (oe - os_) > (e - s) for o, oss in spans.items() for os_, oe in oss)
            for s, e in ss
        )
        if not inside_other:
            named.append(lab)
    return [lab for lab in labels if lab in named]


# Words that frame an answer to EMT's prompt without claiming anything: the prompt's own
# words, articles, pronouns and the copula ("The object in the image is an airplane.",
# "The number is 8", "a(n) butterfly"). Any other word beside the named label is content
# that cannot be verified against the label set: extrinsic hallucination.
EMT_FRAME_WORDS = frozenset("""
a an the a(n) this that it its it's is was be there here
object number digit image picture photo in of shown answer class label single
""".split())
_WORD = re.compile(r"a\(n\)|[A-Za-z0-9]+(?:'[A-Za-z]+)?")


def emt_extra_words(output: str, labels: Sequence[str]) -> list[str]:
    """Words of ``output`` outside every label mention and outside `EMT_FRAME_WORDS`
    (case-insensitive): what the answer claims besides naming labels."""
    text = str(output)
    for lab in labels:
        text = _label_pattern(lab).sub(" ", text)
    return [w for w in _WORD.findall(text) if w.lower() not in EMT_FRAME_WORDS]


def emt_exact(output: str, labels: Sequence[str], truth: str) -> str:
    """EMT decision by label names (Zhai §7 (2)) into the failure modes of §4.2, with
    Ji et al.'s definitions that §4.2 adopts (docs/studies.md has the decision table):

    * names several labels → ``"intrinsic"``: the output contradicts the source (the
      prompt asks for a single label; e.g. LENS listing the CIFAR-10 classes);
    * names no label → ``"extrinsic"``: no verifiable connection to the label set
      (e.g. "a picture of a fish in a tank" for aquarium_fish);
    * names exactly one label and claims more (a word beside it that is not answer
      framing, `emt_extra_words`) → ``"extrinsic"``: unverifiable extra content
      (e.g. "The airplane is 8." from the MNIST-tuned model, §5.2) — never silently correct;
    * names exactly one label and nothing else → ``"correct"`` if it is the true label,
      else ``"wrong"`` (an incorrect prediction, e.g. "The number in the image is 8").
    """
    if truth not in labels:
        raise ValueError(f"true label {truth!r} is not in the label set")
    named = emt_label_mentions(output, labels)
    if not named:
        return EMT_EXTRINSIC
    if len(named) > 1:
        return EMT_INTRINSIC
    if emt_extra_words(output, labels):
        return EMT_EXTRINSIC
    return EMT_CORRECT if named[0] == truth else EMT_WRONG


def emt_nearest(
    output: str, labels: Sequence[str], truth: str, embed: Callable[[list[str]], np.ndarray]
) -> str:
    """EMT decision by nearest label embedding (Zhai §7 (1)): ``argmin_i ||e_i − e(y)||_2``
    with ``embed(texts) -> array (len(texts), d)``; returns "correct" or "wrong"."""
    if truth not in labels:
        raise ValueError(f"true label {truth!r} is not in the label set")
    e = np.asarray(embed([str(output), *labels]), dtype=float)
    if e.ndim != 2 or e.shape[0] != len(labels) + 1:
        raise ValueError(f"embed returned shape {e.shape}, expected ({len(labels) + 1}, d)")
    d = np.linalg.norm(e[1:] - e[0], axis=1)
    return EMT_CORRECT if labels[int(np.argmin(d))] == truth else EMT_WRONG


def emt_summary(decisions: Iterable[str]) -> dict[str, float]:
    """Shares of each decision plus ``n`` and ``accuracy`` (= share correct).
    Empty input gives n = 0 and NaN shares."""
    ds = list(decisions)
    unknown = set(ds) - set(EMT_DECISIONS)
    if unknown:
        raise ValueError(f"unknown EMT decisions {sorted(unknown)}")
    n = len(ds)
    out: dict[str, float] = {k: (ds.count(k) / n if n else math.nan) for k in EMT_DECISIONS}
    out["accuracy"] = out[EMT_CORRECT]
    out["n"] = n
    return out
