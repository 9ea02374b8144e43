"""Building store entries: train the demo models, register an operator's model,
convert to ONNX with an exactness check, write and sign the manifest.

This module is for the operator's command line; the service never imports it
(it pulls in scikit-learn and skl2onnx, which the serving path does not need).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from modelgate_common import write_public
from pydantic import ValidationError

from .runtime import OnnxRuntime, reference_mismatch
from .store import (
    FEATURE_PATTERN,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MAX_ARTIFACT_BYTES,
    MAX_MANIFEST_BYTES,
    SIGNATURE_FILE,
    Manifest,
    ModelRefused,
    _read_capped,
    key_id,
    load_private_key,
    read_verified_manifest,
    sha256_hex,
    sign_bytes,
    valid_name,
    valid_version,
    versions_of,
)

log = logging.getLogger("modelgate.inference.builder")

REFERENCE_ROWS = 32
RANDOM_PROBES = 5000
MAX_THRESHOLD_PROBES = 60_000
SKLEARN_FILE = "model.joblib"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class TrainingData:
    features: list[str]
    X: np.ndarray
    y: np.ndarray | None
    description: str


# --- demo models -----------------------------------------------------------------------------


def _iris() -> tuple[Any, TrainingData]:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    # The seed's model: a default RandomForestClassifier on the whole iris set
    # (random_state fixed so a rebuild gives the same forest).
    model = RandomForestClassifier(random_state=0)
    features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    return model, TrainingData(features, data.data, data.target, "scikit-learn iris (150 rows)")


def _breast_cancer() -> tuple[Any, TrainingData]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    data = load_breast_cancer()
    model = RandomForestClassifier(n_estimators=100, min_samples_leaf=1, random_state=0)
    features = [str(n).replace(" ", "_") for n in data.feature_names]
    return model, TrainingData(
        features, data.data, data.target, "scikit-learn breast cancer Wisconsin (569 rows)"
    )


DEMO_MODELS: dict[str, tuple[Callable[[], tuple[Any, TrainingData]], list[str]]] = {
    "iris": (_iris, ["setosa", "versicolor", "virginica"]),
    "breast_cancer": (_breast_cancer, ["malignant", "benign"]),
}


def build_demo(store: Path, private_key_path: Path, name: str, version: str = "1") -> Path:
    factory, class_names = DEMO_MODELS[name]
    model, data = factory()
    assert data.y is not None
    metrics = _cross_validate(model, data)
    model.fit(data.X, data.y)
    metrics["train_accuracy"] = float((model.predict(data.X) == data.y).mean())
    return write_version(
        store,
        private_key_path,
        name=name,
        version=version,
        estimator=model,
        data=data,
        metrics=metrics,
        class_names=class_names,
    )


def _cross_validate(model: Any, data: TrainingData) -> dict[str, float]:
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    assert data.y is not None
    scores = cross_val_score(clone(model), data.X, data.y, cv=5, scoring="accuracy")
    return {
        "cv5_accuracy_mean": float(scores.mean()),
        "cv5_accuracy_std": float(scores.std()),
        "rows": float(len(data.X)),
    }


# --- registering an operator's model ---------------------------------------------------------


def read_csv(path: Path, target: str | None) -> TrainingData:
    """Training data: a header row of feature names, then numeric rows."""
    import re

    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        raise ValueError("the data file needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    pattern = re.compile(FEATURE_PATTERN)
    for name in header:
        if not pattern.match(name):
            raise ValueError(
                f"column name {name!r} is not a valid feature name ({FEATURE_PATTERN})"
            )
    if target is not None and target not in header:
        raise ValueError(f"target column {target!r} is not in the header")
    features = [h for h in header if h != target]
    table = rows[1:]
    X = np.array([[float(r[header.index(f)]) for f in features] for r in table], dtype=np.float64)
    if not np.isfinite(X).all():
        raise ValueError("the data file holds NaN or infinite values")
    y = None
    if target is not None:
        raw = [r[header.index(target)] for r in table]
        try:
            y = np.array([int(v) for v in raw])
        except ValueError:
            y = np.array(raw)
    return TrainingData(features, X, y, f"{path.name} ({len(X)} rows)")


def register(
    store: Path,
    private_key_path: Path,
    *,
    name: str,
    artifact: Path,
    data: TrainingData,
    version: str | None = None,
    description: str = "",
) -> Path:
    """Add an operator's fitted classifier as a new signed version.

    Unpickling ``artifact`` runs whatever code it holds: register only files
    you built yourself. The service never loads unsigned files.
    """
    import joblib

    estimator = joblib.load(artifact)
    if not (hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_")):
        raise ValueError("the artifact is not a fitted scikit-learn classifier")
    n_in = getattr(estimator, "n_features_in_", len(data.features))
    if n_in != len(data.features):
        raise ValueError(f"the model takes {n_in} features; the data has {len(data.features)}")
    metrics: dict[str, float] = {"rows": float(len(data.X))}
    if data.y is not None:
        metrics["accuracy_on_data"] = float((estimator.predict(data.X) == data.y).mean())
    return write_version(
        store,
        private_key_path,
        name=name,
        version=version or next_version(store, name),
        estimator=estimator,
        data=data,
        metrics=metrics,
        description=description,
    )


def next_version(store: Path, name: str) -> str:
    versions = versions_of(store, name)
    return str(int(versions[-1]) + 1) if versions else "1"


# --- ONNX conversion with an exactness check --------------------------------------------------


def _is_tree_model(estimator: Any) -> bool:
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    return isinstance(
        estimator,
        RandomForestClassifier
        | ExtraTreesClassifier
        | DecisionTreeClassifier
        | ExtraTreeClassifier,
    )


def _trees(estimator: Any) -> list[Any]:
    return list(getattr(estimator, "estimators_", [estimator]))


def probe_rows(estimator: Any, X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rows that stress a conversion: the training rows, random rows inside the
    observed range, and for tree models rows sitting on and next to every split
    threshold (where a float32 rounding would send a row the other way)."""
    rng = np.random.default_rng(seed)
    low, high = X.min(axis=0), X.max(axis=0)
    parts = [X, rng.uniform(low, high, size=(RANDOM_PROBES, X.shape[1]))]
    if _is_tree_model(estimator):
        probes = []
        for tree in _trees(estimator):
            inner = tree.tree_.children_left >= 0
            for feature, threshold in zip(
                tree.tree_.feature[inner], tree.tree_.threshold[inner], strict=True
            ):
                t32 = np.float32(threshold)
                for value in (
                    np.nextafter(t32, np.float32(-np.inf)),
                    t32,
                    np.nextafter(t32, np.float32(np.inf)),
                    threshold,
                ):
                    row = X[rng.integers(len(X))].copy()
                    row[feature] = value
                    probes.append(row)
            if len(probes) >= MAX_THRESHOLD_PROBES:
                break
        if probes:
            parts.append(np.asarray(probes))
    return np.vstack(parts)


def convert_exact(estimator: Any, X: np.ndarray) -> tuple[bytes, str, int] | None:
    """An ONNX graph whose labels equal the estimator's on every probe row, with
    its input dtype and the number of rows checked; None when there is none."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    probes = probe_rows(estimator, X)
    expected = estimator.predict(probes)
    expected_proba = estimator.predict_proba(probes)
    order = ["float32", "float64"] if _is_tree_model(estimator) else ["float64", "float32"]
    for dtype in order:
        tensor = FloatTensorType if dtype == "float32" else DoubleTensorType
        try:
            graph = to_onnx(
                estimator,
                initial_types=[("input", tensor([None, X.shape[1]]))],
                options={id(estimator): {"zipmap": False}},
                target_opset={"": 17, "ai.onnx.ml": 3},
            ).SerializeToString()
            runtime = OnnxRuntime(graph, dtype)
            labels, proba = runtime.predict(probes, True)
        except Exception as exc:  # not convertible this way: try the next, or give up
            log.info("onnx conversion failed", extra={"dtype": dtype, "reason": repr(exc)})
            continue
        assert proba is not None
        if np.array_equal(labels, expected) and np.allclose(
            proba, expected_proba, rtol=0, atol=1e-5
        ):
            return graph, dtype, len(probes)
        log.info("onnx conversion not exact", extra={"dtype": dtype})
    return None


# --- writing a version -----------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import joblib
    import sklearn

    return {
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "joblib": joblib.__version__,
        "python": platform.python_version(),
    }


def _class_list(classes: np.ndarray) -> list[int] | list[str]:
    if np.issubdtype(classes.dtype, np.integer):
        return [int(c) for c in classes]
    return [str(c) for c in classes]


def write_version(
    store: Path,
    private_key_path: Path,
    *,
    name: str,
    version: str,
    estimator: Any,
    data: TrainingData,
    metrics: dict[str, float],
    class_names: list[str] | None = None,
    description: str = "",
) -> Path:
    """Write artifacts and a signed manifest into a new version folder, atomically
    (built in a temporary folder, then renamed into place)."""
    import joblib

    if not valid_name(name):
        raise ValueError(f"model name {name!r} is not valid")
    if not valid_version(version):
        raise ValueError(f"version {version!r} is not a positive integer")
    target = store / name / version
    if target.exists():
        raise FileExistsError(f"{target} exists; versions are immutable")
    private_key = load_private_key(private_key_path)

    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    sk_bytes = buffer.getvalue()
    X = data.X
    rng = np.random.default_rng(1)
    pick = rng.choice(len(X), size=min(REFERENCE_ROWS, len(X)), replace=False)
    reference_inputs = X[np.sort(pick)]
    artifacts: dict[str, Any] = {
        "sklearn": {
            "file": SKLEARN_FILE,
            "format": "joblib",
            "sha256": sha256_hex(sk_bytes),
            "bytes": len(sk_bytes),
        }
    }
    converted = convert_exact(estimator, X)
    onnx_bytes = None
    if converted is not None:
        import onnxruntime
        import skl2onnx

        onnx_bytes, dtype, checked = converted
        artifacts["onnx"] = {
            "file": ONNX_FILE,
            "format": "onnx",
            "sha256": sha256_hex(onnx_bytes),
            "bytes": len(onnx_bytes),
            "input_dtype": dtype,
            "checked_rows": checked,
            "converter": {"skl2onnx": skl2onnx.__version__, "onnxruntime": onnxruntime.__version__},
        }
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "description": description or data.description,
        "task": "classification",
        "estimator": type(estimator).__name__,
        "framework": _versions(),
        "artifacts": artifacts,
        "input": {
            "features": [
                {"name": f, "type": "float", "min": float(lo), "max": float(hi)}
                for f, lo, hi in zip(data.features, X.min(axis=0), X.max(axis=0), strict=True)
            ]
        },
        "classes": _class_list(estimator.classes_),
        "class_names": class_names,
        "reference": {
            "inputs": reference_inputs.tolist(),
            "predictions": _class_list(estimator.predict(reference_inputs)),
            "probabilities": estimator.predict_proba(reference_inputs).tolist(),
        },
        "metrics": metrics,
        "signing_key_id": key_id(private_key.public_key()),
    }
    manifest_bytes = orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
    Manifest.model_validate_json(manifest_bytes)  # what the service will parse

    (store / name).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=store / name, prefix=f".{version}."))
    try:
        write_public(staging / SKLEARN_FILE, sk_bytes)
        if onnx_bytes is not None:
            write_public(staging / ONNX_FILE, onnx_bytes)
        write_public(staging / MANIFEST_FILE, manifest_bytes)
        write_public(staging / SIGNATURE_FILE, sign_bytes(manifest_bytes, private_key))
        staging.chmod(0o755)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


class NotSigned(ValueError):
    """A signing request that would vouch for something nobody checked."""


def _signed_manifest(folder: Path, public_key_path: Path) -> tuple[Manifest, dict[str, Any]]:
    """The manifest whose signature verifies and whose every artifact matches its signed
    digest (nothing is unpickled), parsed and as the signed document."""
    from .store import load_public_key

    try:
        verified = read_verified_manifest(folder, load_public_key(public_key_path))
        verified.artifact("sklearn")
        if verified.manifest.artifacts.onnx is not None:
            verified.artifact("onnx")
    except ModelRefused as exc:
        raise NotSigned(f"{folder}: {exc.reason}") from None
    return verified.manifest, orjson.loads(verified.raw)


def _write_signed(folder: Path, document: dict[str, Any], private_key_path: Path) -> Manifest:
    """Write a manifest and its signature (each replaced atomically)."""
    private_key = load_private_key(private_key_path)
    document["signing_key_id"] = key_id(private_key.public_key())
    manifest_bytes = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    manifest = Manifest.model_validate_json(manifest_bytes)  # what the service will parse
    write_public(folder / MANIFEST_FILE, manifest_bytes)
    write_public(folder / SIGNATURE_FILE, sign_bytes(manifest_bytes, private_key))
    return manifest


def edit_manifest(
    folder: Path,
    private_key_path: Path,
    public_key_path: Path,
    *,
    description: str | None = None,
    class_names: list[str] | None = None,
) -> Manifest:
    """Change the fields an operator may edit (they describe the model to people and
    change nothing that is loaded or answered) of a version whose signature verifies,
    and sign the result: every other field stays exactly as it was signed."""
    manifest, document = _signed_manifest(folder, public_key_path)
    if class_names is not None and len(class_names) != len(manifest.classes):
        raise ValueError(
            f"the model has {len(manifest.classes)} classes; {len(class_names)} names given"
        )
    if description is not None:
        document["description"] = description
    if class_names is not None:
        document["class_names"] = class_names
    return _write_signed(folder, document, private_key_path)


@dataclass(frozen=True)
class Digest:
    kind: str
    file: str
    sha256: str
    bytes: int


def sign_existing(
    folder: Path, private_key_path: Path, public_key_path: Path, *, i_built_this: bool = False
) -> list[Digest]:
    """Sign a version only when that vouches for nothing new.

    Without ``i_built_this``: the manifest's current signature must verify with the
    public key and every artifact match its signed digest (then there is nothing to
    sign and the files stay as they are);
    anything else is refused, whatever the manifest on disk says about the artifacts,
    since whoever could change an artifact could change that manifest too. Operator
    fields change through ``edit_manifest``.

    With ``i_built_this`` the operator vouches for the artifact files as they are: the
    manifest's digests are rebuilt from them (nothing is unpickled) and signed; the
    caller shows the digests so they can be compared with the build."""
    if not i_built_this:
        _signed_manifest(folder, public_key_path)
        return []
    try:
        raw = _read_capped(folder / MANIFEST_FILE, MAX_MANIFEST_BYTES, "manifest")
        manifest = Manifest.model_validate_json(raw)
    except ModelRefused as exc:
        raise NotSigned(f"{folder}: {exc.reason}") from None
    except ValidationError as exc:
        raise NotSigned(f"{folder / MANIFEST_FILE} does not follow the format: {exc}") from None
    if (manifest.name, manifest.version) != (folder.parent.name, folder.name):
        raise NotSigned(f"manifest is for {manifest.name}/{manifest.version}, not {folder}")
    document = orjson.loads(raw)
    digests = []
    for kind in ("sklearn", "onnx"):
        spec = document["artifacts"].get(kind)
        if spec is None:
            continue
        try:
            data = _read_capped(folder / spec["file"], MAX_ARTIFACT_BYTES, f"{kind} artifact")
        except ModelRefused as exc:
            raise NotSigned(f"{folder}: {exc.reason}") from None
        spec["sha256"], spec["bytes"] = sha256_hex(data), len(data)
        digests.append(Digest(kind, spec["file"], spec["sha256"], spec["bytes"]))
    _write_signed(folder, document, private_key_path)
    return digests


def verify_folder(folder: Path, public_key_path: Path) -> str:
    """What the service would do, short of serving: raises ModelRefused, or says
    which runtime would serve."""
    from .runtime import load_model
    from .store import load_public_key

    model = load_model(folder, load_public_key(public_key_path), bounds_margin=0.0, max_batch=1)
    return model.runtime.kind


__all__ = [
    "DEMO_MODELS",
    "Digest",
    "ModelRefused",
    "NotSigned",
    "TrainingData",
    "build_demo",
    "convert_exact",
    "edit_manifest",
    "next_version",
    "read_csv",
    "read_verified_manifest",
    "reference_mismatch",
    "register",
    "sign_existing",
    "verify_folder",
    "write_version",
]
