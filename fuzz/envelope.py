"""Coverage-guided fuzzing of the share envelope reader (atheris).

    python fuzz/envelope.py -atheris_runs=100000     # or -max_total_time=60

The first byte of an input chooses what the rest is:

* even: raw bytes off the network. ``peek_route``, ``envelope_id`` and ``open_share``
  (``open_envelope`` and the body's field elements) as each of the three parties. Every
  byte of an envelope is authenticated, so the only ones accepted must be byte-identical
  to a seed; any refusal must be an ``EnvelopeError`` (``fuzz/common.py``,
  :func:`check_envelope`).
* odd: what a signing site can send: ``u16 body length | u8 chunk size | body | header
  plaintext``, sealed with the real key schedule and signed by site ``oslo``
  (:func:`fuzz.common.seal_raw`), so the strict header parser, its consistency checks
  with the routing part and the body, and the chunk decryption are reached. The
  harness lowers the smallest chunk size to 64 bytes for these inputs only, so
  multi-chunk bodies stay small. Accepted: a share whose header describes its body
  and survives ``to_json``/``from_json`` unchanged (a party stores it so).

Seeds: envelopes of ``seal_shares`` (arrays, seeds, a 127-bit field, an empty array)
and hostile-signed inputs around valid headers (one and several chunks).
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["smpc", "fuzz.common"]):
    from fuzz import common
    from smpc.wire import layout
    from smpc.wire.envelope_errors import EnvelopeError
    from smpc.wire.header import ShareHeader

VALID = frozenset(e.data for e in common.envelopes(large=False))
SIGNED = struct.Struct("<HB")


def _signed_input(body: bytes, header: bytes, chunk_exp: int = 0) -> bytes:
    return b"\x01" + SIGNED.pack(len(body), chunk_exp) + body + header


def seeds() -> dict[str, bytes]:
    out = {f"raw-{i}": b"\x00" + e.data for i, e in enumerate(common.envelopes(large=False))}
    array = b"".join(i.to_bytes(8, "little") for i in range(6))
    out["signed-array"] = _signed_input(array, common.header_plain(array))
    chunks = bytes(8 * 40)
    out["signed-chunks"] = _signed_input(chunks, common.header_plain(chunks), 0)  # 5 chunks
    seed = bytes(32)
    out["signed-seed"] = _signed_input(seed, common.header_plain(seed, seed=True, shape=[9]))
    wide = bytes(32)
    out["signed-wide"] = _signed_input(
        wide,
        common.header_plain(wide, dtype="<u8*2", modulus=str(2**127 - 1), shape=[2]),
    )
    return out


@atheris.instrument_func
def _hostile_signed(rest: bytes) -> None:
    if len(rest) < SIGNED.size:
        return
    body_len, chunk_exp = SIGNED.unpack_from(rest)
    body = rest[SIGNED.size : SIGNED.size + body_len]
    header = rest[SIGNED.size + body_len :]
    chunk_size = 64 << (chunk_exp % 8)
    saved = layout.MIN_CHUNK_SIZE
    layout.MIN_CHUNK_SIZE = 64
    try:
        data = common.seal_raw(header, body, chunk_size=chunk_size)
        try:
            share = common.open_share_as(data, 1)
        except EnvelopeError:
            return
    finally:
        layout.MIN_CHUNK_SIZE = saved
    h = share.header
    assert len(share.body) == h.body_size() == len(body), "body and header disagree"
    assert h.digest == hashlib.sha256(body).hexdigest(), "digest not checked"
    assert (h.job, h.input, h.site, h.party) == (common.JOB, "age", "oslo", 1)
    assert ShareHeader.from_json(h.to_json()) == h, "an accepted header does not round-trip"
    if h.count <= 1 << 16:  # a seed may stand for more elements than it is worth expanding
        share.values()


@atheris.instrument_func
def TestOneInput(data: bytes) -> None:
    if not data:
        return
    rest = data[1:]
    if data[0] % 2 == 0:
        for party in range(3):
            common.check_envelope(rest, party, VALID)
    else:
        _hostile_signed(rest)


if __name__ == "__main__":
    from fuzz.harness import main

    main("envelope", TestOneInput, seeds())
