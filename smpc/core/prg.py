"""Cryptographic randomness as NumPy arrays: ChaCha20 key streams.

All randomness of sharing comes from here, never from NumPy's generators.
A :class:`KeyStream` is ChaCha20 (from ``cryptography``) keyed with a 32-byte
seed: the same seed always expands to the same words, which is what lets a
compact share travel as its seed. :func:`fresh_seed` draws seeds from the
operating system (``os.urandom``). Which field elements a seed stands for is
:func:`smpc.core.field.expand`.

The stream is produced with ``update_into`` over a reusable zero buffer, a few
MiB at a time: ChaCha20 runs at several GB/s here, far faster than any
per-element approach.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

SEED_BYTES = 32
_BLOCK = 1 << 22  # bytes of key stream produced per call into the cipher
_ZEROS = bytes(_BLOCK)


def fresh_seed() -> bytes:
    """A new 32-byte seed from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)


class KeyStream:
    """Deterministic expansion of one seed into uniform 64-bit words."""

    def __init__(self, seed: bytes, block: int = 0) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a seed is {SEED_BYTES} bytes, got {len(seed)}")
        # cryptography's 16-byte ChaCha20 nonce: 4-byte block counter, 12-byte nonce.
        nonce = bytes(4) + block.to_bytes(12, "little")
        cipher = Cipher(algorithms.ChaCha20(bytes(seed), nonce), mode=None)
        self._encryptor = cipher.encryptor()

    def fill(self, out: memoryview) -> None:
        """Overwrite a writable byte buffer with the next bytes of the stream."""
        for start in range(0, len(out), _BLOCK):
            chunk = out[start : start + _BLOCK]
            self._encryptor.update_into(_ZEROS[: len(chunk)], chunk)

    def words(self, n: int) -> np.ndarray:
        """The next ``n`` uniform uint64 words (little-endian)."""
        out = np.empty(n, dtype="<u8")
        if n:
            self.fill(out.data.cast("B"))
        return out.astype(np.uint64, copy=False)

    @classmethod
    def fresh(cls) -> KeyStream:
        """A stream from a fresh random seed that is never stored or sent."""
        return cls(fresh_seed())
