"""Scale-out on Docker Swarm: what every replica must share, shared; a replica that dies
or is replaced under traffic costs no request."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from crypto_helpers import modelgate

from tests.conftest import ROOT, bearer, make_client, run_command
from tests.faults._traffic import Call, Traffic, all_served
from tests.integration.test_ratelimit import concurrently
from tests.swarm.conftest import SwarmStack

pytestmark = [pytest.mark.swarm, pytest.mark.slow]

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_every_service_runs_its_replicas_healthy(
    swarm_stack: SwarmStack, replicas: dict[str, int]
) -> None:
    for service, wanted in replicas.items():
        assert len(swarm_stack.healthy_containers(service)) == wanted, service


def test_requests_are_spread_over_every_inference_replica(
    swarm_stack: SwarmStack, client: httpx.Client, admin_token: str
) -> None:
    tag = _tagged()
    for _ in range(60):
        answer = client.get("/v1/models", headers={**bearer(admin_token), **tag})
        assert answer.status_code == 200
    served = swarm_stack.nginx_upstreams(tag["User-Agent"], 60)
    replicas = {f"{swarm_stack.address(c)}:8000" for c in swarm_stack.containers("inference")}
    assert set(served) == replicas, served
    # Random choice per request: each of three replicas gets far more than nothing.
    assert min(served.values()) >= 5, served


def test_predict_limit_is_exact_across_replicas(
    swarm_stack: SwarmStack, client: httpx.Client, login: Callable[..., dict[str, Any]],
    make_user: Callable[..., dict[str, str]],
) -> None:  # fmt: skip
    user = make_user()
    tag = _tagged()
    auth = {**bearer(login(user["username"], user["password"])["access_token"]), **tag}
    responses = concurrently(lambda _: client.post("/predict", json=IRIS, headers=auth), 40)
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10 and statuses.count(429) == 30, statuses
    # Not one replica's private count: the requests went to several replicas.
    assert len(swarm_stack.nginx_upstreams(tag["User-Agent"], 40)) >= 2


def test_sign_in_failure_limit_is_exact_across_auth_replicas(
    swarm_stack: SwarmStack, base_url: str, ca_file: str,
    make_user: Callable[..., dict[str, str]],
) -> None:  # fmt: skip
    """100 failed password checks per user name an hour, counted in one Redis by both
    auth replicas: the 101st attempt is refused before its password is checked. One at a
    time (concurrent attempts already past the check may overshoot, documented)."""
    user = make_user()
    tag = _tagged()

    def sign_in(password: str) -> int:
        form = {"grant_type": "password", "username": user["username"], "password": password}
        return client.post("/auth/token", data=form, headers=tag).status_code

    with make_client(base_url, ca_file) as client:
        statuses = [sign_in("wrong password") for _ in range(103)]
        assert statuses[:100] == [400] * 100 and statuses[100:] == [429] * 3, statuses
        # Locked out even with the right password: failures are counted before the check.
        assert sign_in(user["password"]) == 429
    assert len(swarm_stack.nginx_upstreams(tag["User-Agent"], 104)) == 2


def test_a_token_revoked_through_one_auth_replica_is_refused_by_every_replica(
    swarm_stack: SwarmStack, client: httpx.Client, login: Callable[..., dict[str, Any]],
    make_user: Callable[..., dict[str, str]],
) -> None:  # fmt: skip
    user = make_user()
    token = login(user["username"], user["password"])["access_token"]
    checks = [
        ("inference", "GET", "/v1/models", None),
        ("crypto", "POST", "/crypto/encrypt", {"plaintext": "x"}),
    ]
    for service, method, path, body in checks:
        for container in swarm_stack.containers(service):
            status, _ = swarm_stack.call(container, method, path, token, body)
            assert status == 200, (service, container)

    assert client.post("/auth/logout", headers=bearer(token)).status_code in (200, 204)

    for service, method, path, body in checks:
        for container in swarm_stack.containers(service):
            status, answer = swarm_stack.call(container, method, path, token, body)
            assert status == 401, (service, container, answer)


def test_a_model_version_switch_reaches_every_replica(
    client: httpx.Client, admin_token: str, replicas: dict[str, int]
) -> None:
    response = client.post("/v1/models/iris/load", json={}, headers=bearer(admin_token))
    assert response.status_code == 200, response.text
    result = response.json()
    workers = replicas["inference"] * 2  # MG_WORKERS gunicorn workers per replica
    assert result["workers"] == workers and result["switched"] == workers, result


def test_keys_rotated_on_the_host_reach_every_replica_through_deploy(
    swarm_stack: SwarmStack, client: httpx.Client, login: Callable[..., dict[str, Any]],
    make_user: Callable[..., dict[str, str]],
) -> None:  # fmt: skip
    """The way docs/scale-out.md tells an operator to rotate on Swarm: `modelgate keys` on
    the host, then deploy.sh again, which makes the changed files new secrets and rolls
    the services that use them. Old tokens and ciphertexts keep working."""
    user = make_user()
    old = login(user["username"], user["password"])["access_token"]
    old_kid = pyjwt.get_unverified_header(old)["kid"]
    encrypted = client.post("/crypto/encrypt", json={"plaintext": "before"}, headers=bearer(old))
    assert encrypted.status_code == 200

    modelgate("keys", "rotate-jwt")
    modelgate("keys", "rotate-fernet")
    run_command(["deploy/swarm/deploy.sh", "-c", "deploy/swarm/test-override.yaml"], cwd=ROOT,
                timeout=600)  # fmt: skip
    for service in ("auth", "inference", "crypto"):
        swarm_stack.wait_converged(service)

    published = [k["kid"] for k in client.get("/auth/.well-known/jwks.json").json()["keys"]]
    new = login(user["username"], user["password"])["access_token"]
    assert pyjwt.get_unverified_header(new)["kid"] == published[0] != old_kid
    assert old_kid in published
    for container in swarm_stack.containers("inference"):
        for token in (old, new):
            assert swarm_stack.call(container, "GET", "/v1/models", token)[0] == 200
    ciphertext = encrypted.json()["ciphertext"]
    for container in swarm_stack.containers("crypto"):
        status, answer = swarm_stack.call(
            container, "POST", "/crypto/decrypt", new, {"ciphertext": ciphertext}
        )
        assert (status, answer) == (200, {"plaintext": "before"})


def _tagged() -> dict[str, str]:
    """A User-Agent no other request has, to find this test's lines in nginx's log."""
    return {"User-Agent": f"swarm-test-{secrets.token_hex(6)}"}


def _inference_mix(token: str) -> list[Call]:
    auth = {"headers": bearer(token)}
    v2 = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64",
                      "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
    # Predictions may be refused by the admin's rate limit (429): that answer too comes
    # from a live replica; a lost request is a transport error or a 502/504 from nginx.
    return [
        Call("GET", "/v1/models", frozenset({200}), True, auth),
        Call("POST", "/v1/models/iris/predict", frozenset({200, 429}), False,
             {**auth, "json": {"instances": [IRIS]}}),
        Call("POST", "/v2/models/iris/infer", frozenset({200, 429}), False, {**auth, "json": v2}),
    ]  # fmt: skip


def test_killing_an_inference_replica_under_traffic_loses_no_request(
    swarm_stack: SwarmStack, base_url: str, ca_file: str, admin_token: str,
    replicas: dict[str, int],
) -> None:  # fmt: skip
    victim = swarm_stack.containers("inference")[0]
    with Traffic(base_url, ca_file, _inference_mix(admin_token), max_seconds=60) as traffic:
        traffic.wait_for(100, timeout=30)
        run_command(["docker", "kill", victim])
        traffic.wait_for(300, timeout=45)
    all_served(traffic)
    # Swarm replaces the killed replica.
    swarm_stack.wait_converged("inference", timeout=180)
    assert victim not in swarm_stack.containers("inference")
    assert len(swarm_stack.healthy_containers("inference")) == replicas["inference"]


def test_rolling_update_of_inference_under_traffic_drops_no_request(
    swarm_stack: SwarmStack, base_url: str, ca_file: str, admin_token: str
) -> None:
    before = set(swarm_stack.containers("inference"))
    with Traffic(
        base_url, ca_file, _inference_mix(admin_token), max_seconds=400, max_requests=100_000
    ) as traffic:
        traffic.wait_for(100, timeout=30)
        # The traffic runs in its own threads; the update (bounded) in this one, so a
        # failed or stuck update fails the test.
        swarm_stack.update("inference", "--force", timeout=400)
        traffic.wait_for(100, timeout=30)
    all_served(traffic)
    after = set(swarm_stack.containers("inference"))
    assert not before & after, "every replica was replaced"
