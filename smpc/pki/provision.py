"""Key provisioning for a federation: ``smpc keys init`` (:func:`init_keys`).

``smpc keys init parties/federation.yaml --out OUT`` creates::

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

Decisions worth knowing (certificates: :mod:`smpc.pki.certs`; files: :mod:`smpc.pki.files`):

- Re-running keeps every existing key and only creates what is missing; a certificate
  is reissued (same key) only when it is missing, unreadable, expires within 30 days,
  or no longer matches its key, its CA or the federation file (e.g. the broker host
  changed).
- The order of ``parties`` is the MPyC index and is written into certificates, so a run
  that would move a party to another index stops with an error instead of silently
  reissuing: certificates for the old index may already be in use.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from smpc.config.federation import Federation, Role, load_federation
from smpc.errors import UserError
from smpc.pki.certs import (
    CA,
    CertSpec,
    broker_sans,
    cert_name,
    cert_problem,
    issue_cert,
    mpyc_party_name,
)
from smpc.pki.directory import DIRECTORY_FORMAT
from smpc.pki.files import (
    PRIVATE_FILE_MODE,
    KeyKind,
    generate_key,
    json_bytes,
    key_pem,
    load_private_key,
    private_dir,
    public_dir,
    raw_b64,
    read_bytes,
    read_json,
    write_private,
    write_public,
)
from smpc.pki.kit import BROKER_KIT, KIT_FORMAT, KitInfo
from smpc.pki.report import Action, InitReport, ReportEntry, plural

__all__ = ["init_keys"]


class _Provisioner:
    """One run of :func:`init_keys`: ensures files exist and records what it did."""

    def __init__(self, out: Path, report: InitReport) -> None:
        self.out = out
        self.report = report
        self.now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def private_dir(self, path: Path) -> None:
        """Create or tighten a directory that holds secrets, noting a tightening."""
        private_dir(path, self.report.notes)

    def _record(self, action: Action, path: Path, reason: str = "") -> None:
        self.report.entries.append(ReportEntry(action, path.relative_to(self.out), reason))

    def key(self, path: Path, kind: KeyKind) -> tuple[Any, bool]:
        """Load the key at ``path`` or create it; returns (key, created)."""
        if path.exists():
            key = load_private_key(path, kind)
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(path, PRIVATE_FILE_MODE)
                self.report.notes.append(f"tightened {path} from {mode:o} to 600")
            self._record("kept", path)
            return key, False
        key = generate_key(kind)
        write_private(path, key_pem(key))
        self._record("created", path)
        return key, True

    def cert(self, path: Path, spec: CertSpec, key: Any, issuer: CA | None) -> x509.Certificate:
        """Keep the certificate at ``path`` if it is still right, else (re)issue it."""
        reason = "missing"
        if path.exists():
            try:
                existing = x509.load_pem_x509_certificate(read_bytes(path, "certificate"))
            except ValueError:
                reason = "unreadable"
            else:
                issuer_cert = existing if issuer is None else issuer.cert
                problem = cert_problem(existing, spec, key.public_key(), issuer_cert, self.now)
                if problem is None:
                    self._record("kept", path)
                    return existing
                reason = problem
        cert = issue_cert(spec, key.public_key(), issuer, key, self.now)
        write_public(path, cert.public_bytes(serialization.Encoding.PEM))
        if reason == "missing":
            self._record("created", path)
        else:
            self._record("reissued", path, reason)
        return cert

    def ca(self, stem: str, cn: str, org: str) -> CA:
        ca_dir = self.out / "ca"
        key, _ = self.key(ca_dir / f"{stem}.key", "ec")
        spec = CertSpec(subject=cert_name(cn, "ca", org), is_ca=True)
        cert = self.cert(ca_dir / f"{stem}.crt", spec, key, None)
        return CA(key, cert, cert.public_bytes(serialization.Encoding.PEM))


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
            info = read_json(info_path, KitInfo, "kit description")
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
    federation_bytes = read_bytes(federation_path, "federation file")
    report = InitReport(out_dir=out)
    report.notes.extend(_check_existing_kits(federation, federation_path, out))

    if not out.exists():
        private_dir(out)
    elif not out.is_dir():
        raise UserError(f"{out}: exists but is not a directory")
    p = _Provisioner(out, report)
    org = f"smpc federation {federation.name}"
    party_ca, federation_ca = _provision_cas(p, org)
    public_files = {
        "party-ca.crt": party_ca.pem,
        "federation-ca.crt": federation_ca.pem,
        "federation.yaml": federation_bytes,
    }
    p.private_dir(out / "kits")
    directory_entries: list[dict[str, Any]] = []
    kit_dirs: list[Path] = []
    for name, role in federation.participants:
        kit_dirs.append(out / "kits" / name)
        directory_entries.append(
            _provision_participant(p, federation, name, role, org, party_ca, federation_ca)
        )
    _provision_broker(p, federation, org, federation_ca)
    public_files["directory.json"] = json_bytes(
        {
            "format": DIRECTORY_FORMAT,
            "federation": federation.name,
            "participants": directory_entries,
        }
    )
    _write_public_files(out, kit_dirs, public_files)
    report.summary = _summary(federation, out)
    return report


def _provision_cas(p: _Provisioner, org: str) -> tuple[CA, CA]:
    """The party CA and the federation CA, in ``OUT/ca``."""
    p.private_dir(p.out / "ca")
    p.report.groups["ca"] = "operator only"
    party_ca = p.ca("party-ca", "smpc party CA", org)
    federation_ca = p.ca("federation-ca", "smpc federation CA", org)
    return party_ca, federation_ca


def _provision_participant(
    p: _Provisioner,
    federation: Federation,
    name: str,
    role: Role,
    org: str,
    party_ca: CA,
    federation_ca: CA,
) -> dict[str, Any]:
    """The kit of one participant; returns its entry for ``directory.json``."""
    kit = p.out / "kits" / name
    p.private_dir(kit)
    index = federation.party_index(name) if role == "party" else None
    p.report.groups[f"kits/{name}"] = f"party {index}" if index is not None else role
    entry: dict[str, Any] = {"name": name, "role": role}
    if index is not None:
        entry["index"] = index
        _provision_mpyc_tls(p, kit, index, org, party_ca)
    _provision_client_tls(p, kit, name, role, org, federation_ca)
    keys = kit / "keys"
    p.private_dir(keys)
    if role in ("party", "analyst"):  # shares go to parties, results to analysts
        encryption_key, _ = p.key(keys / "encryption.key", "x25519")
        entry["encryption_key"] = raw_b64(encryption_key.public_key())
    signing_key, _ = p.key(keys / "signing.key", "ed25519")
    entry["signing_key"] = raw_b64(signing_key.public_key())
    info: dict[str, Any] = {
        "format": KIT_FORMAT,
        "federation": federation.name,
        "name": name,
        "role": role,
    }
    if index is not None:
        info["index"] = index
    write_public(kit / "kit.json", json_bytes(info))
    return entry


def _provision_mpyc_tls(p: _Provisioner, kit: Path, index: int, org: str, party_ca: CA) -> None:
    """A party's MPyC certificate and the party CA, where MPyC's --ssl looks."""
    config = kit / ".config"
    p.private_dir(config)
    mpyc_key, _ = p.key(config / f"party_{index}.key", "ec")
    p.cert(
        config / f"party_{index}.crt",
        CertSpec(
            subject=cert_name(mpyc_party_name(index), "party", org),
            sans=(x509.DNSName(mpyc_party_name(index)),),
            eku=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        ),
        mpyc_key,
        party_ca,
    )
    write_public(config / "mpyc_ca.crt", party_ca.pem)


def _provision_client_tls(
    p: _Provisioner, kit: Path, name: str, role: Role, org: str, federation_ca: CA
) -> None:
    """A participant's broker client certificate and the federation CA."""
    tls = kit / "tls"
    p.private_dir(tls)
    tls_key, _ = p.key(tls / "client.key", "ec")
    p.cert(
        tls / "client.crt",
        CertSpec(subject=cert_name(name, role, org), eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)),
        tls_key,
        federation_ca,
    )
    write_public(tls / "ca.crt", federation_ca.pem)


def _provision_broker(p: _Provisioner, federation: Federation, org: str, federation_ca: CA) -> None:
    """The broker's kit: its server certificate for the federation's broker host."""
    broker = p.out / "kits" / BROKER_KIT
    p.private_dir(broker)
    p.report.groups[f"kits/{BROKER_KIT}"] = f"broker {federation.broker.host}"
    tls = broker / "tls"
    p.private_dir(tls)
    server_key, _ = p.key(tls / "server.key", "ec")
    p.cert(
        tls / "server.crt",
        CertSpec(
            subject=cert_name(federation.broker.host, "broker", org),
            sans=broker_sans(federation.broker.host),
            eku=(ExtendedKeyUsageOID.SERVER_AUTH,),
        ),
        server_key,
        federation_ca,
    )
    write_public(tls / "ca.crt", federation_ca.pem)
    broker_info = {
        "format": KIT_FORMAT,
        "federation": federation.name,
        "name": BROKER_KIT,
        "role": "broker",
        "host": federation.broker.host,
        "port": federation.broker.port,
    }
    write_public(broker / "kit.json", json_bytes(broker_info))


def _write_public_files(out: Path, kit_dirs: list[Path], public_files: dict[str, bytes]) -> None:
    """``OUT/public`` and its copy in every participant's kit."""
    for public in (out / "public", *(kit / "public" for kit in kit_dirs)):
        public_dir(public)
        for filename, data in public_files.items():
            write_public(public / filename, data)


def _summary(federation: Federation, out: Path) -> str:
    counts = ", ".join(
        plural(len(group), word)
        for group, word in (
            (federation.parties, "party"),
            (federation.sites, "site"),
            (federation.analysts, "analyst"),
        )
    )
    return f"{out / 'public' / 'directory.json'}: {counts} (copied into every kit's public/)"
