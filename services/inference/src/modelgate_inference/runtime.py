"""Model runtimes and the verified load.

A runtime has ``predict`` (labels, and probabilities on request). ONNX Runtime
is the fast path (one intra-op thread: the workers are the parallelism);
scikit-learn is the fallback when the manifest has no exact ONNX graph. A
model serves only after its manifest's reference inputs predicted exactly the
manifest's outputs on the runtime chosen.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .schemas import InputSchema
from .store import Manifest, ModelRefused, read_verified_manifest

log = logging.getLogger("modelgate.inference.runtime")

# Probabilities from ONNX Runtime are float32 sums; scikit-learn's are float64.
PROBABILITY_TOLERANCE = 1e-5


class Runtime(Protocol):
    kind: str
    probability_dtype: str  # Open Inference Protocol datatype of the probabilities

    def predict(self, X: np.ndarray, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (n,) and, when asked, probabilities (n, classes) for float64 rows X."""
        ...


class OnnxRuntime:
    kind = "onnxruntime"
    probability_dtype = "FP32"

    def __init__(self, model_bytes: bytes, input_dtype: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError("onnx graph must take exactly one input tensor")
        self._input = inputs[0].name
        outputs = [o.name for o in self._session.get_outputs()]
        if len(outputs) < 2:
            raise ValueError("onnx graph must produce a label and probabilities")
        self._label, self._proba = outputs[0], outputs[1]
        self._dtype = np.dtype(np.float32 if input_dtype == "float32" else np.float64)
        self._run = self._session.run

    def predict(self, X: np.ndarray, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
        feed = {self._input: X.astype(self._dtype, copy=False)}
        if probabilities:
            labels, proba = self._run([self._label, self._proba], feed)
            return labels, proba
        return self._run([self._label], feed)[0], None


class SklearnRuntime:
    kind = "sklearn"
    probability_dtype = "FP64"

    def __init__(self, estimator: Any) -> None:
        self._estimator = estimator

    def predict(self, X: np.ndarray, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
        labels = self._estimator.predict(X)
        return labels, (self._estimator.predict_proba(X) if probabilities else None)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    version: str
    manifest: Manifest
    runtime: Runtime
    schema: InputSchema

    @property
    def label_dtype(self) -> str:
        return "INT64" if self.schema.int_classes else "BYTES"


def reference_mismatch(runtime: Runtime, manifest: Manifest) -> str | None:
    """None when the runtime reproduces the manifest's reference outputs, else why not."""
    ref = manifest.reference
    X = np.asarray(ref.inputs, dtype=np.float64)
    want_proba = ref.probabilities is not None
    try:
        labels, proba = runtime.predict(X, want_proba)
    except Exception as exc:  # a runtime that cannot even run the reference set
        return f"reference set could not be predicted ({type(exc).__name__})"
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
    if len(manifest.reference.inputs[0]) != len(manifest.input.features):
        raise ModelRefused("reference inputs do not match the input schema")
    schema = InputSchema.from_manifest(manifest, bounds_margin=bounds_margin, max_batch=max_batch)
    # Every artifact the manifest names must match, used or not: a tampered file
    # anywhere in the folder refuses the whole version.
    sklearn_bytes = verified.artifact("sklearn")
    onnx_spec = manifest.artifacts.onnx
    graph = verified.artifact("onnx") if onnx_spec is not None else None
    runtime: Runtime | None = None
    if prefer_onnx and onnx_spec is not None and graph is not None:
        try:
            candidate = OnnxRuntime(graph, onnx_spec.input_dtype or "float64")
        except Exception as exc:
            log.warning(
                "onnx graph does not load; using scikit-learn",
                extra={
                    "model": manifest.name,
                    "version": manifest.version,
                    "reason": type(exc).__name__,
                },
            )
        else:
            why = reference_mismatch(candidate, manifest)
            if why is None:
                runtime = candidate
            else:
                log.warning(
                    "onnx graph is not exact; using scikit-learn",
                    extra={"model": manifest.name, "version": manifest.version, "reason": why},
                )
    if runtime is None:
        estimator = _unpickle(sklearn_bytes)
        if not (hasattr(estimator, "predict") and hasattr(estimator, "predict_proba")):
            raise ModelRefused("artifact is not a classifier")
        runtime = SklearnRuntime(estimator)
        why = reference_mismatch(runtime, manifest)
        if why is not None:
            raise ModelRefused(why)
    return LoadedModel(manifest.name, manifest.version, manifest, runtime, schema)
