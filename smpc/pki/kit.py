"""Loading the kit of a participant or of the broker, checked against the public directory.

Kits are what :func:`smpc.pki.provision.init_keys` writes; :func:`load_kit` checks every
key of a participant's kit against its copy of ``directory.json``. :func:`reload_kit`
reads a running daemon's kit again (on SIGHUP), after the operator re-ran ``smpc keys
init`` and handed out the new public files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from smpc.config.federation import Federation, Role, load_federation
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
    "Reloaded",
    "TlsFiles",
    "load_broker_kit",
    "load_kit",
    "reload_kit",
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


@dataclass(frozen=True)
class Reloaded:
    """A kit and federation file read again, and who joined or left the directory."""

    kit: Kit
    federation: Federation
    added: tuple[str, ...]
    removed: tuple[str, ...]


def reload_kit(kit: Kit, federation_file: str | Path | None = None) -> Reloaded:
    """Read ``kit`` and its federation file (default: the kit's copy) again, for a running
    daemon; UserError, and nothing changes, if the new files are not a usable update.

    A usable update is what a re-run of ``smpc keys init`` writes: the same participant
    (name, role, MPyC index) in the same federation, the same computing parties in the
    same order (their indices are in MPyC certificates and in running jobs: changing them
    needs a restart of every party), and a federation file that lists exactly the
    directory's participants. Sites and analysts may join or leave.
    """
    new = load_kit(kit.path)
    federation = load_federation(federation_file or new.federation_file)
    old_dir, new_dir = kit.directory, new.directory
    where = new_dir.path / "directory.json"
    if (new.name, new.role, new.party_index) != (kit.name, kit.role, kit.party_index):
        raise UserError(
            f"{kit.path}: is now the kit of {new.role} {new.name}, not of {kit.role} {kit.name}"
        )
    if new_dir.federation != old_dir.federation or federation.name != old_dir.federation:
        raise UserError(
            f"{where}: federation {new_dir.federation!r} (federation file: "
            f"{federation.name!r}), not {old_dir.federation!r}"
        )
    if new_dir.parties != old_dir.parties:
        raise UserError(
            f"{where}: the computing parties changed ({', '.join(old_dir.parties)} -> "
            f"{', '.join(new_dir.parties)}); that needs a restart of every party"
        )
    listed = {name: role for name, role in federation.participants}
    known = {entry.name: entry.role for entry in new_dir}
    if listed != known or federation.party_names != new_dir.parties:
        raise UserError(
            f"{federation_file or new.federation_file}: does not list the participants of "
            f"{where} (copy both from the same run of `smpc keys init`)"
        )
    added = tuple(name for name in known if name not in old_dir.entries)
    removed = tuple(name for name in old_dir.entries if name not in known)
    return Reloaded(kit=new, federation=federation, added=added, removed=removed)
