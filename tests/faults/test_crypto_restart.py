"""Ciphertexts outlive the stack: after `make down` / `make up` they still decrypt."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from crypto_helpers import ROOT, Accounts, decrypt, encrypt, make_client

# `make down`/`make up`: the native stack (tests/compose/test_compose_restart.py does compose's).
pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.native]


def _make(target: str) -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ciphertexts_decrypt_after_a_full_restart(
    base_url: str, ca_file: str, secrets_dir: Path
) -> None:
    accounts = Accounts(base_url, ca_file, secrets_dir)
    _, alice = accounts.new_user()
    with make_client(base_url, ca_file) as client:
        made = {f"kept {n}": encrypt(client, alice, f"kept {n}") for n in range(10)}
    try:
        _make("down")
    finally:
        _make("up")  # later tests need the stack, whatever happened above
    with make_client(base_url, ca_file) as client:
        for plaintext, ciphertext in made.items():
            response = decrypt(client, alice, ciphertext)
            assert response.status_code == 200
            assert response.json() == {"plaintext": plaintext}
    accounts.remove_all()
