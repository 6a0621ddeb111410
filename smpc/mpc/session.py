"""One computing party's MPyC session, run as a process of its own.

Usage (normally started by the party daemon, one process per job)::

    python -m smpc.mpc.session --kit KIT --task TASK.json --result RESULT.json \\
        [--bind HOST] [--timeout SECONDS] -P host:port -P host:port ... -I i -T t --ssl

``--kit`` is the party's kit directory from ``smpc keys init``: MPyC's ``--ssl``
loads ``.config/party_{i}.crt``, ``.config/party_{i}.key`` and
``.config/mpyc_ca.crt`` relative to the working directory, so the session
changes into it. The task names the share files of every site and input; the
session sums each input's shares locally in the field (a linear operation on
shares needs no communication), loads the sum as an MPyC secure array, opens
it and writes the result as JSON.

Two hardening steps close gaps of MPyC 0.11, in this one place:

* **Bind address.** MPyC listens on all interfaces; the session binds its
  listening socket to ``--bind`` (default: this party's host from ``-P``).
* **Claimed identity.** MPyC's listening side accepts any certificate of the
  party CA and believes the party index the peer sends first. The session
  checks that the peer certificate is issued by the party CA and that its
  common name is ``MPyC party {j}`` for the index j it claims, and drops the
  connection otherwise (``_install_identity_check``). The connecting
  side is already covered: MPyC checks the server name ``MPyC party {j}``.
  A name mismatch makes MPyC retry silently forever, so connecting is bounded
  by ``--timeout`` and ends with a clear error.

The process exits 0 with the result written, or non-zero with one line on
stderr saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from mpyc import asyncoro
from mpyc.runtime import mpc  # parses and strips MPyC's own options from sys.argv

from smpc.dp import skellam
from smpc.errors import UserError
from smpc.field import PrimeField
from smpc.keys import mpyc_party_index
from smpc.mpc.task import SessionTask, TaskInput
from smpc.prg import expand

log = logging.getLogger("smpc.session")


class SessionError(Exception):
    """The session cannot complete; the message is the reason."""


def _peer_is_party(transport: asyncio.BaseTransport, claimed: int, party_ca) -> str | None:
    """Why a peer claiming index ``claimed`` must be refused, or None if it may talk."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    if not der:
        return "no peer certificate"
    cert = x509.load_der_x509_certificate(der)
    try:
        cert.verify_directly_issued_by(party_ca)
    except (ValueError, TypeError, InvalidSignature):
        return f"certificate {cert.subject.rfc4514_string()!r} is not issued by the party CA"
    try:
        index = mpyc_party_index(cert)
    except UserError as exc:
        return str(exc)
    if index != claimed:
        return f"peer claims to be party {claimed} but its certificate is for party {index}"
    return None


def _install_identity_check(party_ca_path: Path) -> None:
    """Make MPyC's listening side verify the pid a peer claims (see module doc)."""
    party_ca = x509.load_pem_x509_certificate(party_ca_path.read_bytes())
    original = asyncoro.MessageExchanger.data_received

    def data_received(self: asyncoro.MessageExchanger, data: bytes) -> None:
        if self.peer_pid is None and len(self.bytes) + len(data) >= 2:
            claimed = int.from_bytes((bytes(self.bytes) + bytes(data))[:2], "little")
            reason = _peer_is_party(self.transport, claimed, party_ca)
            if reason is not None:
                log.error("refused MPyC connection: %s", reason)
                self.transport.close()
                return
        original(self, data)

    original_lost = asyncoro.MessageExchanger.connection_lost

    def connection_lost(self: asyncoro.MessageExchanger, exc: Exception | None) -> None:
        if self.peer_pid is None:  # refused (or gone) before it said who it is
            return
        original_lost(self, exc)

    asyncoro.MessageExchanger.data_received = data_received
    asyncoro.MessageExchanger.connection_lost = connection_lost


def _bind_listening_socket(host: str) -> None:
    """Make MPyC's ``create_server`` listen on ``host`` only."""
    loop = mpc._loop
    original = loop.create_server
    loop.create_server = functools.partial(original, host=host)


def load_input(spec: TaskInput, field: PrimeField) -> np.ndarray:
    """Sum one input's shares over all sites, locally, in the field."""
    count = int(np.prod(spec.shape, dtype=np.int64))
    total = None
    for ref in spec.shares:
        body = ref.path.read_bytes()
        if ref.seed:
            share = expand(field, body, count).reshape(spec.shape)
        else:
            expected = count * field.element_size
            if len(body) != expected:
                raise SessionError(
                    f"share of {spec.name!r} from site {ref.site!r} has {len(body)} bytes, "
                    f"expected {expected} for shape {spec.shape}"
                )
            share = field.from_bytes(body, spec.shape)
        total = share.copy() if total is None else field.add(total, share)
    return total


async def run_task(task: SessionTask, timeout: float, file_dir: Path) -> dict:
    """Connect to the other parties, compute the task, open the outputs."""
    try:
        await asyncio.wait_for(mpc.start(), timeout)
    except TimeoutError:
        raise SessionError(
            f"parties did not all connect within {timeout:g} s (check that every party runs "
            "this job, that the -P addresses and ports are reachable, and that each party's "
            "certificate is issued by the party CA with CN 'MPyC party <index>')"
        ) from None
    sectype = task.sectype
    field = sectype.field
    if sectype.kind == "int":
        stype = mpc.SecInt(sectype.bit_length, p=sectype.prime)
    else:
        stype = mpc.SecFxp(sectype.bit_length, sectype.frac_bits, p=sectype.prime)
    if stype.field.modulus != field.modulus:
        raise SessionError(f"MPyC chose modulus {stype.field.modulus}, shares use {field.modulus}")
    if task.compute in ("gwas", "newton"):
        from smpc.protocols.gwas.session import run_gwas, run_newton

        run = run_gwas if task.compute == "gwas" else run_newton
        outputs = await run(mpc, task, file_dir)
        await mpc.shutdown()
        return {"job": task.job, "party": mpc.pid, "outputs": outputs}
    outputs: dict = {}
    noise_files: dict[str, str] = {}
    for spec in task.inputs:
        if task.compute == "noise":
            if spec.name in task.noised:
                share = await noise_share(task, stype, field, spec.shape)
                file = f"noise-{mpc.pid}-{len(noise_files)}.npy"
                np.save(file_dir / file, share)
                noise_files[spec.name] = file
            continue
        values = load_input(spec, field)
        if spec.name in task.noised:
            if task.scheme == "additive":  # this party's own draw is its share of the noise
                own = skellam(task.noise_mu, spec.shape)
                values = field.add(values, field.from_int(own))
            else:
                values = field.add(values, await noise_share(task, stype, field, spec.shape))
        if task.scheme == "additive":
            # Every party sends its summed share to every other over the party-CA TLS
            # links; the sum of all N is the secret.
            everyone = await mpc.transfer(values)
            signed = field.to_signed(
                field.sum([np.asarray(v, dtype=field.dtype) for v in everyone])
            )
            outputs[spec.name] = {
                "shape": list(spec.shape),
                "frac_bits": sectype.frac_bits,
                "values": [int(v) for v in np.asarray(signed, dtype=object).reshape(-1)],
            }
            continue
        field_array = stype.field.array(np.asarray(values, dtype=object))
        if sectype.kind == "int":
            secure = stype.array(field_array)
        else:
            secure = stype.array(field_array, integral=False)
        opened = await mpc.output(secure, raw=True)
        signed = field.to_signed(np.asarray(opened.value, dtype=object).reshape(spec.shape))
        outputs[spec.name] = {
            "shape": list(spec.shape),
            "frac_bits": sectype.frac_bits,
            "values": [int(v) for v in np.asarray(signed, dtype=object).reshape(-1)],
        }
    await mpc.shutdown()
    if task.compute == "noise":
        return {"job": task.job, "party": mpc.pid, "noise": noise_files}
    return {"job": task.job, "party": mpc.pid, "outputs": outputs}


async def noise_share(task: SessionTask, stype, field: PrimeField, shape) -> np.ndarray:
    """This party's Shamir share of the sum of every party's Skellam draw (smpc.dp).

    Each party inputs its own draw; MPyC shares it with a random polynomial of degree
    t, party i holding the evaluation at i+1 like the sites' shares, so the sum of the
    inputs adds to the summed site shares and opens with them.
    """
    own = skellam(task.noise_mu, shape)
    secure = stype.array(stype.field.array(np.asarray(own, dtype=object) % field.modulus))
    inputs = mpc.input(secure, senders=list(range(len(mpc.parties))))
    total = inputs[0]
    for other in inputs[1:]:
        total = total + other
    share = await mpc.gather(total)
    return field.from_int(np.asarray(share.value, dtype=object).reshape(shape))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m smpc.mpc.session")
    parser.add_argument("--kit", required=True, type=Path, help="the party's kit directory")
    parser.add_argument("--task", required=True, type=Path, help="task file (JSON)")
    parser.add_argument("--result", required=True, type=Path, help="where to write the result")
    parser.add_argument("--bind", help="address to listen on (default: own host from -P)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to connect")
    args = parser.parse_args(sys.argv[1:])  # MPyC has already removed its own options
    task = SessionTask.read(args.task.resolve())
    result_path = args.result.resolve()
    if task.party != mpc.pid:
        print(f"session: task is for party {task.party}, MPyC runs as {mpc.pid}", file=sys.stderr)
        return 2
    if mpc.options.ssl:
        os.chdir(args.kit)  # MPyC loads .config/party_{i}.* from the working directory
        _install_identity_check(Path(".config", "mpyc_ca.crt"))
    if len(mpc.parties) > 1:
        _bind_listening_socket(args.bind or mpc.parties[mpc.pid].host)
    try:
        result = mpc.run(run_task(task, args.timeout, result_path.parent))
    except SessionError as exc:
        print(f"session: job {task.job}: {exc}", file=sys.stderr)
        return 1
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
