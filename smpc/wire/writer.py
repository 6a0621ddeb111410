"""Sealing a share envelope: encrypt a body to one party and sign it, streamed to memory or file."""

# How a site seals (EnvelopeWriter; seal = one piece). The routing part fixes every
# length before the first body byte (body length, chunk size, and the header's: its
# digest is always 64 hex digits), so the whole layout is known up front and the body
# can stream through. The writer puts the routing part first and leaves a gap for the
# encrypted header and the signature. Then the body arrives in pieces of any size:
# each updates the SHA-256 of the plaintext, and every chunk is encrypted as soon as it
# is complete (its final flag is known from the body length) — whole chunks straight
# from the caller's piece, the rest through one reusable chunk-sized staging buffer.
# Ciphertext goes into one bytearray of the exact envelope size (memory sink) or,
# through one reusable scratch buffer, to a seekable file (file sink). Only at the end,
# when the digest is known, is the header encrypted, signed and written into the gap
# (a file sink seeks back for it, then to the end of the envelope). Nothing body-sized
# is allocated besides the output, and with a file sink not even that. A large write
# hashes on a second thread (smpc.wire.hashing) while its chunks are encrypted, and the
# output buffer is allocated (zero-filled) only once that hash runs.

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from smpc.wire.buffers import as_view
from smpc.wire.crypto import HEADER_NONCE, SIG_CONTEXT, derive_keys, fingerprint, nonce, raw_key
from smpc.wire.envelope_errors import DigestMismatch, InvalidHeader, ShapeMismatch
from smpc.wire.hashing import Hasher
from smpc.wire.header import ShareHeader, header_json, is_int
from smpc.wire.layout import (
    DEFAULT_CHUNK_SIZE,
    FIXED,
    FP,
    MAGIC,
    MAX_CHUNK_SIZE,
    MAX_HEADER_BYTES,
    MIN_CHUNK_SIZE,
    SIG,
    TAG,
    VERSION,
    chunk_count,
    envelope_size,
)

__all__ = ["EnvelopeWriter", "seal"]


_DIGEST_PLACEHOLDER = "0" * 64


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
        if not is_int(chunk_size) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
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
        header_len = len(header_json(fields)) + TAG
        if header_len > MAX_HEADER_BYTES:
            raise InvalidHeader(f"header is {header_len} bytes, over {MAX_HEADER_BYTES}", **ctx)

        names = [str(ctx[k]).encode("utf-8") for k in ("job", "input", "site")]
        ephemeral_key = X25519PrivateKey.generate()
        ephemeral = raw_key(ephemeral_key.public_key())
        recipient_raw = raw_key(recipient)
        prefix = FIXED.pack(
            MAGIC,
            VERSION,
            ctx["party"],
            hashlib.sha256(recipient_raw).digest()[:FP],
            fingerprint(signer),
            ephemeral,
            chunk_size,
            body_len,
            header_len,
            *(len(x) for x in names),
        ) + b"".join(names)
        header_key, body_key = derive_keys(
            ephemeral_key.exchange(recipient), ephemeral, recipient_raw
        )
        routing_hash = hashlib.sha256(prefix).digest()

        self._fields, self._ctx, self._kind, self._checked = fields, ctx, kind, checked
        self._given_digest = given_digest
        self._signer, self._header_key, self._prefix = signer, header_key, prefix
        self._routing_hash = routing_hash
        self._aead = ChaCha20Poly1305(body_key)
        self._aad_mid, self._aad_last = routing_hash + b"\x00", routing_hash + b"\x01"
        self._hash = hashlib.sha256() if checked or not given_digest else None
        self._cs, self._body_len = chunk_size, body_len
        self._chunks = chunk_count(body_len, chunk_size)
        self._header_len = header_len
        self._size = envelope_size(len(prefix), header_len, body_len, chunk_size)
        self._written = 0  # body bytes taken so far
        self._chunk = 0  # chunks sealed so far
        self._pos = len(prefix) + header_len + SIG  # where the next chunk goes
        self._stage: memoryview | None = None  # the pending partial chunk (lazy)
        self._staged = 0
        self._sink = sink
        self._out: bytearray | None = None  # memory sink: the envelope, on the first chunk
        self._view: memoryview | None = None  # of _out, or of the file sink's scratch buffer
        if sink is not None:
            self._base = sink.tell()
            self._view = memoryview(bytearray(min(chunk_size, body_len) + TAG))
        self._state = "open"
        if sink is not None:
            try:  # header and signature come last: zeros never verify if the writer dies
                _write_all(sink, prefix + bytes(header_len + SIG))
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
            with as_view(data) as view:
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
            hasher = None if self._hash is None else Hasher(run, self._hash)
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
        n = len(plain) + TAG
        if self._sink is not None:
            assert self._view is not None
            self._aead.encrypt_into(nonce(i), plain, aad, self._view[:n])
            _write_all(self._sink, self._view[:n])
        else:
            if self._view is None:  # allocated late: a large write's hash already runs
                self._out = bytearray(self._size)
                self._view = memoryview(self._out)
                self._view[: len(self._prefix)] = self._prefix
            self._aead.encrypt_into(nonce(i), plain, aad, self._view[self._pos : self._pos + n])
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
                HEADER_NONCE, header_json(self._fields), self._routing_hash
            )
            if len(sealed_header) != self._header_len:  # the placeholder fixed this length
                raise RuntimeError("envelope layout error: header length changed")
            signed = hashlib.sha256(self._prefix + sealed_header).digest()
            tail = sealed_header + self._signer.sign(SIG_CONTEXT + signed)
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
    view = as_view(body)
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
    view = as_view(body)
    writer = EnvelopeWriter._unchecked(header, len(view), recipient, signer, chunk_size)
    writer.write(view)
    out = writer.finish()
    assert out is not None
    return out
