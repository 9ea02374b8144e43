"""The signed store: only a manifest signed by the model-signing key, naming this
very folder, with every artifact matching its digest, ever reaches a loader.

The tamper tests place a crafted pickle whose unpickling would create a marker
file; the marker must never appear."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from modelgate_inference.builder import NotSigned, edit_manifest, sign_existing, write_version
from modelgate_inference.runtime import load_model
from modelgate_inference.store import (
    ModelRefused,
    ensure_signing_key,
    key_id,
    load_public_key,
    read_verified_manifest,
    sign_bytes,
)


class Marker:
    """Unpickling this creates ``path`` (an empty file): proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def crafted_pickle(marker: Path) -> bytes:
    return pickle.dumps(Marker(marker))


def load(folder: Path, public: Path):  # type: ignore[no-untyped-def]
    return load_model(folder, load_public_key(public), bounds_margin=0.5, max_batch=100)


def rewrite_manifest(folder: Path, **changes: object) -> bytes:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    raw = json.dumps(manifest, indent=2).encode()
    (folder / "manifest.json").write_bytes(raw)
    return raw


def point_manifest_at(folder: Path, artifact: bytes) -> bytes:
    """The manifest as a forger writes it: the crafted artifact's digest, no ONNX."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["artifacts"] = {
        "sklearn": {
            "file": "model.joblib",
            "format": "joblib",
            "sha256": hashlib.sha256(artifact).hexdigest(),
            "bytes": len(artifact),
        }
    }
    raw = json.dumps(manifest, indent=2).encode()
    (folder / "manifest.json").write_bytes(raw)
    (folder / "model.onnx").unlink(missing_ok=True)
    return raw


def test_demo_models_load_on_onnx_runtime(store: Path, signing_keys: tuple[Path, Path]) -> None:
    for name in ("iris", "breast_cancer"):
        model = load(store / name / "1", signing_keys[1])
        assert (model.name, model.version) == (name, "1")
        assert model.runtime.kind == "onnxruntime"
        assert model.manifest.artifacts.onnx is not None
        assert model.manifest.artifacts.onnx.checked_rows > 1000  # type: ignore[operator]


def test_manifest_records_what_the_contract_names(store: Path) -> None:
    manifest = json.loads((store / "iris" / "1" / "manifest.json").read_text())
    assert manifest["name"] == "iris" and manifest["version"] == "1" and manifest["created"]
    assert manifest["estimator"] == "RandomForestClassifier"
    assert {"scikit-learn", "numpy", "python"} <= set(manifest["framework"])
    artifact = (store / "iris" / "1" / "model.joblib").read_bytes()
    assert manifest["artifacts"]["sklearn"]["sha256"] == hashlib.sha256(artifact).hexdigest()
    features = manifest["input"]["features"]
    assert [f["name"] for f in features] == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
    ]
    assert features[0]["min"] == 4.3 and features[0]["max"] == 7.9  # from the training data
    assert manifest["classes"] == [0, 1, 2]
    assert len(manifest["reference"]["inputs"]) == len(manifest["reference"]["predictions"]) > 0
    assert manifest["metrics"]["cv5_accuracy_mean"] > 0.9


def test_untouched_version_verifies(store: Path, signing_keys: tuple[Path, Path]) -> None:
    verified = read_verified_manifest(store / "iris" / "1", load_public_key(signing_keys[1]))
    assert verified.manifest.name == "iris"
    assert verified.artifact("sklearn")[:2] != b""


def test_stale_manifest_with_crafted_artifact_is_refused(
    store: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """A genuine, validly signed manifest of iris/1 copied next to a crafted pickle
    as iris/2: the signature verifies, but it vouches for another folder."""
    marker = tmp_path / "pwned"
    evil = store / "iris" / "2"
    evil.mkdir()
    shutil.copy(store / "iris" / "1" / "manifest.json", evil)
    shutil.copy(store / "iris" / "1" / "manifest.sig", evil)
    (evil / "model.joblib").write_bytes(crafted_pickle(marker))
    with pytest.raises(ModelRefused, match="manifest is for iris/1"):
        load(evil, signing_keys[1])
    assert not marker.exists()


def test_crafted_artifact_under_a_genuine_manifest_is_refused(
    store: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """The right manifest for this very folder, the artifact swapped: digest mismatch,
    even though the ONNX graph (which would serve) is untouched."""
    marker = tmp_path / "pwned"
    (store / "iris" / "1" / "model.joblib").write_bytes(crafted_pickle(marker))
    with pytest.raises(ModelRefused, match="sklearn artifact digest"):
        load(store / "iris" / "1", signing_keys[1])
    assert not marker.exists()


def test_forged_manifest_with_the_old_signature_is_refused(
    store: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    folder = store / "iris" / "1"
    artifact = crafted_pickle(marker)
    (folder / "model.joblib").write_bytes(artifact)
    point_manifest_at(folder, artifact)
    with pytest.raises(ModelRefused, match="manifest signature invalid"):
        load(folder, signing_keys[1])
    assert not marker.exists()


def test_forged_manifest_signed_with_another_key_is_refused(
    store: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    folder = store / "iris" / "1"
    artifact = crafted_pickle(marker)
    (folder / "model.joblib").write_bytes(artifact)
    raw = point_manifest_at(folder, artifact)
    attacker = Ed25519PrivateKey.generate()
    (folder / "manifest.sig").write_bytes(sign_bytes(raw, attacker))
    with pytest.raises(ModelRefused, match="unknown key"):
        load(folder, signing_keys[1])
    # ...and claiming the real key's id does not help.
    document = {
        "algorithm": "Ed25519",
        "key_id": key_id(load_public_key(signing_keys[1])),
        "signature": base64.b64encode(attacker.sign(raw)).decode(),
    }
    (folder / "manifest.sig").write_text(json.dumps(document))
    with pytest.raises(ModelRefused, match="manifest signature invalid"):
        load(folder, signing_keys[1])
    assert not marker.exists()


@pytest.mark.parametrize(
    "signature",
    [b"", b"not json", b'{"algorithm": "RS256", "key_id": "x", "signature": "AA=="}', b"[]"],
)
def test_malformed_signature_files_are_refused(
    store: Path, signing_keys: tuple[Path, Path], signature: bytes
) -> None:
    (store / "iris" / "1" / "manifest.sig").write_bytes(signature)
    with pytest.raises(ModelRefused):
        load(store / "iris" / "1", signing_keys[1])


def test_missing_signature_or_manifest_is_refused(
    store: Path, signing_keys: tuple[Path, Path]
) -> None:
    (store / "iris" / "1" / "manifest.sig").unlink()
    with pytest.raises(ModelRefused, match="signature is missing"):
        load(store / "iris" / "1", signing_keys[1])
    (store / "breast_cancer" / "1" / "manifest.json").unlink()
    with pytest.raises(ModelRefused, match="manifest is missing"):
        load(store / "breast_cancer" / "1", signing_keys[1])


def test_symlinked_artifact_is_refused(
    store: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = store / "iris" / "1"
    outside = tmp_path / "elsewhere.joblib"
    shutil.move(folder / "model.joblib", outside)
    os.symlink(outside, folder / "model.joblib")
    with pytest.raises(ModelRefused, match="cannot be opened"):
        load(folder, signing_keys[1])


def test_tampered_onnx_graph_refuses_the_version(
    store: Path, signing_keys: tuple[Path, Path]
) -> None:
    graph = store / "iris" / "1" / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ModelRefused, match="onnx artifact digest"):
        load(store / "iris" / "1", signing_keys[1])


def test_sign_refuses_to_bless_a_changed_artifact(
    store: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = store / "iris" / "1"
    signature = (folder / "manifest.sig").read_bytes()
    (folder / "model.joblib").write_bytes(crafted_pickle(tmp_path / "pwned"))
    with pytest.raises(NotSigned, match="sklearn artifact digest does not match"):
        sign_existing(folder, *signing_keys)
    assert (folder / "manifest.sig").read_bytes() == signature
    assert not (tmp_path / "pwned").exists()


def test_sign_refuses_an_artifact_and_manifest_changed_together(
    store: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """Whoever can swap an artifact can rewrite the manifest's digest to match it: the
    manifest on disk vouches for nothing, so signing it as it stands is refused."""
    folder = store / "iris" / "1"
    signature = (folder / "manifest.sig").read_bytes()
    crafted = crafted_pickle(tmp_path / "pwned")
    (folder / "model.joblib").write_bytes(crafted)
    point_manifest_at(folder, crafted)
    with pytest.raises(NotSigned, match="signature invalid"):
        sign_existing(folder, *signing_keys)
    assert (folder / "manifest.sig").read_bytes() == signature
    with pytest.raises(ModelRefused, match="signature invalid"):
        load(folder, signing_keys[1])
    assert not (tmp_path / "pwned").exists()


def test_sign_refuses_a_hand_edited_manifest(store: Path, signing_keys: tuple[Path, Path]) -> None:
    folder = store / "iris" / "1"
    signature = (folder / "manifest.sig").read_bytes()
    rewrite_manifest(folder, description="edited by hand")
    with pytest.raises(NotSigned, match="signature invalid"):
        sign_existing(folder, *signing_keys)
    assert (folder / "manifest.sig").read_bytes() == signature


def test_sign_of_a_verifying_version_changes_nothing(
    store: Path, signing_keys: tuple[Path, Path]
) -> None:
    folder = store / "iris" / "1"
    before = {f: (folder / f).read_bytes() for f in ("manifest.json", "manifest.sig")}
    assert sign_existing(folder, *signing_keys) == []
    assert {f: (folder / f).read_bytes() for f in before} == before


def test_edit_changes_operator_fields_and_nothing_else(
    store: Path, signing_keys: tuple[Path, Path]
) -> None:
    folder = store / "iris" / "1"
    before = json.loads((folder / "manifest.json").read_text())
    edit_manifest(
        folder, *signing_keys, description="edited by the operator", class_names=["a", "b", "c"]
    )
    after = json.loads((folder / "manifest.json").read_text())
    assert after.pop("description") == "edited by the operator"
    assert after.pop("class_names") == ["a", "b", "c"]
    before.pop("description"), before.pop("class_names")
    assert after == before
    assert load(folder, signing_keys[1]).manifest.description == "edited by the operator"


def test_edit_refuses_a_version_whose_signature_fails(
    store: Path, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = store / "iris" / "1"
    crafted = crafted_pickle(tmp_path / "pwned")
    (folder / "model.joblib").write_bytes(crafted)
    raw = point_manifest_at(folder, crafted)
    signature = (folder / "manifest.sig").read_bytes()
    with pytest.raises(NotSigned, match="signature invalid"):
        edit_manifest(folder, *signing_keys, description="looks harmless")
    assert (folder / "manifest.json").read_bytes() == raw
    assert (folder / "manifest.sig").read_bytes() == signature
    with pytest.raises(ValueError, match="2 classes; 3 names"):
        edit_manifest(store / "breast_cancer" / "1", *signing_keys, class_names=["a", "b", "c"])
    assert not (tmp_path / "pwned").exists()


def test_sign_i_built_this_rebuilds_the_digests_from_the_files(
    store: Path, signing_keys: tuple[Path, Path]
) -> None:
    """The operator vouches for the files as they stand: the digests come from the
    files (never from the manifest on disk), and the version loads again."""
    folder = store / "iris" / "1"
    graph = (folder / "model.onnx").read_bytes()
    rewrite_manifest(folder, description="rebuilt")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["artifacts"]["onnx"]["sha256"] = "0" * 64  # whatever the disk says
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    digests = sign_existing(folder, *signing_keys, i_built_this=True)
    assert [(d.kind, d.file) for d in digests] == [
        ("sklearn", "model.joblib"),
        ("onnx", "model.onnx"),
    ]
    assert digests[1].sha256 == hashlib.sha256(graph).hexdigest()
    assert digests[1].bytes == len(graph)
    model = load(folder, signing_keys[1])
    assert model.manifest.description == "rebuilt"
    assert model.runtime.kind == "onnxruntime"


def test_versions_are_immutable(store: Path, signing_keys: tuple[Path, Path]) -> None:
    import joblib

    estimator = joblib.load(store / "iris" / "1" / "model.joblib")
    from modelgate_inference.builder import TrainingData
    from sklearn.datasets import load_iris

    data = load_iris()
    training = TrainingData.from_matrix(
        ["sepal_length", "sepal_width", "petal_length", "petal_width"], data.data, None, "iris"
    )
    with pytest.raises(FileExistsError):
        write_version(
            store,
            signing_keys[0],
            name="iris",
            version="1",
            estimator=estimator,
            data=training,
            metrics={},
        )


def test_signing_key_is_private(tmp_path: Path) -> None:
    private, public = tmp_path / "k", tmp_path / "k.pub"
    assert ensure_signing_key(private, public) is True
    assert private.stat().st_mode & 0o777 == 0o600
    assert ensure_signing_key(private, public) is False  # idempotent
    assert load_public_key(public)
