"""Byte layout of a share envelope and its clear routing part, readable before any decryption."""

# Byte layout (version 1; all integers little-endian)
#
# offset   size  field
# 0        4     magic b"SMPE"
# 4        2     version, u16 = 1
# 6        2     party: index of the recipient party, u16
# 8        16    recipient fingerprint: SHA-256(raw X25519 public key)[:16]
# 24       16    signer fingerprint: SHA-256(raw Ed25519 public key)[:16]
# 40       32    ephemeral X25519 public key (raw)
# 72       4     chunk_size, u32, 64 KiB <= chunk_size <= 1 GiB
# 76       8     body_len: plaintext body length in bytes, u64
# 84       4     header_len: encrypted header length (JSON + 16-byte tag), u32
# 88       2     job_len, u16
# 90       2     input_len, u16
# 92       2     site_len, u16
# 94       …     job, input, site: UTF-8, job_len / input_len / site_len bytes
# P        H     encrypted header (H = header_len); P = 94 + the three lengths
# P+H      64    Ed25519 signature (smpc.wire.crypto)
# P+H+64   …     chunk ciphertexts, each its plaintext length + 16-byte tag;
#                chunks = max(1, ceil(body_len / chunk_size))
#
# Offsets 0..P are the *routing part*, all the untrusted broker sees besides the
# total size and the signature; the envelope is exactly P + H + 64 + body_len +
# 16·chunks bytes, no more, no less. Any change to this layout is a new version:
# open_envelope refuses versions it does not know (UnsupportedVersion). docs/wire.md
# describes the format in full.

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from smpc.wire.buffers import as_view
from smpc.wire.envelope_errors import (
    InvalidHeader,
    NotAnEnvelope,
    TamperedEnvelope,
    TruncatedEnvelope,
    UnsupportedVersion,
)
from smpc.wire.header import check_name

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FIXED",
    "FIXED_SIZE",
    "FP",
    "KEY",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MAX_HEADER_BYTES",
    "MIN_CHUNK_SIZE",
    "SIG",
    "SUPPORTED_VERSIONS",
    "TAG",
    "VERSION",
    "Prefix",
    "Route",
    "chunk_count",
    "envelope_id",
    "envelope_size",
    "parse_prefix",
    "peek_route",
]


MAGIC = b"SMPE"
VERSION = 1
SUPPORTED_VERSIONS = frozenset({VERSION})

MIN_CHUNK_SIZE = 64 * 1024  # below this, per-chunk Python overhead dominates
MAX_CHUNK_SIZE = 1 << 30  # cryptography's AEAD takes at most 2**31 - 1 bytes per call
DEFAULT_CHUNK_SIZE = 1 << 20

MAX_HEADER_BYTES = 1 << 20  # encrypted header incl. tag: meta is for small extras

TAG = 16
SIG = 64
FP = 16
KEY = 32
# magic, version, party, recipient fp, signer fp, ephemeral, chunk_size, body_len,
# header_len, job_len, input_len, site_len
FIXED = struct.Struct(f"<4sHH{FP}s{FP}s{KEY}sIQIHHH")
FIXED_SIZE = FIXED.size  # 94


@dataclass(frozen=True)
class Route:
    """The clear routing part of an envelope: what a party (and the broker) can see."""

    version: int
    job: str
    input: str
    site: str
    party: int
    recipient: str  # hex fingerprint of the recipient's X25519 public key
    signer: str  # hex fingerprint of the signing site's Ed25519 public key
    chunk_size: int
    chunks: int
    body_len: int
    size: int  # exact length of the whole envelope in bytes


@dataclass(frozen=True)
class Prefix:
    route: Route
    ephemeral: bytes
    header_len: int
    end: int  # P: end of the routing part

    def ctx(self) -> dict[str, Any]:
        r = self.route
        return {"job": r.job, "input": r.input, "site": r.site, "party": r.party}


def chunk_count(body_len: int, chunk_size: int) -> int:
    return max(1, -(-body_len // chunk_size))


def envelope_size(prefix_len: int, header_len: int, body_len: int, chunk_size: int) -> int:
    return prefix_len + header_len + SIG + body_len + TAG * chunk_count(body_len, chunk_size)


def parse_prefix(view: memoryview) -> Prefix:
    """Parse and check the routing part; only looks at its own bytes."""
    n = len(view)
    head = bytes(view[:4])
    if n < 4:
        if MAGIC.startswith(head):
            raise TruncatedEnvelope(f"only {n} bytes, shorter than the magic")
        raise NotAnEnvelope(f"bad magic {head!r}: not a share envelope")
    if head != MAGIC:
        raise NotAnEnvelope(f"bad magic {head!r} (expected {MAGIC!r}): not a share envelope")
    if n < 6:
        raise TruncatedEnvelope(f"only {n} bytes, cut inside the version")
    version = int.from_bytes(view[4:6], "little")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(
            f"version {version} is not supported (this smpc reads "
            f"{', '.join(map(str, sorted(SUPPORTED_VERSIONS)))}): upgrade the receiving side "
            "or re-send with a matching smpc"
        )
    if n < FIXED_SIZE:
        raise TruncatedEnvelope(f"only {n} bytes, cut inside the routing part")
    (_, _, party, rfp, sfp, eph, chunk_size, body_len, header_len, lj, li, ls) = FIXED.unpack_from(
        view
    )
    end = FIXED_SIZE + lj + li + ls
    if n < end:
        raise TruncatedEnvelope(f"only {n} bytes, cut inside the routing names", party=party)
    names = []
    for lo, hi in ((FIXED_SIZE, FIXED_SIZE + lj), (FIXED_SIZE + lj, end - ls), (end - ls, end)):
        try:
            names.append(bytes(view[lo:hi]).decode("utf-8"))
        except UnicodeDecodeError:
            raise TamperedEnvelope("routing names are not UTF-8", party=party) from None
    job, inp, site = names
    ctx = {"job": job, "input": inp, "site": site, "party": party}
    for what, value in zip(("job", "input", "site"), names, strict=True):
        try:
            check_name(what, value)
        except InvalidHeader as e:
            raise TamperedEnvelope(f"malformed routing part: {e.reason}", **ctx) from None
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise TamperedEnvelope(
            f"chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}", **ctx
        )
    if not TAG < header_len <= MAX_HEADER_BYTES:
        raise TamperedEnvelope(f"header length {header_len} out of range", **ctx)
    size = envelope_size(end, header_len, body_len, chunk_size)
    route = Route(
        version=version,
        job=job,
        input=inp,
        site=site,
        party=party,
        recipient=rfp.hex(),
        signer=sfp.hex(),
        chunk_size=chunk_size,
        chunks=chunk_count(body_len, chunk_size),
        body_len=body_len,
        size=size,
    )
    return Prefix(route=route, ephemeral=eph, header_len=header_len, end=end)


def peek_route(data: bytes | bytearray | memoryview) -> Route:
    """The clear routing part, without decrypting or verifying anything.

    Lets a party file, route or reject an envelope early (wrong party, unknown
    job, unexpected site) before paying for decryption. Nothing in it is
    authenticated until :func:`open_envelope` has checked the signature. Only
    the routing part's bytes are needed; the total length is not checked here
    (``Route.size`` says what it must be).
    """
    return parse_prefix(as_view(data)).route


def envelope_id(data: bytes | bytearray | memoryview) -> str:
    """The hex SHA-256 the site signed (routing part + encrypted header).

    Unique per envelope and computable by the sender and the receiver alike, so
    acks can name the envelope they answer; equal to ``Opened.envelope_id``.
    Nothing is verified here.
    """
    view = as_view(data)
    pre = parse_prefix(view)
    if len(view) < pre.end + pre.header_len:
        raise TruncatedEnvelope("envelope ends inside its header", **pre.ctx())
    return hashlib.sha256(view[: pre.end + pre.header_len]).hexdigest()
