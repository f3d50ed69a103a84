"""Endorsement policies: spellings and which sets of endorsing orgs satisfy them."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import pytest

from meridian.errors import InvalidInput
from meridian.node.policy import Policy, parse_policy

MEMBERS = ("org1", "org2", "org3")


def _subsets(orgs: tuple[str, ...]) -> list[frozenset[str]]:
    return [frozenset(c) for n in range(len(orgs) + 1) for c in combinations(orgs, n)]


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ANY", Policy("any")),
        ("any", Policy("any")),
        ("  All ", Policy("all")),
        ("MAJORITY", Policy("majority")),
        ("majority", Policy("majority")),
        ("2-of(org1,org2,org3)", Policy("k-of", 2, ("org1", "org2", "org3"))),
        ("1-OF(org2)", Policy("k-of", 1, ("org2",))),
        ("2-of( org3 , org1 )", Policy("k-of", 2, ("org1", "org3"))),
        ("2-of(org2,org1,org2)", Policy("k-of", 2, ("org1", "org2"))),
        ("1-of(org-a,org_b)", Policy("k-of", 1, ("org-a", "org_b"))),
    ],
)
def test_parse_policy(text: str, expected: Policy) -> None:
    assert parse_policy(text) == expected


@pytest.mark.parametrize("text", ["ANY", "ALL", "MAJORITY", "2-of(org1,org2,org3)", "1-of(org2)"])
def test_policy_str_parses_back_to_itself(text: str) -> None:
    policy = parse_policy(text)
    assert parse_policy(str(policy)) == policy
    assert str(policy) == text


def test_k_of_spelling_is_canonical_regardless_of_order() -> None:
    assert str(parse_policy("2-of(org3,org1,org2)")) == "2-of(org1,org2,org3)"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "SOME",
        "ANY ALL",
        "0-of(org1,org2)",
        "3-of(org1,org2)",
        "2-of(org1,org1)",
        "1-of()",
        "1-of( , )",
        "-1-of(org1)",
        "1000-of(org1)",
        "two-of(org1,org2)",
        "2of(org1,org2)",
        "2-of(org1,org2",
        "2-of[org1,org2]",
        "2-of(org1;org2)",
        "2-of(Org1)x",
        "1-of(org1) OR ANY",
    ],
)
def test_invalid_policy_spelling(text: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(text)
    assert exc.value.code == "bad_policy"
    assert exc.value.hint


@pytest.mark.parametrize("value", [None, 2, ["ANY"], b"ANY"])
def test_invalid_policy_not_a_string(value: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(value)
    assert exc.value.code == "bad_policy"


# ----------------------------------------------------------------------- truth tables


@pytest.mark.parametrize("endorsing", _subsets(MEMBERS))
def test_any_needs_one_member(endorsing: frozenset[str]) -> None:
    assert parse_policy("ANY").is_satisfied(endorsing, MEMBERS) == (len(endorsing) >= 1)


@pytest.mark.parametrize("endorsing", _subsets(MEMBERS))
def test_all_needs_every_member(endorsing: frozenset[str]) -> None:
    assert parse_policy("ALL").is_satisfied(endorsing, MEMBERS) == (endorsing == set(MEMBERS))


@pytest.mark.parametrize("endorsing", _subsets(MEMBERS))
def test_majority_of_three_needs_two(endorsing: frozenset[str]) -> None:
    assert parse_policy("MAJORITY").is_satisfied(endorsing, MEMBERS) == (len(endorsing) >= 2)


@pytest.mark.parametrize("endorsing", _subsets(("org1", "org2", "org3", "org4")))
def test_majority_of_four_needs_three(endorsing: frozenset[str]) -> None:
    members = ("org1", "org2", "org3", "org4")
    assert parse_policy("MAJORITY").is_satisfied(endorsing, members) == (len(endorsing) >= 3)


@pytest.mark.parametrize("endorsing", _subsets(MEMBERS))
def test_k_of_counts_only_listed_orgs(endorsing: frozenset[str]) -> None:
    policy = parse_policy("1-of(org2,org3)")
    assert policy.is_satisfied(endorsing, MEMBERS) == bool(endorsing & {"org2", "org3"})


@pytest.mark.parametrize("endorsing", _subsets(MEMBERS))
def test_two_of_three(endorsing: frozenset[str]) -> None:
    policy = parse_policy("2-of(org1,org2,org3)")
    assert policy.is_satisfied(endorsing, MEMBERS) == (len(endorsing) >= 2)


def test_endorsements_from_non_members_do_not_count() -> None:
    for text in ["ANY", "ALL", "MAJORITY", "1-of(org1,org9)"]:
        assert not parse_policy(text).is_satisfied({"org9", "org8"}, MEMBERS)


def test_k_of_listed_org_that_left_the_app_does_not_count() -> None:
    policy = parse_policy("2-of(org1,org2)")
    members = ("org1", "org3")  # org2 is no longer a member
    assert not policy.is_satisfied({"org1", "org2"}, members)
    assert policy.required(members) == 2


def test_no_members_satisfies_nothing() -> None:
    for text in ["ANY", "ALL", "MAJORITY", "1-of(org1)"]:
        assert not parse_policy(text).is_satisfied({"org1"}, ())


@pytest.mark.parametrize(
    ("text", "members", "required"),
    [
        ("ANY", MEMBERS, 1),
        ("ALL", MEMBERS, 3),
        ("MAJORITY", ("org1",), 1),
        ("MAJORITY", ("org1", "org2"), 2),
        ("MAJORITY", MEMBERS, 2),
        ("MAJORITY", ("a", "b", "c", "d", "e"), 3),
        ("2-of(org1,org2,org3)", MEMBERS, 2),
    ],
)
def test_required_count(text: str, members: tuple[str, ...], required: int) -> None:
    assert parse_policy(text).required(members) == required


@pytest.mark.parametrize("text", ["1-of(org 1,org2)", "1-of(-,org2)", "1-of(_x,org2)"])
def test_invalid_policy_org_is_not_an_org_id(text: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_policy(text)
    assert exc.value.code == "bad_policy"
