"""What the fuzzers and tests/test_fuzz.py share: fixed keys, valid messages, and the oracles.

Everything valid here is made by the real writers (:func:`smpc.wire.packaging.seal_shares`,
:func:`smpc.wire.messages.sign`, :func:`smpc.wire.messages.seal_result`,
:func:`smpc.net.frames.encode_frames`) with real Ed25519/X25519 keys. The keys are derived
from fixed bytes so that a corpus written by one run still verifies in the next.

The oracles say what "accepted" may mean for each parser, and raise ``AssertionError``
(a crash, for atheris) on anything else:

* envelope (:func:`check_envelope`): every byte of an envelope is authenticated (the
  signature covers the routing part and the encrypted header, each chunk has an AEAD tag),
  so an accepted envelope must be byte-for-byte one of the valid ones; any refusal is an
  :class:`~smpc.wire.envelope_errors.EnvelopeError`.
* frames (:func:`check_frames`): frame headers are not authenticated (the message id and,
  for a one-chunk body, the chunk size can change freely), so the reassembler may yield a
  body only if it is byte-for-byte one of the bodies that were framed; it never raises,
  ``decode_frame`` raises only ``FrameError``, and its pending bytes stay within bounds.
* signed messages (:func:`check_message`): the signature covers the canonical JSON of
  ``kind``, ``signer`` and ``payload``, not the bytes, so an accepted message may differ in
  bytes (whitespace, key order, escapes) but must carry exactly the signer and the canonical
  payload of a valid message of its kind; any refusal is a
  :class:`~smpc.wire.messages.MessageError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python fuzz/x.py``: this checkout's smpc
    sys.path.insert(0, str(ROOT))

from smpc.core.encoding import FixedPoint  # noqa: E402
from smpc.core.field import field_for  # noqa: E402
from smpc.net.frames import MIN_CHUNK, FrameError, decode_frame, encode_frames  # noqa: E402
from smpc.net.reassembly import Reassembler  # noqa: E402
from smpc.pki.directory import Directory, DirectoryEntry  # noqa: E402
from smpc.wire.crypto import (  # noqa: E402
    HEADER_NONCE,
    SIG_CONTEXT,
    derive_keys,
    fingerprint,
    nonce,
    raw_key,
)
from smpc.wire.envelope_errors import EnvelopeError  # noqa: E402
from smpc.wire.header import ShareHeader  # noqa: E402
from smpc.wire.layout import (  # noqa: E402
    FIXED,
    FP,
    MAGIC,
    MIN_CHUNK_SIZE,
    TAG,
    VERSION,
    chunk_count,
    envelope_id,
    peek_route,
)
from smpc.wire.messages import (  # noqa: E402
    Ack,
    Job,
    JobInput,
    Kind,
    MessageError,
    OpenedOutput,
    PartyResult,
    Status,
    encode_model,
    open_result,
    seal_result,
    sign,
    stamp_job,
    verify_ack,
    verify_job,
    verify_result,
    verify_status,
)
from smpc.wire.packaging import open_share, seal_shares  # noqa: E402
from smpc.wire.writer import seal  # noqa: E402

P61 = 2**61 - 1
PARTIES = ("alpha", "beta", "gamma")
SITES = ("oslo", "bergen")
ANALYSTS = ("analyst", "eve")
JOB = "job-7"


def _secret(name: str, what: str) -> bytes:
    return hashlib.sha256(f"smpc fuzz {what} {name}".encode()).digest()


@dataclass(frozen=True)
class Keys:
    """A federation's keys, derived from fixed bytes, and its public directory."""

    signing: dict[str, Ed25519PrivateKey]
    encryption: dict[str, X25519PrivateKey]  # parties and analysts
    directory: Directory

    def party(self, index: int) -> X25519PrivateKey:
        return self.encryption[PARTIES[index]]

    @property
    def site_keys(self) -> dict[str, Any]:
        return {s: self.signing[s].public_key() for s in SITES}

    def analyst_kit(self, name: str = "analyst") -> Any:
        """What :func:`smpc.wire.messages.open_result` reads of a kit."""
        return SimpleNamespace(directory=self.directory, encryption_key=self.encryption[name])


@cache
def keys() -> Keys:
    signing, encryption, entries = {}, {}, {}
    for role, names in (("party", PARTIES), ("site", SITES), ("analyst", ANALYSTS)):
        for i, name in enumerate(names):
            sk = Ed25519PrivateKey.from_private_bytes(_secret(name, "signing"))
            ek = None
            if role != "site":
                encryption[name] = X25519PrivateKey.from_private_bytes(_secret(name, "x25519"))
                ek = encryption[name].public_key()
            signing[name] = sk
            index = i if role == "party" else None
            entries[name] = DirectoryEntry(name, role, index, sk.public_key(), ek)  # type: ignore[arg-type]
    directory = Directory(path=Path("/fuzz/public"), federation="fuzz", entries=entries)
    return Keys(signing=signing, encryption=encryption, directory=directory)


# --- envelopes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    data: bytes
    party: int  # the index of the party it is sealed to


def _shares(
    x: np.ndarray,
    *,
    site: str,
    input: str,
    compact: bool,
    modulus: int = P61,
    scheme: str = "shamir",
    t: int = 1,
) -> list[Envelope]:
    k = keys()
    sealed = seal_shares(
        x,
        FixedPoint(frac_bits=8, int_bits=32),
        field_for(modulus),
        job=JOB,
        input=input,
        site=site,
        t=t,
        recipients=[k.party(i).public_key() for i in range(3)],
        signer=k.signing[site],
        scheme=scheme,
        compact=compact,  # type: ignore[arg-type]
        meta={"upload": f"u-{site}"},
    )
    return [Envelope(bytes(e), i) for i, e in enumerate(sealed) if e is not None]


@cache
def envelopes(large: bool = True) -> tuple[Envelope, ...]:
    """Valid envelopes: arrays, seeds (compact sharing), a wide field; ``large``: 3 chunks."""
    rng = np.random.default_rng(7)
    out = _shares(rng.normal(size=5), site="oslo", input="age", compact=True)
    out += _shares(
        rng.normal(size=(2, 3)),
        site="bergen",
        input="bmi.sum",
        compact=False,
        modulus=2**127 - 1,
        scheme="additive",
        t=2,
    )
    out += _shares(np.zeros(0), site="oslo", input="empty", compact=False)[:1]
    if large:  # 150,000 bytes in three chunks of 64 KiB
        values = rng.integers(0, P61, 18_750, dtype=np.uint64)
        header = ShareHeader(
            job=JOB,
            input="big",
            site="bergen",
            party=2,
            scheme="shamir",
            t=1,
            n=3,
            modulus=P61,
            shape=values.shape,
            meta={"upload": "u-bergen"},
        )
        k = keys()
        sealed = seal(
            header, values, k.party(2).public_key(), k.signing["bergen"], chunk_size=MIN_CHUNK_SIZE
        )
        out.append(Envelope(bytes(sealed), 2))
    return tuple(out)


def check_envelope(data: bytes | bytearray, party: int, valid: Iterable[bytes]) -> bool:
    """Open ``data`` as party ``party`` would; True if accepted (then it is a valid one)."""
    k = keys()
    with contextlib.suppress(EnvelopeError):
        peek_route(data)
        envelope_id(data)
    try:
        open_share(data, k.party(party), k.site_keys, party=party)
    except EnvelopeError:
        return False
    assert bytes(data) in set(valid), "a modified envelope was accepted"
    return True


# --- frames ----------------------------------------------------------------------------


def frame_bodies() -> tuple[bytes, ...]:
    """Bodies as the transport carries them: an envelope, a signed message, empty, 3 chunks."""
    return (
        envelopes(large=False)[0].data,
        messages()["ack"],
        b"",
        bytes(range(256)) * (2 * MIN_CHUNK // 256) + b"tail",
    )


def frame_sets(max_chunk: int = MIN_CHUNK) -> list[list[bytes]]:
    return [
        list(encode_frames(b, max_chunk, message_id=hashlib.sha256(b).digest()[:16]))
        for b in frame_bodies()
    ]


@dataclass
class FrameCheck:
    """Feeds frames to one reassembler and checks what it does with them."""

    valid: frozenset[bytes]
    max_pending_bytes: int = 1 << 20
    reassembler: Reassembler = field(init=False)
    delivered: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reassembler = Reassembler(
            max_body=4 << 20, max_pending_bytes=self.max_pending_bytes, max_pending_sets=8
        )

    def add(self, payload: bytes, topic: str = "smpc/fuzz/up/oslo/alpha") -> None:
        with contextlib.suppress(FrameError):
            decode_frame(payload)
        message = self.reassembler.add(topic, payload)  # must never raise
        r = self.reassembler
        assert r.pending_bytes <= self.max_pending_bytes, "pending bytes over the bound"
        assert r.pending_sets <= 8, "pending sets over the bound"
        if message is not None:
            assert message.body in self.valid, "a body that was never framed was delivered"
            self.delivered.append(message.body)


def check_frames(frames: Sequence[bytes], valid: Iterable[bytes]) -> list[bytes]:
    """Reassemble ``frames`` (on one topic, in this order); the bodies delivered."""
    check = FrameCheck(frozenset(valid))
    for f in frames:
        check.add(f)
    return check.delivered


# --- signed control messages -----------------------------------------------------------

VERIFY = {"job": verify_job, "ack": verify_ack, "status": verify_status, "result": verify_result}
SIGNER = {"job": "analyst", "ack": "beta", "status": "beta", "result": "beta"}


def job() -> Job:
    inputs = (
        JobInput(name="age", frac_bits=8, int_bits=32),
        JobInput(name="bmi.sum", frac_bits=8, int_bits=32, noised=True, modulus=2**127 - 1),
    )
    job = Job(
        id=JOB,
        protocol="fedavg",
        inputs=inputs,
        t=1,
        n=3,
        modulus=P61,
        min_sites=2,
        sites=SITES,
        analyst="analyst",
        spec={"name": "fuzz", "rounds": 2},
        payload={"round": 1, "model": encode_model({"w": np.arange(4.0)})},
    )
    return stamp_job(job, 3600.0, now=1_700_000_000.5)


@cache
def messages() -> dict[str, bytes]:
    """One valid signed message of each kind (and a closed job)."""
    k = keys()
    j = job()
    closed = j.model_copy(update={"close": SITES, "uploads": {s: f"u-{s}" for s in SITES}})
    ack = Ack(
        job=JOB,
        input="age",
        site="oslo",
        party=1,
        digest="ab" * 32,
        envelope_id="cd" * 32,
        status="stored",
    )
    status = Status(
        job=JOB, party=1, state="holding", sites=SITES, uploads={s: f"u-{s}" for s in SITES}
    )
    result = PartyResult(
        job=JOB,
        party=1,
        outputs={
            "age": OpenedOutput(shape=(2,), values=(3, -4)),
        },
    )
    payloads: dict[str, tuple[Kind, Any]] = {
        "job": ("job", j),
        "closed": ("job", closed),
        "ack": ("ack", ack),
        "status": ("status", status),
        "result": ("result", result),
    }
    return {
        name: sign(kind, model, SIGNER[kind], k.signing[SIGNER[kind]])
        for name, (kind, model) in payloads.items()
    }


def kind_of(name: str) -> Kind:
    return "job" if name == "closed" else name  # type: ignore[return-value]


def canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


@cache
def accepted_contents() -> dict[str, frozenset[tuple[str, str]]]:
    """Per kind: the (signer, canonical payload) pairs a valid message carries."""
    out: dict[str, set[tuple[str, str]]] = {}
    for name, data in messages().items():
        payload = json.loads(data)["payload"]
        out.setdefault(kind_of(name), set()).add((SIGNER[kind_of(name)], canonical(payload)))
    return {kind: frozenset(v) for kind, v in out.items()}


def check_message(data: bytes) -> list[str]:
    """Verify ``data`` as every kind; the kinds it is accepted as (content checked)."""
    d = keys().directory
    accepted = []
    for kind, verify in VERIFY.items():
        try:
            signer, model = verify(data, d)
        except MessageError:
            continue
        content = (signer, canonical(model.model_dump(mode="json")))
        raw = json.loads(data)["payload"]  # what the signature covered
        assert (signer, canonical(raw)) in accepted_contents()[kind], f"a forged {kind}"
        assert content in accepted_contents()[kind], f"a {kind} with other content"
        accepted.append(kind)
    return accepted


@cache
def result_envelopes() -> tuple[bytes, ...]:
    """A party's signed result sealed to the analyst, as it travels on result topics."""
    k = keys()
    return tuple(
        seal_result(
            messages()["result"],
            job(),
            "beta",
            1,
            k.encryption["analyst"].public_key(),
            k.signing["beta"],
        )
        for _ in range(2)
    )


def check_result_envelope(data: bytes, valid: Iterable[bytes]) -> bool:
    try:
        signer, result = open_result(data, keys().analyst_kit())
    except MessageError:
        return False
    assert bytes(data) in set(valid), "a modified result envelope was accepted"
    assert signer == "beta" and result.party == 1
    return True


# --- envelopes a signing site makes of arbitrary bytes ----------------------------------


def seal_raw(
    header_plain: bytes,
    body: bytes,
    *,
    site: str = "oslo",
    party: int = 1,
    names: tuple[bytes, bytes, bytes] = (JOB.encode(), b"age", b"oslo"),
    chunk_size: int = MIN_CHUNK_SIZE,
    body_len: int | None = None,
    ephemeral: bytes | None = None,
) -> bytes:
    """An envelope signed by ``site`` and encrypted to party ``party`` around any header
    plaintext and body: what a compromised (or buggy) site can send. The real key schedule
    and AEAD of :mod:`smpc.wire.crypto`; only the header's and body's content is free.
    ``body_len`` may declare another length than ``body`` has (chunks are cut from
    ``body`` as far as it reaches)."""
    k = keys()
    recipient = k.party(party).public_key()
    recipient_raw = raw_key(recipient)
    eph_key = X25519PrivateKey.generate()
    eph = raw_key(eph_key.public_key()) if ephemeral is None else ephemeral
    header_key, body_key = derive_keys(eph_key.exchange(recipient), eph, recipient_raw)
    body_len = len(body) if body_len is None else body_len
    prefix = FIXED.pack(
        MAGIC,
        VERSION,
        party,
        hashlib.sha256(recipient_raw).digest()[:FP],
        fingerprint(k.signing[site]),
        eph,
        chunk_size,
        body_len,
        len(header_plain) + TAG,
        *(len(n) for n in names),
    ) + b"".join(names)
    routing = hashlib.sha256(prefix).digest()
    head = ChaCha20Poly1305(header_key).encrypt(HEADER_NONCE, header_plain, routing)
    signature = k.signing[site].sign(SIG_CONTEXT + hashlib.sha256(prefix + head).digest())
    aead, chunks = ChaCha20Poly1305(body_key), []
    count = chunk_count(body_len, chunk_size)
    for i in range(count):
        piece = body[i * chunk_size : (i + 1) * chunk_size]
        if i and not piece:
            break
        chunks.append(aead.encrypt(nonce(i), piece, routing + bytes([i == count - 1])))
    return prefix + head + signature + b"".join(chunks)


def header_plain(body: bytes, **fields: Any) -> bytes:
    """Canonical header JSON for ``body`` as :func:`seal_raw`'s default route names it."""
    doc: dict[str, Any] = {
        "job": JOB,
        "input": "age",
        "site": "oslo",
        "party": 1,
        "scheme": "shamir",
        "t": 1,
        "n": 3,
        "modulus": str(P61),
        "frac_bits": 8,
        "dtype": "<u8",
        "shape": [len(body) // 8],
        "seed": False,
        "digest": hashlib.sha256(body).hexdigest(),
        "meta": {"upload": "u-oslo"},
    }
    doc.update(fields)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def open_share_as(data: bytes | bytearray, party: int) -> Any:
    """What party ``party`` does with an upload: :func:`smpc.wire.packaging.open_share`."""
    k = keys()
    return open_share(data, k.party(party), k.site_keys, party=party)
