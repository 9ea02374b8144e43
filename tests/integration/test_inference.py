"""Inference through nginx: the seed's /predict, v1, Open Inference Protocol v2 (with
a standard client over verified TLS), the bad-input catalogue on every endpoint
shape, the tamper test and a version switch under traffic.

Predict routes are rate limited per token subject (10/minute for users by
default), so the tests spread their requests over fresh users."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
IRIS = [
    ({"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}, 0),
    ({"sepal_length": 6.4, "sepal_width": 3.2, "petal_length": 4.5, "petal_width": 1.5}, 1),
    ({"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}, 2),
]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
PER_USER = 8  # predict requests per fresh user, under the default 10/minute


def _catalogue() -> ModuleType:
    """The unit tests' bad-input catalogue, loaded from its file (one source of truth)."""
    path = ROOT / "services" / "inference" / "tests" / "inference_testdata.py"
    spec = importlib.util.spec_from_file_location("inference_testdata_catalogue", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


catalogue = _catalogue()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Tokens:
    """Access tokens of fresh users, each handed out for ``per_user`` predict requests."""

    def __init__(self, make_user: Callable[..., dict[str, str]], login: Callable[..., Any]):
        self.make_user, self.login = make_user, login
        self.used = PER_USER
        self.token = ""

    def fresh(self, role: str = "user", scope: str | None = None) -> str:
        user = self.make_user(role=role)
        return str(self.login(user["username"], user["password"], scope)["access_token"])

    def next(self) -> dict[str, str]:
        if self.used >= PER_USER:
            self.token, self.used = self.fresh(), 0
        self.used += 1
        return bearer(self.token)


@pytest.fixture
def tokens(make_user: Callable[..., dict[str, str]], login: Callable[..., Any]) -> Tokens:
    return Tokens(make_user, login)


def v2_body(rows: list[dict[str, float]]) -> dict[str, Any]:
    data = [row[f] for row in rows for f in FEATURES]
    return {
        "inputs": [{"name": "input", "shape": [len(rows), 4], "datatype": "FP64", "data": data}]
    }


# --- the happy paths with a user's token ------------------------------------------------------


def test_seed_predict_as_the_tutorial_calls_it(client: httpx.Client, tokens: Tokens) -> None:
    headers = tokens.next()
    for row, cls in IRIS:
        r = client.post("/predict", json=row, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["prediction"] == cls
        assert r.json()["model"] == "iris" and r.json()["version"]


def test_v1_list_and_batch_predict(client: httpx.Client, tokens: Tokens) -> None:
    headers = tokens.next()
    r = client.get("/v1/models", headers=headers)
    assert r.status_code == 200
    names = {m["name"] for m in r.json()["models"]}
    assert {"iris", "breast_cancer"} <= names
    rows = [row for row, _ in IRIS] * 100
    r = client.post("/v1/models/iris/predict", json={"instances": rows}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == [cls for _, cls in IRIS] * 100
    assert r.json()["model"] == "iris"
    assert int(r.headers["x-quota-rows-remaining"]) <= 10_000 - 300


def test_probabilities_need_a_scope_only_analysts_and_admins_get(
    client: httpx.Client, tokens: Tokens, make_user: Callable[..., dict[str, str]], login: Any
) -> None:
    """A user's default token gets labels only; an analyst's (the role an admin grants
    for probabilities) gets probabilities too, unless narrowed without the scope."""
    body = {"instances": [IRIS[0][0]], "probabilities": True}
    r = client.post("/v1/models/iris/predict", json=body, headers=tokens.next())
    assert r.status_code == 403, r.text
    assert "models:probabilities" in r.json()["detail"]
    labels = {"instances": [IRIS[0][0]]}
    r = client.post("/v1/models/iris/predict", json=labels, headers=tokens.next())
    assert r.status_code == 200 and r.json()["predictions"] == [0]
    analyst = tokens.fresh(role="analyst")
    r = client.post("/v1/models/iris/predict", json=body, headers=bearer(analyst))
    assert r.status_code == 200, r.text
    assert r.json()["probabilities"][0][0] == pytest.approx(1.0, abs=1e-5)
    narrow = tokens.fresh(role="analyst", scope="models:predict")
    r = client.post("/v1/models/iris/predict", json=body, headers=bearer(narrow))
    assert r.status_code == 403


def test_v2_rest_surface(client: httpx.Client, tokens: Tokens) -> None:
    headers = tokens.next()
    assert client.get("/v2/health/live").json() == {"live": True}  # public
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").status_code == 401
    assert client.get("/v2", headers=headers).json()["name"] == "modelgate"
    meta = client.get("/v2/models/iris", headers=headers).json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    version = meta["versions"][-1]
    assert client.get(f"/v2/models/iris/versions/{version}/ready", headers=headers).json()["ready"]
    # no Content-Type: read as JSON, as protocol clients send it
    body = json.dumps(v2_body([row for row, _ in IRIS])).encode()
    r = client.post("/v2/models/iris/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [0, 1, 2]


def test_standard_open_inference_client_over_verified_tls(
    https_port: int, ca_file: str, tokens: Tokens
) -> None:
    """tritonclient's HTTP client (KServe v2 REST), TLS verified with certs/ca.pem."""
    import tritonclient.http as httpclient

    headers = tokens.next()
    url = f"localhost:{https_port}"
    client = httpclient.InferenceServerClient(url, ssl=True, ssl_options={"ca_certs": ca_file})
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("iris", headers=headers)
        metadata = client.get_model_metadata("iris", headers=headers)
        assert metadata["inputs"][0]["name"] == "input"
        X = np.array([[row[f] for f in FEATURES] for row, _ in IRIS], dtype=np.float64)
        tensor = httpclient.InferInput("input", list(X.shape), "FP64")
        tensor.set_data_from_numpy(X, binary_data=False)
        wanted = [httpclient.InferRequestedOutput("label", binary_data=False)]
        result = client.infer("iris", [tensor], outputs=wanted, headers=headers)
        assert result.as_numpy("label").tolist() == [0, 1, 2]
        assert result.get_response()["model_name"] == "iris"
    finally:
        client.close()


def test_the_standard_client_refuses_an_unknown_certificate_authority(https_port: int) -> None:
    """The certificate check is real: without our CA the same client fails."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"localhost:{https_port}", ssl=True)
    try:
        with pytest.raises(Exception, match=r"(?i)certificate"):
            client.is_server_live()
    finally:
        client.close()


# --- the bad-input catalogue through nginx ---------------------------------------------------


def assert_names(response: httpx.Response, loc: tuple[object, ...]) -> None:
    assert response.status_code == 422, response.text
    first = response.json()["detail"][0]
    assert first["loc"][0] == "body"
    assert tuple(first["loc"][1 : 1 + len(loc)]) == loc, first


def test_bad_inputs_get_422_naming_the_field_on_every_endpoint_shape(
    client: httpx.Client, tokens: Tokens
) -> None:
    json_type = {"Content-Type": "application/json"}
    for _case, row, loc in catalogue.ROW_CASES:
        r = client.post("/predict", content=row.encode(), headers=tokens.next() | json_type)
        assert_names(r, loc)
        r = client.post(
            "/v1/models/iris/predict", content=catalogue.v1(row), headers=tokens.next() | json_type
        )
        assert_names(r, ("instances", 0, *loc))
    for _case, body, loc in catalogue.V1_BODY_CASES:
        r = client.post("/v1/models/iris/predict", content=body, headers=tokens.next() | json_type)
        assert_names(r, loc)
    for case, body, loc in catalogue.V2_CASES:
        r = client.post("/v2/models/iris/infer", content=body, headers=tokens.next())
        assert_names(r, loc)
        assert r.json()["error"], case
    oversized = json.dumps({"instances": [IRIS[0][0]] * 1001}).encode()
    r = client.post("/v1/models/iris/predict", content=oversized, headers=tokens.next() | json_type)
    assert_names(r, ("instances",))


# --- the store: tamper test and a switch under traffic (native: they write the store) ---------


@pytest.fixture(scope="session")
def model_store() -> Path:
    return Path(os.environ.get("MG_MODEL_STORE", ROOT / "model_store"))


def serving_version(client: httpx.Client, headers: dict[str, str]) -> str:
    r = client.get("/v1/models/iris", headers=headers)
    assert r.status_code == 200
    return str(r.json()["default_version"])


@pytest.fixture
def new_iris_version(model_store: Path) -> Iterator[str]:
    """A new signed iris version built by the operator's command; removed afterwards."""
    done = subprocess.run(
        [
            str(Path(os.environ.get("MG_VENV", ROOT / ".venv")) / "bin" / "modelgate"),
            "model",
            "build-demo",
            "iris",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MG_ROOT": str(ROOT)},
        check=True,
    )
    version = done.stdout.split("version ")[1].split()[0]
    yield version
    shutil.rmtree(model_store / "iris" / version, ignore_errors=True)


@pytest.mark.native
def test_tampered_version_is_refused_and_never_unpickled(
    client: httpx.Client, admin_token: str, model_store: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    os.chmod(tmp_path, 0o777)  # the services may run as another user

    class Marker:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    versions = sorted(
        (p.name for p in (model_store / "iris").iterdir() if p.name.isdigit()), key=int
    )
    evil = model_store / "iris" / str(int(versions[-1]) + 100)
    shutil.copytree(
        model_store / "iris" / versions[0], evil
    )  # a genuine manifest, for another folder
    try:
        (evil / "model.joblib").write_bytes(pickle.dumps(Marker()))
        headers = bearer(admin_token)
        before = serving_version(client, headers)
        r = client.post("/v1/models/iris/load", json={"version": evil.name}, headers=headers)
        assert r.status_code == 409, r.text
        assert f"manifest is for iris/{versions[0]}" in r.json()["detail"]
        assert serving_version(client, headers) == before
        r = client.post("/predict", json=IRIS[0][0], headers=headers)
        assert r.status_code == 200 and r.json()["version"] == before
    finally:
        shutil.rmtree(evil, ignore_errors=True)
    assert not marker.exists()


@pytest.mark.native
@pytest.mark.slow
def test_switch_under_traffic_fails_no_request(
    new_client: Callable[[], httpx.Client],
    client: httpx.Client,
    admin_token: str,
    tokens: Tokens,
    new_iris_version: str,
) -> None:
    admin = bearer(admin_token)
    before = serving_version(client, admin)
    # fresh admins: 100 predictions a minute each by default
    senders = [bearer(tokens.fresh(role="admin")) for _ in range(3)]
    results: list[tuple[float, int, str | None]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def traffic(headers: dict[str, str], v2: bool) -> None:
        with new_client() as c:
            for _ in range(90):
                if stop.is_set():
                    return
                sent = time.monotonic()
                if v2:
                    r = c.post("/v2/models/iris/infer", json=v2_body([IRIS[2][0]]), headers=headers)
                    version = r.json().get("model_version") if r.status_code == 200 else None
                else:
                    r = c.post("/predict", json=IRIS[2][0], headers=headers)
                    version = r.json().get("version") if r.status_code == 200 else None
                with lock:
                    results.append((sent, r.status_code, version))
                time.sleep(0.02)  # paced: the budget lasts past the switch

    threads = [
        threading.Thread(target=traffic, args=(h, i % 2 == 1)) for i, h in enumerate(senders)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        r = client.post("/v1/models/iris/load", json={"version": new_iris_version}, headers=admin)
        switched_at = time.monotonic()
        assert r.status_code == 200, r.text
        assert r.json()["switched"] == r.json()["workers"] >= 2
        # some traffic after the switch (or the senders' budgets are spent)
        while any(t.is_alive() for t in threads):
            with lock:
                if sum(1 for sent, _, _ in results if sent > switched_at) >= 20:
                    break
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        # and sequentially, from a new user: every answer is the new version
        headers = tokens.next()
        for _ in range(6):
            r = client.post("/predict", json=IRIS[2][0], headers=headers)
            assert r.status_code == 200 and r.json()["version"] == new_iris_version
    finally:
        stop.set()
        for t in threads:
            t.join()
        restore = client.post("/v1/models/iris/load", json={"version": before}, headers=admin)
        assert restore.status_code == 200, restore.text
    assert len(results) > 30
    assert {status for _, status, _ in results} == {200}
    assert {version for _, _, version in results} <= {before, new_iris_version}
    # every request sent after the load answered was served by the new version
    after = {version for sent, _, version in results if sent > switched_at}
    assert after <= {new_iris_version}
