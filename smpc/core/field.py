"""Prime fields over NumPy arrays.

Two representations, one interface (:class:`PrimeField`):

* :class:`Mersenne61` — GF(2^61 − 1) in ``uint64``. The fast field of linear
  protocols (sums, federated averaging): every operation is a handful of
  vectorised integer instructions, and the reduction modulo a Mersenne prime is
  a shift and a mask. A product of two elements needs 122 bits, so general
  multiplication splits both factors into 32-bit halves (:meth:`Mersenne61.mul_const`).
* :class:`BigPrimeField` — any other prime, elements held as Python ints in
  NumPy ``object`` arrays. This is the field of an MPyC secure type
  (``SecInt(l)``, ``SecFxp(l, f)``: primes of 64 bits and more), so a computing
  party can wrap its share as an MPyC secure object without conversion.

:func:`mpyc_modulus` returns the modulus MPyC picks for a secure type without
importing MPyC's runtime (which parses ``sys.argv`` on import; see DESIGN.md).

Elements travel as little-endian ``uint64`` limbs (:meth:`PrimeField.to_bytes`):
one limb per element for fields below 2^64, ``K`` limbs for wider ones. The
``dtype`` tag ``"<u8"`` or ``"<u8*K"`` names that layout in share envelopes.

:func:`expand` defines the field elements a seed stands for, in blocks of
:data:`BLOCK_ELEMENTS`: block b is drawn from the ChaCha20 stream
(:mod:`smpc.core.prg`) with nonce b (so no nonce repeats under one key), and a
rejected draw is replaced from the same block's stream. The expansion of a range
of blocks therefore does not depend on how a producer or consumer cuts the array
into chunks, and a 10-million element share can be made and checked chunk by
chunk in cache-sized pieces.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod

import numpy as np

from smpc.core.prg import KeyStream

MERSENNE61 = (1 << 61) - 1
BLOCK_ELEMENTS = 1 << 16  # elements per independently keyed block of an expansion
_U64 = np.uint64


class PrimeField(ABC):
    """GF(p) acting element-wise on NumPy arrays of any shape."""

    modulus: int
    dtype: np.dtype  # of arrays holding elements: uint64, or object for wide fields

    @property
    def limbs(self) -> int:
        """Number of 64-bit limbs of one element on the wire."""
        return max(1, (self.modulus.bit_length() + 63) // 64)

    @property
    def dtype_tag(self) -> str:
        """Wire layout of one element, as named in share envelopes."""
        return "<u8" if self.limbs == 1 else f"<u8*{self.limbs}"

    @property
    def element_size(self) -> int:
        return 8 * self.limbs

    # -- conversion ---------------------------------------------------------
    @abstractmethod
    def from_int(self, a: np.ndarray) -> np.ndarray:
        """Map integers (int64/uint64/object, possibly negative) into the field."""

    @abstractmethod
    def to_signed(self, a: np.ndarray) -> np.ndarray:
        """Centred lift: the integer in (−p/2, p/2] congruent to each element."""

    @abstractmethod
    def to_bytes(self, a: np.ndarray) -> memoryview:
        """Little-endian uint64 limbs of every element, C order."""

    @abstractmethod
    def from_bytes(
        self, data: bytes | bytearray | memoryview, shape: tuple[int, ...]
    ) -> np.ndarray:
        """Inverse of :meth:`to_bytes`; rejects limbs that are not reduced."""

    # -- arithmetic ---------------------------------------------------------
    @abstractmethod
    def zeros(self, shape: tuple[int, ...]) -> np.ndarray: ...

    @abstractmethod
    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def mul_const(self, a: np.ndarray, c: int) -> np.ndarray:
        """a · c for a public integer c (any size, any sign)."""

    def linear_combination(self, terms: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """Σ c·a over (c, a) pairs, the workhorse of sharing and reconstruction."""
        (c0, a0), *rest = terms
        acc = self.mul_const(a0, c0)
        for c, a in rest:
            acc = self.add(acc, self.mul_const(a, c))
        return acc

    def sum(self, arrays: list[np.ndarray]) -> np.ndarray:
        return self.linear_combination([(1, a) for a in arrays])

    @abstractmethod
    def random(self, shape: tuple[int, ...], stream: KeyStream) -> np.ndarray:
        """Uniform elements drawn from a ChaCha20 key stream (deterministic per seed)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrimeField) and other.modulus == self.modulus

    def __hash__(self) -> int:
        return hash(self.modulus)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.modulus})"


class Mersenne61(PrimeField):
    """GF(2^61 − 1) in uint64: sums of eight elements never overflow 64 bits."""

    modulus = MERSENNE61
    dtype = np.dtype(np.uint64)
    _P = _U64(MERSENNE61)

    def _reduce(self, v: np.ndarray) -> np.ndarray:
        """Reduce any uint64 into [0, p), in place: 2^61 ≡ 1 (mod p)."""
        v = np.asarray(v)  # 0-d arithmetic hands back scalars
        hi = v >> _U64(61)
        v &= self._P
        v += hi  # now v < p + 8
        # Conditional subtraction without a mask: below p, v − p wraps to a
        # huge value and the minimum keeps v.
        np.minimum(v, v - self._P, out=v)
        return v

    def from_int(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype == object:
            return _obj(a % self.modulus).astype(_U64)
        if a.dtype.kind == "u":
            return self._reduce(a.astype(_U64, copy=True))
        s = a.astype(np.int64, copy=False)
        if np.abs(s).max(initial=0) >= self.modulus or (s == np.iinfo(np.int64).min).any():
            return _obj(s.astype(object) % self.modulus).astype(_U64)
        # |s| < p: a negative value wraps to 2^64 + s; adding p then gives p + s
        # mod 2^64. The arithmetic shift s >> 63 is all ones exactly for negatives.
        u = s.astype(_U64)
        u += (s >> np.int64(63)).view(_U64) & self._P
        return u

    def to_signed(self, a: np.ndarray) -> np.ndarray:
        s = a.astype(np.int64)
        s -= np.int64(self.modulus) * (a > _U64(self.modulus // 2))
        return s

    def to_bytes(self, a: np.ndarray) -> memoryview:
        return np.ascontiguousarray(a, dtype="<u8").data.cast("B")

    def from_bytes(
        self, data: bytes | bytearray | memoryview, shape: tuple[int, ...]
    ) -> np.ndarray:
        a = np.frombuffer(data, dtype="<u8").reshape(shape)
        if (a >= self._P).any():
            raise ValueError(f"element not reduced modulo {self.modulus}")
        return a

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, dtype=_U64)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        s = np.asarray(a + b)
        np.minimum(s, s - self._P, out=s)
        return s

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.add(a, b ^ self._P)  # −b = p − b = b XOR p for 0 <= b <= p

    def linear_combination(self, terms: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """Σ c·a with lazy reduction.

        A multiple c·a with c or −c below 8 is one multiply (−a is a XOR p), and
        up to eight such terms of weight |c| add up below 2^64, so the sum is
        reduced once instead of after every term.
        """
        acc: np.ndarray | None = None
        weight = 0  # acc <= weight · (2^61 − 1) < 2^64
        for c, a in terms:
            c %= self.modulus
            if c == 0:
                continue
            if c < 8 or self.modulus - c < 8:
                w = c if c < 8 else self.modulus - c
                v = a if c < 8 else a ^ self._P
                v = v * _U64(w) if w > 1 else v
            else:
                w, v = 1, self.mul_const(a, c)
            if acc is None:
                acc = v.copy() if v is a else v
                weight = w
                continue
            if weight + w > 8:
                acc = self._reduce(acc)
                weight = 1
            acc += v
            weight += w
        if acc is None:
            return self.zeros(terms[0][1].shape)
        return self._reduce(acc)

    def mul_const(self, a: np.ndarray, c: int) -> np.ndarray:
        c %= self.modulus
        if c < 8:  # c·a < 2^64: one multiply and one reduction
            return self._reduce(a * _U64(c))
        if self.modulus - c < 8:  # −c small: −a is a XOR p
            return self._reduce((a ^ self._P) * _U64(self.modulus - c))
        # a·c = ah·ch·2^64 + (ah·cl + al·ch)·2^32 + al·cl with 32-bit halves;
        # 2^64 ≡ 8 and 2^61 ≡ 1 (mod p) keep every partial product below 2^64.
        ch, cl = _U64(c >> 32), _U64(c & 0xFFFFFFFF)
        ah, al = a >> _U64(32), a & _U64(0xFFFFFFFF)
        mid = ah * cl
        mid += al * ch
        acc = (ah * ch) << _U64(3)
        acc += mid >> _U64(29)
        acc += (mid & _U64((1 << 29) - 1)) << _U64(32)
        low = al * cl
        acc += low >> _U64(61)
        acc += low & self._P
        return self._reduce(acc)

    def random(self, shape: tuple[int, ...], stream: KeyStream) -> np.ndarray:
        # Top 61 bits of each 64-bit word are uniform on [0, 2^61 − 1]; the one
        # value p itself is rejected and redrawn from the same stream, in order.
        n = math.prod(shape)
        out = stream.words(n)
        out >>= _U64(3)
        if n == 0 or out.max() < self._P:  # the common case, one pass
            return out.reshape(shape)
        bad = np.flatnonzero(out == self._P)
        while bad.size:
            fresh = stream.words(bad.size) >> _U64(3)
            out[bad] = fresh
            bad = bad[fresh == self._P]
        return out.reshape(shape)


class BigPrimeField(PrimeField):
    """GF(p) for any prime p, elements as Python ints in object arrays."""

    def __init__(self, modulus: int) -> None:
        if modulus < 3:
            raise ValueError(f"modulus {modulus} is not an odd prime")
        self.modulus = modulus
        self.dtype = np.dtype(object)

    def from_int(self, a: np.ndarray) -> np.ndarray:
        return _obj(_obj(a) % self.modulus)

    def to_signed(self, a: np.ndarray) -> np.ndarray:
        a = _obj(a)
        return _obj(np.where(a > self.modulus // 2, a - self.modulus, a))

    def to_bytes(self, a: np.ndarray) -> memoryview:
        flat = np.asarray(a, dtype=object).reshape(-1)
        limbs = np.empty((flat.size, self.limbs), dtype="<u8")
        rest = flat
        for k in range(self.limbs):
            limbs[:, k] = (rest & 0xFFFFFFFFFFFFFFFF).astype(np.uint64)
            rest = rest >> 64
        return limbs.data.cast("B")

    def from_bytes(
        self, data: bytes | bytearray | memoryview, shape: tuple[int, ...]
    ) -> np.ndarray:
        limbs = np.frombuffer(data, dtype="<u8").reshape(-1, self.limbs)
        out = limbs[:, self.limbs - 1].astype(object)
        for k in range(self.limbs - 2, -1, -1):
            out = (out << 64) | limbs[:, k].astype(object)
        if (out >= self.modulus).any():
            raise ValueError(f"element not reduced modulo {self.modulus}")
        return out.reshape(shape)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        z = np.empty(shape, dtype=object)
        z.fill(0)
        return z

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _obj((a + b) % self.modulus)

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _obj((a - b) % self.modulus)

    def mul_const(self, a: np.ndarray, c: int) -> np.ndarray:
        return _obj((a * (c % self.modulus)) % self.modulus)

    def linear_combination(self, terms: list[tuple[int, np.ndarray]]) -> np.ndarray:
        # Python ints do not overflow: accumulate, then reduce once.
        acc = sum(
            (a * (c % self.modulus) for c, a in terms[1:]),
            terms[0][1] * (terms[0][0] % self.modulus),
        )
        return _obj(acc % self.modulus)

    def random(self, shape: tuple[int, ...], stream: KeyStream) -> np.ndarray:
        # Mask the limbs to p's bit length and redraw values >= p (rejection
        # sampling keeps the distribution exactly uniform).
        n = math.prod(shape)
        bits = self.modulus.bit_length()
        mask = (1 << bits) - 1

        def draw(count: int) -> np.ndarray:
            words = stream.words(count * self.limbs).reshape(count, self.limbs)
            v = words[:, self.limbs - 1].astype(object)
            for k in range(self.limbs - 2, -1, -1):
                v = (v << 64) | words[:, k].astype(object)
            return v & mask

        out = draw(n)
        bad = np.flatnonzero(out >= self.modulus)
        while bad.size:
            fresh = draw(bad.size)
            out[bad] = fresh
            bad = bad[fresh >= self.modulus]
        return out.reshape(shape)


def _obj(x: object) -> np.ndarray:
    """An object array even where NumPy hands back a Python int (0-d arrays)."""
    return np.asarray(x, dtype=object)


FAST = Mersenne61()


@functools.cache
def field_for(modulus: int) -> PrimeField:
    """The field object for a modulus: the uint64 fast path for 2^61 − 1."""
    if modulus == MERSENNE61:
        return FAST
    return BigPrimeField(modulus)


def blum_prime(bits: int) -> int:
    """The largest prime p < 2^bits with p % 4 == 3: MPyC's ``find_prime_root(bits, n=2)``.

    Computed here with gmpy2 because importing even ``mpyc.finfields`` starts MPyC's
    runtime, which parses this process's command line (DESIGN.md).
    """
    import gmpy2

    p = gmpy2.prev_prime(1 << bits)
    while p % 4 != 3:
        p = gmpy2.prev_prime(p)
    return int(p)


def mpyc_modulus(bit_length: int, frac_bits: int = 0, *, sec_param: int = 30) -> int:
    """The prime MPyC 0.11 uses for ``SecInt(l)`` / ``SecFxp(l, f)``.

    Mirrors ``mpyc.sectypes._pfield``: the largest Blum prime below
    2^(l + f + k + 2) for statistical security parameter k (MPyC's default 30).
    """
    return blum_prime(bit_length + frac_bits + sec_param + 2)


def expand(field: PrimeField, seed: bytes, count: int, start: int = 0) -> np.ndarray:
    """Elements ``start .. start+count`` (flat) of the expansion of ``seed``.

    ``start`` must be a multiple of :data:`BLOCK_ELEMENTS`.
    """
    if start % BLOCK_ELEMENTS:
        raise ValueError(f"expansion starts on a block boundary ({BLOCK_ELEMENTS} elements)")
    first = start // BLOCK_ELEMENTS
    parts = [
        field.random((min(BLOCK_ELEMENTS, count - o),), KeyStream(seed, first + i))
        for i, o in enumerate(range(0, count, BLOCK_ELEMENTS))
    ]
    if not parts:
        return field.random((0,), KeyStream(seed, first))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
