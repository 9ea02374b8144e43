"""The runtime: ONNX answers exactly what scikit-learn answers, a model serves only
after its reference set matched, and an inexact graph falls back to scikit-learn."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from modelgate_inference.builder import TrainingData, convert_exact, probe_rows
from modelgate_inference.runtime import OnnxRuntime, load_model
from modelgate_inference.store import ModelRefused, load_private_key, load_public_key, sign_bytes
from sklearn.datasets import load_iris


def load(folder: Path, public: Path):  # type: ignore[no-untyped-def]
    return load_model(folder, load_public_key(public), bounds_margin=0.5, max_batch=100)


def resign(folder: Path, private: Path, manifest: dict[str, object]) -> None:
    raw = json.dumps(manifest, indent=2).encode()
    (folder / "manifest.json").write_bytes(raw)
    (folder / "manifest.sig").write_bytes(sign_bytes(raw, load_private_key(private)))


def test_onnx_equals_sklearn_on_probes(store: Path, signing_keys: tuple[Path, Path]) -> None:
    """Training rows, random rows and rows on every split threshold: same labels,
    probabilities within float32 rounding."""
    estimator = joblib.load(store / "iris" / "1" / "model.joblib")
    model = load(store / "iris" / "1", signing_keys[1])
    X = probe_rows(estimator, load_iris().data, seed=7)
    labels, proba = model.runtime.predict(X, True)
    assert np.array_equal(labels, estimator.predict(X))
    assert np.allclose(proba, estimator.predict_proba(X), atol=1e-5)
    # one row at a time gives the same as the batch
    for row in X[:50]:
        assert (
            model.runtime.predict(row[None, :], False)[0][0] == estimator.predict(row[None, :])[0]
        )


def test_inexact_onnx_graph_falls_back_to_sklearn(
    store: Path, signing_keys: tuple[Path, Path]
) -> None:
    """A validly signed version whose ONNX graph answers differently from the
    reference set: served, but by scikit-learn."""
    from sklearn.tree import DecisionTreeClassifier

    iris = load_iris()
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(iris.data, iris.target)
    features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    converted = convert_exact(stump, TrainingData.from_matrix(features, iris.data, None, "iris"))
    assert converted.graph is not None
    graph = converted.graph
    folder = store / "iris" / "1"
    (folder / "model.onnx").write_bytes(graph)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["artifacts"]["onnx"]["sha256"] = hashlib.sha256(graph).hexdigest()
    manifest["artifacts"]["onnx"]["bytes"] = len(graph)
    resign(folder, signing_keys[0], manifest)
    model = load(folder, signing_keys[1])
    assert model.runtime.kind == "sklearn"
    X = np.asarray(manifest["reference"]["inputs"])
    assert model.runtime.predict(X, False)[0].tolist() == manifest["reference"]["predictions"]


def test_reference_mismatch_refuses(store: Path, signing_keys: tuple[Path, Path]) -> None:
    folder = store / "iris" / "1"
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["reference"]["predictions"] = [
        (p + 1) % 3 for p in manifest["reference"]["predictions"]
    ]
    resign(folder, signing_keys[0], manifest)
    with pytest.raises(ModelRefused, match="reference predictions differ"):
        load(folder, signing_keys[1])


def test_manifest_for_other_features_refuses(store: Path, signing_keys: tuple[Path, Path]) -> None:
    folder = store / "iris" / "1"
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["input"]["features"] = manifest["input"]["features"][:3]
    resign(folder, signing_keys[0], manifest)
    with pytest.raises(ModelRefused, match="do not match the input schema"):
        load(folder, signing_keys[1])


def test_onnx_runtime_uses_one_thread(store: Path) -> None:
    runtime = OnnxRuntime((store / "iris" / "1" / "model.onnx").read_bytes(), "float32")
    options = runtime._session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
