"""Data and helper types shared by the inference unit tests, and the bad-input
catalogue the integration tests through nginx run too (keep it free of fixtures)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

IRIS_SAMPLES = [
    # (row, class) known iris flowers: setosa, versicolor, virginica
    ({"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}, 0),
    ({"sepal_length": 6.4, "sepal_width": 3.2, "petal_length": 4.5, "petal_width": 1.5}, 1),
    ({"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}, 2),
]
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

Serve = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


class Audit:
    """The audit file the service writes, read back as JSON lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def raw(self) -> str:
        return self.path.read_text() if self.path.exists() else ""


# --- the bad-input catalogue ----------------------------------------------------------------

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
    ("big integer", raw_row(sepal_length="1" + "0" * 40), ("sepal_length",)),
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
    ("deeply nested", b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}", ()),
    ("invalid UTF-8", b'{"instances": [{"\xff": 1}]}', ()),
    ("second row bad", v1(raw_row() + ", " + raw_row(sepal_width="NaN")), ("instances", 1)),
]

V2_CASES: list[tuple[str, bytes, tuple[object, ...]]] = [
    ("BYTES datatype", v2('["a", "b", "c", "d"]', datatype="BYTES"), ("inputs", 0, "datatype")),
    ("strings as FP64", v2('["a", "b", "c", "d"]'), ("inputs", 0, "data")),
    ("numbers and strings", v2('[1.0, "b", 2.0, 3.0]'), ("inputs", 0, "data")),
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


def per_feature(
    skip: str | None = None, twice: str | None = None, **changed: dict[str, object]
) -> bytes:
    """One tensor per feature; ``changed`` replaces fields of a feature's tensor
    (``petal_width={"shape": [10**13]}``)."""
    tensors = [
        {"name": f, "shape": [1], "datatype": "FP64", "data": [ROW[f]]} | changed.get(f, {})
        for f in IRIS_FEATURES
        if f != skip
    ]
    if twice:
        tensors.append({"name": twice, "shape": [1], "datatype": "FP64", "data": [ROW[twice]]})
    return json.dumps({"inputs": tensors}).encode()


# Row counts past any batch: a few KB, 32 GB, MemoryError, int64 and uint64 overflow,
# and numbers numpy cannot take as a dimension at all.
HUGE = {"1e4": 10**4, "1e9": 10**9, "1e13": 10**13, "2^63": 2**63, "2^64": 2**64,
        "1e30": 10**30, "1e400": 10**400}  # fmt: skip

V2_CASES += [
    ("feature tensor missing", per_feature(skip="petal_width"), ("inputs",)),
    ("feature tensor twice", per_feature(twice="sepal_width"), ("inputs", 4, "name")),
    # one tensor "input": every dimension huge, alone and with the other
    *[
        (
            f"input tensor of {label} rows",
            v2("[5.1, 3.5, 1.4, 0.2]", shape=f"[{n}, 4]"),
            ("inputs", 0, "shape"),
        )
        for label, n in HUGE.items()
    ],
    *[
        (
            f"input tensor {label} wide",
            v2("[5.1, 3.5, 1.4, 0.2]", shape=f"[1, {n}]"),
            ("inputs", 0, "shape"),
        )
        for label, n in HUGE.items()
    ],
    (
        "input tensor huge both ways",
        v2("[]", shape=f"[{10**30}, {10**30}]"),
        ("inputs", 0, "shape"),
    ),
    # one tensor per feature: huge rows on the first tensor, on a later one, on all
    *[
        (
            f"feature tensors of {label} rows",
            per_feature(**{f: {"shape": [n], "data": []} for f in IRIS_FEATURES}),
            ("inputs", 0, "shape"),
        )
        for label, n in HUGE.items()
    ],
    *[
        (
            f"first feature tensor of {label} rows",
            per_feature(sepal_length={"shape": [n]}),
            ("inputs", 0, "shape"),
        )
        for label, n in HUGE.items()
    ],
    *[
        (
            f"last feature tensor of {label} rows",
            per_feature(petal_width={"shape": [n]}),
            ("inputs", 3, "shape"),
        )
        for label, n in HUGE.items()
    ],
    *[
        (
            f"feature tensor {label} wide",
            per_feature(petal_length={"shape": [1, n]}),
            ("inputs", 2, "shape"),
        )
        for label, n in HUGE.items()
    ],
    *[
        (
            f"feature tensor of {label} rows and 1 wide",
            per_feature(**{f: {"shape": [n, 1], "data": []} for f in IRIS_FEATURES}),
            ("inputs", 0, "shape"),
        )
        for label, n in HUGE.items()
    ],
    (
        "feature tensors of zero rows",
        per_feature(**{f: {"shape": [0], "data": []} for f in IRIS_FEATURES}),
        ("inputs", 0, "shape"),
    ),
    (
        "feature tensors of 1001 rows",
        per_feature(**{f: {"shape": [1001], "data": [ROW[f]] * 1001} for f in IRIS_FEATURES}),
        ("inputs", 0, "shape"),
    ),
    (
        "feature tensor zero wide",
        per_feature(sepal_width={"shape": [1, 0]}),
        ("inputs", 1, "shape"),
    ),
    (
        "feature tensor two wide",
        per_feature(sepal_width={"shape": [1, 2], "data": [3.5, 3.5]}),
        ("inputs", 1, "shape"),
    ),
    (
        "feature tensor of three dims",
        per_feature(sepal_width={"shape": [1, 1, 1]}),
        ("inputs", 1, "shape"),
    ),
    ("feature tensor empty shape", per_feature(sepal_width={"shape": []}), ("inputs", 1, "shape")),
    (
        "feature tensor negative shape",
        per_feature(sepal_width={"shape": [-1]}),
        ("inputs", 1, "shape", 0),
    ),
    (
        "feature tensor shape not integers",
        per_feature(sepal_width={"shape": [1.0]}),
        ("inputs", 1, "shape", 0),
    ),
    (
        "feature tensor shape as a string",
        per_feature(sepal_width={"shape": "1"}),
        ("inputs", 1, "shape"),
    ),
    (
        "feature tensors of different rows",
        per_feature(petal_width={"shape": [2], "data": [0.2, 0.2]}),
        ("inputs", 3, "shape"),
    ),
    ("feature tensor too few values", per_feature(petal_width={"data": []}), ("inputs", 3, "data")),
    (
        "feature tensor too many values",
        per_feature(petal_width={"data": [0.2, 0.2]}),
        ("inputs", 3, "data"),
    ),
    (
        "feature tensor ragged nested data",
        per_feature(
            **{f: {"shape": [2, 1], "data": [[ROW[f]], [ROW[f], 1.0]]} for f in IRIS_FEATURES}
        ),
        ("inputs", 0, "data"),
    ),
    (
        "feature tensor BYTES datatype",
        per_feature(petal_width={"datatype": "BYTES"}),
        ("inputs", 3, "datatype"),
    ),
    (
        "feature tensor BOOL datatype",
        per_feature(petal_width={"datatype": "BOOL"}),
        ("inputs", 3, "datatype"),
    ),
    (
        "feature tensor unknown datatype",
        per_feature(petal_width={"datatype": "FP128"}),
        ("inputs", 3, "datatype"),
    ),
    (
        "feature tensor BYTES with huge shape",
        per_feature(petal_width={"datatype": "BYTES", "shape": [10**13]}),
        ("inputs", 3, "shape"),
    ),
    (
        "feature tensor INT8 with fractions",
        per_feature(petal_width={"datatype": "INT8"}),
        ("inputs", 3, "data"),
    ),
    (
        "feature tensor NaN",
        per_feature(petal_width={"data": [float("nan")]}),
        ("inputs", 3, "data", 0),
    ),
    (
        "feature tensor string value",
        per_feature(petal_width={"data": ["0.2"]}),
        ("inputs", 3, "data", 0),
    ),
    (
        "feature tensor out of bounds",
        per_feature(petal_width={"data": [99.0]}),
        ("inputs", 3, "data", 0),
    ),
]
