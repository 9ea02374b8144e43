"""The bad-input catalogue on every endpoint shape: each gets 422 (never 500) with
a ``loc`` that names the offending field. The same catalogue runs through nginx
in tests/integration/test_inference.py."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from inference_testdata import IRIS_FEATURES

pytestmark = pytest.mark.anyio

ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def raw_row(**values: str) -> str:
    """A row as JSON text, with some values replaced by raw JSON tokens."""
    parts = [f'"{k}": {values.get(k, json.dumps(v))}' for k, v in ROW.items()]
    return "{" + ", ".join(parts) + "}"


def v1(row: str) -> bytes:
    return ('{"instances": [' + row + "]}").encode()


def v2(data: str, shape: str = "[1, 4]", datatype: str = "FP64", name: str = "input") -> bytes:
    tensor = f'{{"name": "{name}", "shape": {shape}, "datatype": "{datatype}", "data": {data}}}'
    return ('{"inputs": [' + tensor + "]}").encode()


ROW_CASES: list[tuple[str, str, tuple[object, ...]]] = [
    # (case, row JSON, loc inside the row)
    ("string number", raw_row(sepal_length='"5.1"'), ("sepal_length",)),
    ("boolean", raw_row(sepal_width="true"), ("sepal_width",)),
    ("null", raw_row(petal_length="null"), ("petal_length",)),
    ("NaN literal", raw_row(petal_width="NaN"), ("petal_width",)),
    ("Infinity literal", raw_row(sepal_length="Infinity"), ("sepal_length",)),
    ("-Infinity literal", raw_row(sepal_length="-Infinity"), ("sepal_length",)),
    ("overflow to infinity", raw_row(sepal_width="1e999"), ("sepal_width",)),
    ("huge", raw_row(petal_length="1e308"), ("petal_length",)),
    ("above bounds", raw_row(petal_width="3.8"), ("petal_width",)),
    ("below bounds", raw_row(sepal_length="-1"), ("sepal_length",)),
    ("negative where training never was", raw_row(petal_width="-0.01"), ("petal_width",)),
    ("nested object", raw_row(sepal_length='{"v": 1}'), ("sepal_length",)),
    ("list", raw_row(sepal_length="[5.1]"), ("sepal_length",)),
    ("unknown field", raw_row()[:-1] + ', "colour": 1}', ("colour",)),
    (
        "missing field",
        json.dumps({k: v for k, v in ROW.items() if k != "petal_width"}),
        ("petal_width",),
    ),
]

V1_BODY_CASES: list[tuple[str, bytes, tuple[object, ...]]] = [
    ("empty batch", b'{"instances": []}', ("instances",)),
    ("no instances", b'{"probabilities": true}', ("instances",)),
    ("instances not a list", b'{"instances": {"a": 1}}', ("instances",)),
    ("instance not an object", b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}', ("instances", 0)),
    ("unknown top-level field", v1(raw_row())[:-1] + b', "model": "x"}', ("model",)),
    ("probabilities not a bool", v1(raw_row())[:-1] + b', "probabilities": 1}', ("probabilities",)),
    (
        "probabilities as a string",
        v1(raw_row())[:-1] + b', "probabilities": "true"}',
        ("probabilities",),
    ),
    ("not JSON", b"sepal_length=5.1", ()),
    ("truncated JSON", b'{"instances": [', ()),
    ("JSON array", b"[1, 2]", ()),
    ("empty body", b"", ()),
    ("second row bad", v1(raw_row() + ", " + raw_row(sepal_width="NaN")), ("instances", 1)),
]

V2_CASES: list[tuple[str, bytes, tuple[object, ...]]] = [
    ("BYTES datatype", v2('["a", "b", "c", "d"]', datatype="BYTES"), ("inputs", 0, "data")),
    ("BOOL datatype", v2("[1, 2, 3, 4]", datatype="BOOL"), ("inputs", 0, "datatype")),
    ("unknown datatype", v2("[1, 2, 3, 4]", datatype="FP128"), ("inputs", 0, "datatype")),
    ("string in data", v2('[5.1, "3.5", 1.4, 0.2]'), ("inputs", 0, "data", 1)),
    ("boolean in data", v2("[5.1, 3.5, true, 0.2]"), ("inputs", 0, "data", 2)),
    ("NaN in data", v2("[5.1, 3.5, 1.4, NaN]"), ("inputs", 0, "data", 3)),
    ("Infinity in data", v2("[Infinity, 3.5, 1.4, 0.2]"), ("inputs", 0, "data", 0)),
    ("null in data", v2("[5.1, null, 1.4, 0.2]"), ("inputs", 0, "data", 1)),
    ("NaN in nested data", v2("[[5.1, 3.5, NaN, 0.2]]"), ("inputs", 0, "data", 0, 2)),
    ("ragged nested data", v2("[[5.1, 3.5], [1.4, 0.2, 1.0]]", shape="[2, 2]"), ("inputs", 0)),
    ("out of bounds", v2("[5.1, 3.5, 1.4, 99]"), ("inputs", 0, "data", 3)),
    ("huge value", v2("[1e308, 3.5, 1.4, 0.2]"), ("inputs", 0, "data", 0)),
    ("too few values", v2("[5.1, 3.5, 1.4]"), ("inputs", 0, "data")),
    ("too many values", v2("[5.1, 3.5, 1.4, 0.2, 1]"), ("inputs", 0, "data")),
    ("wrong feature count", v2("[5.1, 3.5, 1.4]", shape="[1, 3]"), ("inputs", 0, "shape")),
    ("zero rows", v2("[]", shape="[0, 4]"), ("inputs", 0, "shape")),
    ("oversized batch", v2("[]", shape="[1001, 4]"), ("inputs", 0, "shape")),
    ("negative shape", v2("[5.1, 3.5, 1.4, 0.2]", shape="[-1, 4]"), ("inputs", 0, "shape", 0)),
    ("shape of three dims", v2("[5.1, 3.5, 1.4, 0.2]", shape="[1, 1, 4]"), ("inputs", 0, "shape")),
    ("unknown input name", v2("[5.1, 3.5, 1.4, 0.2]", name="x"), ("inputs", 0, "name")),
    ("INT64 with fractions", v2("[5.1, 3.5, 1.4, 0.2]", datatype="INT64"), ("inputs", 0, "data")),
    ("no inputs", b'{"inputs": []}', ("inputs",)),
    ("unknown top-level field", v2("[5.1, 3.5, 1.4, 0.2]")[:-1] + b', "model": "x"}', ("model",)),
    (
        "unknown output",
        v2("[5.1, 3.5, 1.4, 0.2]")[:-1] + b', "outputs": [{"name": "weights"}]}',
        ("outputs", 0, "name"),
    ),
    (
        "output asked twice",
        v2("[5.1, 3.5, 1.4, 0.2]")[:-1] + b', "outputs": [{"name": "label"}, {"name": "label"}]}',
        ("outputs", 1, "name"),
    ),
    (
        "parameters not an object",
        v2("[5.1, 3.5, 1.4, 0.2]")[:-1] + b', "parameters": [1]}',
        ("parameters",),
    ),
    ("not JSON", b"inputs", ()),
]


def per_feature(skip: str | None = None, twice: str | None = None) -> bytes:
    tensors = [
        {"name": f, "shape": [1], "datatype": "FP64", "data": [ROW[f]]}
        for f in IRIS_FEATURES
        if f != skip
    ]
    if twice:
        tensors.append({"name": twice, "shape": [1], "datatype": "FP64", "data": [ROW[twice]]})
    return json.dumps({"inputs": tensors}).encode()


V2_CASES += [
    ("feature tensor missing", per_feature(skip="petal_width"), ("inputs",)),
    ("feature tensor twice", per_feature(twice="sepal_width"), ("inputs", 4, "name")),
]


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
