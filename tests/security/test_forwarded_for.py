"""Who may name the client address: on the native stack only nginx, through the services'
Unix sockets (a folder only the stack's user may enter). A local process that talks to a
service's TCP port is known by its own address whatever X-Forwarded-For it sends, so it
cannot spread password guesses over made-up addresses. This drives the stack's real
gunicorn processes (deploy/gunicorn.conf.py as supervisord starts them)."""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.native  # the services' own ports and sockets on this host

AUTH_PORT = int(os.environ.get("MG_AUTH_PORT", "8101"))
# How the token endpoint refuses a wrong password (RFC 6749 section 5.2).
WRONG_PASSWORD = "400 invalid_grant"


def _outcome(response: httpx.Response) -> str:
    if response.status_code == 400:
        return f"400 {response.json().get('error')}"
    return str(response.status_code)


def test_a_spoofed_forwarded_for_from_a_local_process_is_ignored() -> None:
    """From 127.0.0.1, the address every local process has: six sign-ins, each claiming
    another client. The login budget is 5 a minute per client address, so a sixth (or an
    earlier one, when other tests spent some of 127.0.0.1's budget) is refused when the
    header is ignored, and none ever is when each made-up address counts on its own."""
    answers = []
    with httpx.Client(timeout=30) as client:
        for i in range(6):
            response = client.post(
                f"http://127.0.0.1:{AUTH_PORT}/auth/token",
                data={
                    "grant_type": "password",
                    "username": f"nobody-{i}",
                    "password": "not-the-password",
                },
                headers={"X-Forwarded-For": f"198.51.100.{i + 1}", "X-Real-IP": "203.0.113.9"},
            )
            answers.append(_outcome(response))
            if response.status_code == 429:
                break
    assert answers[-1] == "429", f"a spoofed X-Forwarded-For opened a new budget: {answers}"
    assert set(answers[:-1]) <= {WRONG_PASSWORD}, answers


def test_the_service_sockets_only_nginxs_user_may_open(var_dir: Path) -> None:
    sockets = var_dir / "run" / "sockets"
    info = sockets.stat()
    assert info.st_uid == os.getuid()
    if os.getuid() == 0:  # nginx's workers run as nobody: its group may enter, nobody else
        assert stat.S_IMODE(info.st_mode) == 0o710
        assert info.st_gid == pwd.getpwnam("nobody").pw_gid
    else:  # nginx runs as the stack's user
        assert stat.S_IMODE(info.st_mode) == 0o700
    found = {p.name for p in sockets.iterdir() if stat.S_ISSOCK(p.stat().st_mode)}
    assert found == {"auth.sock", "inference.sock", "crypto.sock"}


def test_through_nginx_the_client_address_is_kept(
    new_client: Callable[[], httpx.Client],
) -> None:
    """nginx sets X-Forwarded-For from the TCP peer; the services believe it on the socket:
    two client addresses have a login budget each (5 a minute), one would be spent."""
    for _ in range(2):
        with new_client() as client:
            outcomes = [
                _outcome(
                    client.post(
                        "/auth/token",
                        data={
                            "grant_type": "password",
                            "username": f"x{i}",
                            "password": "wrong-pw",
                        },
                    )
                )
                for i in range(5)
            ]
        assert outcomes == [WRONG_PASSWORD] * 5, outcomes
