"""Site → envelopes → parties: every party opens exactly its share; the shares reconstruct."""

from __future__ import annotations

import io

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from smpc.core.encoding import EncodingError, FixedPoint
from smpc.core.field import BLOCK_ELEMENTS, FAST, field_for, mpyc_modulus
from smpc.core.sharing import reconstruct
from smpc.wire.envelope_errors import WrongRecipient, WrongSigner
from smpc.wire.packaging import open_share, seal_shares

SITE = Ed25519PrivateKey.generate()
PARTIES = [X25519PrivateKey.generate() for _ in range(5)]


def _seal(x, encoding, field, n, t, scheme="shamir", compact=True, sinks=None):
    return seal_shares(
        x,
        encoding,
        field,
        job="job-1",
        input="x",
        site="oslo",
        t=t,
        recipients=[p.public_key() for p in PARTIES[:n]],
        signer=SITE,
        scheme=scheme,
        compact=compact,
        sinks=sinks,
    )


@pytest.mark.parametrize(
    ("n", "t", "scheme", "compact"),
    [
        (3, 1, "shamir", True),
        (5, 2, "shamir", False),
        (2, 1, "additive", True),
        (4, 3, "additive", False),
    ],
)
@pytest.mark.parametrize("field", [FAST, field_for(mpyc_modulus(32, 16))], ids=["m61", "mpyc"])
def test_each_party_opens_its_share_and_they_reconstruct(n, t, scheme, compact, field):
    encoding = FixedPoint(16, 20)
    # Spans several seed-expansion blocks, with a partial last block.
    size = 2 * BLOCK_ELEMENTS + 8 if field is FAST else 1000
    x = np.random.default_rng(3).normal(0, 1000, size=size).reshape(-1, 5)
    envelopes = _seal(x, encoding, field, n, t, scheme, compact)
    keys = {"oslo": SITE.public_key()}
    shares = [open_share(e, PARTIES[i], keys, party=i) for i, e in enumerate(envelopes)]
    for i, share in enumerate(shares):
        h = share.header
        assert (h.party, h.n, h.t, h.scheme, h.shape) == (i, n, t, scheme, x.shape)
        assert h.frac_bits == 16 and h.modulus == field.modulus
        randoms = t if scheme == "shamir" else n - 1
        assert h.seed == (compact and i < randoms)
    subset = range(n) if scheme == "additive" else range(n - t - 1, n)
    got = reconstruct({i: shares[i].values() for i in subset}, field, t, scheme)
    assert np.array_equal(
        np.asarray(got, dtype=object), np.asarray(encoding.encode(x, field), dtype=object)
    )


def test_compact_shares_upload_n_minus_t_copies():
    x = np.zeros(100_000)
    sizes = [len(e) for e in _seal(x, FixedPoint(16, 20), FAST, 3, 1)]
    assert sizes[0] < 1000  # the seed
    assert all(800_000 <= s < 810_000 for s in sizes[1:])


def test_envelopes_stream_into_files(tmp_path):
    x = np.arange(3 * BLOCK_ELEMENTS, dtype=np.int64)
    encoding = FixedPoint(0, 40)
    sinks = [io.BytesIO(b"previous bytes") for _ in range(3)]
    for s in sinks:
        s.seek(0, io.SEEK_END)
    assert _seal(x, encoding, FAST, 3, 1, sinks=sinks) == [None, None, None]
    keys = {"oslo": SITE.public_key()}
    values = {
        i: open_share(s.getvalue()[14:], PARTIES[i], keys, party=i).values()
        for i, s in enumerate(sinks)
    }
    assert np.array_equal(encoding.decode(reconstruct(values, FAST, 1), FAST), x)


def test_bad_value_aborts_before_any_envelope():
    x = np.zeros(3 * BLOCK_ELEMENTS)
    x[2 * BLOCK_ELEMENTS + 7] = np.nan
    with pytest.raises(EncodingError, match=f"x: value nan at {2 * BLOCK_ELEMENTS + 7}"):
        _seal(x, FixedPoint(16, 20), FAST, 3, 1)


def test_a_party_cannot_open_another_partys_share_nor_accept_a_forger():
    envelopes = _seal(np.ones(10), FixedPoint(16, 20), FAST, 3, 1)
    with pytest.raises(WrongRecipient):
        open_share(envelopes[1], PARTIES[2], {"oslo": SITE.public_key()}, party=2)
    forger = Ed25519PrivateKey.generate()
    with pytest.raises(WrongSigner):
        open_share(envelopes[1], PARTIES[1], {"oslo": forger.public_key()}, party=1)
