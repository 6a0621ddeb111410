"""X.509 certificates of a federation: what they say, issuing them, and when to reissue.

- Two CAs, because MPyC's listening side accepts any certificate its CA signed: if sites
  and analysts had certificates from the same CA, they could connect to MPyC ports.
- TLS keys (CAs included) are EC P-256: every TLS stack (Mosquitto, amqtt, older
  OpenSSL, TLS 1.2) accepts it. Ed25519 certificates also work with Python 3.11's ssl
  here, but only in TLS 1.3 and not everywhere.
- MPyC connects with ``server_hostname='MPyC party {j}'``. A party certificate has the
  subject CN ``MPyC party {i}`` and a SAN DNSName with the same string: Python's ssl
  (OpenSSL's X509_check_host) matches it case-insensitively even with the spaces, and
  no public CA can issue a certificate for that name. With a SAN present, OpenSSL
  ignores the CN for hostname matching, so the SAN is what makes the check pass.
- MPyC's listening side does not check which party connects; :func:`mpyc_party_index`
  reads the index out of a peer certificate so that the session layer can check it.
- A certificate is reissued (same key) only when it no longer says what its
  :class:`CertSpec` asks, or expires within :data:`RENEW_BEFORE` (:func:`cert_problem`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from smpc.errors import UserError
from smpc.pki.files import public_der

__all__ = [
    "CA",
    "CA_VALIDITY",
    "CLOCK_SKEW",
    "LEAF_VALIDITY",
    "RENEW_BEFORE",
    "CertSpec",
    "broker_sans",
    "cert_name",
    "cert_problem",
    "issue_cert",
    "mpyc_party_index",
    "mpyc_party_name",
]

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=730)
RENEW_BEFORE = dt.timedelta(days=30)
CLOCK_SKEW = dt.timedelta(minutes=5)

_MPYC_CN = re.compile(r"MPyC party (0|[1-9][0-9]{0,5})")


def mpyc_party_name(index: int) -> str:
    """The name MPyC checks for party ``index`` (``server_hostname`` of its peers)."""
    return f"MPyC party {index}"


def mpyc_party_index(certificate: x509.Certificate | bytes) -> int:
    """MPyC party index in a party certificate (an x509 object or DER bytes).

    The one place where a peer's claimed pid is read from its certificate; the session
    layer compares it with the pid the peer announces. UserError if there is none.
    """
    if isinstance(certificate, bytes):
        try:
            certificate = x509.load_der_x509_certificate(certificate)
        except ValueError as exc:
            raise UserError(f"peer certificate is not valid DER: {exc}") from None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if len(names) == 1 else ""
    match = _MPYC_CN.fullmatch(cn)
    if match is None:
        raise UserError(
            f"certificate {certificate.subject.rfc4514_string()!r} is not an MPyC party "
            "certificate (expected the common name 'MPyC party <index>')"
        )
    return int(match.group(1))


@dataclass(frozen=True)
class CertSpec:
    """What a certificate must say; an existing one that says otherwise is reissued."""

    subject: x509.Name
    sans: tuple[x509.GeneralName, ...] = ()
    eku: tuple[ObjectIdentifier, ...] = ()
    is_ca: bool = False


@dataclass(frozen=True)
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: bytes


def cert_name(cn: str, ou: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def issue_cert(
    spec: CertSpec, public_key: Any, issuer: CA | None, self_key: Any, now: dt.datetime
) -> x509.Certificate:
    """Sign a certificate for ``spec``; ``issuer`` None means self-signed with ``self_key``."""
    if issuer is None:
        issuer_name, signer, not_after = spec.subject, self_key, now + CA_VALIDITY
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    else:
        issuer_name, signer = issuer.cert.subject, issuer.key
        not_after = min(now + LEAF_VALIDITY, issuer.cert.not_valid_after_utc)
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(spec.subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=spec.is_ca, path_length=0 if spec.is_ca else None),
            critical=True,
        )
        .add_extension(_key_usage(ca=spec.is_ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
    )
    if spec.eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(spec.eku)), critical=False)
    if spec.sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(spec.sans)), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def cert_problem(
    cert: x509.Certificate,
    spec: CertSpec,
    public_key: Any,
    issuer: x509.Certificate,
    now: dt.datetime,
) -> str | None:
    """Why an existing certificate cannot be kept, or None if it can."""
    if public_der(cert.public_key()) != public_der(public_key):
        return "did not match its key"
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the current CA"
    if cert.subject != spec.subject:
        return "subject changed"
    ext = cert.extensions
    try:
        is_ca = ext.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca != spec.is_ca:
        return "CA flag changed"
    try:
        san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
        sans: set[x509.GeneralName] = set(san)
    except x509.ExtensionNotFound:
        sans = set()
    if sans != set(spec.sans):
        return "names changed"
    try:
        eku = set(ext.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        eku = set()
    if eku != set(spec.eku):
        return "usage changed"
    if cert.not_valid_after_utc < now + RENEW_BEFORE:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def broker_sans(host: str) -> tuple[x509.GeneralName, ...]:
    """SANs of the broker certificate: its host, plus the loopback aliases for a local one."""
    names: list[x509.GeneralName] = []
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        names.append(x509.DNSName(host))
        loopback = host.lower() == "localhost"
    else:
        names.append(x509.IPAddress(ip))
        loopback = ip.is_loopback
    if loopback:
        for extra in (
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ):
            if extra not in names:
                names.append(extra)
    return tuple(names)
