"""Switching the serving version without a restart, in every worker at once.

Two (or three) apps sharing one real Redis stand for gunicorn's workers; the
same switch is tested through nginx against the running stack."""

from __future__ import annotations

import asyncio
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from inference_testdata import IRIS_SAMPLES, Serve
from modelgate_inference.builder import build_demo
from modelgate_inference.config import InferenceSettings
from modelgate_inference.main import create_app

pytestmark = pytest.mark.anyio

Auth = Callable[..., dict[str, str]]
ROW = IRIS_SAMPLES[2][0]


async def serving(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    r = await client.post("/predict", json=ROW, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["prediction"] == 2
    version: str = r.json()["version"]
    return version


@pytest.fixture
def add_version(store: Path, signing_keys: tuple[Path, Path]) -> Callable[[str], Path]:
    def add(version: str) -> Path:
        return build_demo(store, signing_keys[0], "iris", version)

    return add


async def test_load_switches_every_worker(
    make_settings: Callable[..., InferenceSettings],
    served: Serve,
    auth: Auth,
    add_version: Callable[[str], Path],
) -> None:
    settings = make_settings()
    user, admin = auth(), auth("root", role="admin")
    async with served(create_app(settings)) as a, served(create_app(settings)) as b:
        assert [await serving(a, user), await serving(b, user)] == ["1", "1"]
        add_version("2")
        # a new folder in the store changes nothing by itself
        assert [await serving(a, user), await serving(b, user)] == ["1", "1"]
        r = await a.post("/v1/models/iris/load", json={"version": "2"}, headers=admin)
        assert r.status_code == 200, r.text
        assert r.json() | {"failed": []} == {
            "model": "iris",
            "version": "2",
            "workers": 2,
            "switched": 2,
            "failed": [],
        }
        # the answer came after both acknowledged: no waiting needed
        assert [await serving(a, user), await serving(b, user)] == ["2", "2"]
        r = await b.get("/v2/models/iris", headers=user)
        assert r.json()["versions"] == ["1", "2"]
        # the older version stays reachable by name
        r = await b.post(
            "/v1/models/iris/predict?version=1", json={"instances": [ROW]}, headers=user
        )
        assert r.json()["version"] == "1"
        # roll back from the other worker
        r = await b.post("/v1/models/iris/load", json={"version": "1"}, headers=admin)
        assert r.status_code == 200 and r.json()["switched"] == 2
        assert [await serving(a, user), await serving(b, user)] == ["1", "1"]


async def test_load_without_a_version_takes_the_newest(
    make_settings: Callable[..., InferenceSettings],
    served: Serve,
    auth: Auth,
    add_version: Callable[[str], Path],
) -> None:
    async with served(create_app(make_settings())) as a:
        add_version("2")
        r = await a.post("/v1/models/iris/load", headers=auth(role="admin"))
        assert r.status_code == 200 and r.json()["version"] == "2"
        assert await serving(a, auth()) == "2"


async def test_a_worker_started_later_follows_the_admins_choice(
    make_settings: Callable[..., InferenceSettings],
    served: Serve,
    auth: Auth,
    add_version: Callable[[str], Path],
) -> None:
    settings = make_settings()
    add_version("2")
    async with served(create_app(settings)) as a:
        assert await serving(a, auth()) == "2"  # newest at start
        r = await a.post("/v1/models/iris/load", json={"version": "1"}, headers=auth(role="admin"))
        assert r.status_code == 200
        async with served(create_app(settings)) as late:
            assert await serving(late, auth()) == "1"


async def test_a_refused_version_switches_nobody(
    make_settings: Callable[..., InferenceSettings],
    served: Serve,
    auth: Auth,
    store: Path,
    add_version: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"

    class Marker:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    settings = make_settings()
    admin = auth(role="admin")
    async with served(create_app(settings)) as a, served(create_app(settings)) as b:
        version_two = add_version("2")
        tampered = store / "iris" / "3"
        shutil.copytree(version_two, tampered)  # a signed manifest, but for iris/2
        (tampered / "model.joblib").write_bytes(pickle.dumps(Marker()))
        r = await a.post("/v1/models/iris/load", json={"version": "3"}, headers=admin)
        assert r.status_code == 409
        assert "refused: manifest is for iris/2" in r.json()["detail"]
        assert [await serving(a, auth()), await serving(b, auth())] == ["1", "1"]
        r = await a.get("/health/ready")
        assert "iris:3 refused" in r.json()["checks"]["models"]["detail"]
        r = await a.post("/v1/models/iris/load", json={"version": "9"}, headers=admin)
        assert r.status_code == 404
        r = await a.post("/v1/models/iris/load", json={"version": "x"}, headers=admin)
        assert r.status_code == 422
        r = await a.post("/v1/models/nope/load", headers=admin)
        assert r.status_code == 404
    assert not marker.exists()


async def test_no_request_fails_during_a_switch(
    make_settings: Callable[..., InferenceSettings],
    served: Serve,
    auth: Auth,
    add_version: Callable[[str], Path],
) -> None:
    settings = make_settings()
    user, admin = auth(), auth(role="admin")
    add_version("2")
    results: list[tuple[int, Any]] = []
    async with served(create_app(settings)) as a, served(create_app(settings)) as b:
        stop = asyncio.Event()

        async def traffic(client: httpx.AsyncClient) -> None:
            while not stop.is_set():
                r = await client.post("/predict", json=ROW, headers=user)
                results.append((r.status_code, r.json().get("version")))
                await asyncio.sleep(0)

        workers = [asyncio.create_task(traffic(c)) for c in (a, b, a, b)]
        for version in ("1", "2", "1", "2"):
            r = await a.post("/v1/models/iris/load", json={"version": version}, headers=admin)
            assert r.status_code == 200, r.text
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*workers)
    assert len(results) > 20
    assert {status for status, _ in results} == {200}
    assert {version for _, version in results} == {"1", "2"}


async def test_load_needs_redis(
    make_settings: Callable[..., InferenceSettings],
    served: Serve,
    auth: Auth,
    redis_server: Any,
    add_version: Callable[[str], Path],
) -> None:
    """With Redis gone a switch cannot reach the other workers: 503, nothing switched.
    When Redis is back, a switch works again without a restart."""
    async with served(create_app(make_settings(redis=redis_server.url))) as a:
        add_version("2")
        redis_server.stop()
        r = await a.post("/v1/models/iris/load", json={"version": "2"}, headers=auth(role="admin"))
        assert r.status_code == 503
        assert "retry-after" in r.headers
        assert await serving(a, auth()) == "1"
        redis_server.start()
        r = await a.post("/v1/models/iris/load", json={"version": "2"}, headers=auth(role="admin"))
        assert r.status_code == 200, r.text
        assert await serving(a, auth()) == "2"


async def test_a_removed_version_does_not_block_other_switches(
    make_settings: Callable[..., InferenceSettings],
    served: Serve,
    auth: Auth,
    store: Path,
    signing_keys: tuple[Path, Path],
    add_version: Callable[[str], Path],
) -> None:
    """An operator removes a loaded version's folder from the store: its pin stays in
    Redis, and a later load of another model still switches every worker."""
    settings = make_settings()
    admin = auth("root", role="admin")
    async with served(create_app(settings)) as a:
        build_demo(store, signing_keys[0], "breast_cancer", "2")
        r = await a.post("/v1/models/breast_cancer/load", json={"version": "2"}, headers=admin)
        assert r.status_code == 200, r.text
        shutil.rmtree(store / "breast_cancer" / "2")
        add_version("2")
        late = create_app(settings)
        async with served(late) as b:  # a worker that never saw it
            sync = late.state.version_sync
            for _ in range(500):  # until both workers listen
                [(_, listeners)] = await sync.redis.pubsub_numsub(sync.channel)
                if listeners == 2:
                    break
                await asyncio.sleep(0.02)
            r = await b.post("/v1/models/iris/load", json={"version": "2"}, headers=admin)
            assert r.status_code == 200, r.text
            assert r.json()["switched"] == 2 and r.json()["failed"] == []
            assert [await serving(a, auth()), await serving(b, auth())] == ["2", "2"]
