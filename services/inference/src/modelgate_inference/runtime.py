"""Model runtimes and the verified load.

A runtime has ``predict`` (labels or numbers, and probabilities on request).
ONNX Runtime is the fast path (one intra-op thread: the workers are the
parallelism); the model's own library (scikit-learn, XGBoost, LightGBM,
predicting from the joblib artifact) serves when the manifest has no exact
ONNX graph. A model serves only after its manifest's reference inputs
predicted exactly the manifest's outputs on the runtime chosen (within
``REGRESSION_TOLERANCE`` for a regressor's ONNX graph).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .schemas import Batch, InputSchema, Table
from .store import Manifest, ModelRefused, read_verified_manifest

log = logging.getLogger("modelgate.inference.runtime")

# Probabilities from ONNX Runtime are float32 sums; scikit-learn's are float64.
PROBABILITY_TOLERANCE = 1e-5
# A regressor's ONNX graph computes in float32 where its library may use float64:
# |onnx - library| <= REGRESSION_TOLERANCE * max(1, |library|) on every checked row.
REGRESSION_TOLERANCE = 1e-5


def regression_close(got: np.ndarray, expected: np.ndarray) -> bool:
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    expected = np.asarray(expected, dtype=np.float64).reshape(-1)
    if got.shape != expected.shape:
        return False
    bound = REGRESSION_TOLERANCE * np.maximum(1.0, np.abs(expected))
    return bool(np.all(np.abs(got - expected) <= bound))


class Runtime(Protocol):
    kind: str
    probability_dtype: str  # Open Inference Protocol datatype of the probabilities

    def predict(self, X: Batch, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels or numbers (n,) and, when asked, probabilities (n, classes) for a
        batch: a float64 matrix, or a Table for models with string features."""
        ...


class OnnxRuntime:
    """An ONNX graph taking one float matrix ``input``, or (``columns``) one
    [rows, 1] tensor per feature, strings for string features."""

    kind = "onnxruntime"
    probability_dtype = "FP32"

    def __init__(
        self,
        model_bytes: bytes,
        input_dtype: str,
        *,
        regression: bool = False,
        columns: list[tuple[str, bool]] | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        inputs = [i.name for i in self._session.get_inputs()]
        self._columns = columns
        if columns is None:
            if len(inputs) != 1:
                raise ValueError("onnx graph must take exactly one input tensor")
            self._input = inputs[0]
        elif sorted(inputs) != sorted(name for name, _ in columns):
            raise ValueError("onnx graph must take one input tensor per feature")
        outputs = [o.name for o in self._session.get_outputs()]
        if len(outputs) < (1 if regression else 2):
            raise ValueError("onnx graph must produce a label and probabilities")
        self._regression = regression
        self._label = outputs[0]
        self._proba = None if regression else outputs[1]
        self._dtype = np.dtype(np.float32 if input_dtype == "float32" else np.float64)
        self._run = self._session.run

    def _feed(self, X: Batch) -> dict[str, np.ndarray]:
        if self._columns is None:
            assert isinstance(X, np.ndarray)
            return {self._input: X.astype(self._dtype, copy=False)}
        assert isinstance(X, Table)
        return {
            name: (X.columns[name] if string else X.columns[name].astype(self._dtype)).reshape(
                -1, 1
            )
            for name, string in self._columns
        }

    def predict(self, X: Batch, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
        feed = self._feed(X)
        if self._regression:
            return self._run([self._label], feed)[0].reshape(-1), None
        if probabilities:
            labels, proba = self._run([self._label, self._proba], feed)
            return labels, proba
        return self._run([self._label], feed)[0], None


NATIVE_RUNTIMES = ("sklearn", "xgboost", "lightgbm")


class NativeRuntime:
    """The estimator's own ``predict``: scikit-learn, or XGBoost / LightGBM through
    their scikit-learn API. Estimators fitted on a DataFrame get one, with the
    feature names they were fitted with."""

    probability_dtype = "FP64"

    def __init__(self, estimator: Any, kind: str, features: list[str]) -> None:
        self.kind = kind
        self._estimator = estimator
        self._features = features
        names = getattr(estimator, "feature_names_in_", None)
        self._frame = names is not None and all(isinstance(n, str) for n in names)

    def _input(self, X: Batch) -> Any:
        if isinstance(X, Table):
            import pandas as pd

            return pd.DataFrame({name: X.columns[name] for name in self._features})
        if self._frame:
            import pandas as pd

            return pd.DataFrame(X, columns=self._features)
        return X

    def predict(self, X: Batch, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
        data = self._input(X)
        labels = np.asarray(self._estimator.predict(data))
        return labels, (np.asarray(self._estimator.predict_proba(data)) if probabilities else None)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    version: str
    manifest: Manifest
    runtime: Runtime
    schema: InputSchema
    prediction_dtype: str = "INT64"  # Open Inference Protocol datatype of the predictions

    @property
    def label_dtype(self) -> str:
        return self.prediction_dtype


def reference_batch(manifest: Manifest, schema: InputSchema) -> Batch:
    rows = manifest.reference.inputs
    if schema.tabular:
        return schema.table(
            [[row[i] for row in rows] for i in range(len(schema.features))], len(rows)
        )
    return np.asarray(rows, dtype=np.float64)


def reference_mismatch(runtime: Runtime, manifest: Manifest, schema: InputSchema) -> str | None:
    """None when the runtime reproduces the manifest's reference outputs, else why not."""
    ref = manifest.reference
    want_proba = ref.probabilities is not None
    try:
        labels, proba = runtime.predict(reference_batch(manifest, schema), want_proba)
    except Exception as exc:  # a runtime that cannot even run the reference set
        return f"reference set could not be predicted ({type(exc).__name__})"
    if manifest.task == "regression":
        expected = np.asarray(ref.predictions, dtype=np.float64)
        got = np.asarray(labels, dtype=np.float64).reshape(-1)
        exact = got.shape == expected.shape and bool(np.array_equal(got, expected))
        # The library's own runtime must give the very numbers; an ONNX graph may
        # differ within the stated tolerance (float32 arithmetic).
        if not (exact or (runtime.kind == "onnxruntime" and regression_close(got, expected))):
            return "reference predictions differ from the manifest"
        return None
    if labels.tolist() != list(ref.predictions):
        return "reference predictions differ from the manifest"
    if want_proba and proba is not None:
        expected = np.asarray(ref.probabilities, dtype=np.float64)
        if proba.shape != expected.shape or not np.allclose(
            proba, expected, rtol=0.0, atol=PROBABILITY_TOLERANCE
        ):
            return "reference probabilities differ from the manifest"
    return None


def _unpickle(verified_bytes: bytes) -> Any:
    # Only ever called with bytes whose digest the signed manifest vouches for.
    import joblib

    return joblib.load(io.BytesIO(verified_bytes))


def final_estimator(estimator: Any) -> Any:
    """The last step of a Pipeline, else the estimator itself."""
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if isinstance(steps, list) and steps else estimator


def library_of(estimator: Any) -> str:
    """The library whose runtime predicts for the estimator: its final step's package."""
    package = type(final_estimator(estimator)).__module__.split(".", 1)[0]
    return package if package in ("xgboost", "lightgbm") else "sklearn"


def _prediction_dtype(runtime: Runtime, manifest: Manifest, schema: InputSchema) -> str:
    if manifest.task == "classification":
        return "INT64" if schema.int_classes else "BYTES"
    labels, _ = runtime.predict(reference_batch(manifest, schema), False)
    return "FP32" if np.asarray(labels).dtype == np.float32 else "FP64"


def onnx_columns(manifest: Manifest) -> list[tuple[str, bool]] | None:
    """The per-feature inputs of a tabular model's graph: (name, is a string)."""
    if not manifest.tabular:
        return None
    return [(f.name, f.type == "string") for f in manifest.input.features]


def load_model(
    folder: Path,
    public_key: Ed25519PublicKey,
    *,
    bounds_margin: float,
    max_batch: int,
    prefer_onnx: bool = True,
) -> LoadedModel:
    """Verify a version folder and bring up its runtime; ModelRefused says why not."""
    verified = read_verified_manifest(folder, public_key)
    manifest = verified.manifest
    if any(len(row) != len(manifest.input.features) for row in manifest.reference.inputs):
        raise ModelRefused("reference inputs do not match the input schema")
    schema = InputSchema.from_manifest(manifest, bounds_margin=bounds_margin, max_batch=max_batch)
    regression = manifest.task == "regression"
    # Every artifact the manifest names must match, used or not: a tampered file
    # anywhere in the folder refuses the whole version.
    sklearn_bytes = verified.artifact("sklearn")
    onnx_spec = manifest.artifacts.onnx
    graph = verified.artifact("onnx") if onnx_spec is not None else None
    runtime: Runtime | None = None
    fallback = manifest.library
    if prefer_onnx and onnx_spec is not None and graph is not None:
        try:
            candidate = OnnxRuntime(
                graph,
                onnx_spec.input_dtype or "float64",
                regression=regression,
                columns=onnx_columns(manifest),
            )
        except Exception as exc:
            log.warning(
                f"onnx graph does not load; using {fallback}",
                extra={
                    "model": manifest.name,
                    "version": manifest.version,
                    "reason": type(exc).__name__,
                },
            )
        else:
            why = reference_mismatch(candidate, manifest, schema)
            if why is None:
                runtime = candidate
            else:
                log.warning(
                    f"onnx graph is not exact; using {fallback}",
                    extra={"model": manifest.name, "version": manifest.version, "reason": why},
                )
    if runtime is None:
        estimator = _unpickle(sklearn_bytes)
        if not hasattr(estimator, "predict") or (
            not regression and not hasattr(estimator, "predict_proba")
        ):
            raise ModelRefused(
                "artifact is not a regressor" if regression else "artifact is not a classifier"
            )
        if library_of(estimator) != manifest.library:
            raise ModelRefused(f"artifact is not a {manifest.library} model")
        runtime = NativeRuntime(estimator, manifest.library, manifest.feature_names)
        why = reference_mismatch(runtime, manifest, schema)
        if why is not None:
            raise ModelRefused(why)
    return LoadedModel(
        manifest.name,
        manifest.version,
        manifest,
        runtime,
        schema,
        _prediction_dtype(runtime, manifest, schema),
    )
