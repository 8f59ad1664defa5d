"""Seeded randomness for the micro world.

Every stream is a ``numpy.random.default_rng`` seeded by ``(seed, stable hash of a name)``,
so each component (corpus, lambada, vl/vqa/test, ...) has its own independent stream and
adding a component never shifts another one. Python's ``hash()`` (salted per process) and
the global ``random`` / ``np.random`` state are never used.

:class:`Rand` wraps a generator and serves scalar draws from a buffered block of uniforms
(one numpy call per 8192 draws): generating ~40k documents word by word through numpy
scalar calls would take seconds; through the buffer it takes a fraction of that, with the
same determinism.
"""

from __future__ import annotations

import hashlib
from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")
_BLOCK = 8192


def stream_seed(seed: int, *names: str) -> list[int]:
    """Entropy for a named stream: the seed plus 64 bits of sha256 of the names."""
    digest = hashlib.sha256("/".join(names).encode()).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def make_rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng(stream_seed(seed, *names))


class Rand:
    """Scalar random draws over a numpy Generator (see module docstring)."""

    def __init__(self, rng: np.random.Generator):
        self.np = rng
        self._it = iter(())

    @classmethod
    def named(cls, seed: int, *names: str) -> "Rand":
        return cls(make_rng(seed, *names))

    def random(self) -> float:
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.np.random(_BLOCK).tolist())
            return next(self._it)

    def integers(self, lo: int, hi: int | None = None) -> int:
        """Uniform integer in [lo, hi) (or [0, lo) with one argument)."""
        if hi is None:
            lo, hi = 0, lo
        i = int(self.random() * (hi - lo))
        return lo + (i if i < hi - lo else hi - lo - 1)

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def coin(self, p: float) -> bool:
        return self.random() < p

    def pick(self, seq: Sequence[T]) -> T:
        n = len(seq)
        i = int(self.random() * n)
        return seq[i if i < n else n - 1]

    def pick_k(self, seq: Sequence[T], k: int, exclude: Sequence = ()) -> list[T]:
        """`k` distinct elements (partial Fisher-Yates), in draw order."""
        pool = [x for x in seq if x not in exclude] if exclude else list(seq)
        n = len(pool)
        if k > n:
            raise ValueError(f"cannot pick {k} of {n}")
        for i in range(k):
            j = i + self.integers(n - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    def permutation(self, n: int) -> list[int]:
        return self.pick_k(range(n), n)

    def shuffled(self, seq: Sequence[T]) -> list[T]:
        return self.pick_k(seq, len(seq))

    def choose(self, options: Sequence[T], probs: Sequence[float]) -> T:
        total = float(sum(probs))
        u = self.random() * total
        acc = 0.0
        for opt, p in zip(options, probs):
            acc += p
            if u < acc:
                return opt
        return options[-1]
