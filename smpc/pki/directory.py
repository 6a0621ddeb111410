"""The public directory of a federation: every participant's role and public keys.

``public/directory.json`` lists, for every participant, its role, MPyC index (parties),
X25519 public key (parties and analysts) and Ed25519 public key (all), raw keys in
base64. Every kit carries a copy; :func:`load_directory` checks it is consistent.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from smpc.config.federation import Role
from smpc.errors import UserError
from smpc.names import NAME_PATTERN
from smpc.pki.files import StrictModel, read_json

__all__ = ["DIRECTORY_FORMAT", "Directory", "DirectoryEntry", "load_directory"]

DIRECTORY_FORMAT = "smpc-directory/1"


class _DirectoryEntryInfo(StrictModel):
    name: str
    role: Literal["party", "site", "analyst"]
    index: int | None = None
    signing_key: str
    encryption_key: str | None = None


class _DirectoryInfo(StrictModel):
    format: Literal["smpc-directory/1"]
    federation: str
    participants: list[_DirectoryEntryInfo]


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
    info: _DirectoryInfo = read_json(file, _DirectoryInfo, "public directory")
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
