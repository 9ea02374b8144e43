"""The shape of a Fernet token, checked before any cryptographic work.

A token is canonical base64url (with padding) of::

    0x80 | timestamp (8) | IV (16) | AES-128-CBC ciphertext (16·k, k ≥ 1) | HMAC-SHA256 (32)

(https://github.com/fernet/spec/blob/master/Spec.md). Anything else, and anything longer
than the largest plaintext this service accepts could produce, is refused by shape alone.
"""

from __future__ import annotations

import base64
import binascii
import re

VERSION = 0x80
_FIXED_BYTES = 1 + 8 + 16 + 32  # version, timestamp, IV, HMAC
_BLOCK = 16
MIN_TOKEN_BYTES = _FIXED_BYTES + _BLOCK
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def _encoded_length(raw_bytes: int) -> int:
    return 4 * -(-raw_bytes // 3)


def max_token_length(max_plaintext_bytes: int) -> int:
    """Characters of the token of a ``max_plaintext_bytes`` plaintext (PKCS7 always pads)."""
    padded = (max_plaintext_bytes // _BLOCK + 1) * _BLOCK
    return _encoded_length(_FIXED_BYTES + padded)


MIN_TOKEN_LENGTH = _encoded_length(MIN_TOKEN_BYTES)


def malformed_reason(token: str, max_length: int) -> str | None:
    """Why ``token`` cannot be a Fernet token of ours, or None when its shape is right."""
    if not token:
        return "empty"
    if len(token) > max_length:
        return "too_long"
    if len(token) < MIN_TOKEN_LENGTH or len(token) % 4:
        return "bad_length"
    if not _ALPHABET.fullmatch(token):
        return "not_base64url"
    try:
        raw = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):
        return "not_base64url"
    if base64.urlsafe_b64encode(raw).decode("ascii") != token:
        return "not_base64url"  # non-canonical encoding: a second spelling of the same bytes
    if raw[0] != VERSION:
        return "bad_version"
    if len(raw) < MIN_TOKEN_BYTES or (len(raw) - _FIXED_BYTES) % _BLOCK:
        return "bad_length"
    return None
