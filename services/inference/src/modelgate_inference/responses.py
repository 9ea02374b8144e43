"""The shapes of the inference service's answers, for the OpenAPI document only.

Routes build their bodies as plain dicts (numpy arrays written by orjson, no
per-item Python objects), so these models never validate a response at run time;
``responses={200: {"model": ...}}`` publishes them, and the security suite's
fuzzer (tests/security/test_fuzz.py) checks every answer against them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Label = int | str


class _Doc(BaseModel):
    model_config = ConfigDict(protected_namespaces=())  # model_name, model_version


class Feature(_Doc):
    name: str
    type: str = Field(description="float or string")
    min: float | None = Field(None, description="float features: the lowest value accepted")
    max: float | None = Field(None, description="float features: the highest value accepted")
    categories: list[str] | None = Field(None, description="string features: seen in training")
    unknown_categories: str | None = Field(
        None, description="string features: accepted or refused (422) outside the categories"
    )


class InputSchemaOut(_Doc):
    features: list[Feature]


class ModelVersionOut(_Doc):
    version: str
    default: bool
    created: str
    description: str
    task: str = Field(description="classification or regression")
    estimator: str
    runtime: str
    runtime_reason: str = Field(description="why registration chose this runtime")
    prediction_dtype: str = Field(description="INT64 or BYTES labels, FP32 or FP64 numbers")
    input_schema: InputSchemaOut
    classes: list[Label] = Field(description="empty for a regressor")
    class_names: list[str] | None
    metrics: dict[str, float]


class ModelOut(_Doc):
    name: str
    default_version: str
    versions: list[ModelVersionOut]


class ModelList(_Doc):
    models: list[ModelOut]


class PredictionsOut(_Doc):
    model: str
    version: str
    predictions: list[Label | float] = Field(description="labels, or numbers of a regressor")
    classes: list[Label] | None = Field(None, description="with probabilities only")
    probabilities: list[list[float]] | None = Field(
        None, description="one row per instance, one column per class"
    )


class SeedPredictionOut(_Doc):
    prediction: Label
    model: str
    version: str


class LoadOut(_Doc):
    model: str
    version: str
    workers: int
    switched: int
    failed: list[str]


class ServerMetadataOut(_Doc):
    name: str
    version: str
    extensions: list[str]


class LiveOut(_Doc):
    live: bool


class ReadyOut(_Doc):
    ready: bool


class TensorMetadata(_Doc):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, str | float] | None = Field(
        None,
        description="per-feature inputs: type, min and max (numbers) or categories "
        "(comma-separated) and unknown_categories (strings)",
    )


class ModelMetadataOut(_Doc):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, str]


class ModelReadyOut(_Doc):
    name: str
    version: str | None = Field(None, description="the version that serves, when ready")
    ready: bool


class OutputTensor(_Doc):
    name: str
    datatype: str
    shape: list[int]
    data: list[float | int | str | bool]


class InferenceResponseOut(_Doc):
    model_name: str
    model_version: str
    id: str | None = Field(None, description="the request's id, when it had one")
    outputs: list[OutputTensor]
