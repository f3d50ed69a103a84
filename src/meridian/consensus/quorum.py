"""Quorum arithmetic for n replicas, in one place.

With n replicas of which at most f are faulty, f = ⌊(n - 1) / 3⌋. A *quorum* is
n - f replicas (2f + 1 when n = 3f + 1): any two quorums share at least
n - 2f ≥ f + 1 replicas, hence at least one honest one — the intersection every
safety argument in :mod:`meridian.consensus.core` rests on. A quorum is also
reachable with f replicas silent (liveness). A *weak* quorum is f + 1: it holds at
least one honest replica, so f + 1 timeouts for a round prove an honest replica gave
up on it (used to join a round change early).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Quorum:
    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InvalidInput("a consensus instance needs at least one replica", code="bad_config")

    @property
    def f(self) -> int:
        """The most faulty replicas tolerated."""
        return (self.n - 1) // 3

    @property
    def strong(self) -> int:
        """Votes for a certificate: n - f."""
        return self.n - self.f

    @property
    def weak(self) -> int:
        """Replicas among which at least one is honest: f + 1."""
        return self.f + 1
