"""The certificate authority; the TLS contexts live in shared/tls_contexts.py. Agents talk to the coordinator
only over mutual TLS.

The CA key is ECDSA P-256. Server certificates carry serverAuth only and client certificates clientAuth only,
so a client certificate can never act as a server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.files import write_atomic
from shared.tls_contexts import client_context as client_context  # re-exported: callers reach them here
from shared.tls_contexts import server_context as server_context

_CA_TTL = dt.timedelta(days=3650)
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates start this much before they are issued
_SERVER_TTL = dt.timedelta(days=825)


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_ca(common_name: str = "gpuctl CA") -> KeyPair:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - CLOCK_SKEW)
        .not_valid_after(_now() + _CA_TTL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_to_pem(key))


def _load_ca(ca: KeyPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def _sign(
    ca: KeyPair,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    ttl: dt.timedelta,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
) -> x509.Certificate:
    ca_cert, ca_key = _load_ca(ca)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - CLOCK_SKEW)
        .not_valid_after(_now() + ttl)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def issue_server_cert(ca: KeyPair, hostnames: list[str]) -> KeyPair:
    """A serverAuth certificate for the coordinator; each name becomes a DNS or IP SAN."""
    sans: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    key = new_key()
    cert = _sign(ca, key.public_key(), hostnames[0], _SERVER_TTL, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_to_pem(key))


def issue_client_cert(ca: KeyPair, host_id: str, ttl_s: int) -> KeyPair:
    """A clientAuth certificate whose common name is the agent's host id."""
    key = new_key()
    cert = _sign(
        ca, key.public_key(), host_id, dt.timedelta(seconds=ttl_s), ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_to_pem(key))


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    """A certificate signing request; the key stays with the caller."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


class BadCsr(ValueError):
    pass


def sign_csr(ca: KeyPair, csr_pem: bytes, host_id: str, ttl_s: int) -> x509.Certificate:
    """A clientAuth certificate for the CSR's key. The common name is `host_id`, whatever the CSR asked."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise BadCsr("csr: not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise BadCsr("csr: its signature does not match its key")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise BadCsr("csr: the key must be ECDSA (P-256)")
    return _sign(ca, public_key, host_id, dt.timedelta(seconds=ttl_s), ExtendedKeyUsageOID.CLIENT_AUTH, [])


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_expiry(cert_pem_bytes: bytes) -> tuple[float, float]:
    """(not before, not after) as Unix times."""
    cert = x509.load_pem_x509_certificate(cert_pem_bytes)
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def ca_pin(ca_cert_pem: bytes) -> str:
    """`sha256:<hex>` of the CA's SubjectPublicKeyInfo, as kubeadm's discovery hash."""
    cert = x509.load_pem_x509_certificate(ca_cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def peer_identity(der: bytes) -> tuple[str, int]:
    """(common name, serial) of a DER certificate the TLS layer already verified."""
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return (value if isinstance(value, str) else value.decode()), cert.serial_number


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file created 0600 from the start (never world-readable, not even briefly), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=0o600)
