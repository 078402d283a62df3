"""Capped exponential backoff with jitter, shared by reconnects and retry delays."""

from __future__ import annotations

import random


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Reconnect delay: uniform in [0, min(cap, base * 2^(attempt-1))] (AWS 'full jitter').

    Spreads a fleet of consumers that all lost the same broker at the same instant.
    """
    uniform = rng.uniform if rng is not None else random.uniform
    return uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))


def equal_jitter(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Retry delay: in [d/2, d] with d = min(cap, base * 2^(attempt-1)).

    Never much shorter than asked for (a retry after a transient fault should wait), yet
    jittered so jobs that failed together do not retry together.
    """
    uniform = rng.uniform if rng is not None else random.uniform
    delay = min(cap, base * 2 ** max(attempt - 1, 0))
    return uniform(delay / 2, delay)
