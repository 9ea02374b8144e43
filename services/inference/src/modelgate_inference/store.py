"""The signed model store: ``model_store/<name>/<version>/``.

Each version folder holds the artifacts (``model.joblib``, optionally
``model.onnx``), ``manifest.json`` and ``manifest.sig``. The signature is an
Ed25519 signature over the exact bytes of ``manifest.json``; the manifest
names the SHA-256 of every artifact. Nothing here unpickles anything: callers
get artifact *bytes* only after the signature and the digest verified, and
load from those bytes (never from the path again, so the file cannot be
swapped between the check and the load).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from modelgate_common import private_file_problem, write_private, write_public
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
MANIFEST_FORMAT: Final = "modelgate.manifest/1"
SIGNATURE_ALGORITHM = "Ed25519"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_SIGNATURE_BYTES = 4096
MAX_ARTIFACT_BYTES = 512 * 1024 * 1024

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
VERSION_PATTERN = r"^[1-9][0-9]{0,8}$"
FEATURE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


class ModelRefused(Exception):
    """A model version that must not be served; ``reason`` says why (safe to log)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# --- manifest schema -------------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", frozen=True)


MAX_CATEGORIES = 1024
MAX_CATEGORY_CHARS = 256
Category = Annotated[str, Field(min_length=0, max_length=MAX_CATEGORY_CHARS)]


class FeatureSpec(BaseModel):
    """One input feature: a number within the training range, or a string whose
    training categories are listed; ``unknown`` says whether a category outside
    them is refused (the encoder would fail) or accepted (it encodes to zeros)."""

    model_config = _STRICT
    name: Annotated[str, Field(pattern=FEATURE_PATTERN)]
    type: Literal["float", "string"] = "float"
    min: float | None = Field(None, allow_inf_nan=False)
    max: float | None = Field(None, allow_inf_nan=False)
    categories: Annotated[list[Category], Field(min_length=1, max_length=MAX_CATEGORIES)] | None = (
        None
    )
    unknown: Literal["refuse", "accept"] = "refuse"

    @model_validator(mode="after")
    def _kind_fields(self) -> FeatureSpec:
        if self.type == "float":
            if self.min is None or self.max is None or self.min > self.max:
                raise ValueError("a float feature needs min <= max")
            if self.categories is not None:
                raise ValueError("a float feature has no categories")
        elif self.categories is None or self.min is not None or self.max is not None:
            raise ValueError("a string feature needs categories and no bounds")
        return self


class InputSpec(BaseModel):
    model_config = _STRICT
    features: Annotated[list[FeatureSpec], Field(min_length=1, max_length=4096)]


class ArtifactSpec(BaseModel):
    model_config = _STRICT
    file: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")]
    format: Literal["joblib", "onnx"]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    bytes: Annotated[int, Field(ge=0, le=MAX_ARTIFACT_BYTES)]
    # ONNX only: the dtype the graph takes (float32 for tree models: scikit-learn itself
    # casts inputs to float32 before walking a tree) and the build-time exactness check.
    input_dtype: Literal["float32", "float64"] | None = None
    checked_rows: int | None = None
    converter: dict[str, str] = Field(default_factory=dict)


class Artifacts(BaseModel):
    model_config = _STRICT
    sklearn: ArtifactSpec
    onnx: ArtifactSpec | None = None


class ReferenceSet(BaseModel):
    model_config = _STRICT
    # One row per reference input, in feature order: numbers, and strings for string features.
    inputs: Annotated[list[list[float | str]], Field(min_length=1)]
    # Class labels (classification) or numbers (regression).
    predictions: list[int] | list[str] | list[float]
    probabilities: list[list[float]] | None = None


class Manifest(BaseModel):
    model_config = _STRICT
    format: Literal["modelgate.manifest/1"] = MANIFEST_FORMAT
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: Annotated[str, Field(pattern=VERSION_PATTERN)]
    created: str
    description: str = ""
    task: Literal["classification", "regression"] = "classification"
    estimator: str
    # The library whose own runtime predicts from the joblib artifact when no exact
    # ONNX graph serves; ``runtime_reason`` says which runtime registration chose and why.
    library: Literal["sklearn", "xgboost", "lightgbm"] = "sklearn"
    runtime_reason: str = ""
    framework: dict[str, str]
    artifacts: Artifacts
    input: InputSpec
    classes: list[int] | list[str]  # empty for regression
    class_names: list[str] | None = None
    reference: ReferenceSet
    metrics: dict[str, float]
    signing_key_id: str = ""

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.input.features]

    @property
    def tabular(self) -> bool:
        """Inputs go to the runtime as named columns (some feature is a string), not
        as one float matrix."""
        return any(f.type == "string" for f in self.input.features)

    @model_validator(mode="after")
    def _task_fields(self) -> Manifest:
        if self.task == "classification" and not self.classes:
            raise ValueError("a classifier lists its classes")
        if self.task == "regression" and (self.classes or self.reference.probabilities):
            raise ValueError("a regressor has no classes or probabilities")
        return self


# --- keys and signatures ---------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    problem = private_file_problem(path.stat())
    if problem:
        raise ValueError(f"{path} is {problem}")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def ensure_signing_key(private_path: Path, public_path: Path) -> bool:
    """Create the model-signing key pair when missing; True when one was made."""
    if private_path.exists():
        if not public_path.exists():
            write_public(public_path, _public_pem(load_private_key(private_path).public_key()))
            return True
        return False
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(private_path, pem)
    write_public(public_path, _public_pem(key.public_key()))
    return True


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_bytes(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    document = {
        "algorithm": SIGNATURE_ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode(),
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def verify_signature(
    manifest_bytes: bytes, signature_bytes: bytes, public_key: Ed25519PublicKey
) -> None:
    try:
        document = orjson.loads(signature_bytes)
        algorithm, kid = document["algorithm"], document["key_id"]
        signature = base64.b64decode(document["signature"], validate=True)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ModelRefused("manifest signature file is malformed") from None
    if algorithm != SIGNATURE_ALGORITHM:
        raise ModelRefused("manifest signature algorithm not accepted")
    if kid != key_id(public_key):
        raise ModelRefused("manifest signed by an unknown key")
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise ModelRefused("manifest signature invalid") from None


# --- reading a version folder ----------------------------------------------------------------


def _read_capped(path: Path, cap: int, what: str) -> bytes:
    """Read a regular file (never through a symlink) of at most ``cap`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ModelRefused(f"{what} is missing") from None
    except OSError:
        raise ModelRefused(f"{what} cannot be opened (not a regular file?)") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ModelRefused(f"{what} is not a regular file")
        if info.st_size > cap:
            raise ModelRefused(f"{what} is larger than {cap} bytes")
        data = handle.read(cap + 1)
    if len(data) > cap:
        raise ModelRefused(f"{what} is larger than {cap} bytes")
    return data


@dataclass(frozen=True, slots=True)
class VerifiedManifest:
    folder: Path
    manifest: Manifest
    raw: bytes

    def artifact(self, kind: Literal["sklearn", "onnx"]) -> bytes:
        """The artifact's bytes, only if they match the signed digest."""
        spec = getattr(self.manifest.artifacts, kind)
        if spec is None:
            raise ModelRefused(f"manifest lists no {kind} artifact")
        data = _read_capped(self.folder / spec.file, MAX_ARTIFACT_BYTES, f"{kind} artifact")
        if len(data) != spec.bytes or hashlib.sha256(data).hexdigest() != spec.sha256:
            raise ModelRefused(f"{kind} artifact digest does not match the signed manifest")
        return data


def read_verified_manifest(folder: Path, public_key: Ed25519PublicKey) -> VerifiedManifest:
    """Verify the signature, then parse; the manifest must name this very folder."""
    raw = _read_capped(folder / MANIFEST_FILE, MAX_MANIFEST_BYTES, "manifest")
    signature = _read_capped(folder / SIGNATURE_FILE, MAX_SIGNATURE_BYTES, "manifest signature")
    verify_signature(raw, signature, public_key)
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ModelRefused(
            f"manifest does not follow the format ({where}: {first['msg']})"
        ) from None
    # A validly signed manifest of another model or version (a stale or replayed one)
    # must not vouch for this folder.
    if (manifest.name, manifest.version) != (folder.parent.name, folder.name):
        raise ModelRefused(f"manifest is for {manifest.name}/{manifest.version}, not this folder")
    return VerifiedManifest(folder, manifest, raw)


def model_names(store: Path) -> list[str]:
    if not store.is_dir():
        return []
    return sorted(p.name for p in store.iterdir() if p.is_dir() and _NAME.match(p.name))


def versions_of(store: Path, name: str) -> list[str]:
    """Version folders of a model, oldest first (versions are positive integers)."""
    folder = store / name
    if not _NAME.match(name) or not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(found, key=int)


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def valid_version(version: str) -> bool:
    return bool(_VERSION.match(version))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
