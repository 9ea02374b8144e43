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
    AfterValidator,
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
class Table:
    """A batch as named columns, for models that take string features: float64
    arrays for numbers, object arrays of str for strings, one value per row."""

    columns: dict[str, np.ndarray]
    rows: int

    def __len__(self) -> int:
        return self.rows


Batch = np.ndarray | Table
MAX_STRING_CHARS = 256


def _category_check(name: str, allowed: frozenset[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            shown = value if len(value) <= 64 else value[:64] + "..."
            raise ValueError(f"'{shown}' is not a category of '{name}' seen in training")
        return value

    return check


@dataclass(frozen=True, slots=True)
class InputSchema:
    """What one model version accepts, compiled from its manifest."""

    features: tuple[str, ...]
    low: np.ndarray  # allowed bounds after the margin, one per feature (NaN for strings)
    high: np.ndarray
    classes: tuple[int | str, ...]
    max_batch: int
    v1_adapter: TypeAdapter[Any]
    row_adapter: TypeAdapter[Any]
    row_values: Callable[[Any], Any]
    task: str = "classification"
    # Per feature: None for a number, else the training categories and whether a
    # category outside them is accepted.
    categories: tuple[tuple[str, ...] | None, ...] = ()
    accept_unknown: tuple[bool, ...] = ()

    @property
    def int_classes(self) -> bool:
        return all(isinstance(c, int) for c in self.classes)

    @property
    def tabular(self) -> bool:
        """Batches are ``Table``s (some feature is a string), else float64 matrices."""
        return any(c is not None for c in self.categories)

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def output_name(self) -> str:
        return OUTPUT_PREDICTION if self.regression else OUTPUT_LABEL

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, *, bounds_margin: float, max_batch: int
    ) -> InputSchema:
        names: list[str] = []
        lows: list[float] = []
        highs: list[float] = []
        categories: list[tuple[str, ...] | None] = []
        accept: list[bool] = []
        fields: dict[str, Any] = {}
        for spec in manifest.input.features:
            names.append(spec.name)
            if spec.type == "string":
                assert spec.categories is not None
                lows.append(math.nan)
                highs.append(math.nan)
                categories.append(tuple(spec.categories))
                accept.append(spec.unknown == "accept")
                text = Annotated[str, Field(strict=True, max_length=MAX_STRING_CHARS)]
                fields[spec.name] = (
                    text
                    if spec.unknown == "accept"
                    else Annotated[
                        text, AfterValidator(_category_check(spec.name, frozenset(spec.categories)))
                    ]
                )
                continue
            assert spec.min is not None and spec.max is not None
            span = spec.max - spec.min
            margin = bounds_margin * (span if span > 0 else max(abs(spec.max), 1.0))
            low = spec.min - margin
            if spec.min >= 0:
                low = max(low, 0.0)  # never negative in training: stays non-negative
            lo, hi = round(low, 6), round(spec.max + margin, 6)  # 2.5, not 2.4999999999999996
            lows.append(lo)
            highs.append(hi)
            categories.append(None)
            accept.append(False)
            fields[spec.name] = Annotated[
                float, Field(ge=lo, le=hi, strict=True, allow_inf_nan=False)
            ]
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
            task=manifest.task,
            categories=tuple(categories),
            accept_unknown=tuple(accept),
        )

    # -- v1 and the seed alias ------------------------------------------------------------

    def _rows(self, rows: list[Any]) -> Batch:
        if not self.tabular:
            X = np.array(list(map(self.row_values, rows)), dtype=np.float64)
            return X.reshape(len(rows), len(self.features))
        return self.table([[row[name] for row in rows] for name in self.features], len(rows))

    def table(self, columns: Sequence[Sequence[Any]], rows: int) -> Table:
        """A Table from per-feature value lists (already validated)."""
        return Table(
            {
                name: np.array(values, dtype=np.float64 if kinds is None else object)
                for name, kinds, values in zip(self.features, self.categories, columns, strict=True)
            },
            rows,
        )

    def parse_v1(self, body: bytes) -> tuple[Batch, bool]:
        payload = _validate(self.v1_adapter, body)
        instances = payload.get("instances")
        if instances is None:
            raise invalid(("instances",), "Field required", "missing")
        probabilities = bool(payload.get("probabilities", False))
        if probabilities and self.regression:
            raise invalid(("probabilities",), "a regression model has no probabilities")
        return self._rows(instances), probabilities

    def parse_row(self, body: bytes) -> Batch:
        return self._rows([_validate(self.row_adapter, body)])

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
        described: list[dict[str, Any]] = []
        for name, lo, hi, cats, accept in zip(
            self.features, self.low, self.high, self.categories, self.accept_unknown, strict=True
        ):
            if cats is None:
                described.append(
                    {"name": name, "type": "float", "min": float(lo), "max": float(hi)}
                )
            else:
                described.append(
                    {
                        "name": name,
                        "type": "string",
                        "categories": list(cats),
                        "unknown_categories": "accepted" if accept else "refused",
                    }
                )
        return described


# --- Open Inference Protocol v2 ------------------------------------------------------------

_UNION_TAGS = frozenset({"flat", "nested", "flat_str", "nested_str"})
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
TensorString = Annotated[str, Field(strict=True, max_length=MAX_STRING_CHARS)]


def _data_shape(value: Any) -> str:
    """The union member by the first value: numbers or strings, flat or nested."""
    if not isinstance(value, list) or not value:
        return "flat"
    first = value[0]
    if isinstance(first, list):
        return "nested_str" if first and isinstance(first[0], str) else "nested"
    return "flat_str" if isinstance(first, str) else "flat"


TensorData = Annotated[
    Annotated[list[FiniteNumber], Tag("flat")]
    | Annotated[list[list[FiniteNumber]], Tag("nested")]
    | Annotated[list[TensorString], Tag("flat_str")]
    | Annotated[list[list[TensorString]], Tag("nested_str")],
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
OUTPUT_PREDICTION = "prediction"  # a regressor's output
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


def _holds_strings(tensor: RequestInput) -> bool:
    first: Any = tensor.data[0] if tensor.data else None
    if isinstance(first, list):
        first = first[0] if first else None
    return isinstance(first, str)


def _check_tensor(tensor: RequestInput, index: int, string: bool = False) -> None:
    """Datatype and value count against ``shape``, from the request's own numbers:
    nothing sized by the client's shape is allocated before this holds. A string
    feature takes BYTES tensors of strings, a number any numeric datatype."""
    if string:
        if tensor.datatype != "BYTES":
            raise invalid(
                ("inputs", index, "datatype"),
                f"input '{tensor.name}' is a string feature: datatype must be BYTES",
            )
    elif tensor.datatype not in NUMERIC_DATATYPES:
        raise invalid(("inputs", index, "datatype"), f"datatype {tensor.datatype} is not numeric")
    count, expected = _value_count(tensor, index), math.prod(tensor.shape)
    if count != expected:
        raise invalid(
            ("inputs", index, "data"),
            f"data holds {count} values; shape {tensor.shape} needs {expected}",
        )
    if count and _holds_strings(tensor) != string:
        raise invalid(
            ("inputs", index, "data", 0),
            "data must be strings" if string else "data must be numbers",
        )


def _tensor_values(tensor: RequestInput, index: int) -> np.ndarray:
    """The values of a numeric tensor that passed ``_check_tensor``, as one flat float64 array."""
    values = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    if NUMERIC_DATATYPES[tensor.datatype] and not np.array_equal(values, np.floor(values)):
        raise invalid(("inputs", index, "data"), f"datatype {tensor.datatype} needs whole numbers")
    return values


def _string_values(tensor: RequestInput) -> list[str]:
    data: list[Any] = tensor.data
    if data and isinstance(data[0], list):
        return [value for row in data for value in row]
    return data


def inputs_to_matrix(request: InferenceRequest, schema: InputSchema) -> Batch:
    """The batch of a v2 request: either one tensor ``input`` of shape [rows,
    features] (numeric features only), or one tensor per feature, named after it,
    of shape [rows] or [rows, 1] (BYTES for string features)."""
    n_features = len(schema.features)
    inputs = request.inputs
    if len(inputs) == 1 and inputs[0].name == INPUT_TENSOR:
        tensor = inputs[0]
        if schema.tabular:
            raise invalid(
                ("inputs", 0, "name"),
                "this model has string features: send one tensor per feature",
            )
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
    # Every shape, datatype and value count is checked before any array exists: its
    # size comes from the client's shape.
    rows = inputs[0].shape[0]
    _check_rows(rows, schema, ("inputs", 0, "shape"))
    for i, tensor in enumerate(inputs):
        if tensor.shape[0] != rows or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise invalid(("inputs", i, "shape"), f"shape must be [{rows}] or [{rows}, 1]")
        string = schema.categories[position[tensor.name]] is not None if schema.tabular else False
        _check_tensor(tensor, i, string)
    if schema.tabular:
        return _table(inputs, schema, seen, rows)
    X = np.empty((rows, n_features), dtype=np.float64)
    for i, tensor in enumerate(inputs):
        X[:, position[tensor.name]] = _tensor_values(tensor, i)
    schema.check_bounds(X, lambda r, c: ("inputs", seen[schema.features[c]], "data", r))
    return X


def _table(
    inputs: list[RequestInput], schema: InputSchema, seen: dict[str, int], rows: int
) -> Table:
    columns: list[Any] = []
    for col, (name, cats) in enumerate(zip(schema.features, schema.categories, strict=True)):
        i = seen[name]
        tensor = inputs[i]
        if cats is None:
            values = _tensor_values(tensor, i)
            bad = (values < schema.low[col]) | (values > schema.high[col])
            if bad.any():
                row = int(np.argmax(bad))
                raise invalid(
                    ("inputs", i, "data", row),
                    f"feature '{name}' (row {row}) must be between "
                    f"{schema.low[col]:g} and {schema.high[col]:g}",
                    "out_of_bounds",
                )
            columns.append(values)
            continue
        strings = _string_values(tensor)
        if not schema.accept_unknown[col]:
            allowed = frozenset(cats)
            for row, value in enumerate(strings):
                if value not in allowed:
                    shown = value if len(value) <= 64 else value[:64] + "..."
                    raise invalid(
                        ("inputs", i, "data", row),
                        f"feature '{name}' (row {row}): '{shown}' is not a category seen "
                        "in training",
                        "unknown_category",
                    )
        columns.append(strings)
    return schema.table(columns, rows)


def _check_rows(rows: int, schema: InputSchema, loc: tuple[str | int, ...]) -> None:
    if not 1 <= rows <= schema.max_batch:
        raise invalid(loc, f"rows must be between 1 and {schema.max_batch}, got {_shown(rows)}")


def _shown(n: int) -> str:
    """A dimension for an error message: one of thousands of digits stays short."""
    return str(n) if n < 10**15 else f"a number of {len(str(n))} digits"


def _shown_shape(shape: list[int]) -> str:
    return "[" + ", ".join(map(_shown, shape)) + "]"


def requested_outputs(request: InferenceRequest, schema: InputSchema) -> tuple[bool, bool]:
    """(prediction, probabilities) asked for; no ``outputs`` means the prediction only
    (``label`` of a classifier, ``prediction`` of a regressor, which has no probabilities)."""
    if not request.outputs:
        return True, False
    known = (OUTPUT_PREDICTION,) if schema.regression else OUTPUT_NAMES
    names = [o.name for o in request.outputs]
    for i, name in enumerate(names):
        if name not in known:
            why = " (a regression model has no probabilities)" if schema.regression else ""
            raise invalid(("outputs", i, "name"), f"unknown output '{name}'{why}")
        if names.index(name) != i:
            raise invalid(("outputs", i, "name"), f"output '{name}' asked twice")
    return schema.output_name in names, OUTPUT_PROBABILITIES in names
