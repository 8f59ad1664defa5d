"""What the suites share: seeded slim subsets, content hashes, the suite result."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def select_subset(items: list, max_samples: int | None, seed: int) -> list:
    """A seeded subset of at most `max_samples` items, kept in file order.

    The same (items, max_samples, seed) always gives the same subset, so every checkpoint
    of a run (and every run with the same seed) is scored on the same samples.
    """
    n = len(items)
    if max_samples is None or max_samples >= n:
        return list(items)
    if max_samples <= 0:
        return []
    keep = np.sort(np.random.default_rng(seed).permutation(n)[:max_samples])
    return [items[i] for i in keep]


def content_hash(items: Any) -> str:
    """Short stable hash of JSON-able content (the `eval_set_hash` column)."""
    blob = json.dumps(items, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class SuiteResult:
    """One dataset scored on one checkpoint: metric values and per-sample predictions."""

    dataset: str  # dataset name in results
    split: str  # nlu, nlg, vl, emt, judge
    metrics: dict[str, float]  # metric name -> value (accuracies as fractions)
    n: int  # samples scored
    eval_set_hash: str
    prompt_version: str
    decoding: dict
    predictions: list[dict] = field(default_factory=list)  # one per sample
    counts: dict[str, int] = field(default_factory=dict)  # extra counts (e.g. unparseable)
