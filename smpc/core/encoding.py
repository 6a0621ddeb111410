"""Fixed-point encoding of real and integer data into a prime field.

A real x is carried as the integer round(x · 2^f), f the fractional bits, and
that integer as a field element (negatives wrap to p − |v|). Rounding to the
nearest integer bounds the error of one value by 2^−(f+1), so a round trip is
within 2^−f. A value must satisfy |x| < 2^int_bits; the encoder checks it and
refuses NaN and ±inf, naming the input, the first offending position and the
bound, because a silently wrapped value would corrupt a whole secure sum.

The caller picks ``int_bits`` with head-room for what the protocol does with
the values: a sum of M site inputs each below 2^b stays below 2^(b + log2 M),
and the field must hold 2^(int_bits + f + 1) without wrapping
(:meth:`FixedPoint.check_field`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np

from smpc.core.field import PrimeField
from smpc.core.sharing import CHUNK_ELEMENTS
from smpc.errors import UserError

# Called with the flat index of the first value that does not fit; raises.
Refuse = Callable[[int], None]


class EncodingError(UserError, ValueError):
    """A value cannot be encoded: not finite, or outside the declared bound."""


@dataclass(frozen=True)
class FixedPoint:
    """Encoding with ``frac_bits`` fractional bits for values below 2^``int_bits``."""

    frac_bits: int
    int_bits: int

    def __post_init__(self) -> None:
        if self.frac_bits < 0 or self.int_bits < 0:
            raise ValueError("frac_bits and int_bits must be non-negative")

    @property
    def bound(self) -> float:
        """Exclusive bound on |x|."""
        return float(2.0**self.int_bits)

    @property
    def total_bits(self) -> int:
        """Bits of magnitude of an encoded integer (sign not included)."""
        return self.int_bits + self.frac_bits

    def check_field(self, field: PrimeField, *, terms: int = 1) -> None:
        """Refuse a field too small to hold a sum of ``terms`` encoded values."""
        needed = self.total_bits + max(terms - 1, 0).bit_length() + 1
        if field.modulus.bit_length() <= needed:
            raise EncodingError(
                f"field of {field.modulus.bit_length()} bits cannot hold sums of {terms} values "
                f"with {self.int_bits} integer and {self.frac_bits} fractional bits "
                f"(needs more than {needed} bits)"
            )

    def encode(self, x: np.ndarray, field: PrimeField, *, name: str = "input") -> np.ndarray:
        """Encode an array of numbers as field elements, refusing what does not fit."""
        x = np.asarray(x)
        out = np.empty(x.size, dtype=field.dtype)
        for lo, chunk in self.iter_encode(x, field, name=name):
            out[lo : lo + chunk.size] = chunk
        return out.reshape(x.shape)

    def iter_encode(
        self, x: np.ndarray, field: PrimeField, *, name: str = "input", chunk: int = CHUNK_ELEMENTS
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(offset, encoded piece) over the flattened array, ``chunk`` elements at a time.

        Cache-sized pieces make the few passes of encoding run from cache, and let
        a caller share and seal each piece before the next is made. A bad value
        raises when its piece is reached, with its position in the whole array.
        """
        x = np.asarray(x)
        if x.dtype.kind not in "iuf":
            raise EncodingError(f"{name}: cannot encode values of type {x.dtype}")
        flat = x.reshape(-1)
        for lo in range(0, flat.size, chunk):
            piece = flat[lo : lo + chunk]

            def refuse(i: int, lo: int = lo) -> None:
                self._refuse(x, lo + i, name)

            if x.dtype.kind == "f":
                yield lo, self._encode_floats(piece, field, refuse)
            else:
                yield lo, self._encode_integers(piece, field, refuse)

    def _encode_floats(self, piece: np.ndarray, field: PrimeField, refuse: Refuse) -> np.ndarray:
        # One pass checks both: NaN fails every comparison, inf exceeds the bound.
        magnitude = np.abs(piece)
        if not magnitude.max(initial=0.0) < self.bound:
            refuse(int(np.flatnonzero(~(magnitude < self.bound))[0]))
        scaled = np.rint(piece * 2.0**self.frac_bits)
        if self.total_bits <= 62:
            return field.from_int(scaled.astype(np.int64))
        return field.from_int(cast(np.ndarray, np.frompyfunc(int, 1, 1)(scaled)))

    def _encode_integers(self, piece: np.ndarray, field: PrimeField, refuse: Refuse) -> np.ndarray:
        # Integers encode exactly: no float detour, so 2^53 and above stay exact.
        magnitude = np.abs(piece.astype(object) if piece.dtype.kind == "u" else piece)
        big = magnitude >= 2**self.int_bits
        if np.any(big):
            refuse(int(np.flatnonzero(big)[0]))
        if self.frac_bits == 0:
            return field.from_int(piece)
        if self.total_bits <= 62:
            return field.from_int(piece.astype(np.int64) << np.int64(self.frac_bits))
        return field.from_int(piece.astype(object) * (1 << self.frac_bits))

    def _refuse(self, x: np.ndarray, flat_index: int, name: str) -> None:
        pos = _position(flat_index, x.shape)
        value = x[pos]
        if not np.isfinite(value):
            raise EncodingError(f"{name}: value {value} at {pos} is not a finite number")
        raise EncodingError(
            f"{name}: value {value} at {pos} is outside the bound |x| < 2^{self.int_bits}"
            + ("" if x.dtype.kind != "f" else f" = {self.bound:g}")
        )

    def decode(self, v: np.ndarray, field: PrimeField) -> np.ndarray:
        """Field elements back to float64; with ``frac_bits`` 0, to exact integers."""
        signed = field.to_signed(v)
        if self.frac_bits == 0:
            return signed
        return signed.astype(np.float64) / 2.0**self.frac_bits


def _position(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...] | int:
    """A flat index as the position a user would write (row, column, ...)."""
    pos = np.unravel_index(int(flat_index), shape)
    return int(pos[0]) if len(pos) == 1 else tuple(int(i) for i in pos)


WORD_BYTES = 7  # 56-bit words: below every field modulus the protocols use


def bytes_to_words(data: bytes) -> np.ndarray:
    """Bytes as int64 words of 7 bytes each, the byte length first: bytes as an input.

    Public metadata (a site's variant table) travels as an input with t = 0; the words
    fit any field of more than 56 bits and a 57-bit integer encoding.
    """
    padded = data + bytes(-len(data) % WORD_BYTES)
    groups = np.frombuffer(padded, dtype=np.uint8).reshape(-1, WORD_BYTES)
    words = np.zeros((len(groups), 8), dtype=np.uint8)
    words[:, :WORD_BYTES] = groups
    return np.concatenate([[len(data)], words.view("<u8").ravel().astype(np.int64)])


def words_to_bytes(words: np.ndarray) -> bytes:
    """Inverse of :func:`bytes_to_words`; ValueError if the words are not such an array."""
    words = np.asarray(words).astype(np.int64).ravel()
    if words.size == 0 or not 0 <= words[0] <= WORD_BYTES * (words.size - 1):
        raise ValueError("not a byte array in words: bad length")
    if (words[1:] < 0).any() or (words[1:] >= 1 << (8 * WORD_BYTES)).any():
        raise ValueError("not a byte array in words: a word is out of range")
    raw = words[1:].astype("<u8").view(np.uint8).reshape(-1, 8)[:, :WORD_BYTES]
    return raw.tobytes()[: int(words[0])]
