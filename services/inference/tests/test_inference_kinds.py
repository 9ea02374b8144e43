"""The kinds of model data scientists bring, in-process: a regressor, a Pipeline
with string columns fitted on a DataFrame, XGBoost and LightGBM. Each is trained
here, registered from a CSV, served from a signed store, and predicts through v1
and v2 what the estimator itself predicts; bad input is a 422 naming the field."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from modelgate_inference.builder import NotSigned, read_csv, register, sign_existing
from modelgate_inference.runtime import REGRESSION_TOLERANCE, load_model
from modelgate_inference.store import ModelRefused, load_private_key, load_public_key, sign_bytes

pytestmark = pytest.mark.anyio
HELD_OUT = 20


def shop_table(rows: int = 600, seed: int = 5) -> pd.DataFrame:
    """A generated table: two string columns, two numbers, a 0/1 target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue"], rows),
            "size": rng.choice(["S", "M", "L"], rows),
            "weight": rng.uniform(1.0, 50.0, rows).round(2),
            "age": rng.integers(18, 80, rows).astype(float),
        }
    )
    score = (frame.colour == "red") * 1.5 + (frame.weight - 25) / 10 + rng.normal(0, 0.5, rows)
    frame["bought"] = (score > 0).astype(int)
    return frame


def _shop_pipeline() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prepare = ColumnTransformer(
        [
            ("colour", OneHotEncoder(), ["colour"]),  # unknown colours: the encoder fails
            ("size", OneHotEncoder(handle_unknown="ignore"), ["size"]),
            ("numbers", StandardScaler(), ["weight", "age"]),
        ]
    )
    forest = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0)
    return Pipeline([("prepare", prepare), ("forest", forest)])


def _diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    return load_diabetes(as_frame=True).frame


def _breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    return frame


def _models() -> dict[str, tuple[Any, pd.DataFrame, str, bool]]:
    """name: (estimator, table, target, fitted on a DataFrame)."""
    from lightgbm import LGBMRegressor
    from sklearn.linear_model import Ridge
    from xgboost import XGBClassifier

    return {
        "ridge": (Ridge(alpha=0.5), _diabetes(), "target", False),
        "shop": (_shop_pipeline(), shop_table(), "bought", True),
        "xgb": (XGBClassifier(n_estimators=20, max_depth=3), _breast_cancer(), "target", True),
        "lgbm": (LGBMRegressor(n_estimators=20, verbose=-1), _diabetes(), "target", False),
    }


def within_training(held: pd.DataFrame, train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The held-out rows whose numbers lie in the training range (the input schema's
    bounds refuse others), and the training rows."""
    numbers = train.select_dtypes("number")
    inside = (held[numbers.columns] >= numbers.min()) & (held[numbers.columns] <= numbers.max())
    return held[inside.all(axis=1)], train


KINDS: dict[str, tuple[Any, pd.DataFrame]] = {}  # name: (fitted estimator, held-out rows)


@pytest.fixture(scope="session")
def kinds_store(
    tmp_path_factory: pytest.TempPathFactory, demo_store: Path, signing_keys: tuple[Path, Path]
) -> Path:
    work = tmp_path_factory.mktemp("kinds")
    store = work / "model_store"
    shutil.copytree(demo_store, store)
    for name, (estimator, table, target, dataframe) in _models().items():
        held, train = within_training(table.iloc[:HELD_OUT], table.iloc[HELD_OUT:])
        X = train.drop(columns=[target])
        estimator.fit(X if dataframe else X.to_numpy(), train[target])
        joblib.dump(estimator, work / f"{name}.joblib")
        train.to_csv(work / f"{name}.csv", index=False)
        register(
            store,
            signing_keys[0],
            name=name,
            artifact=work / f"{name}.joblib",
            data=read_csv(work / f"{name}.csv", target),
        )
        KINDS[name] = (estimator, held.drop(columns=[target]))
    return store


@pytest.fixture
def store(tmp_path: Path, kinds_store: Path) -> Path:
    """A writable copy of the store with every kind, for one test."""
    target = tmp_path / "model_store"
    shutil.copytree(kinds_store, target)
    return target


def manifest_of(store: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((store / name / "1" / "manifest.json").read_text()))


def expected(name: str) -> np.ndarray:
    estimator, held = KINDS[name]
    names = getattr(estimator, "feature_names_in_", None)
    return np.asarray(estimator.predict(held if names is not None else held.to_numpy()))


def rows(name: str) -> list[dict[str, Any]]:
    return list(KINDS[name][1].to_dict("records"))


def per_feature(rows: list[dict[str, Any]], strings: set[str]) -> list[dict[str, Any]]:
    return [
        {
            "name": f,
            "shape": [len(rows)],
            "datatype": "BYTES" if f in strings else "FP64",
            "data": [r[f] for r in rows],
        }
        for f in rows[0]
    ]


def test_registration_picks_the_runtime_and_says_why(store: Path) -> None:
    ridge, shop, xgb, lgbm = (manifest_of(store, n) for n in ("ridge", "shop", "xgb", "lgbm"))
    assert ridge["task"] == "regression" and ridge["classes"] == []
    assert ridge["runtime_reason"].startswith("onnxruntime: the float64 ONNX graph reproduces")
    # a forest behind a float32 scaler: rows near a split land on the other side
    assert shop["task"] == "classification" and "onnx" not in shop["artifacts"]
    assert shop["runtime_reason"].startswith("sklearn: no exact ONNX graph (float64 graph: ")
    assert xgb["library"] == "xgboost" and "onnx" in xgb["artifacts"]
    assert "split-threshold rows" in xgb["runtime_reason"]
    assert "xgboost" in xgb["framework"]
    # LightGBM splits on float64 thresholds; its float32 graph sends rows the other way
    assert lgbm["library"] == "lightgbm" and "onnx" not in lgbm["artifacts"]
    assert lgbm["runtime_reason"].startswith("lightgbm: no exact ONNX graph (float32 graph: ")
    colour, size, weight, age = shop["input"]["features"]
    assert colour == {
        "name": "colour",
        "type": "string",
        "categories": ["blue", "green", "red"],
        "unknown": "refuse",
    }
    assert size["unknown"] == "accept" and weight["type"] == age["type"] == "float"


@pytest.mark.parametrize("name", ["ridge", "shop", "xgb", "lgbm"])
async def test_v1_and_v2_predict_what_the_estimator_predicts(
    client: httpx.AsyncClient, auth: Any, store: Path, name: str
) -> None:
    manifest = manifest_of(store, name)
    want = expected(name)
    strings = {f["name"] for f in manifest["input"]["features"] if f["type"] == "string"}
    r = await client.post(
        f"/v1/models/{name}/predict", json={"instances": rows(name)}, headers=auth()
    )
    assert r.status_code == 200, r.text
    v1 = r.json()["predictions"]
    if strings:
        body = {"inputs": per_feature(rows(name), strings)}
    else:
        data = KINDS[name][1].to_numpy()
        body = {"inputs": [{"name": "input", "shape": list(data.shape), "datatype": "FP64",
                            "data": data.reshape(-1).tolist()}]}  # fmt: skip
    r = await client.post(f"/v2/models/{name}/infer", json=body, headers=auth())
    assert r.status_code == 200, r.text
    output = r.json()["outputs"][0]
    for got in (v1, output["data"]):
        if manifest["task"] == "classification":
            assert got == want.tolist()
            assert output["name"] == "label" and output["datatype"] == "INT64"
        elif "onnx" in manifest["artifacts"]:
            bound = REGRESSION_TOLERANCE * np.maximum(1.0, np.abs(want))
            assert np.all(np.abs(np.asarray(got) - want) <= bound)
        else:  # the library's own runtime: its very numbers
            assert np.array_equal(np.asarray(got, dtype=want.dtype), want)
    if manifest["task"] == "regression":
        assert output["name"] == "prediction"
        assert output["datatype"] == ("FP32" if want.dtype == np.float32 else "FP64")


async def test_metadata_describes_each_kind(client: httpx.AsyncClient, auth: Any) -> None:
    shop = (await client.get("/v1/models/shop", headers=auth())).json()["versions"][0]
    assert shop["task"] == "classification" and shop["classes"] == [0, 1]
    colour = shop["input_schema"]["features"][0]
    assert colour["categories"] == ["blue", "green", "red"]
    assert colour["unknown_categories"] == "refused"
    assert shop["input_schema"]["features"][1]["unknown_categories"] == "accepted"
    meta = (await client.get("/v2/models/shop", headers=auth())).json()
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("colour", "BYTES", [-1]),
        ("size", "BYTES", [-1]),
        ("weight", "FP64", [-1]),
        ("age", "FP64", [-1]),
    ]
    assert meta["inputs"][0]["parameters"] == {
        "type": "string",
        "categories": "blue,green,red",
        "unknown_categories": "refused",
    }
    assert meta["inputs"][1]["parameters"]["unknown_categories"] == "accepted"
    weight = meta["inputs"][2]["parameters"]
    assert weight["type"] == "float" and 0.0 <= weight["min"] < 1.0 < 50.0 < weight["max"]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    ridge = (await client.get("/v2/models/ridge", headers=auth())).json()
    assert ridge["parameters"]["task"] == "regression" and "classes" not in ridge["parameters"]
    assert ridge["outputs"] == [{"name": "prediction", "datatype": "FP64", "shape": [-1]}]
    lgbm = (await client.get("/v1/models/lgbm", headers=auth())).json()["versions"][0]
    assert lgbm["runtime"] == "lightgbm" and lgbm["classes"] == []
    assert lgbm["runtime_reason"].startswith("lightgbm: no exact ONNX graph")


def _assert_422(r: httpx.Response, loc: tuple[object, ...], text: str = "") -> None:
    assert r.status_code == 422, r.text
    got = tuple(r.json()["detail"][0]["loc"])
    assert got[: len(loc)] == loc, got
    assert text in r.text


async def test_bad_rows_are_refused_naming_the_field(client: httpx.AsyncClient, auth: Any) -> None:
    row = rows("shop")[0]
    cases: list[tuple[dict[str, Any], tuple[object, ...], str]] = [
        ({**row, "colour": "purple"}, ("colour",), "not a category of 'colour'"),
        ({**row, "colour": 3}, ("colour",), ""),
        ({**row, "colour": None}, ("colour",), ""),
        ({**row, "colour": "x" * 300}, ("colour",), ""),
        ({**row, "weight": "heavy"}, ("weight",), ""),
        ({**row, "weight": 1e9}, ("weight",), ""),
        ({k: v for k, v in row.items() if k != "size"}, ("size",), ""),
        ({**row, "extra": "x"}, ("extra",), ""),
    ]
    for bad, field, text in cases:
        r = await client.post(
            "/v1/models/shop/predict", json={"instances": [row, bad]}, headers=auth()
        )
        _assert_422(r, ("body", "instances", 1, *field), text)
    # an unknown size is accepted: its encoder ignores unknown categories
    r = await client.post(
        "/v1/models/shop/predict", json={"instances": [{**row, "size": "XXL"}]}, headers=auth()
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/models/ridge/predict",
        json={"instances": rows("ridge")[:1], "probabilities": True},
        headers=auth(),
    )
    _assert_422(r, ("body", "probabilities"), "regression model has no probabilities")


async def test_bad_tensors_are_refused(client: httpx.AsyncClient, auth: Any) -> None:
    good = per_feature(rows("shop")[:2], {"colour", "size"})

    def with_(index: int, **change: Any) -> dict[str, Any]:
        inputs = [dict(t) for t in good]
        inputs[index].update(change)
        return {"inputs": inputs}

    cases: list[tuple[dict[str, Any], tuple[object, ...], str]] = [
        (with_(0, data=["purple", "red"]), ("inputs", 0, "data", 0), "not a category seen"),
        (with_(0, datatype="FP64", data=[1.0, 2.0]), ("inputs", 0, "datatype"), "BYTES"),
        (with_(0, data=[1.0, 2.0]), ("inputs", 0, "data"), "must be strings"),
        (with_(2, datatype="BYTES", data=["a", "b"]), ("inputs", 2, "datatype"), "not numeric"),
        (with_(2, data=[1.0, 1e9]), ("inputs", 2, "data", 1), "must be between"),
        (with_(0, data=["red", 1.0]), ("inputs", 0, "data"), ""),
        (with_(0, data=["red"]), ("inputs", 0, "data"), "shape [2] needs 2"),
        # a huge shape is refused from the request's own numbers, before any array
        (with_(0, shape=[10**12]), ("inputs", 0, "shape"), "rows must be between"),
        (with_(1, shape=[2, 10**9]), ("inputs", 1, "shape"), ""),
        ({"inputs": good[:3]}, ("inputs",), "missing input tensors: age"),
        (
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 4],
                        "datatype": "FP64",
                        "data": [1.0, 2.0, 3.0, 4.0],
                    }
                ]
            },
            ("inputs", 0, "name"),
            "string features",
        ),
    ]
    for body, loc, text in cases:
        r = await client.post("/v2/models/shop/infer", json=body, headers=auth())
        _assert_422(r, ("body", *loc), text)
    ridge = rows("ridge")[:1]
    body = {
        "inputs": per_feature(ridge, set()),
        "outputs": [{"name": "probabilities"}],
    }
    r = await client.post("/v2/models/ridge/infer", json=body, headers=auth())
    _assert_422(r, ("body", "outputs", 0, "name"), "no probabilities")


def _resign(folder: Path, private: Path, manifest: dict[str, Any]) -> None:
    raw = json.dumps(manifest, indent=2).encode()
    (folder / "manifest.json").write_bytes(raw)
    (folder / "manifest.sig").write_bytes(sign_bytes(raw, load_private_key(private)))


def test_library_runtime_keeps_every_loader_check(
    store: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """A LightGBM version served by LightGBM itself: a swapped artifact is refused
    unread and never re-signed; a manifest naming another library is refused."""
    folder = store / "lgbm" / "1"
    public = load_public_key(signing_keys[1])
    model = load_model(folder, public, bounds_margin=0.1, max_batch=10)
    assert model.runtime.kind == "lightgbm"
    marker = tmp_path / "pwned"

    class Marker:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    original = (folder / "model.joblib").read_bytes()
    (folder / "model.joblib").write_bytes(pickle.dumps(Marker()))
    with pytest.raises(ModelRefused, match="sklearn artifact digest"):
        load_model(folder, public, bounds_margin=0.1, max_batch=10)
    with pytest.raises(NotSigned, match="sklearn artifact digest"):
        sign_existing(folder, signing_keys[0], signing_keys[1])
    assert not marker.exists()
    (folder / "model.joblib").write_bytes(original)
    manifest = manifest_of(store, "lgbm")
    manifest["library"] = "xgboost"
    _resign(folder, signing_keys[0], manifest)
    with pytest.raises(ModelRefused, match="not a xgboost model"):
        load_model(folder, public, bounds_margin=0.1, max_batch=10)


def test_inexact_regression_reference_is_refused(
    store: Path, signing_keys: tuple[Path, Path]
) -> None:
    """The library's runtime must give the manifest's very numbers."""
    folder = store / "lgbm" / "1"
    manifest = manifest_of(store, "lgbm")
    manifest["reference"]["predictions"][0] *= 1 + 1e-9
    _resign(folder, signing_keys[0], manifest)
    with pytest.raises(ModelRefused, match="reference predictions differ"):
        load_model(folder, load_public_key(signing_keys[1]), bounds_margin=0.1, max_batch=10)


def _write_csv(path: Path, header: list[str], body: list[list[Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(body)
    return path


def test_read_csv_types_and_refusals(tmp_path: Path) -> None:
    data = read_csv(
        _write_csv(tmp_path / "a.csv", ["colour", "w", "y"], [["red", 1, 0], ["blue", 2.5, 1]]),
        "y",
    )
    assert data.features == ["colour", "w"] and data.tabular
    assert data.columns["colour"].tolist() == ["red", "blue"]
    assert data.columns["w"].dtype == np.float64 and data.y is not None
    assert data.y.tolist() == [0, 1]
    for body, message in [
        ([["red", "", 0]], "empty cells"),
        ([["red", "inf", 0]], "infinite"),
        ([["x" * 300, 1, 0]], "over 256 characters"),
    ]:
        path = _write_csv(tmp_path / "b.csv", ["colour", "w", "y"], body)
        with pytest.raises(ValueError, match=message):
            read_csv(path, "y")
    with pytest.raises(ValueError, match="not in the header"):
        read_csv(tmp_path / "a.csv", "missing")


def test_register_refuses_mismatched_data(tmp_path: Path, signing_keys: tuple[Path, Path]) -> None:
    estimator = _shop_pipeline().fit(shop_table().drop(columns=["bought"]), shop_table().bought)
    joblib.dump(estimator, tmp_path / "m.joblib")
    table = shop_table().drop(columns=["age"])
    table.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=r"missing from the data: \['age'\]"):
        register(
            tmp_path / "store",
            signing_keys[0],
            name="shop",
            artifact=tmp_path / "m.joblib",
            data=read_csv(tmp_path / "t.csv", "bought"),
        )
    joblib.dump({"not": "a model"}, tmp_path / "x.joblib")
    with pytest.raises(ValueError, match="not a fitted scikit-learn classifier or regressor"):
        register(
            tmp_path / "store",
            signing_keys[0],
            name="x",
            artifact=tmp_path / "x.joblib",
            data=read_csv(tmp_path / "t.csv", "bought"),
        )
