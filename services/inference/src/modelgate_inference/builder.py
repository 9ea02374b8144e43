"""Building store entries: train the demo models, register an operator's model,
convert to ONNX with an exactness check, write and sign the manifest.

Registration takes scikit-learn classifiers and regressors (Pipelines
included, with string columns one-hot encoded by a ColumnTransformer when
fitted on a DataFrame) and XGBoost / LightGBM models through their
scikit-learn API. Each is converted to ONNX (skl2onnx, onnxmltools) and the
graph is kept only when it reproduces the estimator on the training rows,
random rows and rows on every split threshold; otherwise the library's own
runtime serves from the signed joblib artifact. The manifest says which and why.

This module is for the operator's command line; the service never imports it
(it pulls in the converters, which the serving path does not need).
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import logging
import platform
import re
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

from .runtime import (
    REGRESSION_TOLERANCE,
    NativeRuntime,
    OnnxRuntime,
    final_estimator,
    library_of,
    reference_mismatch,
    regression_close,
)
from .schemas import Batch, Table
from .store import (
    FEATURE_PATTERN,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MAX_ARTIFACT_BYTES,
    MAX_CATEGORIES,
    MAX_CATEGORY_CHARS,
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
OPSET = {"": 17, "ai.onnx.ml": 3}
BOOSTER_OPSET = 15  # the highest onnxmltools' XGBoost and LightGBM converters support


@dataclass(frozen=True)
class TrainingData:
    """Training rows as named columns: float64 arrays for numbers, object arrays of
    str for string columns; ``y`` the target, when given."""

    features: list[str]
    columns: dict[str, np.ndarray]
    y: np.ndarray | None
    description: str

    @classmethod
    def from_matrix(
        cls, features: list[str], X: np.ndarray, y: np.ndarray | None, description: str
    ) -> TrainingData:
        X = np.asarray(X, dtype=np.float64)
        return cls(features, {f: X[:, i] for i, f in enumerate(features)}, y, description)

    @property
    def rows(self) -> int:
        return len(self.columns[self.features[0]])

    def is_string(self, feature: str) -> bool:
        return self.columns[feature].dtype == object

    @property
    def tabular(self) -> bool:
        return any(self.is_string(f) for f in self.features)

    @property
    def X(self) -> np.ndarray:
        """The numeric features as one (rows, features) float64 matrix."""
        return np.column_stack([self.columns[f] for f in self.features])

    def batch(self, index: np.ndarray | None = None) -> Batch:
        """The rows (all, or those at ``index``) as the service hands them to a runtime."""
        columns = {f: c if index is None else c[index] for f, c in self.columns.items()}
        rows = self.rows if index is None else len(index)
        if self.tabular:
            return Table(columns, rows)
        return np.column_stack([columns[f] for f in self.features]).reshape(rows, -1)

    def reordered(self, features: list[str]) -> TrainingData:
        return TrainingData(features, self.columns, self.y, self.description)


# --- demo models -----------------------------------------------------------------------------


def _iris() -> tuple[Any, TrainingData]:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    # The seed's model: a default RandomForestClassifier on the whole iris set
    # (random_state fixed so a rebuild gives the same forest).
    model = RandomForestClassifier(random_state=0)
    features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    return model, TrainingData.from_matrix(
        features, data.data, data.target, "scikit-learn iris (150 rows)"
    )


def _breast_cancer() -> tuple[Any, TrainingData]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    data = load_breast_cancer()
    model = RandomForestClassifier(n_estimators=100, min_samples_leaf=1, random_state=0)
    features = [str(n).replace(" ", "_") for n in data.feature_names]
    return model, TrainingData.from_matrix(
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
    """Training data: a header row of feature names, then rows of numbers and, for
    string columns, text (read by pandas: a column with any non-number is a string
    column). Empty cells and infinite numbers are refused."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name} is not a readable CSV file ({exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) < 1:
        raise ValueError("the data file needs a header row and at least one data row")
    pattern = re.compile(FEATURE_PATTERN)
    for name in frame.columns:
        if not pattern.match(name):
            raise ValueError(
                f"column name {name!r} is not a valid feature name ({FEATURE_PATTERN})"
            )
    if target is not None and target not in frame.columns:
        raise ValueError(f"target column {target!r} is not in the header")
    features = [c for c in frame.columns if c != target]
    if not features:
        raise ValueError("the data file has no feature columns")
    columns: dict[str, np.ndarray] = {}
    for name in features:
        column = frame[name]
        if column.isna().any():
            raise ValueError(f"column {name!r} has empty cells")
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            values = column.to_numpy(dtype=np.float64)
            if not np.isfinite(values).all():
                raise ValueError(f"column {name!r} holds infinite values")
            columns[name] = values
        else:
            values = np.array([str(v) for v in column], dtype=object)
            if max(len(v) for v in values) > MAX_CATEGORY_CHARS:
                raise ValueError(f"column {name!r} has values over {MAX_CATEGORY_CHARS} characters")
            columns[name] = values
    y = None
    if target is not None:
        raw = frame[target]
        if raw.isna().any():
            raise ValueError(f"target column {target!r} has empty cells")
        if pd.api.types.is_integer_dtype(raw):
            y = raw.to_numpy(dtype=np.int64)
        elif pd.api.types.is_float_dtype(raw):
            y = raw.to_numpy(dtype=np.float64)
        else:
            y = np.array([str(v) for v in raw])
    return TrainingData(features, columns, y, f"{path.name} ({len(frame)} rows)")


def _task_of(estimator: Any) -> str:
    from sklearn.base import is_classifier, is_regressor

    if is_classifier(estimator) and hasattr(estimator, "predict_proba"):
        if not hasattr(estimator, "classes_"):
            raise ValueError("the classifier is not fitted (no classes_)")
        return "classification"
    if is_regressor(estimator):
        return "regression"
    raise ValueError(
        "the artifact is not a fitted scikit-learn classifier or regressor "
        "(or an XGBoost / LightGBM model through their scikit-learn API)"
    )


def _fitted_features(estimator: Any, data: TrainingData) -> TrainingData:
    """The data's features in the order the estimator was fitted with (by name when
    it was fitted on a DataFrame, by count otherwise)."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None and all(isinstance(n, str) for n in names):
        fitted = [str(n) for n in names]
        if sorted(fitted) != sorted(data.features):
            missing = sorted(set(fitted) - set(data.features))
            extra = sorted(set(data.features) - set(fitted))
            raise ValueError(
                "the model was fitted on other columns than the data has "
                f"(missing from the data: {missing or 'none'}; not in the model: {extra or 'none'})"
            )
        return data.reordered(fitted)
    if data.tabular:
        raise ValueError(
            "the data has string columns but the model was not fitted on a DataFrame "
            "(fit it on a pandas DataFrame with these column names)"
        )
    n_in = getattr(estimator, "n_features_in_", len(data.features))
    if n_in != len(data.features):
        raise ValueError(f"the model takes {n_in} features; the data has {len(data.features)}")
    return data


def _encoders(estimator: Any) -> list[tuple[Any, list[str]]]:
    """(encoder, the input columns it encodes) for every OneHotEncoder and
    OrdinalEncoder of the estimator: its own steps, and inside ColumnTransformers."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    found: list[tuple[Any, list[str]]] = []

    def visit(node: Any, columns: list[str] | None) -> None:
        if isinstance(node, OneHotEncoder | OrdinalEncoder):
            names = getattr(node, "feature_names_in_", None)
            cols = [str(n) for n in names] if names is not None else columns
            if cols is not None:
                found.append((node, cols))
        elif isinstance(node, Pipeline):
            for _, step in node.steps:
                visit(step, columns)
                columns = None  # later steps see transformed columns
        elif isinstance(node, ColumnTransformer):
            names = [str(n) for n in getattr(node, "feature_names_in_", [])]
            for _, transformer, selected in node.transformers_:
                if isinstance(selected, str):
                    selected = [selected]
                picked = list(selected) if isinstance(selected, list | tuple | np.ndarray) else []
                cols = [
                    str(c) if isinstance(c, str) else names[int(c)]
                    for c in picked
                    if isinstance(c, str) or (names and not isinstance(c, bool))
                ]
                visit(transformer, cols or None)

    visit(estimator, None)
    return found


def string_features(estimator: Any, data: TrainingData) -> dict[str, tuple[list[str], bool]]:
    """Per string column: its categories and whether an unknown one is accepted. The
    encoder's own categories and ``handle_unknown`` decide where an encoder covers the
    column; otherwise the training values, and unknown ones are refused."""
    from sklearn.preprocessing import OneHotEncoder

    policy: dict[str, tuple[list[str], bool]] = {}
    for encoder, cols in _encoders(estimator):
        if isinstance(encoder, OneHotEncoder):
            accept = encoder.handle_unknown in ("ignore", "infrequent_if_exist")
        else:
            accept = encoder.handle_unknown == "use_encoded_value"
        for col, cats in zip(cols, encoder.categories_, strict=False):
            if col in data.columns and data.is_string(col):
                policy[col] = ([str(c) for c in cats], accept)
    for name in data.features:
        if data.is_string(name) and name not in policy:
            policy[name] = (sorted(set(data.columns[name].tolist())), False)
    for name, (cats, _) in policy.items():
        if len(cats) > MAX_CATEGORIES:
            raise ValueError(
                f"column {name!r} has {len(cats)} categories; at most {MAX_CATEGORIES}"
            )
    return policy


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
    """Add an operator's fitted classifier or regressor as a new signed version.

    Unpickling ``artifact`` runs whatever code it holds: register only files
    you built yourself. The service never loads unsigned files.
    """
    import joblib

    estimator = joblib.load(artifact)
    task = _task_of(estimator)
    data = _fitted_features(estimator, data)
    native = NativeRuntime(estimator, library_of(estimator), data.features)
    try:
        predictions, _ = native.predict(data.batch(), False)
    except Exception as exc:  # the operator's model and data disagree: say how
        raise ValueError(
            f"the model cannot predict the data ({type(exc).__name__}: {exc})"
        ) from None
    metrics: dict[str, float] = {"rows": float(data.rows)}
    if data.y is not None:
        if task == "classification":
            metrics["accuracy_on_data"] = float((predictions == data.y).mean())
        else:
            errors = np.asarray(predictions, dtype=np.float64) - data.y.astype(np.float64)
            metrics["mae_on_data"] = float(np.abs(errors).mean())
            metrics["rmse_on_data"] = float(np.sqrt((errors**2).mean()))
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
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import (
        DecisionTreeClassifier,
        DecisionTreeRegressor,
        ExtraTreeClassifier,
        ExtraTreeRegressor,
    )

    return isinstance(
        estimator,
        RandomForestClassifier
        | ExtraTreesClassifier
        | DecisionTreeClassifier
        | ExtraTreeClassifier
        | RandomForestRegressor
        | ExtraTreesRegressor
        | DecisionTreeRegressor
        | ExtraTreeRegressor,
    )


def _split_thresholds(estimator: Any, features: list[str]) -> list[tuple[int, float]]:
    """(feature index, threshold) of every split of a tree model: scikit-learn trees,
    XGBoost and LightGBM boosters (their trees as tables)."""
    library = library_of(estimator)
    if library == "sklearn":
        if not _is_tree_model(estimator):
            return []
        splits: list[tuple[int, float]] = []
        for tree in getattr(estimator, "estimators_", [estimator]):
            inner = tree.tree_.children_left >= 0
            splits.extend(
                (int(f), float(t))
                for f, t in zip(tree.tree_.feature[inner], tree.tree_.threshold[inner], strict=True)
            )
        return splits
    if final_estimator(estimator) is not estimator:
        return []
    if library == "xgboost":
        booster = estimator.get_booster()
        table = booster.trees_to_dataframe()
        table = table[table["Feature"] != "Leaf"]
        names = booster.feature_names or [f"f{i}" for i in range(len(features))]
        pairs = zip(table["Feature"], table["Split"], strict=True)
    else:
        booster = estimator.booster_
        table = booster.trees_to_dataframe()
        table = table[table["split_feature"].notna()]
        names = booster.feature_name()
        pairs = zip(table["split_feature"], table["threshold"], strict=True)
    index = {str(n): i for i, n in enumerate(names)}
    return [(index[str(f)], float(t)) for f, t in pairs if str(f) in index]


def probe_batch(estimator: Any, data: TrainingData, seed: int = 0) -> Batch:
    """Rows that stress a conversion: the training rows, random rows inside the
    observed range (random training categories for strings), and for tree models
    rows sitting on and next to every split threshold (where a float32 rounding
    would send a row the other way)."""
    rng = np.random.default_rng(seed)
    if data.tabular:
        columns: dict[str, np.ndarray] = {}
        for name in data.features:
            column = data.columns[name]
            if data.is_string(name):
                drawn = rng.choice(
                    np.array(sorted(set(column.tolist())), dtype=object), RANDOM_PROBES
                )
            else:
                drawn = rng.uniform(column.min(), column.max(), RANDOM_PROBES)
            columns[name] = np.concatenate([column, drawn])
        return Table(columns, data.rows + RANDOM_PROBES)
    X = data.X
    low, high = X.min(axis=0), X.max(axis=0)
    parts = [X, rng.uniform(low, high, size=(RANDOM_PROBES, X.shape[1]))]
    probes = []
    for feature, threshold in _split_thresholds(estimator, data.features):
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


def probe_rows(estimator: Any, X: np.ndarray, seed: int = 0) -> np.ndarray:
    """``probe_batch`` of a numeric matrix with generated feature names."""
    features = [f"f{i}" for i in range(X.shape[1])]
    batch = probe_batch(estimator, TrainingData.from_matrix(features, X, None, ""), seed)
    assert isinstance(batch, np.ndarray)
    return batch


@dataclass(frozen=True)
class Conversion:
    """The outcome of the exactness check: an exact graph (and its input dtype), or
    none; ``reason`` says which runtime serves and why, for the manifest."""

    graph: bytes | None
    dtype: str
    checked: int
    reason: str
    converter: dict[str, str]


def _graphs(estimator: Any, data: TrainingData, task: str) -> list[tuple[str, Callable[[], bytes]]]:
    """(input dtype, build the graph) to try, best first."""
    library = library_of(estimator)
    n = len(data.features)
    if library != "sklearn":
        if final_estimator(estimator) is not estimator or data.tabular:
            return []
        from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat

        def boosted() -> bytes:
            from onnxmltools import convert_lightgbm, convert_xgboost

            types = [("input", MLFloat([None, n]))]
            if library == "xgboost":
                # The converter reads features as f0, f1, ... by position: a copy without
                # the DataFrame's column names (the graph takes the columns in that order).
                unnamed = copy.deepcopy(estimator)
                unnamed.get_booster().feature_names = None
                graph = convert_xgboost(unnamed, initial_types=types, target_opset=BOOSTER_OPSET)
            else:
                graph = convert_lightgbm(
                    estimator, initial_types=types, zipmap=False, target_opset=BOOSTER_OPSET
                )
            return bytes(graph.SerializeToString())

        return [("float32", boosted)]

    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    options = (
        {id(final_estimator(estimator)): {"zipmap": False}} if task == "classification" else None
    )
    order = ["float32", "float64"] if _is_tree_model(estimator) else ["float64", "float32"]

    def build(dtype: str) -> Callable[[], bytes]:
        tensor = FloatTensorType if dtype == "float32" else DoubleTensorType
        if data.tabular:
            types = [
                (f, StringTensorType([None, 1]) if data.is_string(f) else tensor([None, 1]))
                for f in data.features
            ]
        else:
            types = [("input", tensor([None, n]))]
        return lambda: bytes(
            to_onnx(
                estimator, initial_types=types, options=options, target_opset=OPSET
            ).SerializeToString()
        )

    return [(dtype, build(dtype)) for dtype in order]


def _converter_versions(library: str) -> dict[str, str]:
    import onnxruntime
    import skl2onnx

    versions = {"skl2onnx": skl2onnx.__version__, "onnxruntime": onnxruntime.__version__}
    if library != "sklearn":
        import onnxmltools

        versions["onnxmltools"] = onnxmltools.__version__
    return versions


def convert_exact(estimator: Any, data: TrainingData, task: str = "classification") -> Conversion:
    """An ONNX graph whose predictions equal the estimator's on every probe row
    (labels identical and probabilities within 1e-5 for a classifier, numbers within
    ``REGRESSION_TOLERANCE`` relative for a regressor), or the reason there is none."""
    library = library_of(estimator)
    classifier = task == "classification"
    probes = probe_batch(estimator, data)
    native = NativeRuntime(estimator, library, data.features)
    expected, expected_proba = native.predict(probes, classifier)
    columns = [(f, data.is_string(f)) for f in data.features] if data.tabular else None
    kinds = "training rows, random rows" + (
        ", split-threshold rows" if _split_thresholds(estimator, data.features) else ""
    )
    failures = []
    for dtype, build in _graphs(estimator, data, task):
        try:
            graph = build()
            runtime = OnnxRuntime(graph, dtype, regression=not classifier, columns=columns)
            got, proba = runtime.predict(probes, classifier)
        except Exception as exc:  # not convertible this way: try the next, or give up
            log.info("onnx conversion failed", extra={"dtype": dtype, "reason": repr(exc)})
            failures.append(f"{dtype} graph: conversion failed ({type(exc).__name__}: {exc})"[:300])
            continue
        if classifier:
            assert proba is not None and expected_proba is not None
            differ = int((got != expected).sum())
            exact = differ == 0 and bool(np.allclose(proba, expected_proba, rtol=0, atol=1e-5))
        else:
            exact = regression_close(got, expected)
            bound = REGRESSION_TOLERANCE * np.maximum(1.0, np.abs(expected.astype(np.float64)))
            differ = int((np.abs(got.astype(np.float64) - expected) > bound).sum())
        if exact:
            within = "" if classifier else f" within {REGRESSION_TOLERANCE:g} relative"
            return Conversion(
                graph,
                dtype,
                len(probes),
                f"onnxruntime: the {dtype} ONNX graph reproduces {type(estimator).__name__}"
                f"{within} on {len(probes)} rows ({kinds})",
                _converter_versions(library),
            )
        if classifier and not differ:
            assert proba is not None and expected_proba is not None
            gap = float(np.abs(proba - expected_proba).max())
            failures.append(f"{dtype} graph: probabilities differ by up to {gap:.1e}")
        else:
            what = "labels" if classifier else "predictions"
            failures.append(f"{dtype} graph: {differ} of {len(probes)} {what} differ")
        log.info("onnx conversion not exact", extra={"dtype": dtype})
    why = "; ".join(failures) or "no ONNX converter for this estimator"
    return Conversion(
        None,
        "",
        len(probes),
        f"{library}: no exact ONNX graph ({why}); {library} predicts from the signed "
        "joblib artifact",
        {},
    )


# --- writing a version -----------------------------------------------------------------------


def _versions(library: str) -> dict[str, str]:
    import joblib
    import sklearn

    versions = {
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "joblib": joblib.__version__,
        "python": platform.python_version(),
    }
    if library == "xgboost":
        import xgboost

        versions["xgboost"] = xgboost.__version__
    if library == "lightgbm":
        import lightgbm

        versions["lightgbm"] = lightgbm.__version__
    return versions


def _class_list(classes: np.ndarray) -> list[int] | list[str]:
    if np.issubdtype(classes.dtype, np.integer):
        return [int(c) for c in classes]
    return [str(c) for c in classes]


def _feature_specs(estimator: Any, data: TrainingData) -> list[dict[str, Any]]:
    strings = string_features(estimator, data) if data.tabular else {}
    specs: list[dict[str, Any]] = []
    for name in data.features:
        if name in strings:
            categories, accept = strings[name]
            specs.append(
                {
                    "name": name,
                    "type": "string",
                    "categories": categories,
                    "unknown": "accept" if accept else "refuse",
                }
            )
        else:
            column = data.columns[name]
            specs.append(
                {
                    "name": name,
                    "type": "float",
                    "min": float(column.min()),
                    "max": float(column.max()),
                }
            )
    return specs


def _reference_rows(data: TrainingData, index: np.ndarray) -> list[list[float | str]]:
    return [
        [
            str(data.columns[f][i]) if data.is_string(f) else float(data.columns[f][i])
            for f in data.features
        ]
        for i in index
    ]


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
    task = _task_of(estimator)
    library = library_of(estimator)

    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    sk_bytes = buffer.getvalue()
    rng = np.random.default_rng(1)
    pick = np.sort(rng.choice(data.rows, size=min(REFERENCE_ROWS, data.rows), replace=False))
    native = NativeRuntime(estimator, library, data.features)
    classifier = task == "classification"
    ref_predictions, ref_proba = native.predict(data.batch(pick), classifier)
    artifacts: dict[str, Any] = {
        "sklearn": {
            "file": SKLEARN_FILE,
            "format": "joblib",
            "sha256": sha256_hex(sk_bytes),
            "bytes": len(sk_bytes),
        }
    }
    conversion = convert_exact(estimator, data, task)
    onnx_bytes = conversion.graph
    if onnx_bytes is not None:
        artifacts["onnx"] = {
            "file": ONNX_FILE,
            "format": "onnx",
            "sha256": sha256_hex(onnx_bytes),
            "bytes": len(onnx_bytes),
            "input_dtype": conversion.dtype,
            "checked_rows": conversion.checked,
            "converter": conversion.converter,
        }
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "description": description or data.description,
        "task": task,
        "estimator": type(estimator).__name__,
        "library": library,
        "runtime_reason": conversion.reason,
        "framework": _versions(library),
        "artifacts": artifacts,
        "input": {"features": _feature_specs(estimator, data)},
        "classes": _class_list(estimator.classes_) if classifier else [],
        "class_names": class_names,
        "reference": {
            "inputs": _reference_rows(data, pick),
            "predictions": _class_list(np.asarray(ref_predictions))
            if classifier
            else [float(v) for v in ref_predictions],
            "probabilities": ref_proba.tolist() if ref_proba is not None else None,
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
