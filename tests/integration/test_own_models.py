"""Serving your own model, end to end on the running stack: each kind is trained
here from data scikit-learn ships (diabetes, breast cancer, a generated table with
string columns), registered with `modelgate model register`, served with
`modelgate model load`, and its predictions through v1 and v2 equal the estimator's
own on held-out rows; unknown categories, wrong types and out-of-range numbers are
refused with 422.

Native only: the tests write the stack's model store (each model is removed after)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PER_USER = 8  # predict requests per fresh user, under the default 10/minute
# A regressor's ONNX graph may differ from its library within this (the manifest says so).
REGRESSION_TOLERANCE = 1e-5

pytestmark = [pytest.mark.native, pytest.mark.slow]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def modelgate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(os.environ.get("MG_VENV", ROOT / ".venv")) / "bin" / "modelgate"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MG_ROOT": str(ROOT), **env},
    )


@pytest.fixture(scope="session")
def model_store() -> Path:
    return Path(os.environ.get("MG_MODEL_STORE", ROOT / "model_store"))


@dataclass
class Kind:
    """A model to serve: the fitted estimator, its training table (columns by name,
    the target last) and held-out rows."""

    name: str
    estimator: Any
    columns: list[str]
    train: list[list[Any]]
    held_out: list[dict[str, Any]]
    task: str
    strings: dict[str, list[str]]  # string feature -> training categories


def _split(frame: Any, target: str, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    held = rng.choice(len(frame), size=24, replace=False)
    mask = np.zeros(len(frame), dtype=bool)
    mask[held] = True
    return frame[~mask], frame[mask]


def _kind(name: str, estimator: Any, frame: Any, target: str, task: str, dataframe: bool) -> Kind:
    train, held = _split(frame, target)
    numbers = train.select_dtypes("number").columns
    inside = (held[numbers] >= train[numbers].min()) & (held[numbers] <= train[numbers].max())
    held = held[inside.all(axis=1)]  # the input schema's bounds refuse the others
    X, y = train.drop(columns=[target]), train[target]
    estimator.fit(X if dataframe else X.to_numpy(), y)
    features = [c for c in frame.columns if c != target]
    strings = {c: sorted(set(train[c])) for c in features if train[c].dtype == object}
    return Kind(
        name,
        estimator,
        [*features, target],
        train[[*features, target]].values.tolist(),
        held[features].to_dict("records"),
        task,
        strings,
    )


def _diabetes() -> Any:
    from sklearn.datasets import load_diabetes

    return load_diabetes(as_frame=True).frame


def _breast_cancer() -> Any:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    return frame


def categorical_table(rows: int = 800, seed: int = 3) -> Any:
    """A generated shop table: two string columns and two numeric ones; whether a
    customer bought depends on all four."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue"], rows),
            "size": rng.choice(["S", "M", "L", "XL"], rows),
            "weight": rng.uniform(1.0, 50.0, rows).round(2),
            "age": rng.integers(18, 80, rows).astype(float),
        }
    )
    score = (
        (frame.colour == "red") * 1.5
        + frame["size"].map({"S": -1.0, "M": 0.0, "L": 0.5, "XL": 1.0})
        + (frame.weight - 25) / 10
        - (frame.age - 50) / 30
        + rng.normal(0, 0.5, rows)
    )
    frame["bought"] = (score > 0).astype(int)
    return frame


def _pipeline() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        # an unknown colour is refused, an unknown size encodes to zeros
                        ("colour", OneHotEncoder(handle_unknown="error"), ["colour"]),
                        ("size", OneHotEncoder(handle_unknown="ignore"), ["size"]),
                        ("numbers", StandardScaler(), ["weight", "age"]),
                    ]
                ),
            ),
            ("classify", LogisticRegression(solver="liblinear")),
        ]
    )


def _make(kind: str) -> Kind:
    from lightgbm import LGBMClassifier, LGBMRegressor
    from sklearn.linear_model import Ridge
    from xgboost import XGBClassifier, XGBRegressor

    name = f"t-own-{kind}"
    if kind == "ridge":
        return _kind(name, Ridge(alpha=0.5), _diabetes(), "target", "regression", False)
    if kind == "pipeline":
        return _kind(name, _pipeline(), categorical_table(), "bought", "classification", True)
    if kind == "xgb-classifier":
        model = XGBClassifier(n_estimators=40, max_depth=3, random_state=0)
        return _kind(name, model, _breast_cancer(), "target", "classification", True)
    if kind == "xgb-regressor":
        model = XGBRegressor(n_estimators=40, max_depth=3, random_state=0)
        return _kind(name, model, _diabetes(), "target", "regression", False)
    if kind == "lgbm-classifier":
        model = LGBMClassifier(n_estimators=40, random_state=0, verbose=-1)
        return _kind(name, model, _breast_cancer(), "target", "classification", False)
    model = LGBMRegressor(n_estimators=40, random_state=0, verbose=-1)
    return _kind(name, model, _diabetes(), "target", "regression", True)


KINDS = [
    "ridge",
    "pipeline",
    "xgb-classifier",
    "xgb-regressor",
    "lgbm-classifier",
    "lgbm-regressor",
]


@pytest.fixture
def served(
    request: pytest.FixtureRequest, tmp_path: Path, model_store: Path
) -> Iterator[tuple[Kind, str]]:
    """The kind registered and loaded with the operator's commands; its runtime line."""
    kind = _make(request.param)
    artifact, data = tmp_path / "model.joblib", tmp_path / "train.csv"
    joblib.dump(kind.estimator, artifact)
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(kind.columns)
        writer.writerows(kind.train)
    shutil.rmtree(model_store / kind.name, ignore_errors=True)
    try:
        done = modelgate(
            "model", "register", kind.name, str(artifact), "--data", str(data),
            "--target", kind.columns[-1],
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"registered {kind.name} version 1" in done.stdout
        runtime = next(line for line in done.stdout.splitlines() if line.startswith("runtime: "))
        # As compose's cli container calls it: nginx by another name than the certificate's
        # (the certificate is still checked, for its first name)
        via = {"MG_NGINX_HOST": "127.0.0.1"} if request.param == "pipeline" else {}
        if via:  # the name checked is the first of MG_TLS_HOSTNAMES: a wrong one fails TLS
            done = modelgate("model", "load", kind.name, **via, MG_TLS_HOSTNAMES="other.example")
            assert done.returncode == 1 and "cannot reach https://127.0.0.1:" in done.stderr
        done = modelgate("model", "load", kind.name, **via)
        assert done.returncode == 0, done.stderr
        assert f"serving {kind.name} version 1" in done.stdout
        yield kind, runtime
    finally:
        shutil.rmtree(model_store / kind.name, ignore_errors=True)


class Tokens:
    def __init__(self, make_user: Callable[..., dict[str, str]], login: Callable[..., Any]):
        self.make_user, self.login = make_user, login
        self.used = PER_USER
        self.token = ""

    def next(self) -> dict[str, str]:
        if self.used >= PER_USER:
            user = self.make_user(role="user")
            self.token = str(self.login(user["username"], user["password"])["access_token"])
            self.used = 0
        self.used += 1
        return bearer(self.token)


def _expected(kind: Kind) -> np.ndarray:
    import pandas as pd

    frame = pd.DataFrame(kind.held_out)
    names = getattr(kind.estimator, "feature_names_in_", None)
    return np.asarray(kind.estimator.predict(frame if names is not None else frame.to_numpy()))


def _assert_same(got: list[Any], expected: np.ndarray, kind: Kind, runtime: str) -> None:
    if kind.task == "classification":
        assert got == expected.tolist()
        return
    values = np.asarray(got, dtype=np.float64)
    if runtime.startswith("runtime: onnxruntime"):
        bound = REGRESSION_TOLERANCE * np.maximum(1.0, np.abs(expected))
        assert np.all(np.abs(values - expected) <= bound)
    else:  # the library's own runtime: the very numbers (float32 ones as float32)
        assert np.array_equal(values.astype(expected.dtype), expected)


def _v2_inputs(kind: Kind, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    features = kind.columns[:-1]
    return [
        {
            "name": f,
            "shape": [len(rows)],
            "datatype": "BYTES" if f in kind.strings else "FP64",
            "data": [row[f] for row in rows],
        }
        for f in features
    ]


@pytest.mark.parametrize("served", KINDS, indirect=True)
def test_own_model_serves_what_it_predicts(
    served: tuple[Kind, str],
    client: httpx.Client,
    make_user: Callable[..., dict[str, str]],
    login: Callable[..., Any],
) -> None:
    kind, runtime = served
    tokens = Tokens(make_user, login)
    expected = _expected(kind)

    described = client.get(f"/v1/models/{kind.name}", headers=tokens.next())
    assert described.status_code == 200, described.text
    version = described.json()["versions"][0]
    assert version["task"] == kind.task
    assert version["runtime_reason"] == runtime.removeprefix("runtime: ")
    assert version["runtime"] == runtime.split()[1].rstrip(":")
    features = {f["name"]: f for f in version["input_schema"]["features"]}
    assert list(features) == kind.columns[:-1]
    for name, spec in features.items():
        if name in kind.strings:
            assert spec["type"] == "string" and spec["categories"] == kind.strings[name]
        else:
            assert spec["type"] == "float" and spec["min"] <= spec["max"]
    assert (version["classes"] == []) == (kind.task == "regression")

    r = client.post(
        f"/v1/models/{kind.name}/predict",
        json={"instances": kind.held_out},
        headers=tokens.next(),
    )
    assert r.status_code == 200, r.text
    _assert_same(r.json()["predictions"], expected, kind, runtime)

    output = "prediction" if kind.task == "regression" else "label"
    r = client.post(
        f"/v2/models/{kind.name}/infer",
        json={"inputs": _v2_inputs(kind, kind.held_out)},
        headers=tokens.next(),
    )
    assert r.status_code == 200, r.text
    tensor = r.json()["outputs"][0]
    assert tensor["name"] == output and tensor["shape"] == [len(kind.held_out)]
    _assert_same(tensor["data"], expected, kind, runtime)

    meta = client.get(f"/v2/models/{kind.name}", headers=tokens.next()).json()
    assert meta["parameters"]["task"] == kind.task
    assert meta["outputs"][0] == {"name": output, "datatype": tensor["datatype"], "shape": [-1]}
    if kind.strings:
        assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
            f: "BYTES" if f in kind.strings else "FP64" for f in kind.columns[:-1]
        }
        for tensor in meta["inputs"]:
            if tensor["name"] in kind.strings:
                categories = tensor["parameters"]["categories"].split(",")
                assert categories == kind.strings[tensor["name"]]

    _refusals(client, tokens, kind)


def _refusals(client: httpx.Client, tokens: Tokens, kind: Kind) -> None:
    row = dict(kind.held_out[0])
    number = next(f for f in kind.columns[:-1] if f not in kind.strings)
    cases: list[tuple[dict[str, Any], str]] = [
        ({**row, number: 1e6}, number),  # out of range
        ({**row, number: "1.5"}, number),  # a string for a number
    ]
    if kind.strings:
        cases += [
            ({**row, "colour": "purple"}, "colour"),  # unknown, refused by the encoder
            ({**row, "colour": 3}, "colour"),  # a number for a string
        ]
    for bad, field in cases:
        r = client.post(
            f"/v1/models/{kind.name}/predict", json={"instances": [bad]}, headers=tokens.next()
        )
        assert r.status_code == 422, r.text
        assert field in str(r.json()), r.text
    if kind.strings:
        # an unknown size: the encoder ignores it, so the model answers
        r = client.post(
            f"/v1/models/{kind.name}/predict",
            json={"instances": [{**row, "size": "XXL"}]},
            headers=tokens.next(),
        )
        assert r.status_code == 200, r.text
        r = client.post(
            f"/v2/models/{kind.name}/infer",
            json={"inputs": _v2_inputs(kind, [{**row, "colour": "purple"}])},
            headers=tokens.next(),
        )
        assert r.status_code == 422 and "colour" in r.text, r.text
    if kind.task == "regression":
        r = client.post(
            f"/v1/models/{kind.name}/predict",
            json={"instances": [row], "probabilities": True},
            headers=tokens.next(),
        )
        assert r.status_code == 422 and "probabilities" in r.text, r.text
