"""TLS as a client meets it: Mozilla "intermediate", no TLS 1.0/1.1, a certificate
that verifies with certs/ca.pem for both names a local client uses.

sslyze runs from its own virtual environment (``make sslyze-venv``): it pins
cryptography and its own OpenSSL build, which must not meet the services' pins.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tls_target(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    assert parts.scheme == "https" and parts.hostname and parts.port
    return parts.hostname, parts.port


@pytest.fixture(scope="module")
def sslyze_scan(
    tls_target: tuple[str, int], ca_file: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    venv = Path(os.environ.get("MG_SSLYZE_VENV", ROOT / ".venv-sslyze"))
    python = venv / "bin" / "python"
    if not python.exists():
        pytest.fail(f"sslyze's virtual environment is missing at {venv}: run `make sslyze-venv`")
    out = tmp_path_factory.mktemp("sslyze") / "scan.json"
    host, port = tls_target
    done = subprocess.run(
        [
            str(python),
            "-m",
            "sslyze",
            "--mozilla_config=intermediate",
            f"--certinfo_ca_file={ca_file}",
            f"--json_out={out}",
            f"{host}:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    results = json.loads(out.read_text())["server_scan_results"]
    assert len(results) == 1 and results[0]["scan_status"] == "COMPLETED", done.stdout
    return done, results[0]["scan_result"]


def test_sslyze_mozilla_intermediate_compliant(
    sslyze_scan: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    done, _ = sslyze_scan
    # sslyze exits 1 and lists each deviation when the server is not compliant.
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "OK - Compliant" in done.stdout


def test_sslyze_finds_only_tls12_and_tls13(
    sslyze_scan: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, scan = sslyze_scan

    def accepted(protocol: str) -> list[str]:
        result = scan[f"{protocol}_cipher_suites"]
        assert result["status"] == "COMPLETED", result
        return [s["cipher_suite"]["name"] for s in result["result"]["accepted_cipher_suites"]]

    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        assert accepted(old) == [], old
    assert accepted("tls_1_2"), "TLS 1.2 must stay available (intermediate profile)"
    assert accepted("tls_1_3")
    # Forward secrecy and AEAD only: no static RSA key exchange, no CBC.
    for suite in accepted("tls_1_2"):
        assert suite.startswith(("TLS_ECDHE_", "TLS_DHE_")), suite
        assert "_CBC_" not in suite, suite
    assert scan["tls_compression"]["result"]["supports_compression"] is False
    assert scan["heartbleed"]["result"]["is_vulnerable_to_heartbleed"] is False
    assert scan["session_renegotiation"]["result"]["is_vulnerable_to_client_renegotiation_dos"] is (
        False
    )


def test_sslyze_trusts_certificate_with_project_ca(
    sslyze_scan: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, scan = sslyze_scan
    deployments = scan["certificate_info"]["result"]["certificate_deployments"]
    assert deployments
    for deployment in deployments:
        supplied = [
            r
            for r in deployment["path_validation_results"]
            if r["trust_store"]["name"] == "Supplied CA file"
        ]
        assert len(supplied) == 1 and supplied[0]["was_validation_successful"], supplied


def _handshake(
    target: tuple[str, int], version: ssl.TLSVersion, ca_file: str, host: str
) -> str | None:
    """Offer exactly one protocol version (at security level 0, so OpenSSL will
    offer even a legacy one); the negotiated version, or the server's refusal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 / TLSv1_1 members
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(ca_file)
        context.minimum_version = version
        context.maximum_version = version
        context.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(target, timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return tls.version()


@pytest.mark.parametrize("name", ["TLSv1", "TLSv1_1"])
def test_tls10_and_tls11_handshakes_refused_by_server(
    tls_target: tuple[str, int], ca_file: str, name: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        version = getattr(ssl.TLSVersion, name)
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(tls_target, version, ca_file, "localhost")
    # The server's protocol_version alert: our client did offer the old version,
    # and the server said no (not our own OpenSSL refusing to send it).
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value


@pytest.mark.parametrize("name", ["TLSv1_2", "TLSv1_3"])
def test_tls12_and_tls13_handshakes_succeed(
    tls_target: tuple[str, int], ca_file: str, name: str
) -> None:
    version = getattr(ssl.TLSVersion, name)
    assert _handshake(tls_target, version, ca_file, "localhost") == name.replace("_", ".")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_certificate_verifies_with_ca_for(
    tls_target: tuple[str, int], ca_file: str, host: str
) -> None:
    context = ssl.create_default_context(cafile=ca_file)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    with socket.create_connection(tls_target, timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            assert tls.getpeercert()


def test_certificate_refused_for_another_name(tls_target: tuple[str, int], ca_file: str) -> None:
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection(tls_target, timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="modelgate.example")
