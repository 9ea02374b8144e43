"""Request schemas: generated per model from its manifest, and the static
Open Inference Protocol v2 shapes.

Validation runs in pydantic-core straight from the request bytes (JSON
parsing, strict numbers, bounds), so a batch of a thousand rows costs well
under a millisecond. Every failure is a ``RequestValidationError`` whose
``loc`` names the field: the shared handler renders it as 422.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
)
from typing_extensions import TypedDict

if TYPE_CHECKING:
    from .store import Manifest

_FORBID = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def validation_error(
    errors: Sequence[Any], prefix: tuple[str | int, ...] = ("body",)
) -> RequestValidationError:
    cleaned = []
    for err in errors:
        # Field names in ``loc`` may be the client's own unknown keys: keep them short.
        loc = tuple(
            p if not isinstance(p, str) or len(p) <= 64 else p[:64] + "..."
            for p in err.get("loc", ())
            if p not in _UNION_TAGS
        )
        cleaned.append({"loc": (*prefix, *loc), "msg": err.get("msg", ""), "type": err.get("type")})
    return RequestValidationError(cleaned)


def invalid(
    loc: tuple[str | int, ...], msg: str, kind: str = "value_error"
) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", *loc), "msg": msg, "type": kind}])


def _validate(adapter: TypeAdapter[Any], body: bytes) -> Any:
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False, include_input=False)) from None


@dataclass(frozen=True, slots=True)
class InputSchema:
    """What one model version accepts, compiled from its manifest."""

    features: tuple[str, ...]
    low: np.ndarray  # allowed bounds after the margin, one per feature
    high: np.ndarray
    classes: tuple[int | str, ...]
    max_batch: int
    v1_adapter: TypeAdapter[Any]
    row_adapter: TypeAdapter[Any]
    row_values: Callable[[Any], Any]

    @property
    def int_classes(self) -> bool:
        return all(isinstance(c, int) for c in self.classes)

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, *, bounds_margin: float, max_batch: int
    ) -> InputSchema:
        names, lows, highs = [], [], []
        for spec in manifest.input.features:
            span = spec.max - spec.min
            margin = bounds_margin * (span if span > 0 else max(abs(spec.max), 1.0))
            low = spec.min - margin
            if spec.min >= 0:
                low = max(low, 0.0)  # never negative in training: stays non-negative
            names.append(spec.name)
            lows.append(round(low, 6))  # 2.5, not 2.4999999999999996, in messages
            highs.append(round(spec.max + margin, 6))
        fields = {
            name: Annotated[float, Field(ge=lo, le=hi, strict=True, allow_inf_nan=False)]
            for name, lo, hi in zip(names, lows, highs, strict=True)
        }
        row = TypedDict(f"{manifest.name}_v{manifest.version}_row", fields)  # type: ignore[misc]
        row.__pydantic_config__ = _FORBID  # type: ignore[attr-defined]
        body = TypedDict(  # type: ignore[misc]  # noqa: UP013 - built at run time
            f"{manifest.name}_v{manifest.version}_predict",
            {
                "instances": Annotated[list[row], Field(min_length=1, max_length=max_batch)],
                "probabilities": StrictBool,
            },
            total=False,
        )
        body.__pydantic_config__ = _FORBID  # type: ignore[attr-defined]
        return cls(
            features=tuple(names),
            low=np.asarray(lows, dtype=np.float64),
            high=np.asarray(highs, dtype=np.float64),
            classes=tuple(manifest.classes),
            max_batch=max_batch,
            v1_adapter=TypeAdapter(body),
            row_adapter=TypeAdapter(row),
            row_values=operator.itemgetter(*names)
            if len(names) > 1
            else (lambda r: (r[names[0]],)),
        )

    # -- v1 and the seed alias ------------------------------------------------------------

    def parse_v1(self, body: bytes) -> tuple[np.ndarray, bool]:
        payload = _validate(self.v1_adapter, body)
        instances = payload.get("instances")
        if instances is None:
            raise invalid(("instances",), "Field required", "missing")
        X = np.array(list(map(self.row_values, instances)), dtype=np.float64)
        return X.reshape(len(instances), len(self.features)), bool(
            payload.get("probabilities", False)
        )

    def parse_row(self, body: bytes) -> np.ndarray:
        row = _validate(self.row_adapter, body)
        return np.array([self.row_values(row)], dtype=np.float64)

    # -- v2 tensors -------------------------------------------------------------------------

    def check_bounds(
        self, X: np.ndarray, locate: Callable[[int, int], tuple[str | int, ...]]
    ) -> None:
        """Vectorised bounds check of a (rows, features) matrix."""
        bad = (X < self.low) | (X > self.high)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise invalid(
                locate(row, col),
                f"feature '{self.features[col]}' (row {row}) must be between "
                f"{self.low[col]:g} and {self.high[col]:g}",
                "out_of_bounds",
            )

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "type": "float", "min": float(lo), "max": float(hi)}
            for name, lo, hi in zip(self.features, self.low, self.high, strict=True)
        ]


# --- Open Inference Protocol v2 ------------------------------------------------------------

_UNION_TAGS = frozenset({"flat", "nested"})
NUMERIC_DATATYPES = {
    "FP64": False, "FP32": False, "FP16": False,
    "INT64": True, "INT32": True, "INT16": True, "INT8": True,
    "UINT64": True, "UINT32": True, "UINT16": True, "UINT8": True,
}  # fmt: skip
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
ParameterValue = StrictStr | StrictInt | FiniteNumber | StrictBool
Parameters = Annotated[
    dict[Annotated[str, Field(max_length=128)], ParameterValue], Field(max_length=64)
]
TensorName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


def _data_shape(value: Any) -> str:
    return "nested" if isinstance(value, list) and value and isinstance(value[0], list) else "flat"


TensorData = Annotated[
    Annotated[list[FiniteNumber], Tag("flat")] | Annotated[list[list[FiniteNumber]], Tag("nested")],
    Discriminator(_data_shape),
]


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: TensorName
    shape: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1, max_length=2)]
    datatype: Datatype
    parameters: Parameters | None = None
    data: TensorData


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: TensorName
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: Annotated[str, Field(max_length=256)] | None = None
    parameters: Parameters | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1, max_length=4096)]
    outputs: Annotated[list[RequestOutput], Field(max_length=8)] | None = None


inference_request_adapter: TypeAdapter[InferenceRequest] = TypeAdapter(InferenceRequest)

INPUT_TENSOR = "input"
OUTPUT_LABEL = "label"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_NAMES = (OUTPUT_LABEL, OUTPUT_PROBABILITIES)


def parse_inference_request(body: bytes) -> InferenceRequest:
    request: InferenceRequest = _validate(inference_request_adapter, body)
    return request


def _value_count(tensor: RequestInput, index: int) -> int:
    """How many values ``data`` holds, counted on the parsed lists (no array built);
    nested data must be rectangular."""
    data = tensor.data
    if data and isinstance(data[0], list):
        widths = {len(row) if isinstance(row, list) else -1 for row in data}
        if len(widths) != 1 or -1 in widths:
            raise invalid(("inputs", index, "data"), "nested data must be a rectangular array")
        return len(data) * widths.pop()
    return len(data)


def _check_tensor(tensor: RequestInput, index: int) -> None:
    """Datatype and value count against ``shape``, from the request's own numbers:
    nothing sized by the client's shape is allocated before this holds."""
    if tensor.datatype not in NUMERIC_DATATYPES:
        raise invalid(("inputs", index, "datatype"), f"datatype {tensor.datatype} is not numeric")
    count, expected = _value_count(tensor, index), math.prod(tensor.shape)
    if count != expected:
        raise invalid(
            ("inputs", index, "data"),
            f"data holds {count} values; shape {tensor.shape} needs {expected}",
        )


def _tensor_values(tensor: RequestInput, index: int) -> np.ndarray:
    """The values of a tensor that passed ``_check_tensor``, as one flat float64 array."""
    values = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    if NUMERIC_DATATYPES[tensor.datatype] and not np.array_equal(values, np.floor(values)):
        raise invalid(("inputs", index, "data"), f"datatype {tensor.datatype} needs whole numbers")
    return values


def inputs_to_matrix(request: InferenceRequest, schema: InputSchema) -> np.ndarray:
    """The (rows, features) matrix of a v2 request: either one tensor ``input`` of
    shape [rows, features], or one tensor per feature, named after it, of shape
    [rows] or [rows, 1]."""
    n_features = len(schema.features)
    inputs = request.inputs
    if len(inputs) == 1 and inputs[0].name == INPUT_TENSOR:
        tensor = inputs[0]
        if len(tensor.shape) != 2 or tensor.shape[1] != n_features:
            raise invalid(
                ("inputs", 0, "shape"),
                f"shape must be [rows, {n_features}], got {_shown_shape(tensor.shape)}",
            )
        rows = tensor.shape[0]
        _check_rows(rows, schema, ("inputs", 0, "shape"))
        _check_tensor(tensor, 0)
        X = _tensor_values(tensor, 0).reshape(rows, n_features)
        schema.check_bounds(X, lambda r, c: ("inputs", 0, "data", r * n_features + c))
        return X
    position = {name: i for i, name in enumerate(schema.features)}
    seen: dict[str, int] = {}
    for i, tensor in enumerate(inputs):
        if tensor.name not in position:
            raise invalid(
                ("inputs", i, "name"),
                f"unknown input '{tensor.name}': send one tensor '{INPUT_TENSOR}' "
                "or one tensor per feature",
            )
        if tensor.name in seen:
            raise invalid(("inputs", i, "name"), f"input '{tensor.name}' given twice")
        seen[tensor.name] = i
    missing = [name for name in schema.features if name not in seen]
    if missing:
        raise invalid(("inputs",), f"missing input tensors: {', '.join(missing)}", "missing")
    # Every shape, datatype and value count is checked before the matrix exists: its
    # size comes from the client's shape.
    rows = inputs[0].shape[0]
    _check_rows(rows, schema, ("inputs", 0, "shape"))
    for i, tensor in enumerate(inputs):
        if tensor.shape[0] != rows or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise invalid(("inputs", i, "shape"), f"shape must be [{rows}] or [{rows}, 1]")
        _check_tensor(tensor, i)
    X = np.empty((rows, n_features), dtype=np.float64)
    for i, tensor in enumerate(inputs):
        X[:, position[tensor.name]] = _tensor_values(tensor, i)
    schema.check_bounds(X, lambda r, c: ("inputs", seen[schema.features[c]], "data", r))
    return X


def _check_rows(rows: int, schema: InputSchema, loc: tuple[str | int, ...]) -> None:
    if not 1 <= rows <= schema.max_batch:
        raise invalid(loc, f"rows must be between 1 and {schema.max_batch}, got {_shown(rows)}")


def _shown(n: int) -> str:
    """A dimension for an error message: one of thousands of digits stays short."""
    return str(n) if n < 10**15 else f"a number of {len(str(n))} digits"


def _shown_shape(shape: list[int]) -> str:
    return "[" + ", ".join(map(_shown, shape)) + "]"


def requested_outputs(request: InferenceRequest) -> tuple[bool, bool]:
    """(label, probabilities) asked for; no ``outputs`` means the label only."""
    if not request.outputs:
        return True, False
    names = [o.name for o in request.outputs]
    for i, name in enumerate(names):
        if name not in OUTPUT_NAMES:
            raise invalid(("outputs", i, "name"), f"unknown output '{name}'")
        if names.index(name) != i:
            raise invalid(("outputs", i, "name"), f"output '{name}' asked twice")
    return OUTPUT_LABEL in names, OUTPUT_PROBABILITIES in names
