"""`modelgate model load`: the admin's HTTPS calls that serve a registered version."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx

LOAD_SCOPE = "models:admin"
# A refused sign-in (429, the per-address sign-in limit) is tried again after the server's
# Retry-After, a few times, rather than failing a load that only came too soon.
SIGN_IN_ATTEMPTS = 4
MAX_RETRY_AFTER = 65.0


class LoadFailed(Exception):
    """Signing in or loading failed; the message is safe to print (no secrets)."""


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    message = body.get("detail") or body.get("error") or body.get("message") or body
    return f"HTTP {response.status_code}: {message}"


def _retry_after(response: httpx.Response) -> float:
    try:
        seconds = float(response.headers.get("retry-after", "1"))
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 1.0), MAX_RETRY_AFTER)


def load_over_https(
    base: str,
    ca: Path,
    user: str,
    password: str,
    name: str,
    version: str | None,
    timeout: float = 60.0,
    server_name: str | None = None,
) -> dict[str, Any]:
    """Sign in (a token narrowed to ``models:admin``), ask every worker to serve the
    version, sign out; the load's answer (model, version, workers, switched). With
    ``server_name`` the certificate is checked for that name instead of the address's
    host (nginx reached by its compose service name)."""
    verify: str | bool = str(ca) if ca.exists() else True
    extensions = {"sni_hostname": server_name} if server_name else {}
    try:
        with httpx.Client(base_url=base, verify=verify, timeout=timeout) as client:
            for attempt in range(1, SIGN_IN_ATTEMPTS + 1):
                signed_in = client.post(
                    "/auth/token",
                    data={"username": user, "password": password, "scope": LOAD_SCOPE},
                    extensions=extensions,
                )
                if signed_in.status_code != 429 or attempt == SIGN_IN_ATTEMPTS:
                    break
                wait = _retry_after(signed_in)
                print(f"sign-in limited; trying again in {wait:g} s", file=sys.stderr)
                time.sleep(wait)
            if signed_in.status_code != 200:
                raise LoadFailed(f"signing in as {user} failed ({_detail(signed_in)})")
            tokens = signed_in.json()
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            try:
                answer = client.post(
                    f"/v1/models/{name}/load",
                    json={"version": version} if version else None,
                    headers=headers,
                    extensions=extensions,
                )
            finally:
                client.post(
                    "/auth/logout",
                    json={"refresh_token": tokens["refresh_token"]},
                    headers=headers,
                    extensions=extensions,
                )
    except httpx.HTTPError as exc:
        raise LoadFailed(f"cannot reach {base} ({type(exc).__name__})") from None
    if answer.status_code != 200:
        raise LoadFailed(f"loading {name} failed ({_detail(answer)})")
    result: dict[str, Any] = answer.json()
    return result
