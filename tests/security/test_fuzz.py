"""Fuzzing: schemathesis against each service's OpenAPI document, through nginx.

Each document comes from the service's own ``create_app`` in development mode (in
a subprocess, so this process's settings and logging stay as they are); production
serves no ``/openapi.json``. The requests go to the live stack through nginx over
TLS verified with ``certs/ca.pem``: every check schemathesis has, positive and
negative data, a fixed seed and a bounded number of examples per operation.

A failure is a 5xx, a status the document does not list, a body that breaks its
response schema, a request accepted without (or with a broken) token, bad data
accepted or good data refused: a product bug or a false document either way.

Identities: the admin for ``/auth/users…``; everywhere else dedicated users: a
pool taken in turn, and for predictions a new user each time one has spent most
of its 10/minute, so the per-subject limits leave the requests to reach
validation; a 429 is still a documented answer and must carry ``Retry-After``.
Sign-in attempts come from loopback addresses of their own (5/minute each). The
fuzzer changes, deletes or spends sign-in failures only of users it made itself:
a user name that existed before it started (the admin, other tests' users) is
swapped for one of its own.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from requests.adapters import HTTPAdapter
from schemathesis import Case
from schemathesis.config import SchemathesisConfig

from tests.conftest import bearer, make_client

pytestmark = pytest.mark.slow

SEED = 20_261_125
MAX_EXAMPLES = 25  # per operation in the fuzzing phase; examples and coverage come on top
USER_POOL = 8  # crypto: 5 operations, about 60 requests each, 60/minute per subject
PREDICTS_PER_USER = 9  # predict: 10/minute per subject; a new user when one is spent
SIGN_IN_SOURCES = 16  # the 5/minute sign-in limit per client address

# What schemathesis expects of schema-valid data by default.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
NO_5XX = ["2xx", "3xx", "4xx"]
READY_PATHS = [
    "/v2/health/ready",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}/ready",
]
DECRYPT_PATHS = ["/crypto/decrypt", "/crypto/rotate", "/decrypt/"]
PREDICT_PATHS = [
    "/predict",
    "/v1/models/{name}/predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
]
# The services' own routes that nginx never proxies (tests/security/test_exposure.py).
NOT_ROUTED = r"^/health/"
USER_ADMIN_PATHS = (
    "/auth/users",
    "/auth/users/{username}",
    "/auth/clients",
    "/auth/clients/{client_id}",
)

_DUMP_OPENAPI = """
import importlib, json, sys
module = importlib.import_module(f"modelgate_{sys.argv[1]}.main")
json.dump(module.create_app().openapi(), sys.stdout)
"""


def service_openapi(service: str, workdir: Path) -> dict[str, Any]:
    """The OpenAPI document ``create_app`` builds in development mode."""
    env = {
        **os.environ,
        "MG_ENVIRONMENT": "development",
        "MG_VAR_DIR": str(workdir),
        "MG_SECRETS_DIR": str(workdir),
    }
    done = subprocess.run(
        [sys.executable, "-c", _DUMP_OPENAPI, service],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def fuzz_config(base_url: str, ca_file: str) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "base-url": base_url,
            "tls-verify": ca_file,
            "request-timeout": 30,
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
            "suppress-health-check": ["too_slow", "filter_too_much"],
            # Every check stays on; these widen what counts as a right answer, each
            # for a stated reason.
            "operations": [
                {
                    # /auth/users/me also matches /auth/users/{username}, whose DELETE
                    # does answer there (404: no user name is that short), so a 405's
                    # Allow rightly lists DELETE beside the documented GET and PATCH.
                    "include-path": "/auth/users/me",
                    "checks": {"allow_header_conformance": {"enabled": False}},
                },
                {
                    # Open Inference Protocol readiness: 503 is the documented "not
                    # ready" (a version that is not loaded), not a server error.
                    "include-path": READY_PATHS,
                    "checks": {"not_a_server_error": {"expected-statuses": [*NO_5XX, 503]}},
                },
                {
                    # A well-formed ciphertext the caller does not own, or garbage, is
                    # refused with the one documented 400 (no decryption oracle).
                    "include-path": DECRYPT_PATHS,
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, 400]}},
                },
                {
                    # RFC 6749 §5.2 (and RFC 7009 §2.2.1 for revocation): the token and
                    # revocation endpoints refuse schema-valid forms with 400 (a wrong
                    # password: invalid_grant; an unknown grant_type or scope; an empty
                    # value, which counts as absent: invalid_request).
                    "include-path": ["/auth/token", "/auth/revoke"],
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, 400]}},
                },
                {
                    # Each model has its own features and bounds, published at run time
                    # (GET /v1/models, v2 metadata), not in the static document: a
                    # schema-valid row can still be outside the model's input schema.
                    "include-path": PREDICT_PATHS,
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, 422]}},
                },
            ],
        }
    )


@pytest.fixture(scope="module")
def openapi_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openapi")


def _load(service: str, openapi_dir: Path, base_url: str, ca_file: str) -> Any:
    document = service_openapi(service, openapi_dir / service)
    return schemathesis.openapi.from_dict(document, config=fuzz_config(base_url, ca_file))


@pytest.fixture(scope="module")
def auth_openapi(openapi_dir: Path, base_url: str, ca_file: str) -> Any:
    return _load("auth", openapi_dir, base_url, ca_file)


@pytest.fixture(scope="module")
def inference_openapi(openapi_dir: Path, base_url: str, ca_file: str) -> Any:
    return _load("inference", openapi_dir, base_url, ca_file)


@pytest.fixture(scope="module")
def crypto_openapi(openapi_dir: Path, base_url: str, ca_file: str) -> Any:
    return _load("crypto", openapi_dir, base_url, ca_file)


# -- who the fuzzer is -------------------------------------------------------------------


class _SourceAddressAdapter(HTTPAdapter):
    """Connections from one loopback address."""

    def __init__(self, source_ip: str) -> None:
        self._source = (source_ip, 0)
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = self._source
        super().init_poolmanager(*args, **kwargs)


def _session_from(source_ip: str) -> requests.Session:
    session = requests.Session()
    session.mount("https://", _SourceAddressAdapter(source_ip))
    return session


@dataclass
class Fuzzer:
    """Tokens and client addresses by purpose, the users the fuzzer may touch, and
    the status of every answer it got (by operation)."""

    admin: str
    tokens: list[str]
    new_user_token: Callable[[], str]
    logout_user: dict[str, str]
    logout_token: str
    victims: list[str]
    nobody: str
    protected: set[str]
    session: requests.Session
    sign_in_sessions: list[requests.Session]
    created: set[str] = field(default_factory=set)
    created_clients: set[str] = field(default_factory=set)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    _turn: Iterator[int] = field(default_factory=itertools.count)
    _predictor: str = ""
    _predictions_left: int = 0

    def take_turn(self) -> int:
        return next(self._turn)

    def token_for(self, case: Case) -> str:
        path = case.operation.path
        if path in USER_ADMIN_PATHS:
            return self.admin
        if path == "/auth/logout":
            return self.logout_token
        if path in PREDICT_PATHS:
            if self._predictions_left == 0:
                self._predictor, self._predictions_left = self.new_user_token(), PREDICTS_PER_USER
            self._predictions_left -= 1
            return self._predictor
        return self.tokens[self.take_turn() % len(self.tokens)]

    def session_for(self, case: Case) -> requests.Session:
        if case.operation.path == "/auth/token":
            return self.sign_in_sessions[self.take_turn() % len(self.sign_in_sessions)]
        return self.session

    def spare_users(self, case: Case) -> None:
        """Users that existed before the run and the fuzzer's own identities are never
        changed, deleted or charged a failed sign-in: a user of its own stands in."""
        path, method = case.operation.path, case.method.upper()
        if path == "/auth/users/{username}" and method != "GET":
            username = (case.path_parameters or {}).get("username")
            if isinstance(username, str) and username in self.protected:
                case.path_parameters = {**(case.path_parameters or {}), "username": self.victims[0]}
        if path == "/auth/token" and isinstance(case.body, dict):
            if case.body.get("username") in self.protected:
                case.body = {**case.body, "username": self.nobody}


def _all_user_names(client: httpx.Client, admin: str) -> set[str]:
    names: set[str] = set()
    for offset in itertools.count(0, 500):
        page = client.get(
            "/auth/users", params={"offset": offset, "limit": 500}, headers=bearer(admin)
        )
        assert page.status_code == 200, page.text
        names |= {user["username"] for user in page.json()}
        if len(page.json()) < 500:
            break
    return names


@pytest.fixture(scope="module")
def fuzzer(
    base_url: str,
    ca_file: str,
    admin_password: str,
    login: Callable[..., dict[str, Any]],
    fresh_source_ip: Callable[[], str],
) -> Iterator[Fuzzer]:
    admin = str(login("admin", admin_password)["access_token"])
    run = os.urandom(3).hex()
    password = os.urandom(18).hex()
    sessions = [_session_from(fresh_source_ip()) for _ in range(SIGN_IN_SOURCES + 1)]
    with make_client(base_url, ca_file) as client:
        existing = _all_user_names(client, admin)
        made: list[str] = []

        def make(name: str) -> str:
            body = {"username": name, "password": password, "role": "user"}
            response = client.post("/auth/users", json=body, headers=bearer(admin))
            assert response.status_code == 201, response.text
            made.append(name)
            return name

        pool = [make(f"fz{run}-u{i}") for i in range(USER_POOL)]
        logout_user = {"username": make(f"fz{run}-out"), "password": password}
        predictors = itertools.count()

        def new_user_token() -> str:
            name = make(f"fz{run}-p{next(predictors)}")
            fuzz.protected.add(name)
            return str(login(name, password)["access_token"])

        fuzz = Fuzzer(
            admin=admin,
            tokens=[str(login(name, password)["access_token"]) for name in pool],
            new_user_token=new_user_token,
            logout_user=logout_user,
            logout_token=str(login(logout_user["username"], password)["access_token"]),
            victims=[make(f"fz{run}-v{i}") for i in range(2)],
            nobody=f"fz{run}-nobody",
            protected=existing | set(pool) | {logout_user["username"]},
            session=sessions[0],
            sign_in_sessions=sessions[1:],
        )
        try:
            yield fuzz
        finally:
            for session in sessions:
                session.close()
            for name in [*made, *sorted(fuzz.created)]:
                client.delete(f"/auth/users/{name}", headers=bearer(admin))
            for client_id in sorted(fuzz.created_clients):
                client.delete(f"/auth/clients/{client_id}", headers=bearer(admin))


# -- one fuzzed request -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_call(fuzzer: Fuzzer, login: Callable[..., dict[str, Any]]) -> Callable[[Case], None]:
    def call(case: Case) -> None:
        fuzzer.spare_users(case)
        response = case.call_and_validate(
            session=fuzzer.session_for(case), headers=bearer(fuzzer.token_for(case))
        )
        label, status = case.operation.label, response.status_code
        fuzzer.statuses[(label, status)] += 1
        if status == 429:
            assert response.headers.get("retry-after"), f"{label}: 429 without Retry-After"
        if label == "POST /auth/users" and status == 201:
            fuzzer.created.add(response.json()["username"])
        if label == "POST /auth/clients" and status == 201:
            fuzzer.created_clients.add(response.json()["client_id"])
        if label == "POST /auth/logout" and status == 204:
            # That token is revoked now: the next case gets a live one.
            user = fuzzer.logout_user
            fuzzer.logout_token = str(login(user["username"], user["password"])["access_token"])

    return call


auth_schema = schemathesis.pytest.from_fixture("auth_openapi").exclude(path_regex=NOT_ROUTED)
inference_schema = schemathesis.pytest.from_fixture("inference_openapi").exclude(
    path_regex=NOT_ROUTED
)
crypto_schema = schemathesis.pytest.from_fixture("crypto_openapi").exclude(path_regex=NOT_ROUTED)


@auth_schema.parametrize()
def test_fuzz_auth_api(case: Case, fuzz_call: Callable[[Case], None]) -> None:
    fuzz_call(case)


@inference_schema.parametrize()
def test_fuzz_inference_api(case: Case, fuzz_call: Callable[[Case], None]) -> None:
    fuzz_call(case)


@crypto_schema.parametrize()
def test_fuzz_crypto_api(case: Case, fuzz_call: Callable[[Case], None]) -> None:
    fuzz_call(case)


# Operations a user (or the admin) can complete: each must have succeeded at least once,
# or the checks above ran only on refusals (a broken token would pass them vacuously).
MUST_SUCCEED = [
    "GET /auth/.well-known/jwks.json",
    "GET /auth/users/me",
    "PATCH /auth/users/me",
    "GET /auth/users",
    "POST /auth/users",
    "GET /auth/clients",
    "POST /auth/clients",
    "POST /auth/logout",
    "GET /v1/models",
    "GET /v1/models/{name}",
    "POST /v1/models/{name}/predict",
    "POST /predict",
    "GET /v2",
    "GET /v2/models/{name}",
    "GET /v2/models/{name}/versions/{version}",
    "GET /v2/models/{name}/ready",
    "POST /v2/models/{name}/infer",
    "POST /v2/models/{name}/versions/{version}/infer",
    "POST /crypto/encrypt",
    "POST /encrypt/",
]


def summary_problems(statuses: Counter[tuple[str, int]]) -> list[str]:
    """What a fuzz run that reached the services' logic cannot show: an operation a
    caller can complete that was never fuzzed or never succeeded, or a 5xx (other
    than 503 "not ready" from a readiness route). An empty run fails on every one."""
    succeeded = {label for label, status in statuses if 200 <= status < 300}
    problems = [f"{label} never succeeded" for label in MUST_SUCCEED if label not in succeeded]
    problems += [
        f"{label} answered {status}"
        for label, status in sorted(statuses)
        if status >= 500 and not (status == 503 and label.split(" ", 1)[1] in READY_PATHS)
    ]
    return problems


def test_fuzz_got_past_authentication_and_limits(fuzzer: Fuzzer) -> None:
    """The three fuzz tests above (run first, in this module) reached the services'
    logic: every operation a caller can complete succeeded at least once. Run alone
    (the fuzz tests deselected), nothing was recorded and it fails."""
    problems = summary_problems(fuzzer.statuses)
    assert not problems, f"{problems}; statuses: {sorted(fuzzer.statuses.items())}"


def test_fuzz_summary_check_can_fail() -> None:
    """The summary check refuses an empty run, a run of refusals only, a 5xx."""
    assert summary_problems(Counter()) == [f"{label} never succeeded" for label in MUST_SUCCEED]
    refusals = Counter({(label, 401): 3 for label in MUST_SUCCEED})
    assert len(summary_problems(refusals)) == len(MUST_SUCCEED)
    complete = Counter({(label, 200): 1 for label in MUST_SUCCEED})
    assert summary_problems(complete) == []
    assert summary_problems(complete + Counter({("GET /v2/health/ready", 503): 1})) == []
    assert summary_problems(complete + Counter({("POST /predict", 500): 1})) == [
        "POST /predict answered 500"
    ]
