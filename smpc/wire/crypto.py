"""The envelope's key schedule: HKDF over X25519, chunk nonces, signature context, fingerprints."""

# All from ``cryptography``; nothing hand-written.
#
# * Fresh ephemeral X25519 key per envelope, agreed with the recipient party's X25519
#   public key.
# * HKDF-SHA256, salt b"smpc share envelope v1", info = magic ‖ version ‖ ephemeral
#   public key ‖ recipient public key (raw, 32 bytes each) → 64 bytes: the header key
#   (first 32) and the body key (last 32). Binding both public keys means an envelope
#   re-addressed to another key decrypts to nothing.
# * ChaCha20-Poly1305. The header is one AEAD message under the header key with an
#   all-zero nonce. The body is cut into chunks of chunk_size bytes (the last one
#   shorter, an empty body is one empty chunk); chunk i is sealed under the body key
#   with nonce = i (12 bytes, little-endian) and AAD = SHA-256(routing part) ‖ final
#   flag (one byte, 1 on the last chunk, else 0). So chunks can be neither reordered
#   (nonce), nor dropped or cut at the end (final flag, and the body length in the
#   signed routing part), nor moved to another envelope (fresh key).
# * Ed25519 signature by the site over b"smpc share envelope v1 signature\0" ‖
#   SHA-256(everything before the signature) = routing part ‖ encrypted header.
#
# The signature sits before the body and does not hash the ciphertext: the encrypted
# header carries the SHA-256 of the plaintext body, so the signature already commits
# to the body, and a second pass over the ciphertext would cost as much as that digest
# and add nothing (docs/wire.md explains why).

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from smpc.wire.layout import FP, MAGIC, VERSION

__all__ = [
    "HEADER_NONCE",
    "SIG_CONTEXT",
    "derive_keys",
    "fingerprint",
    "key_fingerprint",
    "nonce",
    "raw_key",
]


_HKDF_SALT = b"smpc share envelope v1"
SIG_CONTEXT = b"smpc share envelope v1 signature\x00"
HEADER_NONCE = bytes(12)


_PublicKey = X25519PublicKey | Ed25519PublicKey
_AnyKey = _PublicKey | X25519PrivateKey | Ed25519PrivateKey


def raw_key(key: _PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: _AnyKey) -> bytes:
    if isinstance(key, X25519PrivateKey | Ed25519PrivateKey):
        key = key.public_key()
    return hashlib.sha256(raw_key(key)).digest()[:FP]


def key_fingerprint(key: _AnyKey) -> str:
    """Hex fingerprint of a public key (or of a private key's public half), as in routing.

    SHA-256 of the raw 32-byte public key, first 16 bytes; compare it with
    :attr:`Route.recipient` / :attr:`Route.signer`.
    """
    return fingerprint(key).hex()


def derive_keys(shared: bytes, ephemeral: bytes, recipient: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=_HKDF_SALT,
        info=MAGIC + VERSION.to_bytes(2, "little") + ephemeral + recipient,
    ).derive(shared)
    return okm[:32], okm[32:]


def nonce(i: int) -> bytes:
    return i.to_bytes(12, "little")
