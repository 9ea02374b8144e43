"""HTTP routes of the crypto service: translate HTTP to calls of plain logic."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from modelgate_common import Principal, admitted, error_responses

from .schemas import (
    DecryptRequest,
    DecryptResponse,
    EncryptRequest,
    EncryptResponse,
    RotateRequest,
    RotateResponse,
)
from .service import CryptoService

# A token with the scopes, one request of its subject's crypto budget spent
# (60/minute by default, MG_RATELIMIT_CRYPTO).
Encryptor = Annotated[Principal, Depends(admitted("crypto", ["crypto:encrypt"]))]
Decryptor = Annotated[Principal, Depends(admitted("crypto", ["crypto:decrypt"]))]
Rotator = Annotated[Principal, Depends(admitted("crypto", ["crypto:encrypt", "crypto:decrypt"]))]


def get_service(request: Request) -> CryptoService:
    service: CryptoService = request.app.state.crypto
    return service


Service = Annotated[CryptoService, Depends(get_service)]

router = APIRouter(tags=["crypto"])

_ERRORS = error_responses(401, 403, 422, 429, 503)
_DECRYPT_ERRORS = error_responses(400, 401, 403, 422, 429, 503)


@router.post("/crypto/encrypt", responses=_ERRORS)
async def encrypt(body: EncryptRequest, principal: Encryptor, service: Service) -> EncryptResponse:
    """Encrypt text for the caller: only a token of the same user (the same ``uid``, never
    merely the same user name) can decrypt it."""
    return EncryptResponse(ciphertext=service.encrypt(principal, body.plaintext))


@router.post("/crypto/decrypt", responses=_DECRYPT_ERRORS)
async def decrypt(body: DecryptRequest, principal: Decryptor, service: Service) -> DecryptResponse:
    """Decrypt the caller's ciphertext; any failure is 400 `decryption failed`."""
    return DecryptResponse(plaintext=service.decrypt(principal, body.ciphertext, body.ttl))


@router.post("/crypto/rotate", responses=_DECRYPT_ERRORS)
async def rotate(body: RotateRequest, principal: Rotator, service: Service) -> RotateResponse:
    """Re-encrypt the caller's ciphertext under the newest key (needs both crypto scopes)."""
    return RotateResponse(ciphertext=service.rotate(principal, body.ciphertext))


# The seed tutorial's paths and bodies, kept so its clients keep working.
router.add_api_route(
    "/encrypt/", encrypt, methods=["POST"], responses=_ERRORS, summary="Encrypt (seed alias)"
)
router.add_api_route(
    "/decrypt/",
    decrypt,
    methods=["POST"],
    responses=_DECRYPT_ERRORS,
    summary="Decrypt (seed alias)",
)
