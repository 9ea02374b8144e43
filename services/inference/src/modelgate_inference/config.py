"""Settings of the inference service (env prefix `MG_INFERENCE_`)."""

from __future__ import annotations

from pathlib import Path

from modelgate_common import PROBABILITY_SCOPE, CommonSettings
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MG_INFERENCE_", extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)
    model_store: Path = Field(
        Path("model_store"),
        validation_alias=AliasChoices("MG_INFERENCE_MODEL_STORE", "MG_MODEL_STORE", "model_store"),
        description="folder of signed model versions (also read from MG_MODEL_STORE)",
    )
    signing_public_key: Path | None = Field(
        None,
        description="Ed25519 public key that model manifests must be signed with; "
        "default secrets_dir/model_signing_key.pub (the service never holds the private key)",
    )
    bounds_margin: float = Field(
        0.5,
        ge=0,
        le=100,
        description="accepted input range around the training data's [min, max], as a fraction "
        "of that range on each side; a feature never negative in training stays >= 0",
    )
    max_batch: int = Field(1000, ge=1, le=100_000, description="most rows in one request")
    probability_scope: str = Field(
        PROBABILITY_SCOPE,
        description="scope a token needs, on top of models:predict, to receive class "
        "probabilities (they leak more of the model than labels do); the default is carried "
        "by the analyst and admin roles only, never by the user role",
    )
    seed_model: str = Field("iris", description="model behind the seed alias POST /predict")
    offload_rows: int = Field(
        64,
        ge=1,
        description="batches of at least this many rows run in a worker thread, so a big "
        "batch does not stall the event loop for small requests",
    )
    reload_poll_seconds: float = Field(
        2.0, gt=0, le=60, description="how often a worker re-reads the serving versions in Redis"
    )
    redis_namespace: str = Field(
        "mg:inference",
        pattern=r"^[A-Za-z0-9:_-]{1,64}$",
        description="prefix of this service's Redis keys",
    )
    reload_ack_seconds: float = Field(
        10.0, gt=0, le=120, description="how long a load request waits for every worker to switch"
    )

    @property
    def public_key_path(self) -> Path:
        return self.signing_public_key or self.common.secrets_dir / "model_signing_key.pub"
