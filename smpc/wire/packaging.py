"""From a site's array to one sealed envelope per party, and back.

The glue between the sharing layer and the envelope: a site encodes an array,
splits it into N shares and seals share i to party i (:func:`seal_shares`), in
one streaming pass; party i opens its envelope and gets its share as field
elements (:func:`open_share`). Nothing here talks to a network.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from smpc.core.encoding import FixedPoint
from smpc.core.field import PrimeField, expand, field_for
from smpc.core.sharing import Scheme, Splitter
from smpc.wire.envelope_errors import ShapeMismatch
from smpc.wire.header import ShareHeader
from smpc.wire.reader import VerifyKeys, open_envelope
from smpc.wire.writer import EnvelopeWriter, seal


@dataclass(frozen=True)
class InputShare:
    """A party's share of one site's input, as the envelope delivered it."""

    header: ShareHeader
    body: bytes | bytearray  # the 32-byte seed or the array's limbs

    @property
    def field(self) -> PrimeField:
        return field_for(self.header.modulus)

    def values(self) -> np.ndarray:
        """The share as field elements (a seed expanded)."""
        header = self.header
        if header.seed:
            return expand(self.field, bytes(self.body), header.count).reshape(header.shape)
        return self.field.from_bytes(self.body, header.shape)


def seal_shares(
    x: np.ndarray,
    encoding: FixedPoint,
    field: PrimeField,
    *,
    job: str,
    input: str,
    site: str,
    t: int,
    recipients: Sequence[X25519PublicKey],
    signer: Ed25519PrivateKey,
    scheme: Scheme = "shamir",
    compact: bool = True,
    sinks: Sequence[BinaryIO] | None = None,
    meta: dict[str, str | int | float | bool] | None = None,
) -> list[bytearray | None]:
    """Encode ``x``, share it among ``len(recipients)`` parties, seal one envelope each.

    The array streams through in cache-sized pieces: each piece is encoded,
    split, and its shares go straight into the parties' envelope writers, so no
    full-size intermediate array exists. With ``sinks`` (one seekable binary
    file per party) the envelopes are written there and None is returned in
    their place; otherwise the envelopes are returned. Raises
    :class:`~smpc.core.encoding.EncodingError` for a value that does not fit, before
    any envelope is complete.
    """
    n = len(recipients)
    t = n - 1 if scheme == "additive" else t
    x = np.asarray(x)
    splitter = Splitter(field, n, t, scheme)
    seeded = set(range(len(splitter.seeds))) if compact else set()

    def header(party: int) -> ShareHeader:
        return ShareHeader(
            job=job,
            input=input,
            site=site,
            party=party,
            scheme=scheme,
            t=t,
            n=n,
            modulus=field.modulus,
            frac_bits=encoding.frac_bits,
            dtype=field.dtype_tag,
            shape=tuple(x.shape),
            seed=party in seeded,
            meta=meta or {},
        )

    def sink(party: int) -> BinaryIO | None:
        return sinks[party] if sinks is not None else None

    with ExitStack() as stack:
        writers = {
            j: stack.enter_context(EnvelopeWriter(header(j), recipients[j], signer, sink=sink(j)))
            for j in range(n)
            if j not in seeded
        }
        for _, piece in encoding.iter_encode(x, field, name=input):
            for j, values in enumerate(splitter.split_chunk(piece)):
                if j in writers:
                    writers[j].write(field.to_bytes(values))
        envelopes: list[bytearray | None] = []
        for j in range(n):
            if j in writers:
                envelopes.append(writers[j].finish())
                continue
            sealed = seal(header(j), splitter.seeds[j], recipients[j], signer)
            if sinks is None:
                envelopes.append(sealed)
            else:
                sinks[j].write(sealed)
                envelopes.append(None)
    return envelopes


def open_share(
    data: bytes | bytearray | memoryview,
    key: X25519PrivateKey,
    verify_key: VerifyKeys,
    *,
    party: int,
) -> InputShare:
    """Verify, decrypt and check one envelope addressed to ``party``."""
    opened = open_envelope(data, key, verify_key, party=party)
    header = opened.header
    if not header.seed:
        try:
            field_for(header.modulus).from_bytes(opened.body, header.shape)
        except ValueError as exc:
            raise ShapeMismatch(
                f"share body is not made of field elements: {exc}",
                job=header.job,
                input=header.input,
                site=header.site,
                party=header.party,
            ) from None
    return InputShare(header, opened.body)
