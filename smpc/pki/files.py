"""Files of a key kit: private keys and secrets written 0600, public files atomically.

- Private keys are unencrypted PEM files created with mode 0600 (``os.open`` with
  ``O_EXCL``: never overwritten), in directories with mode 0700.
- Public files (certificates, ``kit.json``, ``directory.json``) are replaced atomically
  and left alone when their content is unchanged, so re-running provisioning does not
  touch what is already right.
- ``kit.json`` and ``directory.json`` are read strictly (unknown fields are errors).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, Literal, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError

from smpc.config.federation import user_error_from_validation
from smpc.errors import UserError

__all__ = [
    "PRIVATE_FILE_MODE",
    "KeyKind",
    "PrivateKey",
    "StrictModel",
    "generate_key",
    "json_bytes",
    "key_pem",
    "load_private_key",
    "private_dir",
    "public_der",
    "public_dir",
    "raw_b64",
    "read_bytes",
    "read_json",
    "write_private",
    "write_public",
]

_PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_PUBLIC_DIR_MODE = 0o755
_PUBLIC_FILE_MODE = 0o644

KeyKind = Literal["ec", "ed25519", "x25519"]
PrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey | X25519PrivateKey
_KEY_TYPES: dict[str, tuple[type, str]] = {
    "ec": (ec.EllipticCurvePrivateKey, "an EC P-256 private key"),
    "ed25519": (Ed25519PrivateKey, "an Ed25519 private key"),
    "x25519": (X25519PrivateKey, "an X25519 private key"),
}


def private_dir(path: Path, notes: list[str] | None = None) -> None:
    """Create ``path`` with mode 0700, or tighten an existing one that is wider."""
    if path.is_dir():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, _PRIVATE_DIR_MODE)
            if notes is not None:
                notes.append(f"tightened {path} from {mode:o} to 700 (it holds keys)")
        return
    try:
        os.mkdir(path, _PRIVATE_DIR_MODE)
    except FileExistsError:
        raise UserError(f"{path}: exists but is not a directory") from None


def public_dir(path: Path) -> None:
    try:
        os.makedirs(path, _PUBLIC_DIR_MODE, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{path}: exists but is not a directory") from None


def write_private(path: Path, data: bytes) -> None:
    """Write a new secret file with mode 0600 from the start; never replaces a file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_public(path: Path, data: bytes) -> None:
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


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what}: {exc.strerror}") from None


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(path: Path, kind: KeyKind) -> Any:
    """Load a PEM private key of the given kind; UserError naming the file otherwise."""
    data = read_bytes(path, "private key")
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


def generate_key(kind: KeyKind) -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return Ed25519PrivateKey.generate()
    return X25519PrivateKey.generate()


def public_der(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def raw_b64(public_key: Ed25519PublicKey | X25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class KitInfo(StrictModel):
    format: Literal["smpc-kit/1"]
    federation: str
    name: str
    role: Literal["party", "site", "analyst", "broker"]
    index: int | None = None
    host: str | None = None  # broker only
    port: int | None = None  # broker only


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


def read_json(path: Path, model: type[BaseModel], what: str) -> Any:
    data = read_bytes(path, what)
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    try:
        return model.model_validate(parsed)
    except ValidationError as exc:
        raise user_error_from_validation(path, exc, model) from None


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")
