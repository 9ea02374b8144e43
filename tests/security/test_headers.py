"""Security headers on every kind of answer, and nothing that names the software.

Each status comes from the component that really produces it: nginx (200
/healthz, 404, 405, 413, 502 with a service stopped) and the services behind it
(their own 404/405 answers, and 401, 403, 422, 429 once those routes exist).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests.conftest import NativeStack


def test_headers_on_200_from_nginx(
    client: httpx.Client, assert_hardened: Callable[[httpx.Response], None]
) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert_hardened(response)


@pytest.mark.parametrize("path", ["/nowhere", "/auth/nowhere", "/v1/models/x/y/z", "/crypto/x"])
def test_headers_on_404(
    client: httpx.Client, assert_hardened: Callable[[httpx.Response], None], path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert_hardened(response)


@pytest.mark.parametrize("path", ["/healthz", "/auth/token", "/v1/models", "/crypto/encrypt"])
def test_headers_on_405(
    client: httpx.Client, assert_hardened: Callable[[httpx.Response], None], path: str
) -> None:
    response = client.request("TRACE", path)
    assert response.status_code == 405
    assert_hardened(response)


@pytest.mark.parametrize("path", ["/auth/token", "/v1/models/iris/predict", "/crypto/encrypt"])
def test_headers_on_413(
    client: httpx.Client, assert_hardened: Callable[[httpx.Response], None], path: str
) -> None:
    body = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert_hardened(response)


@pytest.mark.native
@pytest.mark.parametrize(
    ("program", "path"),
    [("crypto", "/crypto/encrypt"), ("inference", "/v2/health/live"), ("auth", "/auth/token")],
)
def test_headers_on_502_with_service_stopped(
    native_stack: NativeStack,
    client: httpx.Client,
    assert_hardened: Callable[[httpx.Response], None],
    program: str,
    path: str,
) -> None:
    native_stack.stop(program)
    try:
        response = client.get(path)
        health = client.get("/healthz")
    finally:
        native_stack.start(program)
        native_stack.wait_ready()
    assert response.status_code == 502
    assert response.json() == {"detail": "service unavailable"}
    assert_hardened(response)
    # The stack's health says so, and not which part is missing.
    assert health.status_code == 503
    assert health.json() == {"detail": "service unavailable"}
    assert_hardened(health)
    # The service is back and answers the same path itself.
    assert client.get(path).status_code < 500
    assert client.get("/healthz").status_code == 200


def test_headers_on_401_from_each_service(
    client: httpx.Client, assert_hardened: Callable[[httpx.Response], None]
) -> None:
    for method, path in [
        ("GET", "/auth/users/me"),
        ("GET", "/v1/models"),
        ("POST", "/crypto/encrypt"),
    ]:
        response = client.request(method, path, headers={"Authorization": "Bearer not.a.jwt"})
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert_hardened(response)


def test_headers_on_403_user_on_admin_route(
    client: httpx.Client,
    assert_hardened: Callable[[httpx.Response], None],
    make_user: Callable[..., dict[str, str]],
    login: Callable[..., dict[str, Any]],
) -> None:
    user = make_user()
    token = login(user["username"], user["password"])["access_token"]
    response = client.get("/auth/users", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert_hardened(response)


def test_headers_on_422_from_each_service(
    client: httpx.Client, assert_hardened: Callable[[httpx.Response], None], admin_token: str
) -> None:
    auth = {"Authorization": f"Bearer {admin_token}"}
    for path, body in [
        ("/auth/users", {"username": "x", "password": "short", "surprise": 1}),
        ("/v1/models/iris/predict", {"instances": [{"sepal_length": "NaN"}]}),
        ("/crypto/encrypt", {"plaintext": 12, "unknown": True}),
    ]:
        response = client.post(path, json=body, headers=auth)
        assert response.status_code == 422, (path, response.text)
        assert_hardened(response)


def test_headers_on_429_predict_limit(
    client: httpx.Client,
    assert_hardened: Callable[[httpx.Response], None],
    make_user: Callable[..., dict[str, str]],
    login: Callable[..., dict[str, Any]],
) -> None:
    user = make_user()  # a new subject: its predict bucket starts empty
    auth = {"Authorization": f"Bearer {login(user['username'], user['password'])['access_token']}"}
    iris = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    statuses = []
    for _ in range(40):
        response = client.post("/predict", json=iris, headers=auth)
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200}, statuses
    assert int(response.headers["retry-after"]) >= 1
    assert_hardened(response)
