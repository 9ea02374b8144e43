"""The shape check that runs before any cryptographic work."""

from __future__ import annotations

import base64

import pytest
from cryptography.fernet import Fernet
from modelgate_crypto.tokens import MIN_TOKEN_LENGTH, malformed_reason, max_token_length

LIMIT = max_token_length(65_536)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000, 65_535, 65_536])
def test_max_token_length_is_exact_for_real_tokens(size: int) -> None:
    token = Fernet(Fernet.generate_key()).encrypt(b"x" * size).decode()
    assert len(token) == max_token_length(size)
    assert malformed_reason(token, max_token_length(size)) is None
    assert malformed_reason(token, max_token_length(size) - 1) == "too_long"


def test_smallest_token_is_accepted() -> None:
    token = Fernet(Fernet.generate_key()).encrypt(b"").decode()
    assert len(token) == MIN_TOKEN_LENGTH
    assert malformed_reason(token, LIMIT) is None


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


GOOD = Fernet(Fernet.generate_key()).encrypt(b"hello world").decode()
GOOD_RAW = base64.urlsafe_b64decode(GOOD)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "empty"),
        ("A" * (LIMIT + 4), "too_long"),
        (GOOD[:-4], "bad_length"),  # truncated by a whole base64 quantum
        (GOOD[:-1], "bad_length"),
        ("gAAAAA", "bad_length"),
        ("+" + GOOD[1:], "not_base64url"),  # standard, not url-safe, alphabet
        ("/" + GOOD[1:], "not_base64url"),
        ("!" + GOOD[1:], "not_base64url"),
        (GOOD[:-4] + "A===", "not_base64url"),
        (" " + GOOD[1:], "not_base64url"),
        ("é" + GOOD[1:], "not_base64url"),
        (_token(b"\x81" + GOOD_RAW[1:]), "bad_version"),
        (_token(GOOD_RAW[:-16]), "bad_length"),  # a block short
        (_token(GOOD_RAW + b"\x00" * 3), "bad_length"),  # not whole blocks
        (_token(b"\x80" + b"\x00" * 56), "bad_length"),  # no ciphertext block at all
    ],
)
def test_malformed_tokens_are_named(token: str, reason: str) -> None:
    assert malformed_reason(token, LIMIT) == reason


def test_non_canonical_base64_is_refused() -> None:
    # Same bytes, another spelling: the last character's unused bits set.
    raw = GOOD_RAW
    assert len(raw) % 3 == 1, "the test needs a token ending in two padding characters"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    body = GOOD.rstrip("=")
    last = alphabet.index(body[-1])
    variant = body[:-1] + alphabet[last | 0b1111] + "=="
    assert variant != GOOD
    assert base64.urlsafe_b64decode(variant) == raw
    assert malformed_reason(variant, LIMIT) == "not_base64url"
