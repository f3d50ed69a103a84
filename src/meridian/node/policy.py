"""Endorsement policies: which member organisations must endorse.

Spelling (case-insensitive keywords)::

    ANY                    any one member org
    ALL                    every member org
    MAJORITY               more than half of the member orgs
    2-of(org1,org2,org3)   at least 2 of the listed orgs

A policy is evaluated against the set of orgs whose nodes produced valid
endorsements and the app's current member orgs.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from ..errors import InvalidInput

_K_OF = re.compile(r"^(\d{1,3})-of\(([^()]*)\)$")
_ORG_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True, slots=True)
class Policy:
    kind: str  # "any" | "all" | "majority" | "k-of"
    k: int = 0
    orgs: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.kind == "k-of":
            return f"{self.k}-of({','.join(self.orgs)})"
        return self.kind.upper()

    def required(self, members: Collection[str]) -> int:
        """How many of the eligible orgs must endorse."""
        if self.kind == "any":
            return 1
        if self.kind == "all":
            return len(members)
        if self.kind == "majority":
            return len(members) // 2 + 1
        return self.k

    def eligible(self, members: Collection[str]) -> set[str]:
        if self.kind == "k-of":
            return set(self.orgs) & set(members)
        return set(members)

    def is_satisfied(self, endorsing_orgs: Collection[str], members: Collection[str]) -> bool:
        eligible = self.eligible(members)
        if not eligible:
            return False
        return len(eligible & set(endorsing_orgs)) >= self.required(members)


def parse_policy(text: str) -> Policy:
    """Parse a policy spelling; raises InvalidInput(code="bad_policy")."""
    if not isinstance(text, str):
        raise InvalidInput("a policy must be a string", code="bad_policy")
    spelled = text.strip().lower()
    if spelled in ("any", "all", "majority"):
        return Policy(spelled)
    match = _K_OF.match(spelled)
    if match:
        listed = [o.strip() for o in match.group(2).split(",")]
        orgs = tuple(sorted(set(listed)))
        k = int(match.group(1))
        if all(_ORG_ID.match(o) for o in listed) and 1 <= k <= len(orgs):
            return Policy("k-of", k, orgs)
    raise InvalidInput(
        f"cannot read policy {text!r}",
        code="bad_policy",
        hint="use ANY, ALL, MAJORITY or K-of(org1,org2,...) with 1 <= K <= number of orgs",
    )
