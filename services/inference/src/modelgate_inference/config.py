"""Settings of the inference service (env prefix `MG_INFERENCE_`)."""

from __future__ import annotations

from modelgate_common import CommonSettings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MG_INFERENCE_", extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)
