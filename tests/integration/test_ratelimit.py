"""Rate limits through nginx against the running stack (2 workers per service).

The defaults are the ones under test (docs/rate-limits.md): sign-in 5/minute per
client address, predict 10/minute per token subject (admin tier 100/minute) and
10,000 rows a day, crypto 60/minute. Each test uses its own source address or its
own new user, so its buckets start empty whatever ran before.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import bearer, make_client

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def concurrently(send: Callable[[int], httpx.Response], count: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(send, range(count)))


def wrong_login(client: httpx.Client, username: str, **headers: str) -> httpx.Response:
    return client.post(
        "/auth/token", data={"username": username, "password": "not-the-password"}, headers=headers
    )


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str)


def audit_events(var_dir: Path, event: str, user: str) -> list[dict[str, Any]]:
    path = var_dir / "log" / "audit.jsonl"
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("audit") == event and entry.get("user") == user:
            found.append(entry)
    return found


@pytest.fixture
def token_of(
    make_user: Callable[..., dict[str, str]], login: Callable[..., dict[str, Any]]
) -> Callable[[str], dict[str, str]]:
    """``token_of(role)``: bearer headers of a new user (a subject with empty buckets)."""

    def make(role: str = "user") -> dict[str, str]:
        user = make_user(role=role)
        return bearer(login(user["username"], user["password"])["access_token"])

    return make


# -- sign-in ---------------------------------------------------------------------------
@pytest.mark.native  # reads the stack's audit log
def test_thirty_concurrent_wrong_passwords_exactly_five_reach_the_password_check(
    base_url: str,
    ca_file: str,
    fresh_source_ip: Callable[[], str],
    var_dir: Path,
    make_user: Callable[..., dict[str, str]],
) -> None:
    # A real user: the audit trail names a known user as it is (unknown names as a hash).
    name = make_user()["username"]
    with make_client(base_url, ca_file, fresh_source_ip()) as client:
        responses = concurrently(lambda _: wrong_login(client, name), 30)
    assert Counter(r.status_code for r in responses) == {400: 5, 429: 25}
    for response in responses:
        if response.status_code == 429:
            assert_refused(response)
    # The password check ran exactly five times: one audit event each.
    assert len(audit_events(var_dir, "login_failed", name)) == 5


@pytest.mark.native  # per-address sign-in limit (raised on compose: one client address)
def test_forged_forwarded_for_does_not_change_the_bucket(
    base_url: str, ca_file: str, fresh_source_ip: Callable[[], str]
) -> None:
    statuses = []
    with make_client(base_url, ca_file, fresh_source_ip()) as client:
        for i in range(8):
            forged = f"203.0.113.{i + 1}"
            response = wrong_login(
                client, f"rl-{i}", **{"X-Forwarded-For": forged, "X-Real-IP": forged}
            )
            statuses.append(response.status_code)
    assert statuses == [400] * 5 + [429] * 3


@pytest.mark.native  # per-address sign-in limit (raised on compose: one client address)
def test_distinct_source_addresses_have_distinct_buckets(
    base_url: str, ca_file: str, fresh_source_ip: Callable[[], str]
) -> None:
    clients = [make_client(base_url, ca_file, fresh_source_ip()) for _ in range(3)]
    try:
        rounds = [[wrong_login(c, "rl-nobody").status_code for c in clients] for _ in range(6)]
    finally:
        for c in clients:
            c.close()
    # Interleaved: each address spends its own five, whatever the others did.
    assert rounds == [[400, 400, 400]] * 5 + [[429, 429, 429]]


@pytest.mark.native  # per-address sign-in limit (raised on compose: one client address)
def test_sign_in_answers_carry_the_budget(
    login_response: Callable[..., httpx.Response], admin_password: str
) -> None:
    response = login_response("admin", admin_password)  # from a new source address
    assert response.status_code == 200
    assert response.headers["ratelimit-limit"] == "5"
    assert response.headers["ratelimit-remaining"] == "4"
    assert 1 <= int(response.headers["ratelimit-reset"]) <= 60


# -- per-subject limits ------------------------------------------------------------------
def served_by(var_dir: Path, service: str, request_ids: Iterable[str]) -> set[int]:
    """The worker pids whose access log lines carry these request ids."""
    wanted = set(request_ids)
    pids: dict[str, int] = {}
    log = var_dir / "log" / f"{service}.jsonl"
    deadline = time.monotonic() + 10  # supervisord copies worker output to the file
    while time.monotonic() < deadline:
        for line in log.read_text(encoding="utf-8").splitlines():
            if '"request_id"' in line:
                entry = json.loads(line)
                if entry.get("request_id") in wanted and entry.get("msg") == "request":
                    pids[entry["request_id"]] = entry["pid"]
        if pids.keys() == wanted:
            break
        time.sleep(0.2)
    assert pids.keys() == wanted, "access log lines missing"
    return set(pids.values())


@pytest.mark.native  # reads the services' logs to see both workers served
def test_predict_limit_is_exact_across_both_workers(
    client: httpx.Client, token_of: Callable[[str], dict[str, str]], var_dir: Path
) -> None:
    auth = token_of("user")
    responses = concurrently(lambda _: client.post("/predict", json=IRIS, headers=auth), 40)
    assert Counter(r.status_code for r in responses) == {200: 10, 429: 30}
    for response in responses:
        assert response.headers["ratelimit-limit"] == "10"
        if response.status_code == 429:
            assert_refused(response)
            assert response.headers["ratelimit-remaining"] == "0"
    # Both gunicorn workers answered, yet the count is that of one shared bucket.
    assert len(served_by(var_dir, "inference", (r.headers["x-request-id"] for r in responses))) == 2


def test_every_predict_endpoint_spends_the_same_budget(
    client: httpx.Client, token_of: Callable[[str], dict[str, str]]
) -> None:
    auth = token_of("user")
    v1 = {"instances": [IRIS]}
    v2 = {
        "inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
        ]
    }
    calls = [("/predict", IRIS)] * 4 + [("/v1/models/iris/predict", v1)] * 3
    calls += [("/v2/models/iris/infer", v2)] * 3
    statuses = [client.post(path, json=body, headers=auth).status_code for path, body in calls]
    assert statuses == [200] * 10
    remaining = [
        client.post(path, json=body, headers=auth)
        for path, body in [
            ("/predict", IRIS),
            ("/v1/models/iris/predict", v1),
            ("/v2/models/iris/infer", v2),
        ]
    ]
    for response in remaining:
        assert_refused(response)


def test_admin_tier_is_larger(
    client: httpx.Client, token_of: Callable[[str], dict[str, str]]
) -> None:
    auth = token_of("admin")
    responses = concurrently(lambda _: client.post("/predict", json=IRIS, headers=auth), 15)
    assert {r.status_code for r in responses} == {200}
    assert responses[0].headers["ratelimit-limit"] == "100"


def test_daily_rows_quota_is_exact_across_both_workers(
    client: httpx.Client, token_of: Callable[[str], dict[str, str]]
) -> None:
    auth = token_of("admin")  # 100 requests a minute: the rows quota is what binds
    batch = {"instances": [IRIS] * 1000}
    responses = concurrently(
        lambda _: client.post("/v1/models/iris/predict", json=batch, headers=auth), 12
    )
    assert Counter(r.status_code for r in responses) == {200: 10, 429: 2}
    for response in responses:
        if response.status_code == 200:
            assert len(response.json()["predictions"]) == 1000
            assert response.headers["x-quota-rows-limit"] == "10000"
        else:
            assert_refused(response)
            assert "quota" in response.json()["detail"]
            assert response.headers["x-quota-rows-remaining"] == "0"
    # Spent: a single row is refused now; a refusal costs nothing, so nothing changes.
    single = client.post("/predict", json=IRIS, headers=auth)
    assert_refused(single)
    assert single.headers["x-quota-rows-remaining"] == "0"


def test_crypto_limit_is_exact(
    client: httpx.Client, token_of: Callable[[str], dict[str, str]]
) -> None:
    auth = token_of("user")
    responses = concurrently(
        lambda i: client.post("/crypto/encrypt", json={"plaintext": f"m{i}"}, headers=auth), 65
    )
    assert Counter(r.status_code for r in responses) == {200: 60, 429: 5}
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["ratelimit-limit"] == "60"
    for response in responses:
        if response.status_code == 429:
            assert_refused(response)
