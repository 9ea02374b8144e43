"""The OpenAPI document says what the service does: request schemas and statuses.

tests/security/test_fuzz.py found two that did not: an empty update and a new
password without the current one were valid by the document and refused (422).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs  # schemathesis's JSON Schema validator: an independent reading
import pytest
from auth_testlib import make_settings
from modelgate_auth.main import create_app
from modelgate_auth.schemas import SelfUpdate, UserUpdate
from pydantic import BaseModel, ValidationError

NEW = "a new long password"
CASES: list[tuple[type[BaseModel], dict[str, Any], bool]] = [
    (SelfUpdate, {}, False),
    (SelfUpdate, {"full_name": "Ann"}, True),
    (SelfUpdate, {"role": None}, True),
    (SelfUpdate, {"password": None}, True),
    (SelfUpdate, {"password": NEW}, False),
    (SelfUpdate, {"password": NEW, "current_password": None}, False),
    (SelfUpdate, {"password": NEW, "current_password": "the old one"}, True),
    (SelfUpdate, {"current_password": "the old one"}, True),
    (UserUpdate, {}, False),
    (UserUpdate, {"disabled": None}, True),
    (UserUpdate, {"role": "admin", "password": NEW}, True),
]


@pytest.mark.parametrize(("model", "body", "valid"), CASES)
def test_document_and_model_agree_on_update_bodies(
    model: type[BaseModel], body: dict[str, Any], valid: bool
) -> None:
    by_document = jsonschema_rs.validator_for(model.model_json_schema()).is_valid(body)
    try:
        model.model_validate_json(json.dumps(body))
        by_model = True
    except ValidationError:
        by_model = False
    assert (by_document, by_model) == (valid, valid)


def test_a_password_change_documents_the_sign_in_limits(tmp_path: Path) -> None:
    """A password change spends the sign-in budget, so it answers what /auth/token
    answers when that is spent (429) or cannot be counted (503); the fuzzer met an
    undocumented 429 (tests/security/test_fuzz.py)."""
    document = create_app(make_settings(tmp_path, "redis://127.0.0.1:1/0")).openapi()
    token = set(document["paths"]["/auth/token"]["post"]["responses"])
    change = set(document["paths"]["/auth/users/me"]["patch"]["responses"])
    assert {"429", "503"} <= token & change
