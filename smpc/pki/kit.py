"""Loading the kit of a participant or of the broker, checked against the public directory.

Kits are what :func:`smpc.pki.provision.init_keys` writes; :func:`load_kit` checks every
key of a participant's kit against its copy of ``directory.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from smpc.config.federation import Role
from smpc.errors import UserError
from smpc.pki.certs import mpyc_party_index
from smpc.pki.directory import Directory, load_directory
from smpc.pki.files import StrictModel, load_private_key, public_der, read_bytes, read_json

__all__ = [
    "BROKER_KIT",
    "KIT_FORMAT",
    "BrokerKit",
    "Kit",
    "KitInfo",
    "TlsFiles",
    "load_broker_kit",
    "load_kit",
]

KIT_FORMAT = "smpc-kit/1"
BROKER_KIT = "broker"


class KitInfo(StrictModel):
    format: Literal["smpc-kit/1"]
    federation: str
    name: str
    role: Literal["party", "site", "analyst", "broker"]
    index: int | None = None
    host: str | None = None  # broker only
    port: int | None = None  # broker only


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
    info: KitInfo = read_json(path / "kit.json", KitInfo, "kit description")
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
    signing_key: Ed25519PrivateKey = load_private_key(signing_path, "ed25519")
    if public_der(signing_key.public_key()) != public_der(entry.signing_key):
        raise UserError(f"{signing_path}: does not match {info.name}'s key in directory.json")
    encryption_key: X25519PrivateKey | None = None
    mpyc: TlsFiles | None = None
    if entry.encryption_key is not None:
        encryption_path = path / "keys" / "encryption.key"
        encryption_key = load_private_key(encryption_path, "x25519")
        if public_der(encryption_key.public_key()) != public_der(entry.encryption_key):
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
            cert = x509.load_pem_x509_certificate(read_bytes(mpyc.cert, "certificate"))
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
    info: KitInfo = read_json(path / "kit.json", KitInfo, "kit description")
    if info.role != "broker" or info.host is None or info.port is None:
        raise UserError(f"{path / 'kit.json'}: not a broker kit")
    tls = TlsFiles(
        cert=path / "tls" / "server.crt",
        key=path / "tls" / "server.key",
        ca=path / "tls" / "ca.crt",
    )
    _require_files(tls.cert, tls.key, tls.ca)
    return BrokerKit(path=path, host=info.host, port=info.port, tls=tls)
