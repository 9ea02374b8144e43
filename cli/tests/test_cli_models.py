"""`modelgate model build-demo|register|sign|verify|list` and the init step."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import joblib
import pytest
from modelgate_cli.main import app
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MG_ROOT", str(tmp_path))
    for name in ("MG_CERTS_DIR", "MG_SECRETS_DIR", "MG_MODEL_STORE", "MG_VAR_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["model", *args])
    return result.exit_code, result.output


def test_build_verify_list_and_tamper(project: Path) -> None:
    code, out = invoke("build-demo", "iris")
    assert code == 0, out
    assert (project / "secrets" / "model_signing_key").stat().st_mode & 0o777 == 0o600
    assert (project / "model_store" / "iris" / "1" / "manifest.sig").exists()
    code, out = invoke("verify")
    assert code == 0 and "iris:1  ok  serves on onnxruntime" in out
    code, out = invoke("list")
    assert code == 0 and "iris" in out and "RandomForestClassifier" in out
    code, out = invoke("build-demo", "iris")  # the next version, never an overwrite
    assert code == 0 and (project / "model_store" / "iris" / "2").is_dir()

    marker = project / "pwned"

    class Marker:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    (project / "model_store" / "iris" / "2" / "model.joblib").write_bytes(pickle.dumps(Marker()))
    code, out = invoke("verify")
    assert code == 1
    assert "iris:1  ok" in out and "iris:2  REFUSED  sklearn artifact digest" in out
    code, out = invoke("sign", "iris", "2")
    assert code == 1 and "not signing" in out
    code, out = invoke("list")
    assert "iris:2" not in out and "REFUSED" not in out  # list checks the signature only
    assert not marker.exists()


def test_register_a_model_from_csv(project: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_wine
    from sklearn.tree import DecisionTreeClassifier

    code, out = invoke("build-demo", "iris")  # creates the signing key
    assert code == 0, out
    data = load_wine()
    features = [f"f_{name}" for name in data.feature_names]
    features = [f.replace("/", "_") for f in features]
    model = DecisionTreeClassifier(max_depth=4, random_state=0).fit(data.data, data.target)
    joblib.dump(model, tmp_path / "wine.joblib")
    with (tmp_path / "wine.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*features, "cultivar"])
        writer.writerows([*row, target] for row, target in zip(data.data, data.target, strict=True))
    code, out = invoke(
        "register",
        "wine",
        str(tmp_path / "wine.joblib"),
        "--data",
        str(tmp_path / "wine.csv"),
        "--target",
        "cultivar",
    )
    assert code == 0, out
    manifest = json.loads((project / "model_store" / "wine" / "1" / "manifest.json").read_text())
    assert [f["name"] for f in manifest["input"]["features"]] == features
    assert manifest["classes"] == [0, 1, 2]
    assert manifest["metrics"]["accuracy_on_data"] > 0.9
    code, out = invoke("verify", "wine")
    assert code == 0 and "wine:1  ok" in out


def test_register_refuses_bad_data(project: Path, tmp_path: Path) -> None:
    invoke("build-demo", "iris")
    (tmp_path / "bad.csv").write_text("a b,c\n1,2\n")
    joblib.dump({"not": "a model"}, tmp_path / "x.joblib")
    code, out = invoke(
        "register", "x", str(tmp_path / "x.joblib"), "--data", str(tmp_path / "bad.csv")
    )
    assert code == 1 and "not a valid feature name" in out


def test_init_builds_the_demo_models_once(project: Path) -> None:
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    assert "demo model iris version 1" in result.output
    assert "demo model breast_cancer version 1" in result.output
    result = runner.invoke(app, ["init"])
    assert "demo model" not in result.output
