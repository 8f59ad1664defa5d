"""CoIN's "Reasoning Capability" LLM judge (Chen et al. §3.1.3) and EMT's judge decision.

CoIN asks a strong LLM (Qwen-1.5-32B-Chat in the paper) to grade each answer against the
ground truth on a 0–10 scale, disregarding its format; a task's score is
``100 · Σ score / (10 · N)``. As released (``ETrain/Eval/LLaVA/CoIN/create_prompt.py``,
``rule.json``, ``ETrain/Eval/eval_GenealKnowledge.py``, ``ETrain/Eval/evaluate_score.py``):

* the user message is ``[Context]``, ``[Question]`` (the question without its last line,
  the answer-format instruction), ``[Ground truth answer]``, the ``[Assistant]``'s answer
  and a ``[System]`` rule: rule ``CoIN`` for every task but Grounding, whose rule
  ``CoIN_Grounding`` describes the box format (and whose question keeps every line);
* the Qwen judge run (``eval_GenealKnowledge.py``) sends that user message with the
  system message "You are a helpful assistant." (create_prompt's own system message is
  dropped there) and samples with temperature 0.7, top-p 0.8, repetition penalty 1.05,
  at most 20 new tokens (`COIN_JUDGE_SAMPLING`);
* replies are read by `scoring.coin_judge_score`; unparseable replies count 0 in N and
  their number is reported beside (`scoring.judge_task_score`).

EMT (Zhai et al.) uses an LLM to decide whether a free-form answer names the true label;
`EMT_RULE` is the yes/no question of CoIN's ``llava_classify`` rule.

Every decision records the judge model id, the prompt version and the sampling settings
(`Judge.info`). Replies are cached in a small SQLite file keyed by a hash of (judge id,
prompt version, sampling, full prompt text — which contains the answer), so a rerun
reuses every reply and makes no engine call; the judge model itself is only built on
the first cache miss (pass a zero-argument factory as `engine`).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import scoring
from .engine.base import Engine, GenRequest

JUDGE_PROMPT_VERSION = "coin-judge-v2"
EMT_JUDGE_PROMPT_VERSION = "emt-judge-v1"
JUDGE_SYSTEM = "You are a helpful assistant."  # eval_GenealKnowledge.py's (the Qwen judge run)
# create_prompt.py's system message, kept in its JSON but not sent by the Qwen judge run
CREATE_PROMPT_SYSTEM = ("You are a helpful and precise assistant for checking the quality of "
                        "the answer.")
# rule.json "CoIN" and "CoIN_Grounding", verbatim (their grammar included)
COIN_RULE = (
    "We would like to request your feedback on the performance of an AI assistants in "
    "response to the user question displayed above.\n"
    "Please rate the accuracy of its responses according to the ground truth answer "
    "displayed above. The assistant receives an overall score on a scale of 0 to 10, "
    "where a higher score indicates better overall performance.\n"
    "Please output a single line containing only a values indicating the scores for the "
    "Assistant.")
COIN_GROUNDING_RULE = (
    "We would like to request your feedback on the performance of an AI assistants in "
    "response to the user question displayed above. The user asks the question on "
    "observing an image. For your reference, the visual content in the image is "
    "represented with one descriptive sentence describing the same image and the bounding "
    "box coordinates of each object in the scene. These coordinates are in the form of "
    "bounding boxes, represented as (x1, y1, x2, y2) with floating numbers ranging from 0 "
    "to 1. These values correspond to the top left x, top left y, bottom right x, and "
    "bottom right y. \n"
    "Please rate the accuracy of its responses according to the ground truth answer "
    "displayed above. The assistant receives an overall score on a scale of 0 to 10, "
    "where a higher score indicates better overall performance.\n"
    "Please output a single line containing only a values indicating the scores for the "
    "Assistant.")
COIN_RULES = {"CoIN": COIN_RULE, "CoIN_Grounding": COIN_GROUNDING_RULE}
# eval_GenealKnowledge.py: SamplingParams(temperature=0.7, top_p=0.8,
# repetition_penalty=1.05, max_tokens=20)
COIN_JUDGE_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.05,
                       "max_new_tokens": 20}
GREEDY_SAMPLING = {"temperature": 0.0, "top_p": 1.0, "repetition_penalty": 1.0,
                   "max_new_tokens": 16}
EMT_RULE = ('Please only answer the question in yes or no. Is the "Prediction" correctly '
            'predicting the right "Label"?')


def coin_judge_prompt(question: str, ground_truth: str, answer: str, rule: str = "CoIN") -> str:
    """The user message CoIN's judge sees (create_prompt.py's layout; `rule` is a key of
    rule.json: "CoIN" or "CoIN_Grounding"). The Qwen run strips it and removes
    ``<image>`` (eval_GenealKnowledge.py)."""
    if rule not in COIN_RULES:
        raise ValueError(f"unknown CoIN judge rule {rule!r}; known: {', '.join(COIN_RULES)}")
    text = (f"[Context]\n[Question]\n{question}\n\n"
            f"[Ground truth answer]\n{ground_truth}\n\n[End of ground truth answer]\n\n"
            f"[Assistant]\n{answer}\n\n[End of Assistant]\n\n"
            f"[System]\n{COIN_RULES[rule]}\n\n")
    return text.replace("<image>", "").strip()


def emt_judge_prompt(label: str, prediction: str, labels: Sequence[str] = ()) -> str:
    """EMT's judge question: does the prediction name the true label?"""
    cls = f"[Classes]\n{', '.join(labels)}\n\n" if labels else ""
    return (f"{cls}[Label]\n{label}\n\n[Prediction]\n{prediction}\n\n"
            f"[System]\n{EMT_RULE}\n\n")


_YES = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def parse_yes_no(reply: str) -> bool | None:
    """True for a reply starting with "yes", False for "no", None otherwise."""
    m = _YES.match(str(reply))
    if m:
        return m.group(1).lower() == "yes"
    low = str(reply).lower()
    has_yes, has_no = bool(re.search(r"\byes\b", low)), bool(re.search(r"\bno\b", low))
    return has_yes if has_yes != has_no else None


class JudgeCache:
    """Replies on disk: SQLite table (key TEXT PRIMARY KEY, judge, prompt_version, reply,
    time). Safe to share between processes (SQLite locking)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, judge TEXT, "
                        "prompt_version TEXT, reply TEXT, time REAL)")

    def _connect(self):
        return sqlite3.connect(str(self.path), timeout=60)

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with self._lock, self._connect() as con:
            for s in range(0, len(keys), 500):
                chunk = list(keys[s:s + 500])
                q = f"SELECT key, reply FROM replies WHERE key IN ({','.join('?' * len(chunk))})"
                out.update(dict(con.execute(q, chunk).fetchall()))
        return out

    def put_many(self, items: Sequence[tuple[str, str, str, str]]) -> None:
        """(key, judge, prompt_version, reply) rows; existing keys are kept."""
        now = time.time()
        with self._lock, self._connect() as con:
            con.executemany("INSERT OR IGNORE INTO replies VALUES (?, ?, ?, ?, ?)",
                            [(k, j, v, r, now) for k, j, v, r in items])

    def __len__(self) -> int:
        with self._connect() as con:
            return con.execute("SELECT COUNT(*) FROM replies").fetchone()[0]


@dataclass
class JudgeResult:
    """A judged dataset: the task score (0–100, CoIN's unit) and per-sample decisions."""

    score: float  # 100 · Σ s / (10 · N), unparseable replies counting 0 in N (NaN if N = 0)
    n_scored: int
    n_unparseable: int
    replies: list[str]
    scores: list[float | None]


class Judge:
    """An LLM judge over an `Engine`, with an on-disk reply cache.

    Args:
        engine: an Engine, or a zero-argument factory building one (called on the first
            cache miss only).
        judge_id: the judge model's identity (path or name) — part of the cache key and
            of every result row.
        cache_path: SQLite file for replies (None: no cache).
        sampling: ``{temperature, top_p, repetition_penalty, max_new_tokens}``; default
            CoIN's Qwen judge run (`COIN_JUDGE_SAMPLING`); `GREEDY_SAMPLING` for greedy.
        system: the system message (default CoIN's Qwen run's, `JUDGE_SYSTEM`).
        max_new_tokens: overrides ``sampling["max_new_tokens"]`` when given.
    """

    def __init__(self, engine: Engine | Callable[[], Engine], *, judge_id: str,
                 cache_path: str | Path | None = None, sampling: dict | None = None,
                 system: str = JUDGE_SYSTEM, max_new_tokens: int | None = None):
        self._engine = engine if isinstance(engine, Engine) else None
        self._factory = None if isinstance(engine, Engine) else engine
        self.judge_id = str(judge_id)
        self.cache = JudgeCache(cache_path) if cache_path else None
        samp = dict(COIN_JUDGE_SAMPLING if sampling is None else sampling)
        unknown = set(samp) - set(COIN_JUDGE_SAMPLING)
        if unknown:
            raise ValueError(f"judge sampling: unknown keys {sorted(unknown)}; known: "
                             f"{', '.join(COIN_JUDGE_SAMPLING)}")
        samp = {**GREEDY_SAMPLING, **samp}
        if max_new_tokens is not None:
            samp["max_new_tokens"] = int(max_new_tokens)
        self._sampling = samp
        self.max_new_tokens = int(samp["max_new_tokens"])
        self.system = system
        self.engine_calls = 0  # generate() calls made (0 on a fully cached rerun)
        self.generated = 0  # replies generated (cache misses)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._factory()  # type: ignore[misc]
        return self._engine

    def _settings(self, prompt_version: str) -> dict:
        # CoIN's judge samples as CoIN does; EMT's yes/no decision stays greedy (EMT gives
        # no settings for its GPT-3.5 judge)
        if prompt_version == EMT_JUDGE_PROMPT_VERSION:
            return {**GREEDY_SAMPLING, "max_new_tokens": self.max_new_tokens}
        return self._sampling

    def sampling(self, prompt_version: str = JUDGE_PROMPT_VERSION) -> dict:
        """The judge's sampling settings for a prompt version (recorded in its rows)."""
        sp = self._settings(prompt_version)
        greedy = sp["temperature"] <= 0
        return {**sp, "do_sample": not greedy, "greedy": greedy}

    def info(self, prompt_version: str = JUDGE_PROMPT_VERSION) -> dict:
        """What goes into the `decoding` column of judge rows."""
        out = {"judge": self.judge_id, "judge_prompt_version": prompt_version,
               "judge_sampling": self.sampling(prompt_version), "judge_system": self.system}
        if prompt_version == JUDGE_PROMPT_VERSION:
            out["judge_parser"] = "CoIN evaluate_score.py"
        return out

    def _key(self, prompt: str, prompt_version: str) -> str:
        blob = json.dumps([self.judge_id, prompt_version, self.sampling(prompt_version),
                           self.system, prompt])
        return hashlib.sha256(blob.encode()).hexdigest()

    def replies(self, prompts: Sequence[str], prompt_version: str) -> list[str]:
        """Judge replies for user messages `prompts` (cached; misses generated in one batch)."""
        keys = [self._key(p, prompt_version) for p in prompts]
        got = self.cache.get_many(keys) if self.cache is not None else {}
        miss = sorted({k: i for i, k in enumerate(keys) if k not in got}.values())
        if miss:
            eng = self.engine
            sp = self._settings(prompt_version)
            reqs = [GenRequest(eng.chat_prompt(prompts[i], system=self.system), None,
                               self.max_new_tokens, temperature=sp["temperature"],
                               top_p=sp["top_p"], repetition_penalty=sp["repetition_penalty"])
                    for i in miss]
            outs = eng.generate(reqs)
            self.engine_calls += 1
            self.generated += len(miss)
            new = {keys[i]: o for i, o in zip(miss, outs)}
            if self.cache is not None:
                self.cache.put_many([(k, self.judge_id, prompt_version, r) for k, r in new.items()])
            got.update(new)
        return [got[k] for k in keys]

    def judge_answers(self, items: Sequence[tuple[str, str, str]],
                      unparseable_as_zero: bool = True, rule: str = "CoIN") -> JudgeResult:
        """CoIN Reasoning Capability over (question, ground truth, answer) triples, with
        rule.json's `rule` ("CoIN_Grounding" for the Grounding task)."""
        prompts = [coin_judge_prompt(q, g, a, rule) for q, g, a in items]
        replies = self.replies(prompts, JUDGE_PROMPT_VERSION)
        scores = [scoring.coin_judge_score(r) for r in replies]
        ts = scoring.judge_task_score(scores, unparseable_as_zero=unparseable_as_zero)
        return JudgeResult(ts.score, ts.n_scored, ts.n_unparseable, replies, scores)

    def judge_emt(self, items: Sequence[tuple[str, str]], labels: Sequence[str] = ()
                  ) -> tuple[list[bool | None], list[str]]:
        """EMT decisions over (true label, prediction) pairs: True/False/None (unparseable)."""
        prompts = [emt_judge_prompt(lab, pred, labels) for lab, pred in items]
        replies = self.replies(prompts, EMT_JUDGE_PROMPT_VERSION)
        return [parse_yes_no(r) for r in replies], replies


def judge_fraction(result: JudgeResult) -> float:
    """The judge task score as a fraction in [0, 1] (result rows store fractions)."""
    return result.score / 100.0 if not math.isnan(result.score) else math.nan


def make_judge(judge: str, engine_factory: Callable[[Any], Engine], cache_path: str | Path | None,
               **kwargs: Any) -> Judge:
    """A Judge over model `judge` (dir or id), built lazily with `engine_factory`."""
    return Judge(lambda: engine_factory(judge), judge_id=judge, cache_path=cache_path, **kwargs)
