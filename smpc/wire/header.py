"""ShareHeader: the signed, encrypted description of one share body, validated strictly."""

# The header plaintext is canonical JSON (UTF-8, sorted keys, no spaces) of
# ShareHeader: job, input, site, party, scheme, t, n, modulus (a decimal *string*, so
# a big prime survives any JSON reader), frac_bits, dtype, shape (list), seed, digest
# (64 lowercase hex digits), meta (object). It is parsed strictly: no unknown or
# duplicate keys, exact types; the reader also checks the same job/input/site/party as
# the routing part. Limits: names <= 256 bytes of printable UTF-8; modulus <= 4300
# decimal digits (Python's int/str limit, ~14,000 bits); <= 1024 limbs per element.
# Any change to the header keys is a new envelope version (docs/wire.md).

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from smpc.names import INPUT_PATTERN, NAME_PATTERN
from smpc.wire import strictjson
from smpc.wire.buffers import as_view
from smpc.wire.envelope_errors import InvalidHeader

__all__ = [
    "MAX_LIMBS",
    "MAX_MODULUS_DIGITS",
    "MAX_NAME_BYTES",
    "MAX_NDIM",
    "SCHEMES",
    "SEED_BYTES",
    "MetaValue",
    "Scheme",
    "ShareHeader",
    "check_name",
    "header_json",
    "header_with_digest",
    "is_int",
]


MAX_NAME_BYTES = 256  # job / input / site, UTF-8
MAX_LIMBS = 1024  # "<u8*K": up to 65,536-bit field elements
MAX_NDIM = 32  # as NumPy
MAX_MODULUS_DIGITS = 4300  # Python's default int <-> str conversion limit

SCHEMES: tuple[str, ...] = ("shamir", "additive")
SEED_BYTES = 32


_DTYPE_RE = re.compile(r"<u8(?:\*([1-9][0-9]{0,3}))?")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]*")

Scheme = Literal["shamir", "additive"]
MetaValue = str | int | float | bool


def check_name(what: str, value: object) -> str:
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


def _is_text(value: str) -> bool:
    """Encodable as UTF-8: JSON's ``\\ud800`` escapes can make strings that are not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_int(value: object) -> bool:
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
        check_name("job", self.job)
        check_name("input", self.input)
        check_name("site", self.site)
        if self.scheme not in SCHEMES:
            raise InvalidHeader(f"scheme {self.scheme!r} is not one of {', '.join(SCHEMES)}")
        for name in ("party", "t", "n", "modulus", "frac_bits"):
            if not is_int(getattr(self, name)):
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
        if len(shape) > MAX_NDIM or not all(is_int(d) and d >= 0 for d in shape):
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
            if not _is_text(key) or (isinstance(value, str) and not _is_text(value)):
                raise InvalidHeader(f"meta[{key!r}] is not Unicode text (a lone surrogate)")
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
            obj = strictjson.loads(bytes(data).decode("utf-8"))
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise InvalidHeader(f"header is not valid JSON: {e}") from None
        return cls.from_dict(obj)


_HEADER_KEYS = frozenset(
    ShareHeader(
        job="j", input="i", site="s", party=0, scheme="additive", t=0, n=1, modulus=2
    ).to_dict()
)


def header_json(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def header_with_digest(header: ShareHeader, body: object) -> ShareHeader:
    """``header`` with ``digest`` set to the SHA-256 of ``body`` (for records and tests)."""
    return replace(header, digest=hashlib.sha256(as_view(body)).hexdigest())
