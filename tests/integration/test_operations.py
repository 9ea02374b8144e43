"""The operator's view of a live stack: metrics that count, an audit trail that
records every kind of event and never a secret."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.native  # reads service ports and var/log on this host

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def metric(service: str, prefix: str) -> float:
    port = os.environ.get(
        f"MG_{service.upper()}_PORT",
        {"auth": "8101", "inference": "8102", "crypto": "8103"}[service],
    )
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_metrics_count_logins_auth_failures_predictions_and_decryptions(
    client: httpx.Client,
    make_user: Callable[..., dict[str, str]],
    login: Callable[..., dict[str, Any]],
    login_response: Callable[..., httpx.Response],
) -> None:
    user = make_user()
    wrong = 'modelgate_logins_total{outcome="bad_password"}'
    before = {
        "wrong": metric("auth", wrong),
        "bad_token": metric("inference", "modelgate_auth_failures_total"),
        "rows": metric("inference", 'modelgate_predictions_total{model="iris"'),
        "decrypt": metric("crypto", "modelgate_decryption_failures_total"),
    }
    assert login_response(user["username"], "not-the-password-at-all").status_code == 400
    token = login(user["username"], user["password"])["access_token"]
    assert client.get("/v1/models", headers=bearer("not.a.token")).status_code == 401
    rows = client.post(
        "/v1/models/iris/predict", headers=bearer(token), json={"instances": [IRIS, IRIS, IRIS]}
    )
    assert rows.status_code == 200, rows.text
    assert (
        client.post(
            "/crypto/decrypt", headers=bearer(token), json={"ciphertext": "gAAAAA" + "x" * 94}
        ).status_code
        == 400
    )
    assert metric("auth", wrong) == before["wrong"] + 1
    assert metric("inference", "modelgate_auth_failures_total") == before["bad_token"] + 1
    assert metric("inference", 'modelgate_predictions_total{model="iris"') == before["rows"] + 3
    assert metric("crypto", "modelgate_decryption_failures_total") == before["decrypt"] + 1


def audit_events(var_dir: Path, since: float) -> list[dict[str, Any]]:
    events = []
    for line in (var_dir / "log" / "audit.jsonl").read_text().splitlines():
        event = json.loads(line)
        stamp = time.mktime(time.strptime(event["ts"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if stamp >= since - 1:
            events.append(event)
    return events


def test_audit_trail_records_each_event_and_no_secret(
    client: httpx.Client,
    make_user: Callable[..., dict[str, str]],
    login: Callable[..., dict[str, Any]],
    login_response: Callable[..., httpx.Response],
    admin_token: str,
    var_dir: Path,
) -> None:
    since = time.time()
    user = make_user()
    assert login_response(user["username"], "wrong-password-123").status_code == 400
    tokens = login(user["username"], user["password"])
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    assert (
        client.post(
            "/v1/models/iris/predict", headers=bearer(access), json={"instances": [IRIS]}
        ).status_code
        == 200
    )
    sealed = client.post("/crypto/encrypt", headers=bearer(access), json={"plaintext": "s3cr3t"})
    ciphertext = sealed.json()["ciphertext"]
    assert (
        client.post(
            "/crypto/decrypt", headers=bearer(access), json={"ciphertext": ciphertext[:-4] + "AAAA"}
        ).status_code
        == 400
    )
    renewed = client.post("/auth/refresh", json={"refresh_token": refresh})
    assert renewed.status_code == 200
    assert client.post("/auth/refresh", json={"refresh_token": refresh}).status_code == 401
    patched = client.patch(
        f"/auth/users/{user['username']}", json={"role": "admin"}, headers=bearer(admin_token)
    )
    assert patched.status_code == 200, patched.text
    time.sleep(1.5)  # the audit file is written by other processes

    events = audit_events(var_dir, since)
    mine = [e for e in events if user["username"] in json.dumps(e)]
    kinds = {e["audit"] for e in mine}
    expected = {
        "user_created",
        "login_failed",
        "login",
        "prediction",
        "crypto.decryption_failed",
        "refresh",
        "refresh_reuse",
        "user_updated",
    }
    assert expected <= kinds, sorted(kinds)
    failed = next(e for e in mine if e["audit"] == "login_failed")
    assert failed.get("client_ip", "").startswith("127.")
    trail = json.dumps(events)
    for secret in (
        user["password"],
        access,
        refresh,
        renewed.json()["access_token"],
        ciphertext,
        "s3cr3t",
        "wrong-password-123",
    ):
        assert secret not in trail
