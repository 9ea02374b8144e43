"""Settings of the auth service (env prefix `MG_AUTH_`)."""

from __future__ import annotations

from modelgate_common import CommonSettings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MG_AUTH_", extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)
