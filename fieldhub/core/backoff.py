"""The one retry delay every part uses: capped exponential backoff with full jitter."""

from __future__ import annotations

import random


class Backoff:
    """``next()`` gives the next delay in seconds, between half and all of
    ``min(cap, initial * 2**attempt)``; ``reset()`` after a success starts again at ``initial``."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError(f"backoff needs 0 < initial <= cap (got {initial}, {cap})")
        self.initial, self.cap = initial, cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap, self.initial * (2 ** min(self.attempt, 62)))
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
