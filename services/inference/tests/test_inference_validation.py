"""The bad-input catalogue (inference_testdata) on every endpoint shape: each gets 422
(never 500) with a ``loc`` that names the offending field. The same catalogue runs
through nginx in tests/integration/test_inference.py."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.exceptions import RequestValidationError
from inference_testdata import (
    IRIS_FEATURES,
    ROW,
    ROW_CASES,
    V1_BODY_CASES,
    V2_CASES,
    per_feature,
    raw_row,
    v1,
    v2,
)
from modelgate_inference.schemas import InputSchema, inputs_to_matrix, parse_inference_request
from modelgate_inference.store import load_public_key, read_verified_manifest

pytestmark = pytest.mark.anyio


def assert_names(response: httpx.Response, loc: tuple[object, ...]) -> None:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    got = detail[0]["loc"]
    assert got[0] == "body"
    assert tuple(got[1 : 1 + len(loc)]) == loc, got
    assert detail[0]["msg"]


@pytest.fixture
def headers(auth: Callable[..., dict[str, str]]) -> dict[str, str]:
    return auth() | {"Content-Type": "application/json"}


@pytest.mark.parametrize(("case", "row", "loc"), ROW_CASES, ids=[c[0] for c in ROW_CASES])
async def test_v1_refuses_bad_rows(
    client: httpx.AsyncClient, headers: dict[str, str], case: str, row: str, loc: tuple[object, ...]
) -> None:
    r = await client.post("/v1/models/iris/predict", content=v1(row), headers=headers)
    assert_names(r, ("instances", 0, *loc))


@pytest.mark.parametrize(("case", "body", "loc"), V1_BODY_CASES, ids=[c[0] for c in V1_BODY_CASES])
async def test_v1_refuses_bad_bodies(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    case: str,
    body: bytes,
    loc: tuple[object, ...],
) -> None:
    r = await client.post("/v1/models/iris/predict", content=body, headers=headers)
    assert_names(r, loc)


async def test_v1_refuses_an_oversized_batch(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    body = json.dumps({"instances": [ROW] * 1001}).encode()
    r = await client.post("/v1/models/iris/predict", content=body, headers=headers)
    assert_names(r, ("instances",))
    assert "1000" in r.json()["detail"][0]["msg"]
    body = json.dumps({"instances": [ROW] * 1000}).encode()
    r = await client.post("/v1/models/iris/predict", content=body, headers=headers)
    assert r.status_code == 200


@pytest.mark.parametrize(("case", "row", "loc"), ROW_CASES, ids=[c[0] for c in ROW_CASES])
async def test_seed_refuses_bad_rows(
    client: httpx.AsyncClient, headers: dict[str, str], case: str, row: str, loc: tuple[object, ...]
) -> None:
    r = await client.post("/predict", content=row.encode(), headers=headers)
    assert_names(r, loc)


@pytest.mark.parametrize(
    "body", [b"", b"[]", b'{"instances": []}', b"nope"], ids=["empty", "array", "v1", "text"]
)
async def test_seed_refuses_bad_bodies(
    client: httpx.AsyncClient, headers: dict[str, str], body: bytes
) -> None:
    r = await client.post("/predict", content=body, headers=headers)
    assert r.status_code == 422


@pytest.mark.parametrize(("case", "body", "loc"), V2_CASES, ids=[c[0] for c in V2_CASES])
async def test_v2_refuses_bad_tensors(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    case: str,
    body: bytes,
    loc: tuple[object, ...],
) -> None:
    r = await client.post("/v2/models/iris/infer", content=body, headers=headers)
    assert_names(r, loc)
    assert r.json()["error"]  # what Open Inference Protocol clients read


async def test_v2_out_of_bounds_message_names_the_feature(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    r = await client.post(
        "/v2/models/iris/infer", content=v2("[5.1, 3.5, 1.4, 99]"), headers=headers
    )
    assert "petal_width" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("path", ["/v1/models/iris/predict", "/predict", "/v2/models/iris/infer"])
async def test_other_media_types_are_refused(
    client: httpx.AsyncClient, auth: Callable[..., dict[str, str]], path: str
) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        headers = auth() | {"Content-Type": content_type}
        r = await client.post(path, content=json.dumps(ROW).encode(), headers=headers)
        assert r.status_code == 415, (content_type, r.text)


async def test_binary_tensor_extension_is_refused(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    r = await client.post(
        "/v2/models/iris/infer",
        content=v2("[5.1, 3.5, 1.4, 0.2]"),
        headers=headers | {"Inference-Header-Content-Length": "10"},
    )
    assert r.status_code == 415
    assert "binary" in r.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/Bad Name/predict",
        "/v1/models/..%2fetc/predict",
        "/v2/models/iris/versions/x/infer",
    ],
)
async def test_bad_names_in_paths(
    client: httpx.AsyncClient, headers: dict[str, str], path: str
) -> None:
    r = await client.post(path, content=v1(raw_row()), headers=headers)
    assert r.status_code in (404, 422)


async def test_long_unknown_keys_are_not_echoed_whole(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    key = "k" * 5000
    body = json.dumps({"instances": [ROW | {key: 1}]}).encode()
    r = await client.post("/v1/models/iris/predict", content=body, headers=headers)
    assert r.status_code == 422
    assert len(r.text) < 1000
    assert r.json()["detail"][0]["loc"][3].startswith("kkkk")


@pytest.mark.parametrize(
    "body",
    [
        per_feature(**{f: {"shape": [1_000_000], "data": []} for f in IRIS_FEATURES}),
        per_feature(sepal_length={"shape": [1_000_000]}),
        v2("[]", shape="[1000000, 4]"),
    ],
    ids=["every feature tensor", "first feature tensor", "one input tensor"],
)
def test_a_tensor_shape_is_refused_before_anything_its_size_is_allocated(
    store: Path, signing_keys: tuple[Path, Path], body: bytes
) -> None:
    """A million rows would be a 32 MB matrix: the 422 comes before any of it exists."""
    verified = read_verified_manifest(store / "iris" / "1", load_public_key(signing_keys[1]))
    schema = InputSchema.from_manifest(verified.manifest, bounds_margin=0.5, max_batch=1000)
    request = parse_inference_request(body)
    tracemalloc.start()
    try:
        with pytest.raises(RequestValidationError, match="rows must be between"):
            inputs_to_matrix(request, schema)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak} bytes allocated before the shape was refused"


@pytest.mark.parametrize(
    "body",
    [
        v2("[5.1, 3.5, 1.4, 0.2]", shape="[" + "9" * 4300 + ", 4]"),
        v2("[5.1, 3.5, 1.4, 0.2]", shape="[1, " + "9" * 4300 + "]"),
        per_feature(sepal_length={"shape": [10**4299]}),
    ],
    ids=["rows", "width", "feature tensor rows"],
)
async def test_a_shape_of_thousands_of_digits_is_not_echoed_whole(
    client: httpx.AsyncClient, headers: dict[str, str], body: bytes
) -> None:
    r = await client.post("/v2/models/iris/infer", content=body, headers=headers)
    assert_names(r, ("inputs", 0, "shape"))
    assert "4300 digits" in r.json()["error"]
    assert len(r.text) < 1000
