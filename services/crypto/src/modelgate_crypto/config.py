"""Settings of the crypto service (env prefix `MG_CRYPTO_`)."""

from __future__ import annotations

from modelgate_common import CommonSettings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CryptoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MG_CRYPTO_", extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)
