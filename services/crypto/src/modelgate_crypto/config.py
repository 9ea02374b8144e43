"""Settings of the crypto service (env prefix `MG_CRYPTO_`)."""

from __future__ import annotations

from pathlib import Path

from modelgate_common import CommonSettings
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .fernet_keyring import KEYRING_FILENAME
from .tokens import max_token_length

# JSON framing around the largest ciphertext in a decrypt body: {"ciphertext": "...", "ttl": N}
_BODY_OVERHEAD = 64


class CryptoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MG_CRYPTO_", extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)
    keyring_file: Path | None = Field(
        default=None, description=f"the Fernet keyring; default secrets_dir/{KEYRING_FILENAME}"
    )
    max_plaintext_bytes: int = Field(
        default=65_536, gt=0, description="largest plaintext accepted, in UTF-8 bytes"
    )
    owner_key_cache_size: int = Field(
        default=1024, ge=1, description="derived per-owner keys kept per worker (LRU)"
    )

    @property
    def keyring_path(self) -> Path:
        return self.keyring_file or self.common.secrets_dir / KEYRING_FILENAME

    @property
    def max_ciphertext_chars(self) -> int:
        return max_token_length(self.max_plaintext_bytes)

    @model_validator(mode="after")
    def _ciphertext_fits_body_cap(self) -> CryptoSettings:
        # Otherwise the largest ciphertext we issue could not be sent back to be decrypted.
        needed = self.max_ciphertext_chars + _BODY_OVERHEAD
        if needed > self.common.max_body_bytes:
            raise ValueError(
                f"MG_CRYPTO_MAX_PLAINTEXT_BYTES={self.max_plaintext_bytes} makes ciphertexts of "
                f"{self.max_ciphertext_chars} characters, over MG_MAX_BODY_BYTES="
                f"{self.common.max_body_bytes}"
            )
        return self
