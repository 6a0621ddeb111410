"""Share envelope: the versioned wire format of ONE secret share, from one site to one party.

A site (hospital) sends each computing party its share through an untrusted MQTT
broker. The envelope makes that safe: the share and everything that describes it
are encrypted to the one party that may read them, the site signs, and the party
refuses anything truncated, reordered, re-addressed, re-signed or flipped. It is
a plain byte string, so the same bytes can be published, stored and re-opened.

Crypto (all from ``cryptography``; nothing hand-written)
--------------------------------------------------------
* Fresh ephemeral X25519 key per envelope, agreed with the recipient party's
  X25519 public key.
* HKDF-SHA256, salt ``b"smpc share envelope v1"``, info = magic ‖ version ‖
  ephemeral public key ‖ recipient public key (raw, 32 bytes each) → 64 bytes:
  the header key (first 32) and the body key (last 32). Binding both public keys
  means an envelope re-addressed to another key decrypts to nothing.
* ChaCha20-Poly1305. The header is one AEAD message under the header key with an
  all-zero nonce. The body is cut into chunks of ``chunk_size`` bytes (the last one
  shorter, an empty body is one empty chunk); chunk ``i`` is sealed under the body
  key with nonce = ``i`` (12 bytes, little-endian) and AAD = SHA-256(routing part) ‖
  final flag (one byte, 1 on the last chunk, else 0). So chunks can be neither
  reordered (nonce), nor dropped or cut at the end (final flag, and the body
  length in the signed routing part), nor moved to another envelope (fresh key).
* Ed25519 signature by the site over ``b"smpc share envelope v1 signature\\0"`` ‖
  SHA-256(everything before the signature) = routing part ‖ encrypted header.

Why the signature sits *before* the body and does not hash the ciphertext
---------------------------------------------------------------------------
The encrypted header carries ``digest`` = SHA-256 of the plaintext body, so the
signature already commits to the body; a second SHA-256 pass over ~all the
ciphertext would cost as much as the digest itself (the slowest step of sealing)
and add nothing:

* the broker cannot alter a chunk without the AEAD key (it fails authentication);
* the recipient, who does know the key, could forge chunks that authenticate but
  not ones whose plaintext matches the signed digest (a SHA-256 second preimage),
  so it cannot claim the site sent something else;
* a receiver verifies the signature (over a few hundred bytes) before it decrypts
  anything, and every chunk is authenticated before any body byte is returned.

Byte layout (version 1; all integers little-endian)
---------------------------------------------------
=========  =====  ===========================================================
offset     size   field
=========  =====  ===========================================================
0          4      magic ``b"SMPE"``
4          2      version, u16 = 1
6          2      party: index of the recipient party, u16
8          16     recipient fingerprint: SHA-256(raw X25519 public key)[:16]
24         16     signer fingerprint: SHA-256(raw Ed25519 public key)[:16]
40         32     ephemeral X25519 public key (raw)
72         4      chunk_size, u32, 64 KiB ≤ chunk_size ≤ 1 GiB
76         8      body_len: plaintext body length in bytes, u64
84         4      header_len: encrypted header length (JSON + 16-byte tag), u32
88         2      job_len, u16
90         2      input_len, u16
92         2      site_len, u16
94         …      job, input, site: UTF-8, job_len / input_len / site_len bytes
P          H      encrypted header (``H = header_len``); P = 94 + the three lengths
P+H        64     Ed25519 signature (see above)
P+H+64     …      chunk ciphertexts, each its plaintext length + 16-byte tag;
                  chunks = max(1, ceil(body_len / chunk_size))
=========  =====  ===========================================================

Offsets 0..P are the *routing part*; the envelope is exactly
``P + H + 64 + body_len + 16·chunks`` bytes, no more, no less.

The header plaintext is canonical JSON (UTF-8, sorted keys, no spaces) of
:class:`ShareHeader`: ``job, input, site, party, scheme, t, n, modulus`` (a decimal
*string*, so a big prime survives any JSON reader), ``frac_bits, dtype, shape``
(list), ``seed, digest`` (64 lowercase hex digits), ``meta`` (object). It is parsed
strictly: no unknown or duplicate keys, exact types, the same job/input/site/party
as the routing part.

What the untrusted broker sees
------------------------------
Only the routing part — job, input name, site, recipient party index, the two
key fingerprints, the ephemeral public key, the chunk size and the body length
(which gives the number of elements, and tells a 32-byte seed from an array) —
plus the total size and the signature. Scheme, threshold, modulus, fixed-point
precision, dtype, shape, digest and meta travel encrypted, and so does the share.

Version policy: any change to this layout or to the header keys is a new version;
:func:`open_envelope` refuses versions it does not know (:class:`UnsupportedVersion`).

Limits: names ≤ 256 bytes of printable UTF-8; encrypted header ≤ 1 MiB; modulus ≤
4300 decimal digits (Python's int/str limit, ~14,000 bits); ≤ 1024 limbs per element.

How a site seals: streaming (:class:`EnvelopeWriter`; :func:`seal` = one piece)
-------------------------------------------------------------------------------
The routing part fixes every length before the first body byte (body length,
chunk size, and the header's: its digest is always 64 hex digits), so the whole
layout is known up front and the body can stream through. The writer puts the
routing part first and leaves a gap for the encrypted header and the signature.
Then the body arrives in pieces of any size: each updates the SHA-256 of the
plaintext, and every chunk is encrypted as soon as it is complete (its final flag
is known from the body length) — whole chunks straight from the caller's piece,
the rest through one reusable chunk-sized staging buffer. Ciphertext goes into
one ``bytearray`` of the exact envelope size (memory sink) or, through one
reusable scratch buffer, to a seekable file (file sink). Only at the end, when
the digest is known, is the header encrypted, signed and written into the gap (a
file sink seeks back for it, then to the end of the envelope). Nothing
body-sized is allocated besides the output, and with a file sink not even that.

Performance (80 MB body, 2 cores; the one SHA-256 pass over the body, ~1.7 GB/s,
is the slowest step): seal ≈ 1.4–1.5 GB/s. A large ``write`` (``seal``) hashes on a
second thread (hashlib releases the GIL, the AEAD does not) while its chunks are
encrypted, and the output buffer is allocated (zero-filled) only once that hash
runs; hashed inline, seal ran at ~0.77 GB/s. Small streamed pieces (512 KiB) are
hashed inline: ≈ 0.7–0.8 GB/s to memory or to a file, one core's SHA-256 + ChaCha20.
open ≈ 1.3 GB/s: it decrypts into an uninitialised buffer while a second thread
hashes what is already decrypted. The signature hashes only the routing part and
the header.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import queue
import re
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Literal

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from smpc.errors import UserError
from smpc.names import INPUT_PATTERN, NAME_PATTERN

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "SCHEMES",
    "VERSION",
    "DigestMismatch",
    "EnvelopeError",
    "EnvelopeWriter",
    "InvalidHeader",
    "NotAnEnvelope",
    "Opened",
    "Route",
    "ShapeMismatch",
    "ShareHeader",
    "TamperedEnvelope",
    "TruncatedEnvelope",
    "UnknownSigner",
    "UnsupportedVersion",
    "WrongRecipient",
    "WrongSigner",
    "envelope_id",
    "header_with_digest",
    "key_fingerprint",
    "open_envelope",
    "peek_route",
    "seal",
]

MAGIC = b"SMPE"
VERSION = 1
SUPPORTED_VERSIONS = frozenset({VERSION})

MIN_CHUNK_SIZE = 64 * 1024  # below this, per-chunk Python overhead dominates
MAX_CHUNK_SIZE = 1 << 30  # cryptography's AEAD takes at most 2**31 - 1 bytes per call
DEFAULT_CHUNK_SIZE = 1 << 20

MAX_NAME_BYTES = 256  # job / input / site, UTF-8
MAX_HEADER_BYTES = 1 << 20  # encrypted header incl. tag: meta is for small extras
MAX_LIMBS = 1024  # "<u8*K": up to 65,536-bit field elements
MAX_NDIM = 32  # as NumPy
MAX_MODULUS_DIGITS = 4300  # Python's default int <-> str conversion limit

SCHEMES: tuple[str, ...] = ("shamir", "additive")
SEED_BYTES = 32

_TAG = 16
_SIG = 64
_FP = 16
_KEY = 32
# magic, version, party, recipient fp, signer fp, ephemeral, chunk_size, body_len,
# header_len, job_len, input_len, site_len
_FIXED = struct.Struct(f"<4sHH{_FP}s{_FP}s{_KEY}sIQIHHH")
_FIXED_SIZE = _FIXED.size  # 94

_HKDF_SALT = b"smpc share envelope v1"
_SIG_CONTEXT = b"smpc share envelope v1 signature\x00"
_HEADER_NONCE = bytes(12)
_DIGEST_PLACEHOLDER = "0" * 64

# Hash the body on a second thread (hashlib releases the GIL) while the main
# thread runs the AEAD, above this size; below it a thread costs more than it saves.
_PARALLEL_HASH_MIN = 1 << 20
_YIELD_EVERY = 1 << 20

_DTYPE_RE = re.compile(r"<u8(?:\*([1-9][0-9]{0,3}))?")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]*")

Scheme = Literal["shamir", "additive"]
MetaValue = str | int | float | bool


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class EnvelopeError(UserError):
    """An envelope that cannot be accepted; the message names job/input/site/party.

    The context fields are kept as attributes so a party can log or reject by them.
    """

    def __init__(
        self,
        message: str,
        *,
        job: str | None = None,
        input: str | None = None,
        site: str | None = None,
        party: int | None = None,
    ) -> None:
        self.job, self.input, self.site, self.party = job, input, site, party
        self.reason = message
        where = " ".join(
            f"{k}={v}"
            for k, v in (("job", job), ("input", input), ("site", site), ("party", party))
            if v is not None
        )
        super().__init__(f"share envelope ({where}): {message}" if where else message)


class NotAnEnvelope(EnvelopeError):
    """The bytes do not start with the envelope magic: something else was received."""


class UnsupportedVersion(EnvelopeError):
    """A real envelope, of a version this smpc does not read (upgrade one side)."""


class TruncatedEnvelope(EnvelopeError):
    """Fewer bytes than the routing part announces: cut in transit or storage."""


class TamperedEnvelope(EnvelopeError):
    """Authentication failed: a bad signature or AEAD tag, or malformed signed content."""


class DigestMismatch(TamperedEnvelope):
    """The decrypted body does not hash to the digest the site signed."""


class WrongRecipient(EnvelopeError):
    """Encrypted to another party's key, or addressed to another party index."""


class UnknownSigner(EnvelopeError):
    """The site named in the routing part is not in the verifier's directory."""


class WrongSigner(EnvelopeError):
    """Signed by a key other than the one the directory holds for the named site."""


class ShapeMismatch(EnvelopeError, ValueError):
    """Body length disagrees with shape × dtype (or a seed body is not 32 bytes)."""


class InvalidHeader(EnvelopeError, ValueError):
    """A header field out of range or of the wrong type (on construction or when opening)."""


# ---------------------------------------------------------------------------
# Header
# ---------------------------------------------------------------------------


def _check_name(what: str, value: object) -> str:
    """Routing names travel in clear and in topic names: the patterns of :mod:`smpc.names`
    (an input name for ``input``, a member or job name otherwise)."""
    if not isinstance(value, str) or not value:
        raise InvalidHeader(f"{what} must be a non-empty string, got {value!r}")
    if not value.isprintable():
        raise InvalidHeader(f"{what} {value!r} contains control characters")
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidHeader(f"{what} is longer than {MAX_NAME_BYTES} bytes of UTF-8")
    pattern = INPUT_PATTERN if what == "input" else NAME_PATTERN
    if not pattern.fullmatch(value):
        raise InvalidHeader(f"{what} {value!r} does not match {pattern.pattern}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _limbs(dtype: str) -> int:
    m = _DTYPE_RE.fullmatch(dtype) if isinstance(dtype, str) else None
    if m is None:
        raise InvalidHeader(
            f"dtype {dtype!r} is not '<u8' (one little-endian uint64 per element) "
            "or '<u8*K' (K little-endian uint64 limbs per element)"
        )
    k = int(m.group(1) or 1)
    if k > MAX_LIMBS:
        raise InvalidHeader(f"dtype {dtype!r}: at most {MAX_LIMBS} limbs per element")
    return k


@dataclass(frozen=True, kw_only=True)
class ShareHeader:
    """Everything a party needs to interpret one share body; validated on construction.

    ``digest`` is the SHA-256 (hex) of the plaintext body. Leave it empty when
    building a header to seal: :func:`seal` computes it from the body it encrypts,
    so a header can never describe a different body. ``meta`` holds
    protocol-specific extras (e.g. a training round) as str/int/float/bool values.
    """

    job: str
    input: str
    site: str
    party: int
    scheme: Scheme
    t: int
    n: int
    modulus: int
    frac_bits: int = 0
    dtype: str = "<u8"
    shape: tuple[int, ...] = ()
    seed: bool = False
    digest: str = ""
    meta: Mapping[str, MetaValue] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _check_name("job", self.job)
        _check_name("input", self.input)
        _check_name("site", self.site)
        if self.scheme not in SCHEMES:
            raise InvalidHeader(f"scheme {self.scheme!r} is not one of {', '.join(SCHEMES)}")
        for name in ("party", "t", "n", "modulus", "frac_bits"):
            if not _is_int(getattr(self, name)):
                raise InvalidHeader(f"{name} must be an int, got {getattr(self, name)!r}")
        if not 1 <= self.n <= 0xFFFF:
            raise InvalidHeader(f"n={self.n}: the number of parties must be in 1..65535")
        if not 0 <= self.t < self.n:
            raise InvalidHeader(f"threshold t={self.t} must satisfy 0 <= t < n={self.n}")
        if not 0 <= self.party < self.n:
            raise InvalidHeader(f"party {self.party} is not in 0..{self.n - 1} (n={self.n})")
        k = _limbs(self.dtype)
        if self.modulus < 2:
            raise InvalidHeader(f"modulus {self.modulus} must be a prime >= 2")
        if self.modulus.bit_length() > 64 * k:
            raise InvalidHeader(
                f"modulus of {self.modulus.bit_length()} bits does not fit dtype "
                f"{self.dtype!r} ({64 * k} bits per element)"
            )
        if not 0 <= self.frac_bits < self.modulus.bit_length():
            raise InvalidHeader(
                f"frac_bits={self.frac_bits} must be in 0..{self.modulus.bit_length() - 1}"
            )
        shape = self.shape
        if isinstance(shape, np.ndarray) or not isinstance(shape, tuple | list):
            raise InvalidHeader(f"shape must be a tuple of ints, got {shape!r}")
        shape = tuple(int(d) if isinstance(d, np.integer) else d for d in shape)
        if len(shape) > MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape):
            raise InvalidHeader(
                f"shape {self.shape!r} must be at most {MAX_NDIM} non-negative ints"
            )
        object.__setattr__(self, "shape", shape)
        if not isinstance(self.seed, bool):
            raise InvalidHeader(f"seed must be a bool, got {self.seed!r}")
        if not isinstance(self.digest, str) or not (
            self.digest == "" or _DIGEST_RE.fullmatch(self.digest)
        ):
            raise InvalidHeader(
                f"digest must be empty or 64 lowercase hex digits, got {self.digest!r}"
            )
        if not isinstance(self.meta, Mapping):
            raise InvalidHeader(f"meta must be a mapping, got {type(self.meta).__name__}")
        meta = dict(self.meta)
        for key, value in meta.items():
            if not isinstance(key, str) or not key:
                raise InvalidHeader(f"meta key {key!r} must be a non-empty string")
            if not isinstance(value, str | int | float | bool):
                raise InvalidHeader(
                    f"meta[{key!r}] must be str, int, float or bool, got {type(value).__name__}"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidHeader(f"meta[{key!r}]={value} is not finite (JSON has no NaN)")
        object.__setattr__(self, "meta", meta)  # a private copy: treat it as read-only

    @property
    def limbs(self) -> int:
        """64-bit limbs per element: 1 for ``"<u8"``, K for ``"<u8*K"``."""
        return _limbs(self.dtype)

    @property
    def element_size(self) -> int:
        """Bytes per element (8·K)."""
        return 8 * self.limbs

    @property
    def count(self) -> int:
        """Number of elements the share stands for (also when it travels as a seed)."""
        return math.prod(self.shape)

    def body_size(self) -> int:
        """Exact body length in bytes: 32 for a seed, else elements × element size."""
        return SEED_BYTES if self.seed else self.count * self.element_size

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (modulus as a decimal string so no JSON reader rounds it)."""
        return {
            "job": self.job,
            "input": self.input,
            "site": self.site,
            "party": self.party,
            "scheme": self.scheme,
            "t": self.t,
            "n": self.n,
            "modulus": str(self.modulus),
            "frac_bits": self.frac_bits,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "seed": self.seed,
            "digest": self.digest,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, obj: object) -> ShareHeader:
        """Strict inverse of :meth:`to_dict`: exact keys and types, else InvalidHeader."""
        if not isinstance(obj, dict):
            raise InvalidHeader("header is not a JSON object")
        if set(obj) != _HEADER_KEYS:
            missing = sorted(_HEADER_KEYS - set(obj))
            extra = sorted(set(obj) - _HEADER_KEYS)
            raise InvalidHeader(f"header keys: missing {missing}, unknown {extra}")
        modulus = obj["modulus"]
        if not isinstance(modulus, str) or not _DECIMAL_RE.fullmatch(modulus):
            raise InvalidHeader(f"modulus must be a decimal string, got {modulus!r}")
        if len(modulus) > MAX_MODULUS_DIGITS:
            raise InvalidHeader(f"modulus has more than {MAX_MODULUS_DIGITS} digits")
        if not isinstance(obj["shape"], list):
            raise InvalidHeader(f"shape must be a list, got {obj['shape']!r}")
        if not isinstance(obj["meta"], dict):
            raise InvalidHeader(f"meta must be an object, got {obj['meta']!r}")
        for key in ("job", "input", "site", "scheme", "dtype", "digest"):
            if not isinstance(obj[key], str):
                raise InvalidHeader(f"{key} must be a string, got {obj[key]!r}")
        return cls(**{**obj, "modulus": int(modulus), "shape": tuple(obj["shape"])})

    def to_json(self) -> bytes:
        """Canonical JSON bytes: sorted keys, no spaces, UTF-8."""
        return json.dumps(
            self.to_dict(),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview) -> ShareHeader:
        """Parse :meth:`to_json` output strictly (duplicate keys and NaN refused)."""
        try:
            obj = json.loads(
                bytes(data).decode("utf-8"),
                object_pairs_hook=_no_duplicates,
                parse_constant=_no_constant,
            )
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise InvalidHeader(f"header is not valid JSON: {e}") from None
        return cls.from_dict(obj)


_HEADER_KEYS = frozenset(
    ShareHeader(
        job="j", input="i", site="s", party=0, scheme="additive", t=0, n=1, modulus=2
    ).to_dict()
)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


# ---------------------------------------------------------------------------
# Keys and routing
# ---------------------------------------------------------------------------

_PublicKey = X25519PublicKey | Ed25519PublicKey
_AnyKey = _PublicKey | X25519PrivateKey | Ed25519PrivateKey


def _raw(key: _PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _fingerprint(key: _AnyKey) -> bytes:
    if isinstance(key, X25519PrivateKey | Ed25519PrivateKey):
        key = key.public_key()
    return hashlib.sha256(_raw(key)).digest()[:_FP]


def key_fingerprint(key: _AnyKey) -> str:
    """Hex fingerprint of a public key (or of a private key's public half), as in routing.

    SHA-256 of the raw 32-byte public key, first 16 bytes; compare it with
    :attr:`Route.recipient` / :attr:`Route.signer`.
    """
    return _fingerprint(key).hex()


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
class _Prefix:
    route: Route
    ephemeral: bytes
    header_len: int
    end: int  # P: end of the routing part

    def ctx(self) -> dict[str, Any]:
        r = self.route
        return {"job": r.job, "input": r.input, "site": r.site, "party": r.party}


def _chunks(body_len: int, chunk_size: int) -> int:
    return max(1, -(-body_len // chunk_size))


def _envelope_size(prefix_len: int, header_len: int, body_len: int, chunk_size: int) -> int:
    return prefix_len + header_len + _SIG + body_len + _TAG * _chunks(body_len, chunk_size)


def _as_view(data: object) -> memoryview:
    """A flat byte view of ``data`` without copying (C-contiguous buffers only)."""
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise ValueError("a NumPy body must be C-contiguous (use np.ascontiguousarray)")
        if data.dtype != np.dtype("<u8") and data.dtype != np.uint8:
            raise TypeError(
                f"a NumPy body holds field elements as little-endian uint64 ('<u8') "
                f"or raw bytes (uint8), got dtype {data.dtype}"
            )
        return data.reshape(-1).view(np.uint8).data
    view = memoryview(data)  # type: ignore[arg-type]
    if not view.c_contiguous:
        raise ValueError("body must be a C-contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _parse_prefix(view: memoryview) -> _Prefix:
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
    if n < _FIXED_SIZE:
        raise TruncatedEnvelope(f"only {n} bytes, cut inside the routing part")
    (_, _, party, rfp, sfp, eph, chunk_size, body_len, header_len, lj, li, ls) = _FIXED.unpack_from(
        view
    )
    end = _FIXED_SIZE + lj + li + ls
    if n < end:
        raise TruncatedEnvelope(f"only {n} bytes, cut inside the routing names", party=party)
    names = []
    for lo, hi in ((_FIXED_SIZE, _FIXED_SIZE + lj), (_FIXED_SIZE + lj, end - ls), (end - ls, end)):
        try:
            names.append(bytes(view[lo:hi]).decode("utf-8"))
        except UnicodeDecodeError:
            raise TamperedEnvelope("routing names are not UTF-8", party=party) from None
    job, inp, site = names
    ctx = {"job": job, "input": inp, "site": site, "party": party}
    for what, value in zip(("job", "input", "site"), names, strict=True):
        try:
            _check_name(what, value)
        except InvalidHeader as e:
            raise TamperedEnvelope(f"malformed routing part: {e.reason}", **ctx) from None
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise TamperedEnvelope(
            f"chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}", **ctx
        )
    if not _TAG < header_len <= MAX_HEADER_BYTES:
        raise TamperedEnvelope(f"header length {header_len} out of range", **ctx)
    size = _envelope_size(end, header_len, body_len, chunk_size)
    route = Route(
        version=version,
        job=job,
        input=inp,
        site=site,
        party=party,
        recipient=rfp.hex(),
        signer=sfp.hex(),
        chunk_size=chunk_size,
        chunks=_chunks(body_len, chunk_size),
        body_len=body_len,
        size=size,
    )
    return _Prefix(route=route, ephemeral=eph, header_len=header_len, end=end)


def peek_route(data: bytes | bytearray | memoryview) -> Route:
    """The clear routing part, without decrypting or verifying anything.

    Lets a party file, route or reject an envelope early (wrong party, unknown
    job, unexpected site) before paying for decryption. Nothing in it is
    authenticated until :func:`open_envelope` has checked the signature. Only
    the routing part's bytes are needed; the total length is not checked here
    (``Route.size`` says what it must be).
    """
    return _parse_prefix(_as_view(data)).route


def envelope_id(data: bytes | bytearray | memoryview) -> str:
    """The hex SHA-256 the site signed (routing part + encrypted header).

    Unique per envelope and computable by the sender and the receiver alike, so
    acks can name the envelope they answer; equal to ``Opened.envelope_id``.
    Nothing is verified here.
    """
    view = _as_view(data)
    pre = _parse_prefix(view)
    if len(view) < pre.end + pre.header_len:
        raise TruncatedEnvelope("envelope ends inside its header", **pre.ctx())
    return hashlib.sha256(view[: pre.end + pre.header_len]).hexdigest()


# ---------------------------------------------------------------------------
# Seal
# ---------------------------------------------------------------------------


def _keys(shared: bytes, ephemeral: bytes, recipient: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=_HKDF_SALT,
        info=MAGIC + VERSION.to_bytes(2, "little") + ephemeral + recipient,
    ).derive(shared)
    return okm[:32], okm[32:]


def _nonce(i: int) -> bytes:
    return i.to_bytes(12, "little")


def _header_json(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _body_kind(header: ShareHeader) -> str:
    return "a seed" if header.seed else f"shape {header.shape} × dtype {header.dtype!r}"


def _write_all(sink: BinaryIO, data: memoryview | bytes) -> None:
    """``sink.write`` until all of ``data`` is written (raw files may write less)."""
    view = memoryview(data)
    while view:
        n = sink.write(view)
        if n is None:  # a non-blocking raw file that would block
            raise BlockingIOError("envelope sink would block: give a blocking file")
        view = view[n:]


def _new_buffer(size: int) -> bytearray:
    """A bytearray of ``size`` bytes that the caller overwrites completely (open only).

    ``bytearray(size)`` zero-fills; CPython's ``PyByteArray_FromStringAndSize(NULL,
    size)`` does not. :func:`open_envelope` keeps this for the body it decrypts:
    its hash can only start once the first chunk is decrypted, so zero-filling
    would delay it (measured: an 80 MB open 1.35 → 0.99 GB/s). Sealing needs no
    such trick (its hash overlaps the allocation) and uses a plain bytearray.
    Stale heap bytes must never leave this module: open writes every byte before
    the body escapes (``decrypt_into`` demands exact output sizes, the chunks tile
    the body) and drops it on any error. Falls back to ``bytearray(size)`` outside
    CPython.
    """
    if _PyByteArray_FromStringAndSize is None or size == 0:
        return bytearray(size)
    return _PyByteArray_FromStringAndSize(None, size)


_PyByteArray_FromStringAndSize: Callable[..., bytearray] | None
try:
    _PyByteArray_FromStringAndSize = ctypes.pythonapi.PyByteArray_FromStringAndSize
    _PyByteArray_FromStringAndSize.restype = ctypes.py_object
    _PyByteArray_FromStringAndSize.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
except (AttributeError, OSError):  # not CPython
    _PyByteArray_FromStringAndSize = None


class _Hasher:
    """SHA-256 of a buffer that fills front to back, on a second thread if worth it.

    hashlib releases the GIL while it hashes; the AEAD calls do not. So the body
    is hashed on a second core while the main thread encrypts or decrypts, which
    hides most of the hash (the slowest step of both seal and open). The worker
    hashes everything that became ready since its last pass in ONE call, and the
    main thread releases the GIL for a moment every ``_YIELD_EVERY`` bytes, so the
    worker is not left waiting for the 5 ms switch interval between passes.
    :func:`open_envelope` announces each decrypted chunk; :class:`EnvelopeWriter`
    announces a whole run of the caller's chunks at once (continuing its running
    hash ``h``) and joins before ``write`` returns.
    """

    def __init__(self, buffer: memoryview, h: Any = None) -> None:
        self._buf = buffer
        self._h = hashlib.sha256() if h is None else h  # or continue a running hash
        self._hashed = 0  # bytes hashed so far
        self._announced = 0  # bytes announced ready so far
        self._yielded = 0
        self._error: BaseException | None = None
        self._q: queue.SimpleQueue[bool | None] | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()  # the worker has taken work
        if len(buffer) >= _PARALLEL_HASH_MIN:
            self._q = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="envelope-sha256", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # Queue items only wake the worker (None: stop); how far to hash is read from
        # ``_announced``, which the main thread sets before it puts an item.
        assert self._q is not None
        try:
            stop = False
            while not stop:
                stop = self._q.get() is None
                while not stop and not self._q.empty():  # coalesce all that is ready
                    stop = self._q.get() is None
                end = self._announced
                self._started.set()
                if end > self._hashed:
                    self._h.update(self._buf[self._hashed : end])
                    self._hashed = end
        except BaseException as e:  # surfaced by hexdigest(), never a wrong digest
            self._error = e
            self._started.set()

    def ready(self, end: int, *, handover: bool = False) -> None:
        """Bytes ``[0, end)`` of the buffer hold their final content.

        ``handover=True`` waits until the worker has started hashing: the main
        thread is about to run long calls that hold the GIL (zero-filling, AEAD)
        and the worker could otherwise only start after them.
        """
        self._announced = end
        if self._q is None:
            self._h.update(self._buf[self._hashed : end])
            self._hashed = end
            return
        self._q.put(True)
        if handover:
            self._started.wait()
        elif end - self._yielded >= _YIELD_EVERY:
            self._yielded = end
            time.sleep(0)  # releases the GIL: lets a worker between passes take the next

    def close(self) -> None:
        """Stop the worker (idempotent); call on every path, also on errors."""
        if self._thread is not None:
            assert self._q is not None
            self._q.put(None)
            self._thread.join()
            self._thread = None

    def join(self) -> None:
        """Stop the worker and make sure all that was announced is hashed."""
        self.close()
        if self._error is not None or self._hashed != self._announced:
            raise RuntimeError("envelope body hashing failed") from self._error

    def hexdigest(self) -> str:
        self.join()
        return self._h.hexdigest()


class EnvelopeWriter:
    """Seal one envelope from a body that arrives in pieces.

    The body never has to exist in one piece: :meth:`write` takes any number of
    pieces of any size (bytes-like, or C-contiguous NumPy arrays of ``<u8``/``uint8``,
    read in place), hashes them and encrypts every chunk as soon as it is complete.
    The envelope goes either into one preallocated bytearray (``sink=None``;
    :meth:`finish` returns it) or straight into ``sink``, a seekable binary file,
    starting at its position when the writer is created (:meth:`finish` writes the
    encrypted header and the signature into the gap left for them, leaves the file
    positioned after the envelope, and returns None; it neither flushes nor fsyncs).

    The body must be exactly ``header.body_size()`` bytes (else :class:`ShapeMismatch`)
    and ``header.digest`` empty or its SHA-256 (else :class:`DigestMismatch`, at
    :meth:`finish`). Any error aborts the writer, and so does leaving a ``with``
    block by an exception: nothing half-written is returned, and a file sink is
    truncated back to where the envelope started (best effort; an unfinished
    envelope never verifies anyway: its signature is still zeros). Not thread-safe.

    >>> with EnvelopeWriter(header, party_key, site_key, sink=outbox_file) as w:
    ...     for piece in pieces:
    ...         w.write(piece)
    ...     w.finish()
    """

    def __init__(
        self,
        header: ShareHeader,
        recipient: X25519PublicKey,
        signer: Ed25519PrivateKey,
        *,
        sink: BinaryIO | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if not isinstance(header, ShareHeader):
            raise TypeError(f"header must be a ShareHeader, got {type(header).__name__}")
        self._start(
            header.to_dict(),
            header.body_size(),
            _body_kind(header),
            recipient,
            signer,
            sink,
            chunk_size,
            checked=True,
        )

    @classmethod
    def _unchecked(
        cls,
        header: ShareHeader | Mapping[str, Any],
        body_len: int,
        recipient: X25519PublicKey,
        signer: Ed25519PrivateKey,
        chunk_size: int,
    ) -> EnvelopeWriter:
        """For :func:`_seal_unchecked`: any header fields and body length, digest as given."""
        self = cls.__new__(cls)
        fields = header.to_dict() if isinstance(header, ShareHeader) else dict(header)
        self._start(fields, body_len, "it", recipient, signer, None, chunk_size, checked=False)
        return self

    def _start(
        self,
        fields: dict[str, Any],
        body_len: int,
        kind: str,
        recipient: X25519PublicKey,
        signer: Ed25519PrivateKey,
        sink: BinaryIO | None,
        chunk_size: int,
        *,
        checked: bool,
    ) -> None:
        self._state = "aborted"  # until set up completely
        if not isinstance(recipient, X25519PublicKey):
            raise TypeError(f"recipient must be an X25519PublicKey, got {type(recipient).__name__}")
        if not isinstance(signer, Ed25519PrivateKey):
            raise TypeError(f"signer must be an Ed25519PrivateKey, got {type(signer).__name__}")
        if not _is_int(chunk_size) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(
                f"chunk_size={chunk_size!r} must be in {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} "
                "bytes: smaller chunks make per-chunk overhead dominate"
            )
        ctx = {k: fields[k] for k in ("job", "input", "site", "party")}
        if sink is not None:
            seekable = getattr(sink, "seekable", None)
            if not callable(seekable) or not seekable():
                raise ValueError("sink must be a seekable binary file: the header is written last")
            if "a" in str(getattr(sink, "mode", "")):
                raise ValueError("sink is open for appending: its header cannot be rewritten")
        given_digest = fields["digest"]
        fields["digest"] = _DIGEST_PLACEHOLDER  # same length as the real one
        header_len = len(_header_json(fields)) + _TAG
        if header_len > MAX_HEADER_BYTES:
            raise InvalidHeader(f"header is {header_len} bytes, over {MAX_HEADER_BYTES}", **ctx)

        names = [str(ctx[k]).encode("utf-8") for k in ("job", "input", "site")]
        ephemeral_key = X25519PrivateKey.generate()
        ephemeral = _raw(ephemeral_key.public_key())
        recipient_raw = _raw(recipient)
        prefix = _FIXED.pack(
            MAGIC,
            VERSION,
            ctx["party"],
            hashlib.sha256(recipient_raw).digest()[:_FP],
            _fingerprint(signer),
            ephemeral,
            chunk_size,
            body_len,
            header_len,
            *(len(x) for x in names),
        ) + b"".join(names)
        header_key, body_key = _keys(ephemeral_key.exchange(recipient), ephemeral, recipient_raw)
        routing_hash = hashlib.sha256(prefix).digest()

        self._fields, self._ctx, self._kind, self._checked = fields, ctx, kind, checked
        self._given_digest = given_digest
        self._signer, self._header_key, self._prefix = signer, header_key, prefix
        self._routing_hash = routing_hash
        self._aead = ChaCha20Poly1305(body_key)
        self._aad_mid, self._aad_last = routing_hash + b"\x00", routing_hash + b"\x01"
        self._hash = hashlib.sha256() if checked or not given_digest else None
        self._cs, self._body_len = chunk_size, body_len
        self._chunks = _chunks(body_len, chunk_size)
        self._header_len = header_len
        self._size = _envelope_size(len(prefix), header_len, body_len, chunk_size)
        self._written = 0  # body bytes taken so far
        self._chunk = 0  # chunks sealed so far
        self._pos = len(prefix) + header_len + _SIG  # where the next chunk goes
        self._stage: memoryview | None = None  # the pending partial chunk (lazy)
        self._staged = 0
        self._sink = sink
        self._out: bytearray | None = None  # memory sink: the envelope, on the first chunk
        self._view: memoryview | None = None  # of _out, or of the file sink's scratch buffer
        if sink is not None:
            self._base = sink.tell()
            self._view = memoryview(bytearray(min(chunk_size, body_len) + _TAG))
        self._state = "open"
        if sink is not None:
            try:  # header and signature come last: zeros never verify if the writer dies
                _write_all(sink, prefix + bytes(header_len + _SIG))
            except BaseException:
                self.abort()
                raise

    @property
    def size(self) -> int:
        """Total envelope size in bytes, known from the header before any body byte."""
        return self._size

    def __enter__(self) -> EnvelopeWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.abort()
            raise ValueError("envelope writer left without finish(): the envelope is discarded")

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"this envelope writer is {self._state}")

    def _shape_mismatch(self, got: str) -> ShapeMismatch:
        return ShapeMismatch(
            f"body is {got} bytes but {self._kind} needs {self._body_len}", **self._ctx
        )

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Add the next piece of the body (any size, also 0); encrypts completed chunks."""
        self._check_open()
        try:
            with _as_view(data) as view:
                if self._written + len(view) > self._body_len:
                    raise self._shape_mismatch(f"at least {self._written + len(view)}")
                self._take(view)
                self._written += len(view)
        except BaseException:
            self.abort()
            raise

    def _take(self, view: memoryview) -> None:
        cs, n, off = self._cs, len(view), 0
        if self._staged:  # complete the pending chunk first
            off = min(cs - self._staged, n)
            self._stage_put(view[:off])
            if self._staged == cs:
                assert self._stage is not None  # _stage_put allocated it
                self._seal_chunk(self._stage)
                self._staged = 0
        whole = (n - off) // cs * cs
        if whole:  # whole chunks straight from the caller's memory
            run = view[off : off + whole]
            # a large run is hashed on a second core (in one call) while it is encrypted
            hasher = None if self._hash is None else _Hasher(run, self._hash)
            try:
                if hasher is not None:
                    hasher.ready(whole, handover=True)
                for lo in range(0, whole, cs):
                    self._seal_chunk(run[lo : lo + cs], hashed=True)
            finally:
                if hasher is not None:
                    hasher.join()
            off += whole
        if off < n:
            self._stage_put(view[off:])

    def _stage_put(self, piece: memoryview) -> None:
        if self._stage is None:
            self._stage = memoryview(bytearray(min(self._cs, self._body_len)))
        end = self._staged + len(piece)
        self._stage[self._staged : end] = piece
        self._staged = end

    def _seal_chunk(self, plain: memoryview, *, hashed: bool = False) -> None:
        """Hash and encrypt the next chunk: into the output, or via scratch to the sink."""
        i = self._chunk
        if not hashed and self._hash is not None:
            self._hash.update(plain)
        aad = self._aad_last if i == self._chunks - 1 else self._aad_mid
        n = len(plain) + _TAG
        if self._sink is not None:
            assert self._view is not None
            self._aead.encrypt_into(_nonce(i), plain, aad, self._view[:n])
            _write_all(self._sink, self._view[:n])
        else:
            if self._view is None:  # allocated late: a large write's hash already runs
                self._out = bytearray(self._size)
                self._view = memoryview(self._out)
                self._view[: len(self._prefix)] = self._prefix
            self._aead.encrypt_into(_nonce(i), plain, aad, self._view[self._pos : self._pos + n])
        self._chunk += 1
        self._pos += n

    def finish(self) -> bytearray | None:
        """Seal the last chunk, the header and the signature; return the envelope (no sink).

        With a sink, the envelope is complete in it, the sink is positioned right
        after it, and None is returned. Raises :class:`ShapeMismatch` if fewer
        than ``header.body_size()`` bytes were written, :class:`DigestMismatch` if
        the header's given digest is not the body's.
        """
        self._check_open()
        try:
            if self._written != self._body_len:
                raise self._shape_mismatch(f"only {self._written}")
            if self._chunk < self._chunks:  # the final, short (or empty) chunk
                stage = self._stage if self._stage is not None else memoryview(b"")
                self._seal_chunk(stage[: self._staged])
            if self._chunk != self._chunks or self._pos != self._size:
                raise RuntimeError(f"envelope layout error: wrote {self._pos} of {self._size}")
            digest = self._hash.hexdigest() if self._hash is not None else self._given_digest
            given = self._given_digest
            if self._checked and given and given != digest:
                raise DigestMismatch(
                    f"header digest {given} is not the body's SHA-256 {digest}", **self._ctx
                )
            self._fields["digest"] = digest
            sealed_header = ChaCha20Poly1305(self._header_key).encrypt(
                _HEADER_NONCE, _header_json(self._fields), self._routing_hash
            )
            if len(sealed_header) != self._header_len:  # the placeholder fixed this length
                raise RuntimeError("envelope layout error: header length changed")
            signed = hashlib.sha256(self._prefix + sealed_header).digest()
            tail = sealed_header + self._signer.sign(_SIG_CONTEXT + signed)
            p = len(self._prefix)
            if self._sink is None:
                assert self._view is not None and self._out is not None
                self._view[p : p + len(tail)] = tail
                out = self._out
            else:
                self._sink.seek(self._base + p)
                _write_all(self._sink, tail)
                if self._sink.tell() != self._base + p + len(tail):
                    raise RuntimeError("envelope sink did not write in place")
                self._sink.seek(self._base + self._size)
                out = None
        except BaseException:
            self.abort()
            raise
        self._release("finished")
        return out

    def abort(self) -> None:
        """Discard the envelope (idempotent; no effect once finished)."""
        if self._state != "open":
            return
        sink = self._sink
        self._release("aborted")
        if sink is not None:
            try:
                sink.seek(self._base)
                sink.truncate()
            except (OSError, ValueError):  # best effort: an unsigned envelope never opens
                pass

    def _release(self, state: str) -> None:
        self._state = state
        for view in (self._view, self._stage):
            if view is not None:
                view.release()
        self._view = self._stage = None
        self._out = None
        self._sink = None


def seal(
    header: ShareHeader,
    body: bytes | bytearray | memoryview | np.ndarray,
    recipient: X25519PublicKey,
    signer: Ed25519PrivateKey,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytearray:
    """Encrypt ``body`` to ``recipient``, sign with the site's key, return the envelope.

    ``header.digest`` may be empty (it is computed from ``body``) or must equal
    the body's SHA-256. ``body`` is read in place (bytes-like or a C-contiguous
    NumPy array of ``<u8``/``uint8``); its length must be ``header.body_size()``.
    ``recipient`` must be the X25519 key of party ``header.party``: the envelope
    names that party in clear and only that key can open it. This is an
    :class:`EnvelopeWriter` fed the whole body in one ``write``; use the writer
    itself when the body arrives in pieces or should go straight to a file.
    """
    view = _as_view(body)
    if isinstance(header, ShareHeader) and len(view) != header.body_size():  # before any work
        raise ShapeMismatch(
            f"body is {len(view)} bytes but {_body_kind(header)} needs {header.body_size()}",
            job=header.job,
            input=header.input,
            site=header.site,
            party=header.party,
        )
    writer = EnvelopeWriter(header, recipient, signer, chunk_size=chunk_size)
    writer.write(view)
    out = writer.finish()
    assert out is not None
    return out


def _seal_unchecked(
    header: ShareHeader | Mapping[str, Any],
    body: bytes | bytearray | memoryview | np.ndarray,
    recipient: X25519PublicKey,
    signer: Ed25519PrivateKey,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytearray:
    """For tests only: seal without checking the body against the header.

    A header mapping is serialised as given (invalid fields allowed), a non-empty
    digest is kept as given, and the body size is not checked — so tests can
    produce validly signed envelopes that :func:`open_envelope` must still refuse.
    """
    view = _as_view(body)
    writer = EnvelopeWriter._unchecked(header, len(view), recipient, signer, chunk_size)
    writer.write(view)
    out = writer.finish()
    assert out is not None
    return out


# ---------------------------------------------------------------------------
# Open
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """A verified, decrypted share: its header and its body bytes.

    ``envelope_id`` is the hex SHA-256 the site signed (routing part + encrypted
    header): unique per envelope, so parties can name and de-duplicate what they
    hold without the body.
    """

    header: ShareHeader
    body: bytearray
    envelope_id: str

    def array(self) -> np.ndarray:
        """The body as a NumPy array of ``<u8`` without copying: ``shape`` (+ ``(K,)`` limbs).

        A seed body is not an array; expand it with the job's PRG instead.
        """
        h = self.header
        if h.seed:
            raise ValueError("this share travels as a 32-byte seed: expand it, it is no array")
        shape = h.shape + ((h.limbs,) if h.limbs > 1 else ())
        return np.frombuffer(self.body, dtype="<u8").reshape(shape)


VerifyKeys = Callable[[str], Ed25519PublicKey | None] | Mapping[str, Ed25519PublicKey]


def _lookup(verify_key: VerifyKeys, site: str) -> Ed25519PublicKey | None:
    try:
        if isinstance(verify_key, Mapping):
            return verify_key[site]
        return verify_key(site)
    except LookupError:
        return None


def open_envelope(
    data: bytes | bytearray | memoryview,
    recipient: X25519PrivateKey,
    verify_key: VerifyKeys,
    *,
    party: int | None = None,
) -> Opened:
    """Check, verify and decrypt one envelope; return its header and body or raise.

    ``verify_key`` maps a site name to its Ed25519 public key (a mapping, or a
    callable returning None / raising LookupError for an unknown site). ``party``,
    if given, is this party's index and must match the envelope's. Order: routing
    part and exact length (Truncated/NotAnEnvelope/UnsupportedVersion), addressee
    (WrongRecipient), signer (UnknownSigner/WrongSigner), signature
    (TamperedEnvelope) — all before any decryption — then the header (strictly
    parsed, consistent with the routing part and the body length), then every
    chunk's tag and the body digest. No byte of a body is returned unless all of
    that holds. ``data`` is not modified.
    """
    if not isinstance(recipient, X25519PrivateKey):
        raise TypeError(f"recipient must be an X25519PrivateKey, got {type(recipient).__name__}")
    view = _as_view(data)
    pre = _parse_prefix(view)
    route, ctx = pre.route, pre.ctx()
    if len(view) < route.size:
        raise TruncatedEnvelope(
            f"{len(view)} bytes, but the routing part announces {route.size} "
            f"({route.chunks} chunk(s), {route.body_len} body bytes)",
            **ctx,
        )
    if len(view) > route.size:
        raise TamperedEnvelope(
            f"{len(view) - route.size} unexpected bytes after the last chunk", **ctx
        )

    if party is not None and route.party != party:
        raise WrongRecipient(f"addressed to party {route.party}, not to party {party}", **ctx)
    recipient_raw = _raw(recipient.public_key())
    mine = hashlib.sha256(recipient_raw).digest()[:_FP].hex()
    if route.recipient != mine:
        raise WrongRecipient(
            f"encrypted to key {route.recipient}, not to this party's key {mine}: "
            "the site holds a wrong or outdated key for this party, or it was misrouted",
            **ctx,
        )

    key = _lookup(verify_key, route.site)
    if key is None:
        raise UnknownSigner(f"site {route.site!r} is not in the federation's site directory", **ctx)
    if not isinstance(key, Ed25519PublicKey):
        raise TypeError(f"verify key for site {route.site!r} is not an Ed25519PublicKey")
    expected = _fingerprint(key).hex()
    if route.signer != expected:
        raise WrongSigner(
            f"signed by key {route.signer}, but site {route.site!r} has key {expected}",
            **ctx,
        )
    p, hl = pre.end, pre.header_len
    signed = hashlib.sha256(view[: p + hl]).digest()
    try:
        key.verify(bytes(view[p + hl : p + hl + _SIG]), _SIG_CONTEXT + signed)
    except InvalidSignature:
        raise TamperedEnvelope("signature does not verify: modified in transit", **ctx) from None

    try:
        shared = recipient.exchange(X25519PublicKey.from_public_bytes(pre.ephemeral))
    except ValueError:  # low-order point: only a signing site could have put it there
        raise TamperedEnvelope("invalid ephemeral public key", **ctx) from None
    header_key, body_key = _keys(shared, pre.ephemeral, recipient_raw)
    routing_hash = hashlib.sha256(view[:p]).digest()
    plain = bytearray(hl - _TAG)
    try:
        ChaCha20Poly1305(header_key).decrypt_into(
            _HEADER_NONCE, view[p : p + hl], routing_hash, plain
        )
    except InvalidTag:
        raise TamperedEnvelope("header fails authentication", **ctx) from None
    try:
        header = ShareHeader.from_json(plain)
    except InvalidHeader as e:
        raise InvalidHeader(f"signed header is invalid: {e.reason}", **ctx) from None
    for name in ("job", "input", "site", "party"):
        if getattr(header, name) != ctx[name]:
            raise TamperedEnvelope(
                f"header {name}={getattr(header, name)!r} disagrees with the routing part",
                **ctx,
            )
    if not header.digest:
        raise InvalidHeader("signed header has no body digest", **ctx)
    if route.body_len != header.body_size():
        kind = (
            "a 32-byte seed"
            if header.seed
            else (f"shape {header.shape} × dtype {header.dtype!r} = {header.body_size()} bytes")
        )
        raise ShapeMismatch(f"body is {route.body_len} bytes but the header says {kind}", **ctx)

    body = _new_buffer(route.body_len)
    bv = memoryview(body)
    aead = ChaCha20Poly1305(body_key)
    aad_mid, aad_last = routing_hash + b"\x00", routing_hash + b"\x01"
    cs, chunks = route.chunk_size, route.chunks
    pos = p + hl + _SIG
    hasher = _Hasher(bv)
    try:
        for i in range(chunks):
            lo = i * cs
            out = bv[lo : lo + cs]
            n = len(out) + _TAG
            try:
                aead.decrypt_into(
                    _nonce(i), view[pos : pos + n], aad_last if i == chunks - 1 else aad_mid, out
                )
            except InvalidTag:
                raise TamperedEnvelope(
                    f"chunk {i} of {chunks} fails authentication", **ctx
                ) from None
            hasher.ready(lo + len(out))
            pos += n
        digest = hasher.hexdigest()
    finally:
        hasher.close()
    if digest != header.digest:
        raise DigestMismatch(
            f"body SHA-256 {digest} differs from the signed digest {header.digest}", **ctx
        )
    return Opened(header=header, body=body, envelope_id=signed.hex())


def header_with_digest(header: ShareHeader, body: object) -> ShareHeader:
    """``header`` with ``digest`` set to the SHA-256 of ``body`` (for records and tests)."""
    return replace(header, digest=hashlib.sha256(_as_view(body)).hexdigest())
