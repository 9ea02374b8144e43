"""`modelgate model build-demo|register|edit|sign|verify|list` and the init step."""

from __future__ import annotations

import csv
import hashlib
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
    # list checks the signature only: version 2's manifest is still validly signed
    assert code == 0, out
    assert "RandomForestClassifier" in listed(out)[("iris", "2")], out
    assert "REFUSED" not in out
    assert not marker.exists()


def listed(out: str) -> dict[tuple[str, str], str]:
    """`model list` output by (name, version): the rest of each line."""
    rows = {}
    for line in out.splitlines():
        name, version, rest = line.split(maxsplit=2)
        rows[(name, version)] = rest
    return rows


def test_sign_refuses_an_artifact_and_manifest_changed_together(project: Path) -> None:
    """The forger swaps the artifact and rewrites the manifest's digest to match: sign
    leaves the signature as it was and fails, and the version stays refused."""
    code, out = invoke("build-demo", "iris")
    assert code == 0, out
    folder = project / "model_store" / "iris" / "1"
    marker = project / "pwned"

    class Marker:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    crafted = pickle.dumps(Marker())
    (folder / "model.joblib").write_bytes(crafted)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["artifacts"] = {
        "sklearn": {
            "file": "model.joblib",
            "format": "joblib",
            "sha256": hashlib.sha256(crafted).hexdigest(),
            "bytes": len(crafted),
        }
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (folder / "model.onnx").unlink()
    signature = (folder / "manifest.sig").read_bytes()

    code, out = invoke("sign", "iris", "1")
    assert code == 1, out
    assert "signature invalid" in out and "not signing" in out and "--i-built-this" in out
    assert (folder / "manifest.sig").read_bytes() == signature
    code, out = invoke("verify", "iris", "1")
    assert code == 1 and "REFUSED  manifest signature invalid" in out
    assert listed(invoke("list")[1])[("iris", "1")].startswith("REFUSED")
    assert not marker.exists()


def test_edit_and_sign_i_built_this(project: Path) -> None:
    code, out = invoke("build-demo", "iris")
    assert code == 0, out
    folder = project / "model_store" / "iris" / "1"
    code, out = invoke("sign", "iris", "1")
    assert code == 0 and "nothing to sign" in out
    code, out = invoke("edit", "iris", "1")
    assert code == 1 and "nothing to change" in out
    code, out = invoke("edit", "iris", "1", "--description", "Fisher's iris, 2026 retrain")
    assert code == 0, out
    assert "Fisher's iris" in json.loads((folder / "manifest.json").read_text())["description"]
    code, out = invoke("verify", "iris", "1")
    assert code == 0 and "iris:1  ok" in out

    # an operator who rebuilt the graph themself vouches for the files as they stand
    graph = (folder / "model.onnx").read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["artifacts"]["onnx"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    code, out = invoke("edit", "iris", "1", "--description", "x")
    assert code == 1 and "signature invalid" in out
    code, out = invoke("sign", "iris", "1", "--i-built-this")
    assert code == 0, out
    assert f"model.onnx  sha256 {hashlib.sha256(graph).hexdigest()}  {len(graph)} bytes" in out
    code, out = invoke("verify", "iris", "1")
    assert code == 0 and "iris:1  ok" in out


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
