"""Coverage-guided fuzzing of the signed control messages (atheris).

    python fuzz/messages.py -atheris_runs=100000     # or -max_total_time=60

The first byte of an input chooses what the rest is:

* 0: raw bytes off the network, verified as a job, ack, status and result
  (``verify_job``/``verify_ack``/``verify_status``/``verify_result``). The signature
  covers the canonical JSON, so an accepted message may differ in bytes but must carry
  a seed's signer and canonical payload; any refusal must be a ``MessageError``
  (:func:`fuzz.common.check_message`).
* 1: what a participant with a valid key can send: the next byte picks the kind, the
  rest is the payload's JSON text, wrapped in a message correctly signed by a signer
  of that kind's role, so the payload models (``Job``, ``Ack``, ``Status``,
  ``PartyResult``) and the signer checks are reached. Refusals: ``MessageError`` only;
  an accepted payload must survive a dump and re-validation unchanged.
* 2: a job's model (``decode_model`` of the base64 of the rest, a ``.npz``): only
  ``MessageError``, and what it returns is arrays without objects.
* 3: a sealed result envelope for the analyst (``open_result``): accepted only if
  byte-identical to a seed, refused only with ``MessageError``.
* 4: repetition, for what byte mutations rarely build (deep nesting, long runs):
  ``u8 k | u16 start | u16 end | text``, the text with ``text[start:end]`` repeated
  ``k²`` times (up to 65,025: most values of one byte nest deeper than Python's
  recursion limit), checked as in mode 0.

``fuzz/messages.dict`` (JSON tokens and the messages' keys) is passed to libFuzzer as
its dictionary unless ``-dict=`` is given.

Seeds: one valid message of each kind (and a closed job), their payloads, models of
``encode_model`` and sealed results.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import sys
from pathlib import Path

import atheris
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["smpc", "fuzz.common"]):
    from fuzz import common
    from smpc.wire.messages import MessageError, decode_model, encode_model

KINDS = ("job", "ack", "status", "result")
RESULTS = frozenset(common.result_envelopes())


def seeds() -> dict[str, bytes]:
    out = {f"raw-{name}": b"\x00" + data for name, data in common.messages().items()}
    for name, data in common.messages().items():
        kind = KINDS.index(common.kind_of(name))
        payload = json.dumps(json.loads(data)["payload"]).encode()
        out[f"signed-{name}"] = b"\x01" + bytes([kind]) + payload
    models = {
        "floats": {"w": np.arange(6.0).reshape(2, 3), "b": np.zeros(2)},
        "ints": {"k": np.arange(5, dtype=np.int64)},
        "text": {"ids": np.array(["rs1", "rs22"])},
        "empty": {},
    }
    for name, arrays in models.items():
        out[f"model-{name}"] = b"\x02" + base64.b64decode(encode_model(arrays))
    for i, data in enumerate(common.result_envelopes()):
        out[f"result-{i}"] = b"\x03" + data
    for name in ("ack", "status", "closed"):  # '{"x":[' or '[' repeated 4 times
        data = common.messages()[name]
        at = data.index(b'"payload":') + len(b'"payload":')
        nested = data[:at] + b'{"x":[' + data[at:-1] + b"]}}"
        out[f"repeat-object-{name}"] = b"\x04" + REPEAT.pack(2, at, at + 6) + nested
        listed = data[:at] + b"[" + data[at:-1] + b"]}"
        out[f"repeat-list-{name}"] = b"\x04" + REPEAT.pack(2, at, at + 1) + listed
    return out


REPEAT = struct.Struct("<BHH")


@atheris.instrument_func
def _repeat(rest: bytes) -> bytes:
    if len(rest) < REPEAT.size:
        return rest
    k, start, end = REPEAT.unpack_from(rest)
    text = rest[REPEAT.size :]
    return text[:start] + text[start:end] * (k * k) + text[end:]


@atheris.instrument_func
def _signed(kind: str, payload_text: bytes) -> bytes:
    """``payload_text`` as the payload of a ``kind`` message signed by its role's signer."""
    signer = common.SIGNER[kind]
    try:
        payload = json.loads(payload_text)
        canonical = json.dumps(
            {"kind": kind, "signer": signer, "payload": payload},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
    except (ValueError, RecursionError):
        canonical = b""
    key = common.keys().signing[signer]
    signature = base64.b64encode(key.sign(b"smpc signed message v1\x00" + canonical))
    return (
        b'{"kind":"%s","signer":"%s","signature":"%s","payload":'
        % (kind.encode(), signer.encode(), signature)
        + payload_text
        + b"}"
    )


@atheris.instrument_func
def _hostile_signed(rest: bytes) -> None:
    if not rest:
        return
    kind = KINDS[rest[0] % len(KINDS)]
    data = _signed(kind, rest[1:])
    try:
        signer, model = common.VERIFY[kind](data, common.keys().directory)
    except MessageError:
        return
    assert signer == common.SIGNER[kind]
    again = type(model).model_validate(model.model_dump(mode="json"))
    assert again == model, "an accepted payload does not survive a round trip"


@atheris.instrument_func
def _model(rest: bytes) -> None:
    try:
        arrays = decode_model(base64.b64encode(rest).decode())
    except MessageError:
        return
    for value in arrays.values():
        assert isinstance(value, np.ndarray) and not value.dtype.hasobject
        np.save(io.BytesIO(), value, allow_pickle=False)


@atheris.instrument_func
def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 5, data[1:]
    if mode == 0:
        common.check_message(rest)
    elif mode == 1:
        _hostile_signed(rest)
    elif mode == 2:
        _model(rest)
    elif mode == 3:
        common.check_result_envelope(rest, RESULTS)
    else:
        common.check_message(_repeat(rest))


if __name__ == "__main__":
    from fuzz.harness import main

    main("messages", TestOneInput, seeds(), dictionary=Path(__file__).with_suffix(".dict"))
