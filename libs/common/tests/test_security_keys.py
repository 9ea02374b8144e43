"""The verifier follows the JWKS file: a retired key stops verifying, cached tokens
included; and time claims must be whole numbers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from modelgate_common import TokenVerifier, Unauthorized
from modelgate_common.testing import TokenFactory


def verify(verifier: TokenVerifier, token: str) -> Any:
    return asyncio.run(verifier.verify(token))


@pytest.fixture
def factory(tmp_path: Path) -> TokenFactory:
    return TokenFactory(tmp_path)


@pytest.fixture
def verifier(factory: TokenFactory) -> TokenVerifier:
    v = TokenVerifier(factory.settings(), None)
    v.keyset.load()
    v.keyset.min_reload_interval = 0
    return v


def test_retired_key_stops_verifying_even_a_cached_token(
    factory: TokenFactory, verifier: TokenVerifier
) -> None:
    token = factory.mint()
    assert verify(verifier, token).subject == "alice"  # now cached
    document = json.loads(factory.jwks_path.read_text())
    factory.jwks_path.write_text(json.dumps({"keys": []}))
    with pytest.raises(Unauthorized):
        verify(verifier, token)
    factory.jwks_path.write_text(json.dumps(document))  # published again: trusted again
    assert verify(verifier, token).subject == "alice"


@pytest.mark.parametrize(
    ("claim", "value"),
    [("iat", "0"), ("iat", True), ("nbf", "0"), ("nbf", True), ("nbf", 1.5),
     ("exp", "99999999999"), ("exp", 9e10)],
)  # fmt: skip
def test_time_claims_must_be_whole_numbers(
    factory: TokenFactory, verifier: TokenVerifier, claim: str, value: Any
) -> None:
    with pytest.raises(Unauthorized):
        verify(verifier, factory.mint(**{claim: value}))
    assert verify(verifier, factory.mint()).subject == "alice"
