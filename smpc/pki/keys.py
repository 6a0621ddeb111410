"""Key provisioning for a federation, and loading of the kits it produces.

``smpc keys init parties/federation.yaml --out OUT`` (:func:`init_keys`) creates::

    OUT/ca/                  operator only; keep offline once the kits are handed out
        party-ca.key party-ca.crt             the party CA: MPyC links accept only its certificates
        federation-ca.key federation-ca.crt   the federation CA: broker TLS (clients and server)
    OUT/public/              public material, regenerated on every run
        directory.json       every participant: role, MPyC index (parties), X25519 public
                             key (parties), Ed25519 public key (all), raw keys in base64
        party-ca.crt federation-ca.crt federation.yaml (a copy of the federation file)
    OUT/kits/<name>/         one per party, site and analyst: hand it to that participant only
        kit.json             name, role, MPyC index, federation name (public)
        (party)   .config/party_{i}.crt .config/party_{i}.key .config/mpyc_ca.crt
                  (exactly where MPyC's --ssl looks, relative to its working directory)
                  keys/encryption.key   X25519, PEM PKCS#8: shares are encrypted to it
        (analyst) keys/encryption.key   X25519: result shares are encrypted to it
        (all)     tls/client.crt tls/client.key tls/ca.crt   broker client certificate
                  (federation CA; CN = name, OU = role) and the federation CA
                  keys/signing.key      Ed25519, PEM PKCS#8: signs envelopes, jobs, results
                  public/               a copy of OUT/public
    OUT/kits/broker/         the broker's server certificate
        kit.json tls/server.crt tls/server.key tls/ca.crt

Decisions worth knowing:

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
- Private keys are unencrypted PEM files created with mode 0600 (``os.open`` with
  ``O_EXCL``: never overwritten), in directories with mode 0700. Re-running keeps every
  existing key and only creates what is missing; a certificate is reissued (same key)
  only when it is missing, unreadable, expires within 30 days, or no longer matches its
  key, its CA or the federation file (e.g. the broker host changed).
- The order of ``parties`` is the MPyC index and is written into certificates, so a run
  that would move a party to another index stops with an error instead of silently
  reissuing: certificates for the old index may already be in use.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from pydantic import BaseModel, ConfigDict, ValidationError

from smpc.config.federation import (
    Federation,
    Role,
    load_federation,
    user_error_from_validation,
)
from smpc.errors import UserError
from smpc.names import NAME_PATTERN

__all__ = [
    "BrokerKit",
    "Directory",
    "DirectoryEntry",
    "InitReport",
    "Kit",
    "TlsFiles",
    "init_keys",
    "load_broker_kit",
    "load_directory",
    "load_kit",
    "mpyc_party_index",
    "mpyc_party_name",
]

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=730)
RENEW_BEFORE = dt.timedelta(days=30)
CLOCK_SKEW = dt.timedelta(minutes=5)

DIRECTORY_FORMAT = "smpc-directory/1"
KIT_FORMAT = "smpc-kit/1"
BROKER_KIT = "broker"

_PRIVATE_DIR_MODE = 0o700
_PRIVATE_FILE_MODE = 0o600
_PUBLIC_DIR_MODE = 0o755
_PUBLIC_FILE_MODE = 0o644
_MPYC_CN = re.compile(r"MPyC party (0|[1-9][0-9]{0,5})")

KeyKind = Literal["ec", "ed25519", "x25519"]
PrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey | X25519PrivateKey
_KEY_TYPES: dict[str, tuple[type, str]] = {
    "ec": (ec.EllipticCurvePrivateKey, "an EC P-256 private key"),
    "ed25519": (Ed25519PrivateKey, "an Ed25519 private key"),
    "x25519": (X25519PrivateKey, "an X25519 private key"),
}


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


# --- report ---------------------------------------------------------------------------


Action = Literal["created", "reissued", "kept"]


@dataclass(frozen=True)
class ReportEntry:
    """One key or certificate and what :func:`init_keys` did with it."""

    action: Action
    path: Path  # relative to the output directory
    reason: str = ""


@dataclass
class InitReport:
    """What :func:`init_keys` created, reissued and kept, for the operator to read."""

    out_dir: Path
    entries: list[ReportEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)  # group dir -> label
    summary: str = ""

    def _paths(self, action: Action) -> list[Path]:
        return [e.path for e in self.entries if e.action == action]

    @property
    def created(self) -> list[Path]:
        return self._paths("created")

    @property
    def reissued(self) -> list[Path]:
        return self._paths("reissued")

    @property
    def kept(self) -> list[Path]:
        return self._paths("kept")

    def lines(self) -> list[str]:
        """One line per CA directory and kit, then notes and what to do next."""
        by_group: dict[str, list[ReportEntry]] = {}
        for entry in self.entries:
            by_group.setdefault(_group_of(entry.path), []).append(entry)
        out: list[str] = []
        for group, entries in by_group.items():
            parts = []
            for action in ("created", "reissued", "kept"):
                items = [
                    str(e.path.relative_to(group)) + (f" ({e.reason})" if e.reason else "")
                    for e in entries
                    if e.action == action
                ]
                if items:
                    parts.append(f"{action} {', '.join(items)}")
            label = self.groups.get(group, "")
            out.append(
                f"{self.out_dir / group}{f' ({label})' if label else ''}: {'; '.join(parts)}"
            )
        if self.summary:
            out.append(self.summary)
        out.extend(f"note: {note}" for note in self.notes)
        out.append(
            f"next: give each participant only its own {self.out_dir / 'kits'}/<name>/ "
            f"directory; keep {self.out_dir / 'ca'}/ offline"
        )
        return out


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


def _group_of(path: Path) -> str:
    parts = path.parts
    return str(Path(*parts[:2])) if parts[0] == "kits" and len(parts) > 2 else parts[0]


# --- files ----------------------------------------------------------------------------


def _private_dir(path: Path, report: InitReport | None = None) -> None:
    """Create ``path`` with mode 0700, or tighten an existing one that is wider."""
    if path.is_dir():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, _PRIVATE_DIR_MODE)
            if report is not None:
                report.notes.append(f"tightened {path} from {mode:o} to 700 (it holds keys)")
        return
    try:
        os.mkdir(path, _PRIVATE_DIR_MODE)
    except FileExistsError:
        raise UserError(f"{path}: exists but is not a directory") from None


def _public_dir(path: Path) -> None:
    try:
        os.makedirs(path, _PUBLIC_DIR_MODE, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{path}: exists but is not a directory") from None


def _write_private(path: Path, data: bytes) -> None:
    """Write a new secret file with mode 0600 from the start; never replaces a file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write_public(path: Path, data: bytes) -> None:
    """Atomically (re)write a public file, leaving it alone if it already has ``data``."""
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PUBLIC_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what}: {exc.strerror}") from None


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_private_key(path: Path, kind: KeyKind) -> Any:
    """Load a PEM private key of the given kind; UserError naming the file otherwise."""
    data = _read_bytes(path, "private key")
    expected_type, description = _KEY_TYPES[kind]
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a readable unencrypted PEM private key ({exc})") from None
    if not isinstance(key, expected_type) or (
        kind == "ec" and not isinstance(cast(ec.EllipticCurvePrivateKey, key).curve, ec.SECP256R1)
    ):
        raise UserError(f"{path}: expected {description}, found {type(key).__name__}")
    return key


def _generate(kind: KeyKind) -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return Ed25519PrivateKey.generate()
    return X25519PrivateKey.generate()


def _public_der(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _raw_b64(public_key: Ed25519PublicKey | X25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


# --- certificates ---------------------------------------------------------------------


@dataclass(frozen=True)
class _CertSpec:
    """What a certificate must say; an existing one that says otherwise is reissued."""

    subject: x509.Name
    sans: tuple[x509.GeneralName, ...] = ()
    eku: tuple[ObjectIdentifier, ...] = ()
    is_ca: bool = False


@dataclass(frozen=True)
class _CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: bytes


def _name(cn: str, ou: str, org: str) -> x509.Name:
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


def _issue(
    spec: _CertSpec, public_key: Any, issuer: _CA | None, self_key: Any, now: dt.datetime
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


def _cert_problem(
    cert: x509.Certificate,
    spec: _CertSpec,
    public_key: Any,
    issuer: x509.Certificate,
    now: dt.datetime,
) -> str | None:
    """Why an existing certificate cannot be kept, or None if it can."""
    if _public_der(cert.public_key()) != _public_der(public_key):
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


class _Provisioner:
    """One run of :func:`init_keys`: ensures files exist and records what it did."""

    def __init__(self, out: Path, report: InitReport) -> None:
        self.out = out
        self.report = report
        self.now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def _record(self, action: Action, path: Path, reason: str = "") -> None:
        self.report.entries.append(ReportEntry(action, path.relative_to(self.out), reason))

    def key(self, path: Path, kind: KeyKind) -> tuple[Any, bool]:
        """Load the key at ``path`` or create it; returns (key, created)."""
        if path.exists():
            key = _load_private_key(path, kind)
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(path, _PRIVATE_FILE_MODE)
                self.report.notes.append(f"tightened {path} from {mode:o} to 600")
            self._record("kept", path)
            return key, False
        key = _generate(kind)
        _write_private(path, _key_pem(key))
        self._record("created", path)
        return key, True

    def cert(self, path: Path, spec: _CertSpec, key: Any, issuer: _CA | None) -> x509.Certificate:
        """Keep the certificate at ``path`` if it is still right, else (re)issue it."""
        reason = "missing"
        if path.exists():
            try:
                existing = x509.load_pem_x509_certificate(_read_bytes(path, "certificate"))
            except ValueError:
                reason = "unreadable"
            else:
                issuer_cert = existing if issuer is None else issuer.cert
                problem = _cert_problem(existing, spec, key.public_key(), issuer_cert, self.now)
                if problem is None:
                    self._record("kept", path)
                    return existing
                reason = problem
        cert = _issue(spec, key.public_key(), issuer, key, self.now)
        _write_public(path, cert.public_bytes(serialization.Encoding.PEM))
        if reason == "missing":
            self._record("created", path)
        else:
            self._record("reissued", path, reason)
        return cert

    def ca(self, stem: str, cn: str, org: str) -> _CA:
        ca_dir = self.out / "ca"
        key, _ = self.key(ca_dir / f"{stem}.key", "ec")
        spec = _CertSpec(subject=_name(cn, "ca", org), is_ca=True)
        cert = self.cert(ca_dir / f"{stem}.crt", spec, key, None)
        return _CA(key, cert, cert.public_bytes(serialization.Encoding.PEM))


def _broker_sans(host: str) -> tuple[x509.GeneralName, ...]:
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


# --- kit.json and directory.json schemas ----------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _KitInfo(_Strict):
    format: Literal["smpc-kit/1"]
    federation: str
    name: str
    role: Literal["party", "site", "analyst", "broker"]
    index: int | None = None
    host: str | None = None  # broker only
    port: int | None = None  # broker only


class _DirectoryEntryInfo(_Strict):
    name: str
    role: Literal["party", "site", "analyst"]
    index: int | None = None
    signing_key: str
    encryption_key: str | None = None


class _DirectoryInfo(_Strict):
    format: Literal["smpc-directory/1"]
    federation: str
    participants: list[_DirectoryEntryInfo]


def _read_json(path: Path, model: type[BaseModel], what: str) -> Any:
    data = _read_bytes(path, what)
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    try:
        return model.model_validate(parsed)
    except ValidationError as exc:
        raise user_error_from_validation(path, exc, model) from None


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


# --- init -----------------------------------------------------------------------------


def _check_existing_kits(federation: Federation, federation_path: Path, out: Path) -> list[str]:
    """Refuse runs that would silently change a kit's role or MPyC index; list orphans."""
    kits = out / "kits"
    for name, role in federation.participants:
        kit = kits / name
        if kit.exists() and not kit.is_dir():
            raise UserError(f"{kit}: exists but is not a directory")
        index = federation.party_index(name) if role == "party" else None
        info_path = kit / "kit.json"
        if info_path.exists():
            info = _read_json(info_path, _KitInfo, "kit description")
            if info.name != name:
                raise UserError(f"{info_path}: describes {info.name!r}, expected {name!r}")
            if info.role != role:
                raise UserError(
                    f"{kit}: {name} was provisioned as {info.role} but is a {role} in "
                    f"{federation_path}; its certificates say {info.role}: move {kit} away "
                    "to provision it anew"
                )
        config = kit / ".config"
        if not config.is_dir():
            continue
        for path in sorted(config.iterdir()):
            match = re.fullmatch(r"party_(\d+)\.(crt|key)", path.name)
            if match and int(match.group(1)) != index:
                now = f"party {index}" if index is not None else f"a {role}"
                raise UserError(
                    f"{path}: {name} is {now} in {federation_path} but its kit holds the "
                    f"MPyC key of party {match.group(1)}. The order of `parties` is the "
                    f"MPyC index written into certificates: restore the order, or delete "
                    f"{config} to issue certificates for the new index (and replace the "
                    "party CA if the old ones may still be in use)"
                )
    notes = []
    if kits.is_dir():
        known = {name for name, _ in federation.participants} | {BROKER_KIT}
        for path in sorted(kits.iterdir()):
            if path.is_dir() and path.name not in known:
                notes.append(
                    f"{path}: {path.name} is no longer in {federation_path}; its kit is left "
                    "in place but it is not in directory.json (its certificates stay valid "
                    "until they expire)"
                )
    return notes


def init_keys(federation_path: str | Path, out_dir: str | Path) -> InitReport:
    """Create or complete the CAs, kits and public directory of a federation.

    Safe to re-run: keeps every existing key, creates what is missing (e.g. the kit of a
    site added to the federation file) and regenerates the public files.
    """
    federation_path = Path(federation_path)
    out = Path(out_dir)
    federation = load_federation(federation_path)
    federation_bytes = _read_bytes(federation_path, "federation file")
    report = InitReport(out_dir=out)
    report.notes.extend(_check_existing_kits(federation, federation_path, out))

    if not out.exists():
        _private_dir(out)
    elif not out.is_dir():
        raise UserError(f"{out}: exists but is not a directory")
    p = _Provisioner(out, report)
    _private_dir(out / "ca", report)
    report.groups["ca"] = "operator only"
    org = f"smpc federation {federation.name}"
    party_ca = p.ca("party-ca", "smpc party CA", org)
    federation_ca = p.ca("federation-ca", "smpc federation CA", org)

    public_files = {
        "party-ca.crt": party_ca.pem,
        "federation-ca.crt": federation_ca.pem,
        "federation.yaml": federation_bytes,
    }
    _private_dir(out / "kits", report)
    directory_entries: list[dict[str, Any]] = []
    kit_dirs: list[Path] = []
    for name, role in federation.participants:
        kit = out / "kits" / name
        kit_dirs.append(kit)
        _private_dir(kit, report)
        index = federation.party_index(name) if role == "party" else None
        group = f"kits/{name}"
        report.groups[group] = f"party {index}" if index is not None else role
        entry: dict[str, Any] = {"name": name, "role": role}
        if index is not None:
            entry["index"] = index
            config = kit / ".config"
            _private_dir(config, report)
            mpyc_key, _ = p.key(config / f"party_{index}.key", "ec")
            p.cert(
                config / f"party_{index}.crt",
                _CertSpec(
                    subject=_name(mpyc_party_name(index), "party", org),
                    sans=(x509.DNSName(mpyc_party_name(index)),),
                    eku=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
                ),
                mpyc_key,
                party_ca,
            )
            _write_public(config / "mpyc_ca.crt", party_ca.pem)
        tls = kit / "tls"
        _private_dir(tls, report)
        tls_key, _ = p.key(tls / "client.key", "ec")
        p.cert(
            tls / "client.crt",
            _CertSpec(subject=_name(name, role, org), eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)),
            tls_key,
            federation_ca,
        )
        _write_public(tls / "ca.crt", federation_ca.pem)
        keys = kit / "keys"
        _private_dir(keys, report)
        if role in ("party", "analyst"):  # shares go to parties, results to analysts
            encryption_key, _ = p.key(keys / "encryption.key", "x25519")
            entry["encryption_key"] = _raw_b64(encryption_key.public_key())
        signing_key, _ = p.key(keys / "signing.key", "ed25519")
        entry["signing_key"] = _raw_b64(signing_key.public_key())
        directory_entries.append(entry)
        info: dict[str, Any] = {
            "format": KIT_FORMAT,
            "federation": federation.name,
            "name": name,
            "role": role,
        }
        if index is not None:
            info["index"] = index
        _write_public(kit / "kit.json", _json_bytes(info))

    broker = out / "kits" / BROKER_KIT
    _private_dir(broker, report)
    report.groups[f"kits/{BROKER_KIT}"] = f"broker {federation.broker.host}"
    tls = broker / "tls"
    _private_dir(tls, report)
    server_key, _ = p.key(tls / "server.key", "ec")
    p.cert(
        tls / "server.crt",
        _CertSpec(
            subject=_name(federation.broker.host, "broker", org),
            sans=_broker_sans(federation.broker.host),
            eku=(ExtendedKeyUsageOID.SERVER_AUTH,),
        ),
        server_key,
        federation_ca,
    )
    _write_public(tls / "ca.crt", federation_ca.pem)
    broker_info = {
        "format": KIT_FORMAT,
        "federation": federation.name,
        "name": BROKER_KIT,
        "role": "broker",
        "host": federation.broker.host,
        "port": federation.broker.port,
    }
    _write_public(broker / "kit.json", _json_bytes(broker_info))

    public_files["directory.json"] = _json_bytes(
        {
            "format": DIRECTORY_FORMAT,
            "federation": federation.name,
            "participants": directory_entries,
        }
    )
    for public in (out / "public", *(kit / "public" for kit in kit_dirs)):
        _public_dir(public)
        for filename, data in public_files.items():
            _write_public(public / filename, data)
    counts = ", ".join(
        _plural(len(group), word)
        for group, word in (
            (federation.parties, "party"),
            (federation.sites, "site"),
            (federation.analysts, "analyst"),
        )
    )
    report.summary = (
        f"{out / 'public' / 'directory.json'}: {counts} (copied into every kit's public/)"
    )
    return report


# --- loading --------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectoryEntry:
    """Public identity of one participant."""

    name: str
    role: Role
    index: int | None
    signing_key: Ed25519PublicKey
    encryption_key: X25519PublicKey | None


@dataclass(frozen=True, eq=False)
class Directory:
    """Every participant's public keys, as published in ``public/directory.json``."""

    path: Path  # the public/ directory
    federation: str
    entries: Mapping[str, DirectoryEntry]

    @property
    def parties(self) -> tuple[str, ...]:
        """Computing parties in MPyC index order."""
        parties = [e for e in self.entries.values() if e.role == "party"]
        return tuple(e.name for e in sorted(parties, key=lambda e: e.index or 0))

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries.values() if e.role == "site")

    @property
    def analysts(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries.values() if e.role == "analyst")

    @property
    def party_ca(self) -> Path:
        return self.path / "party-ca.crt"

    @property
    def federation_ca(self) -> Path:
        return self.path / "federation-ca.crt"

    def __iter__(self) -> Iterator[DirectoryEntry]:
        return iter(self.entries.values())

    def entry(self, name: str) -> DirectoryEntry:
        """The entry of ``name``; UserError for a name the directory does not know."""
        try:
            return self.entries[name]
        except KeyError:
            raise UserError(
                f"{name!r} is not in {self.path / 'directory.json'} "
                f"(federation {self.federation!r})"
            ) from None

    def verify_key(self, name: str) -> Ed25519PublicKey:
        """Ed25519 key that verifies signatures made by ``name``."""
        return self.entry(name).signing_key

    def role(self, name: str) -> Role:
        return self.entry(name).role

    def party_index(self, name: str) -> int:
        entry = self.entry(name)
        if entry.index is None:
            raise UserError(f"{name!r} is a {entry.role}, not a computing party")
        return entry.index

    def analyst_encryption_key(self, name: str) -> X25519PublicKey:
        """X25519 key that results for analyst ``name`` are encrypted to."""
        entry = self.entry(name)
        if entry.role != "analyst" or entry.encryption_key is None:
            raise UserError(f"{name!r} is a {entry.role}, not an analyst")
        return entry.encryption_key

    def party_encryption_key(self, index: int) -> X25519PublicKey:
        """X25519 key that share ``index`` is encrypted to."""
        parties = self.parties
        if not 0 <= index < len(parties):
            raise UserError(
                f"no computing party {index} in {self.path / 'directory.json'} "
                f"(parties 0..{len(parties) - 1})"
            )
        key = self.entries[parties[index]].encryption_key
        assert key is not None  # checked by load_directory
        return key


def _decode_raw_key(path: Path, where: str, value: str, key_type: Any) -> Any:
    try:
        raw = base64.b64decode(value, validate=True)
        return key_type.from_public_bytes(raw)
    except ValueError:
        raise UserError(f"{path}: {where}: not a base64 raw 32-byte public key") from None


def load_directory(path: str | Path) -> Directory:
    """Load a ``public/`` directory (or its ``directory.json``); UserError if malformed."""
    path = Path(path)
    public = path.parent if path.name == "directory.json" else path
    file = public / "directory.json"
    info: _DirectoryInfo = _read_json(file, _DirectoryInfo, "public directory")
    entries: dict[str, DirectoryEntry] = {}
    indices: list[int] = []
    for i, item in enumerate(info.participants):
        where = f"participants.{i}"
        if not NAME_PATTERN.fullmatch(item.name) or item.name in entries:
            raise UserError(f"{file}: {where}.name: invalid or duplicate name {item.name!r}")
        is_party = item.role == "party"
        encrypts = item.role in ("party", "analyst")
        if is_party != (item.index is not None) or encrypts != (item.encryption_key is not None):
            raise UserError(
                f"{file}: {where}: parties, and only parties, have an index; parties and "
                "analysts, and only they, have an encryption_key"
            )
        signing = _decode_raw_key(file, f"{where}.signing_key", item.signing_key, Ed25519PublicKey)
        encryption = None
        if item.encryption_key is not None:
            encryption = _decode_raw_key(
                file, f"{where}.encryption_key", item.encryption_key, X25519PublicKey
            )
        if item.index is not None:
            indices.append(item.index)
        entries[item.name] = DirectoryEntry(item.name, item.role, item.index, signing, encryption)
    if sorted(indices) != list(range(len(indices))):
        raise UserError(f"{file}: party indices {sorted(indices)} are not 0..{len(indices) - 1}")
    return Directory(path=public, federation=info.federation, entries=entries)


@dataclass(frozen=True)
class TlsFiles:
    """Certificate, private key and CA certificate of one TLS identity."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True, eq=False)
class Kit:
    """A participant's kit: its own secrets plus the public material it needs."""

    path: Path
    name: str
    role: Role
    party_index: int | None
    signing_key: Ed25519PrivateKey
    encryption_key: X25519PrivateKey | None
    tls: TlsFiles  # broker client certificate (federation CA)
    mpyc: TlsFiles | None  # parties only: what MPyC's --ssl loads
    directory: Directory

    @property
    def mpyc_workdir(self) -> Path:
        """Run MPyC here: its --ssl loads ``.config/...`` relative to the working directory."""
        return self.path

    @property
    def federation_file(self) -> Path:
        """The copy of the federation file this kit was made from."""
        return self.directory.path / "federation.yaml"


def _require_files(*paths: Path) -> None:
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: not found (incomplete kit: re-run `smpc keys init`)")


def load_kit(path: str | Path) -> Kit:
    """Load and cross-check a participant's kit; UserError naming the file on problems."""
    path = Path(path)
    info: _KitInfo = _read_json(path / "kit.json", _KitInfo, "kit description")
    if info.role == "broker":
        raise UserError(f"{path}: is the broker's kit; use load_broker_kit")
    role: Role = info.role
    directory = load_directory(path / "public")
    entry = directory.entry(info.name)
    if entry.role != role or entry.index != info.index:
        raise UserError(
            f"{path / 'kit.json'}: says {info.name} is {role} {info.index}, but "
            f"{directory.path / 'directory.json'} says {entry.role} {entry.index}"
        )
    signing_path = path / "keys" / "signing.key"
    signing_key: Ed25519PrivateKey = _load_private_key(signing_path, "ed25519")
    if _public_der(signing_key.public_key()) != _public_der(entry.signing_key):
        raise UserError(f"{signing_path}: does not match {info.name}'s key in directory.json")
    encryption_key: X25519PrivateKey | None = None
    mpyc: TlsFiles | None = None
    if entry.encryption_key is not None:
        encryption_path = path / "keys" / "encryption.key"
        encryption_key = _load_private_key(encryption_path, "x25519")
        if _public_der(encryption_key.public_key()) != _public_der(entry.encryption_key):
            raise UserError(
                f"{encryption_path}: does not match {info.name}'s key in directory.json"
            )
    if info.index is not None:
        config = path / ".config"
        mpyc = TlsFiles(
            cert=config / f"party_{info.index}.crt",
            key=config / f"party_{info.index}.key",
            ca=config / "mpyc_ca.crt",
        )
        _require_files(mpyc.cert, mpyc.key, mpyc.ca)
        try:
            cert = x509.load_pem_x509_certificate(_read_bytes(mpyc.cert, "certificate"))
        except ValueError:
            raise UserError(f"{mpyc.cert}: not a PEM certificate") from None
        if mpyc_party_index(cert) != info.index:
            raise UserError(f"{mpyc.cert}: is not the certificate of MPyC party {info.index}")
    tls = TlsFiles(
        cert=path / "tls" / "client.crt",
        key=path / "tls" / "client.key",
        ca=path / "tls" / "ca.crt",
    )
    _require_files(tls.cert, tls.key, tls.ca)
    return Kit(
        path=path,
        name=info.name,
        role=role,
        party_index=info.index,
        signing_key=signing_key,
        encryption_key=encryption_key,
        tls=tls,
        mpyc=mpyc,
        directory=directory,
    )


@dataclass(frozen=True)
class BrokerKit:
    """The broker's server certificate and the federation CA its clients must present."""

    path: Path
    host: str
    port: int
    tls: TlsFiles


def load_broker_kit(path: str | Path) -> BrokerKit:
    """Load ``OUT/kits/broker``; UserError naming the file on problems."""
    path = Path(path)
    info: _KitInfo = _read_json(path / "kit.json", _KitInfo, "kit description")
    if info.role != "broker" or info.host is None or info.port is None:
        raise UserError(f"{path / 'kit.json'}: not a broker kit")
    tls = TlsFiles(
        cert=path / "tls" / "server.crt",
        key=path / "tls" / "server.key",
        ca=path / "tls" / "ca.crt",
    )
    _require_files(tls.cert, tls.key, tls.ca)
    return BrokerKit(path=path, host=info.host, port=info.port, tls=tls)
