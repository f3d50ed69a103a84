"""Signing suites: Wycheproof vectors, round trips, malleability and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.crypto import suites
from meridian.crypto.hashing import compute_digest
from meridian.crypto.suites import P256_HALF_ORDER, P256_ORDER, get_suite
from meridian.errors import InvalidInput

VECTORS_DIR = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "wycheproof"

ED25519 = get_suite("ed25519")
P256 = get_suite("p256")
ED_SIGNER = ED25519.generate()
P256_SIGNER = P256.generate()
SIGNERS = {"ed25519": ED_SIGNER, "p256": P256_SIGNER}


def _load_vectors(name: str) -> list[tuple[int, bytes, bytes, bytes, str]]:
    """(tcId, public key, message, signature, expected result) of every test."""
    path = VECTORS_DIR / name
    if not path.is_file():
        pytest.skip(f"Wycheproof vectors not found at {path} (needs ../shared/vectors)")
    data: dict[str, Any] = json.loads(path.read_text())
    cases = []
    for group in data["testGroups"]:
        key = group["publicKey"]
        raw_key = bytes.fromhex(key.get("pk") or key["uncompressed"])
        for test in group["tests"]:
            msg, sig = bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
            cases.append((test["tcId"], raw_key, msg, sig, test["result"]))
    if len(cases) != data["numberOfTests"]:
        pytest.fail(f"{name}: read {len(cases)} tests, file says {data['numberOfTests']}")
    return cases


def _high_s(signature: bytes) -> bool:
    try:
        _, s = decode_dss_signature(signature)
    except ValueError:
        return False
    return s > P256_HALF_ORDER


def test_wycheproof_ed25519_all_vectors_agree() -> None:
    cases = _load_vectors("ed25519_test.json")
    wrong = [
        tc_id
        for tc_id, key, msg, sig, result in cases
        if ED25519.verify(key, msg, sig) != (result == "valid")
    ]
    assert wrong == [], f"Ed25519 vectors disagreeing: {wrong}"
    assert {result for *_, result in cases} == {"valid", "invalid"}


def test_wycheproof_p256_agree_except_high_s_which_are_rejected() -> None:
    cases = _load_vectors("ecdsa_secp256r1_sha256_test.json")
    wrong, high_s_valid = [], 0
    for tc_id, key, msg, sig, result in cases:
        expected = result == "valid" and not _high_s(sig)
        high_s_valid += result == "valid" and _high_s(sig)
        if P256.verify(key, msg, sig) != expected:
            wrong.append(tc_id)
    assert wrong == [], f"P-256 vectors disagreeing: {wrong}"
    assert high_s_valid > 0, "expected some valid high-S vectors to exercise the low-S rule"


@settings(max_examples=50)
@given(suite=st.sampled_from(sorted(SIGNERS)), message=st.binary(max_size=2048))
def test_sign_verify_round_trip(suite: str, message: bytes) -> None:
    signer = SIGNERS[suite]
    signature = signer.sign(message)
    assert get_suite(suite).verify(signer.public_key_bytes(), message, signature)
    assert suites.verify_cached(suite, signer.public_key_bytes(), message, signature)


@settings(max_examples=50)
@given(message=st.binary(max_size=512))
def test_p256_signer_emits_low_s_and_high_s_twin_is_rejected(message: bytes) -> None:
    signature = P256_SIGNER.sign(message)
    r, s = decode_dss_signature(signature)
    assert s <= P256_HALF_ORDER
    twin = encode_dss_signature(r, P256_ORDER - s)
    assert not P256.verify(P256_SIGNER.public_key_bytes(), message, twin)


@pytest.mark.parametrize("suite", sorted(SIGNERS))
def test_private_pem_round_trip_keeps_key(suite: str) -> None:
    signer = SIGNERS[suite]
    pem = signer.private_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = get_suite(suite).load_private_pem(pem)
    assert loaded.public_key_bytes() == signer.public_key_bytes()
    assert suites.load_signer(pem).suite == suite
    assert get_suite(suite).verify(signer.public_key_bytes(), b"m", loaded.sign(b"m"))


def test_public_key_formats() -> None:
    assert len(ED_SIGNER.public_key_bytes()) == 32
    p256_key = P256_SIGNER.public_key_bytes()
    assert len(p256_key) == 65 and p256_key[0] == 4


@pytest.mark.parametrize("suite", sorted(SIGNERS))
def test_suite_of_public_key_matches_signer(suite: str) -> None:
    signer = SIGNERS[suite]
    public_key = signer.crypto_key.public_key()
    assert suites.suite_of_public_key(public_key) == (suite, signer.public_key_bytes())


def test_verify_cached_agrees_and_caches_both_verdicts() -> None:
    suites.clear_verify_cache()
    key, sig = ED_SIGNER.public_key_bytes(), ED_SIGNER.sign(b"hello")
    for _ in range(3):
        assert suites.verify_cached("ed25519", key, b"hello", sig)
        assert not suites.verify_cached("ed25519", key, b"hellp", sig)
    assert suites.get_verify_cache_len() == 2


def test_verify_cache_evicts_least_recently_used() -> None:
    cache = suites._VerifyCache(2)
    a, b, c = (compute_digest(bytes([i])) for i in range(3))
    cache.put(a, True)
    cache.put(b, False)
    assert cache.get(a) is True  # a is now the most recent
    cache.put(c, True)
    assert len(cache) == 2
    assert cache.get(b) is None and cache.get(a) is True and cache.get(c) is True


# --- invalid input ----------------------------------------------------------------------


@pytest.mark.parametrize("suite", sorted(SIGNERS))
def test_invalid_wrong_key(suite: str) -> None:
    other = get_suite(suite).generate()
    signature = SIGNERS[suite].sign(b"payload")
    assert not get_suite(suite).verify(other.public_key_bytes(), b"payload", signature)


@pytest.mark.parametrize("suite", sorted(SIGNERS))
def test_invalid_flipped_bit_in_signature_or_message(suite: str) -> None:
    signer, impl = SIGNERS[suite], get_suite(suite)
    signature = signer.sign(b"payload")
    for index in range(len(signature)):
        flipped = bytearray(signature)
        flipped[index] ^= 0x01
        assert not impl.verify(signer.public_key_bytes(), b"payload", bytes(flipped))
    assert not impl.verify(signer.public_key_bytes(), b"paylaod", signature)


@pytest.mark.parametrize("suite", sorted(SIGNERS))
@pytest.mark.parametrize("length", [0, 1, 8, 63, 65, 71, 73, 128, 4096])
def test_invalid_garbage_signature_lengths(suite: str, length: int) -> None:
    signer = SIGNERS[suite]
    garbage = bytes((i * 7 + 3) % 256 for i in range(length))
    assert not get_suite(suite).verify(signer.public_key_bytes(), b"m", garbage)
    padded = signer.sign(b"m") + b"\x00"
    assert not get_suite(suite).verify(signer.public_key_bytes(), b"m", padded)


@pytest.mark.parametrize("suite", sorted(SIGNERS))
def test_invalid_public_keys_are_false_not_errors(suite: str) -> None:
    signer, impl = SIGNERS[suite], get_suite(suite)
    signature = signer.sign(b"m")
    good_key = signer.public_key_bytes()
    for bad_key in (b"", good_key[:-1], good_key + b"\x00", b"\x04" + b"\x00" * 64):
        assert not impl.verify(bad_key, b"m", signature)
    wrong_types: list[Any] = [None, "text", bytearray(good_key)]
    for bad in wrong_types:
        assert not impl.verify(bad, b"m", signature)
        assert not impl.verify(good_key, bad, signature)
        assert not suites.verify_cached(suite, good_key, b"m", bad)


def test_invalid_p256_compressed_key_rejected() -> None:
    compressed = P256_SIGNER.crypto_key.public_key().public_bytes(
        suites.serialization.Encoding.X962, suites.serialization.PublicFormat.CompressedPoint
    )
    assert not P256.verify(compressed, b"m", P256_SIGNER.sign(b"m"))


def test_invalid_cross_suite_signature() -> None:
    ed_sig = ED_SIGNER.sign(b"m")
    assert not P256.verify(P256_SIGNER.public_key_bytes(), b"m", ed_sig)
    assert not suites.verify("p256", ED_SIGNER.public_key_bytes(), b"m", ed_sig)


def test_invalid_unknown_suite() -> None:
    with pytest.raises(InvalidInput) as info:
        get_suite("sm2-not-yet")
    assert info.value.code == "unknown_suite"
    assert "ed25519" in (info.value.hint or "")
    assert not suites.verify_cached("nope", b"k", b"m", b"s")


def test_invalid_private_pem() -> None:
    with pytest.raises(InvalidInput) as info:
        ED25519.load_private_pem(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    assert info.value.code == "bad_key"
    with pytest.raises(InvalidInput) as info:
        P256.load_private_pem(ED_SIGNER.private_pem())
    assert info.value.code == "bad_key"
    with pytest.raises(InvalidInput):
        ED25519.load_private_pem(P256_SIGNER.private_pem())


def test_invalid_unsupported_key_types() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(InvalidInput) as info:
        suites.suite_of_public_key(p384.public_key())
    assert info.value.code == "unsupported_key"
    pem = p384.private_bytes(
        suites.serialization.Encoding.PEM,
        suites.serialization.PrivateFormat.PKCS8,
        suites.serialization.NoEncryption(),
    )
    with pytest.raises(InvalidInput) as info:
        suites.load_signer(pem)
    assert info.value.code == "unsupported_key"


def test_ed25519_signatures_match_cryptography() -> None:
    """PyNaCl signs; an independent library agrees (Ed25519 is deterministic)."""
    public = ed25519.Ed25519PublicKey.from_public_bytes(ED_SIGNER.public_key_bytes())
    public.verify(ED_SIGNER.sign(b"cross-check"), b"cross-check")
    key = ED_SIGNER.crypto_key
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert key.sign(b"x") == ED_SIGNER.sign(b"x")
