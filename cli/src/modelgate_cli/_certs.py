"""A local certificate authority and the server certificate it signs."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from modelgate_common import write_private, write_public

SERVER_VALIDITY_DAYS = 365  # browsers and the CA/B forum cap server certificates at 398
CA_VALIDITY_DAYS = 3650
# The names clients reach the server by: host names and IP addresses, comma-separated.
DEFAULT_TLS_HOSTNAMES = "localhost,127.0.0.1"


def tls_hostnames(value: str | None = None) -> list[x509.GeneralName]:
    """The server certificate's names from MG_TLS_HOSTNAMES (or ``value``)."""
    raw = os.environ.get("MG_TLS_HOSTNAMES", "") if value is None else value
    names: list[x509.GeneralName] = []
    for item in (raw or DEFAULT_TLS_HOSTNAMES).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(item)))
        except ValueError:
            # A last label of digits only is a mistyped IP address, never a host name.
            if not _HOSTNAME.fullmatch(item) or item.rsplit(".", 1)[-1].isdigit():
                raise ValueError(
                    f"MG_TLS_HOSTNAMES: {item!r} is neither a host name nor an IP address"
                ) from None
            names.append(x509.DNSName(item.lower()))
    if not names:
        raise ValueError("MG_TLS_HOSTNAMES names no host")
    return names


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)(\*\.)?([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
)


def _ours_with_other_names(server_pem: Path, ca_pem: Path, names: list[x509.GeneralName]) -> bool:
    """True for a server certificate our CA issued for other names than ``names``; a
    certificate from any other CA (a real one put in place) is never replaced."""
    cert = x509.load_pem_x509_certificate(server_pem.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return _names_of(cert) != set(names)


def _names_of(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "modelgate local"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_certificates(certs: Path, hostnames: str | None = None) -> list[str]:
    """Create the CA and the server certificate when missing; return what was made.

    The server certificate our CA issued is issued again, under the same CA, when its names
    are not those of MG_TLS_HOSTNAMES (or ``hostnames``): the CA clients trust never changes,
    and a certificate from another CA is never touched."""
    made: list[str] = []
    names = tls_hostnames(hostnames)
    ca_pem, ca_key_pem = certs / "ca.pem", certs / "ca-key.pem"
    now = dt.datetime.now(dt.UTC)
    if not (ca_pem.exists() and ca_key_pem.exists()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("modelgate local CA"))
            .issuer_name(_name("modelgate local CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        write_private(ca_key_pem, _key_pem(ca_key))
        write_public(ca_pem, ca_cert.public_bytes(serialization.Encoding.PEM))
        (certs / "server.pem").unlink(missing_ok=True)  # re-issue under the new CA
        made.append("certificate authority")
    server_pem, server_key_pem = certs / "server.pem", certs / "server-key.pem"
    renamed = server_pem.exists() and _ours_with_other_names(server_pem, ca_pem, names)
    if renamed or not (server_pem.exists() and server_key_pem.exists()):
        signing_key = serialization.load_pem_private_key(ca_key_pem.read_bytes(), password=None)
        assert isinstance(signing_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(_common_name(names)))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=SERVER_VALIDITY_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(signing_key, hashes.SHA256())
        )
        write_private(server_key_pem, _key_pem(key))
        # The chain nginx serves: leaf first, then the CA.
        write_public(
            server_pem,
            cert.public_bytes(serialization.Encoding.PEM)
            + ca_cert.public_bytes(serialization.Encoding.PEM),
        )
        made.append(f"server certificate for {', '.join(_text(n) for n in names)}")
    return made


def _text(name: x509.GeneralName) -> str:
    return str(name.value)


def _common_name(names: list[x509.GeneralName]) -> str:
    dns = [n for n in names if isinstance(n, x509.DNSName)]
    return _text(dns[0] if dns else names[0])
