"""Signed control messages: jobs (analyst → all), acks and statuses (party → all).

Shares travel in envelopes (:mod:`smpc.wire.writer`, :mod:`smpc.wire.reader`); everything
else that steers a job is small, public to the federation and must be attributable, so it is a
signed JSON document::

    {"kind": "job" | "ack" | "status", "signer": NAME, "payload": {...}, "signature": BASE64}

The Ed25519 signature covers the canonical JSON (sorted keys, no spaces) of
``{"kind", "signer", "payload"}`` with a domain-separation prefix, so a message
of one kind cannot be replayed as another. :func:`verify` checks the signer's
role against the federation directory: only analysts sign jobs, only parties
sign acks and statuses.

A job's life: the analyst publishes it (retained); each party answers with a
status (``accepted`` or ``refused`` with the reason) and, as shares arrive, with
the sites it holds every input of (``holding``). When every party holds the
sites it waits for, or its deadline passes, the analyst publishes the job again
with ``close`` naming the agreed sites and ``parties`` the parties that take part
(at least ``min_parties``; all of them unless a party is down), each of which must
hold those sites; then those parties compute and send their result shares (``done``),
or say why not (``failed``).

What a job carries for its protocol alone is its ``payload``, typed by the protocol
(:mod:`smpc.protocols`): a round of multi-round training carries its round index and
the previous round's global model, a GWAS Newton round its variants and coefficients.
Arrays travel as an ``.npz`` archive, base64 in the signed JSON (:func:`encode_model`),
public to every site and party. One must fit in :data:`MAX_MODEL_BYTES` (4 MiB): a job
message is one MQTT message, retained, stored by every party and re-sent when the job
closes, so larger models would need a channel of their own (e.g. a signed download),
which this version lacks.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import time
import zipfile
from typing import Any, Literal

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from smpc.core.sharing import SCHEMES, Scheme
from smpc.errors import UserError
from smpc.names import INPUT_RE, NAME_RE
from smpc.pki.directory import Directory
from smpc.wire import strictjson

Kind = Literal["job", "ack", "status", "result"]
StatusState = Literal["accepted", "refused", "holding", "done", "failed"]
_CONTEXT = b"smpc signed message v1\x00"
_ROLE_OF_KIND = {"job": "analyst", "ack": "party", "status": "party", "result": "party"}
MAX_MODEL_BYTES = 4 * 1024 * 1024  # the .npz of a global model carried in a job message
MAX_MODEL_ARRAY_BYTES = 64 * MAX_MODEL_BYTES  # what its arrays may declare, decompressed


class MessageError(UserError):
    """A control message that is malformed, unsigned or signed by the wrong participant."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobInput(_Strict):
    """One input a job asks every site for, with its fixed-point encoding."""

    name: str = Field(pattern=INPUT_RE)
    frac_bits: int = Field(ge=0, le=64)
    int_bits: int = Field(ge=1, le=200)
    noised: bool = False  # dp: the parties add noise before it is opened (smpc.core.dp)
    # Public metadata a protocol needs at every party (a GWAS site's variant table):
    # shared with t = 0, so every party's "share" is the value itself. Encrypted to
    # each party like any share; never secret from the parties.
    public: bool = False
    modulus: int | None = None  # a field of its own (default: the job's modulus)


class Job(_Strict):
    """What the sites upload and the parties accept: the shared part of a job."""

    id: str = Field(pattern=NAME_RE)
    protocol: str = "sum"
    inputs: tuple[JobInput, ...] = Field(min_length=1)
    scheme: Scheme = "shamir"
    t: int = Field(ge=0)
    n: int = Field(ge=1)
    modulus: int
    compact: bool = True
    min_sites: int = Field(default=2, ge=1)
    # How many parties must hold the agreed sites (None: all n). Shamir linear jobs only:
    # additive sharing and MPyC sessions need every party (needs_all_parties).
    min_parties: int | None = Field(default=None, ge=1)
    sites: tuple[str, ...] | None = None  # None: every site of the federation
    analyst: str = ""  # who receives the results (deliver: analyst)
    deliver: Literal["analyst", "parties"] = "analyst"
    spec: dict[str, Any] = Field(default_factory=dict)  # the protocol spec, as the analyst ran it
    close: tuple[str, ...] | None = None  # set when the analyst closes uploads: the agreed sites
    # With ``close``: the upload id of every agreed site, as every party holds it (a party
    # computes only on exactly these uploads, so two sharings are never mixed).
    uploads: dict[str, str] | None = None
    # With ``close``: the parties that take part, in the federation's order (None: all n).
    # Only they compute; the analyst reconstructs from their results alone.
    parties: tuple[str, ...] | None = None
    # Freshness (unix seconds): parties refuse a job issued outside their window or whose
    # deadline has passed, so a recorded job cannot be replayed later (stamp_job).
    issued: float = 0.0
    deadline: float = 0.0
    # The protocol's own fields (a round index, a model, a variant list), typed by the
    # protocol's payload model (smpc.protocols.base.Protocol.payload_model); public.
    payload: dict[str, Any] = Field(default_factory=dict)
    # What the parties deliver when it is not the summed inputs themselves (a GWAS
    # delivers its sites' statistics aligned into one variant order, and the alignment).
    outputs: tuple[JobInput, ...] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Job:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}")
        if not self.t < self.n:
            raise ValueError(f"threshold t={self.t} must be below the number of parties n={self.n}")
        if self.scheme == "additive" and self.t != self.n - 1:
            raise ValueError("additive sharing has t = n - 1")
        if self.deadline < self.issued:
            raise ValueError("the job's deadline is before its issue time")
        closing = set(self.close or ())
        if self.uploads is not None and (self.close is None or set(self.uploads) != closing):
            raise ValueError("uploads must name exactly the sites of close")
        if self.min_parties is not None:
            if self.scheme == "additive" and self.min_parties != self.n:
                raise ValueError("additive sharing needs all n parties: min_parties must be n")
            if not self.t + 1 <= self.min_parties <= self.n:
                raise ValueError(
                    f"min_parties {self.min_parties} must be between t+1 = {self.t + 1} and "
                    f"n = {self.n}"
                )
        if self.parties is not None:
            if self.close is None:
                raise ValueError("parties are named only with close")
            if len(set(self.parties)) != len(self.parties):
                raise ValueError("the close names a party twice")
            if len(self.parties) < self.quorum:
                raise ValueError(
                    f"the close names {len(self.parties)} parties, fewer than min_parties "
                    f"{self.quorum}"
                )
        return self

    @property
    def quorum(self) -> int:
        """How many parties must take part: ``min_parties``, or every party."""
        return self.n if self.min_parties is None else self.min_parties

    def needs_all_parties(self) -> str:
        """Why every one of the n parties must take part ("" if ``quorum`` suffice)."""
        if self.scheme == "additive":
            return "additive sharing needs every party's share"
        if self.deliver == "parties":
            return "it is opened inside an MPyC session among all parties"
        if self.spec.get("dp"):
            return "its dp noise is shared inside an MPyC session among all parties"
        return ""

    def unclosed(self) -> Job:
        """The job as first published: what a later message with its id must equal."""
        return self.model_copy(update={"close": None, "uploads": None, "parties": None})

    def digest(self) -> str:
        """SHA-256 of the job as first published: the one job a site's shares are sealed for."""
        return hashlib.sha256(self.unclosed().model_dump_json().encode()).hexdigest()

    def input(self, name: str) -> JobInput | None:
        return next((i for i in self.inputs if i.name == name), None)

    @property
    def delivered(self) -> tuple[JobInput, ...]:
        """The outputs each party delivers: ``outputs``, or one sum per input."""
        return self.outputs if self.outputs is not None else self.inputs


def encode_model(arrays: dict[str, np.ndarray]) -> str:
    """A model as carried in a job: base64 of a compressed .npz (no pickles)."""
    buffer = io.BytesIO()
    named: dict[str, Any] = {name: np.asarray(value) for name, value in arrays.items()}
    np.savez_compressed(buffer, **named)
    data = buffer.getvalue()
    if len(data) > MAX_MODEL_BYTES:
        raise UserError(
            f"the global model is {len(data) / 2**20:.1f} MiB as .npz; a job message carries "
            f"at most {MAX_MODEL_BYTES / 2**20:g} MiB (larger models need another channel, "
            "not available in this version)"
        )
    return base64.b64encode(data).decode()


def decode_model(text: str) -> dict[str, np.ndarray]:
    """The arrays of a job's ``model``; a malformed one is a MessageError.

    Every member's declared size is checked first (:func:`_check_npz_sizes`), so a small
    archive that declares huge arrays is refused before NumPy allocates them.
    """
    try:
        data = base64.b64decode(text, validate=True)
        _check_npz_sizes(data)
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as exc:  # any decoding problem means a malformed message
        raise MessageError(f"the job's model is not a base64 .npz: {exc}") from None


def _check_npz_sizes(data: bytes) -> None:
    """Every member is a .npy array (format 1.0 or 2.0) whose data fits the size the zip
    declares for it, and all of them together at most :data:`MAX_MODEL_ARRAY_BYTES`."""
    fmt = np.lib.format
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        declared = sum(info.file_size for info in members)
        if declared > MAX_MODEL_ARRAY_BYTES:
            raise ValueError(f"its arrays declare {declared} bytes, over {MAX_MODEL_ARRAY_BYTES}")
        for info in members:
            with archive.open(info) as member:
                version = fmt.read_magic(member)
                if version not in readers:
                    raise ValueError(f"{info.filename}: .npy format {version} is not read here")
                shape, _, dtype = readers[version](member)
                size = math.prod(shape) * dtype.itemsize
                if size > info.file_size:
                    raise ValueError(
                        f"{info.filename}: shape {shape} of {dtype} needs {size} bytes, "
                        f"but the member holds {info.file_size}"
                    )


def stamp_job(job: Job, lifetime: float, now: float | None = None) -> Job:
    """``job`` with an issue time of now and a deadline ``lifetime`` seconds later."""
    now = time.time() if now is None else now
    return job.model_copy(update={"issued": now, "deadline": now + lifetime})


class Ack(_Strict):
    """A party's answer to one envelope: stored (durably) or rejected, with the reason."""

    job: str
    input: str
    site: str
    party: int
    digest: str
    envelope_id: str
    status: Literal["stored", "rejected"]
    reason: str = ""


class Status(_Strict):
    """A party's view of a job, for the analyst and the other parties."""

    job: str
    party: int
    state: StatusState
    sites: tuple[str, ...] = ()  # sites whose every input this party holds
    uploads: dict[str, str] = Field(default_factory=dict)  # site -> the upload id it holds
    reason: str = ""


class OpenedOutput(_Strict):
    shape: tuple[int, ...]
    values: tuple[int, ...]  # the opened field elements, centred (signed integers)


class PartyResult(_Strict):
    """``deliver: parties``: the outputs a party opened inside MPyC, signed by it."""

    job: str
    party: int
    outputs: dict[str, OpenedOutput]
    audit: str = ""  # the party's audit chain head (smpc.party.audit), signed with its result


# A signed result travels to its analyst as the body of a share envelope sealed to the
# analyst's key (smpc.wire.writer), so neither the broker nor another analyst can read it.
RESULT_INPUT = "result"


def seal_result(
    message: bytes,
    job: Job,
    party: str,
    index: int,
    recipient: X25519PublicKey,
    signer: Ed25519PrivateKey,
) -> bytes:
    """A party's signed result message, encrypted to the analyst and signed again."""
    from smpc.wire.header import ShareHeader
    from smpc.wire.writer import seal

    body = message + b" " * (-len(message) % 8)  # whole 8-byte words; JSON ignores the padding
    header = ShareHeader(
        job=job.id, input=RESULT_INPUT, site=party, party=index, scheme=job.scheme, t=job.t,
        n=job.n, modulus=job.modulus, shape=(len(body) // 8,),
    )  # fmt: skip
    return bytes(seal(header, body, recipient, signer))


def open_result(data: bytes, kit: Any) -> tuple[str, PartyResult]:
    """The signed result inside a sealed result envelope (``kit``: the analyst's)."""
    from smpc.wire.envelope_errors import EnvelopeError
    from smpc.wire.reader import open_envelope

    party_keys = {p: kit.directory.verify_key(p) for p in kit.directory.parties}
    try:
        opened = open_envelope(data, kit.encryption_key, party_keys)
    except EnvelopeError as exc:
        raise MessageError(f"a sealed result was refused: {exc}") from None
    signer, result = verify_result(bytes(opened.body).rstrip(b" "), kit.directory)
    if opened.header.input != RESULT_INPUT or opened.header.site != signer:
        raise MessageError(f"a result envelope of {opened.header.site} carries {signer}'s result")
    return signer, result


def _canonical(kind: str, signer: str, payload: dict) -> bytes:
    doc = {"kind": kind, "signer": signer, "payload": payload}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sign(kind: Kind, payload: BaseModel, signer: str, key: Ed25519PrivateKey) -> bytes:
    """A signed message carrying ``payload``."""
    body = payload.model_dump(mode="json")
    signature = key.sign(_CONTEXT + _canonical(kind, signer, body))
    doc = {"kind": kind, "signer": signer, "payload": body}
    doc["signature"] = base64.b64encode(signature).decode()
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _parse(data: bytes, kind: Kind) -> tuple[str, dict, bytes, bytes]:
    """A message's signer, payload, raw signature and the bytes it signs, read strictly
    (:func:`verify`)."""
    try:
        doc = strictjson.loads(data)
        signer, payload, signature = doc["signer"], doc["payload"], doc["signature"]
        if doc["kind"] != kind or set(doc) != {"kind", "signer", "payload", "signature"}:
            raise ValueError(f"expected a {kind} message")
        if not isinstance(signer, str) or not isinstance(signature, str):
            raise ValueError("signer and signature must be strings")
        raw_signature = base64.b64decode(signature, validate=True)
        signed = _CONTEXT + _canonical(kind, signer, payload)
        json.dumps(payload, ensure_ascii=False).encode()  # UnicodeError: a lone surrogate
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: nesting
        raise MessageError(f"malformed {kind} message: {exc}") from None
    return signer, payload, raw_signature, signed


def verify(data: bytes, kind: Kind, directory: Directory) -> tuple[str, dict]:
    """Check a message's form, kind, signer role and signature; return (signer, payload).

    The JSON is read strictly (no repeated keys, no NaN, Infinity or numbers too large
    for a float, no strings that are not Unicode text: a lone surrogate ``\\ud800``), so
    what the signature covers is what every reader sees; anything
    malformed, however nested, is a :class:`MessageError`.
    """
    signer, payload, raw_signature, signed = _parse(data, kind)
    try:
        role = directory.role(signer)
    except UserError:
        raise MessageError(f"{kind} message signed by unknown participant {signer!r}") from None
    if role != _ROLE_OF_KIND[kind]:
        raise MessageError(
            f"{kind} message signed by {signer!r}, a {role}, not an {_ROLE_OF_KIND[kind]}"
        )
    try:
        directory.verify_key(signer).verify(raw_signature, signed)
    except InvalidSignature:
        raise MessageError(f"{kind} message from {signer!r} has a bad signature") from None
    return signer, payload


def verify_job(data: bytes, directory: Directory) -> tuple[str, Job]:
    signer, payload = verify(data, "job", directory)
    try:
        return signer, Job.model_validate(payload)
    except ValidationError as exc:
        raise MessageError(f"job from {signer!r} is invalid: {exc.errors()[0]['msg']}") from None


def read_stored_job(data: bytes) -> tuple[str, Job]:
    """A job message read back from a party's own store: parsed as strictly as
    :func:`verify_job`, its signature not checked again. Only for what the store holds:
    every message there passed :func:`verify_job` when it arrived, and its signer may have
    left the directory since (its jobs must still be known: ids, differencing checks)."""
    signer, payload, _, _ = _parse(data, "job")
    try:
        return signer, Job.model_validate(payload)
    except ValidationError as exc:
        raise MessageError(f"job from {signer!r} is invalid: {exc.errors()[0]['msg']}") from None


def _verify_party_message(
    data: bytes, kind: Kind, model: type[Any], directory: Directory
) -> tuple[str, Any]:
    """A message a party signs about itself: valid, and its ``party`` is the signer's."""
    signer, payload = verify(data, kind, directory)
    try:
        message = model.model_validate(payload)
    except ValidationError as exc:
        raise MessageError(f"{kind} from {signer!r} is invalid: {exc.errors()[0]['msg']}") from None
    if directory.party_index(signer) != message.party:
        raise MessageError(f"{kind} signed by {signer!r} speaks for party {message.party}")
    return signer, message


def verify_status(data: bytes, directory: Directory) -> tuple[str, Status]:
    return _verify_party_message(data, "status", Status, directory)


def verify_result(data: bytes, directory: Directory) -> tuple[str, PartyResult]:
    return _verify_party_message(data, "result", PartyResult, directory)


def verify_ack(data: bytes, directory: Directory) -> tuple[str, Ack]:
    signer, payload = verify(data, "ack", directory)
    try:
        ack = Ack.model_validate(payload)
    except ValidationError as exc:
        raise MessageError(f"ack from {signer!r} is invalid: {exc.errors()[0]['msg']}") from None
    if directory.party_index(signer) != ack.party:
        raise MessageError(f"ack signed by {signer!r} speaks for party {ack.party}")
    return signer, ack
