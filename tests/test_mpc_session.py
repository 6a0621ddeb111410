"""Real MPyC sessions: three processes on 127.0.0.1 with --ssl and the party certificates."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from smpc.core.encoding import FixedPoint
from smpc.core.field import MERSENNE61
from smpc.mpc.launch import SessionFailed, run_local_sessions, session_command
from smpc.mpc.task import SecType, SessionTask, ShareRef, TaskInput
from smpc.pki.kit import load_kit
from smpc.wire.packaging import open_share, seal_shares
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(180)

# A killed peer's kernel closes its connections: the survivors must fail within this
# many seconds (generous for a loaded machine; smpc.mpc.session states the bounds).
LOST_PEER_BOUND = 10

PARTIES = ["alpha", "beta", "gamma"]
SITES = ["oslo", "bergen", "tromso"]


def _share_to_files(keys_dir: Path, values: dict, sectype: SecType, enc: FixedPoint, out: Path):
    """Each site seals its shares in envelopes; each party opens its own and stores the body."""
    field = sectype.field
    parties = [load_kit(keys_dir / "kits" / name) for name in PARTIES]
    directory = parties[0].directory
    site_keys = {site: directory.verify_key(site) for site in SITES}
    recipients = [directory.party_encryption_key(i) for i in range(3)]
    refs: dict[int, list[ShareRef]] = {i: [] for i in range(3)}
    for site, x in values.items():
        signer = load_kit(keys_dir / "kits" / site).signing_key
        envelopes = seal_shares(
            x, enc, field, job="sum-test", input="x", site=site, t=1,
            recipients=recipients, signer=signer,
        )  # fmt: skip
        for i, envelope in enumerate(envelopes):
            share = open_share(envelope, parties[i].encryption_key, site_keys, party=i)
            path = out / f"{site}.{i}.share"
            path.write_bytes(share.body)
            refs[i].append(ShareRef(site=site, path=path, seed=share.header.seed))
    return refs


@pytest.mark.parametrize(
    ("sectype", "enc", "kind"),
    [
        (SecType(kind="fxp", bit_length=32, frac_bits=16), FixedPoint(16, 12), "float"),
        (SecType(kind="int", bit_length=24, prime=MERSENNE61), FixedPoint(0, 20), "int"),
    ],
    ids=["secfxp-mpyc-field", "secint-mersenne61"],
)
def test_three_parties_open_the_sum_of_site_shares(keys_dir, tmp_path, sectype, enc, kind):
    rng = np.random.default_rng(42)
    shape = (5, 3)
    if kind == "float":
        values = {s: rng.normal(0, 100, size=shape) for s in SITES}
    else:
        values = {s: rng.integers(-(2**19), 2**19, size=shape) for s in SITES}
    refs = _share_to_files(keys_dir, values, sectype, enc, tmp_path)
    tasks = [
        SessionTask(
            job="sum-test",
            party=i,
            sectype=sectype,
            inputs=[TaskInput(name="x", shape=shape, shares=refs[i])],
        )
        for i in range(3)
    ]
    kits = [keys_dir / "kits" / name for name in PARTIES]
    addresses = [("127.0.0.1", free_port()) for _ in range(3)]
    results = run_local_sessions(tasks, kits, addresses, 1, tmp_path, timeout=60)

    field = sectype.field
    expected = sum(field.to_signed(enc.encode(x, field)).astype(object) for x in values.values())
    for i, result in enumerate(results):
        assert result["party"] == i
        opened = np.array(result["outputs"]["x"]["values"], dtype=object).reshape(shape)
        assert (opened == expected).all()  # exact: the sum of the encoded integers
    plain = sum(values.values())
    decoded = np.array(results[0]["outputs"]["x"]["values"], dtype=float).reshape(shape)
    decoded /= 2.0**enc.frac_bits
    # Three roundings of at most 2^-(f+1) each.
    assert np.abs(decoded - plain).max() <= 3 * 2.0 ** -(enc.frac_bits + 1)


def _start_party(keys_dir: Path, tmp_path: Path, index: int, addresses, timeout: float):
    sectype = SecType(kind="int", bit_length=24, prime=MERSENNE61)
    body = tmp_path / f"zero.{index}.share"
    body.write_bytes(bytes(8))
    task = SessionTask(
        job="refuse",
        party=index,
        sectype=sectype,
        inputs=[TaskInput(name="x", shape=(1,), shares=[ShareRef(site="oslo", path=body)])],
    )
    task_path = tmp_path / f"task{index}.json"
    task.write(task_path)
    cmd = session_command(
        kit=keys_dir / "kits" / PARTIES[index],
        task=task_path,
        result=tmp_path / f"result{index}.json",
        addresses=addresses,
        index=index,
        threshold=1,
        timeout=timeout,
    )
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_listening(port: int, deadline: float = 20.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def _client_context(keys_dir: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.load_cert_chain(cert, keyfile=key)
    context.load_verify_locations(cafile=keys_dir / "public" / "party-ca.crt")
    return context


def _try_as_party_zero(keys_dir: Path, port: int, cert: Path, key: Path) -> bytes | None:
    """Connect to party 1's MPyC port with the given certificate and claim to be party 0.

    Returns what the server sent back before closing, or None if TLS was refused.
    """
    context = _client_context(keys_dir, cert, key)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="MPyC party 1") as tls,
        ):
            tls.sendall((0).to_bytes(2, "little") + bytes(64))
            tls.settimeout(5)
            return tls.recv(1024)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return None


def test_site_certificate_and_false_identity_are_refused_on_mpyc_ports(keys_dir, tmp_path):
    addresses = [("127.0.0.1", free_port()) for _ in range(3)]
    # Party 1 listens for party 0, who never comes: its session must time out clearly.
    proc = _start_party(keys_dir, tmp_path, 1, addresses, timeout=8)
    try:
        _wait_listening(addresses[1][1])
        site = keys_dir / "kits" / "oslo" / "tls"
        assert not _try_as_party_zero(
            keys_dir, addresses[1][1], site / "client.crt", site / "client.key"
        )
        gamma = keys_dir / "kits" / "gamma" / ".config"
        # A genuine party certificate (party 2) claiming to be party 0 is dropped.
        assert not _try_as_party_zero(
            keys_dir, addresses[1][1], gamma / "party_2.crt", gamma / "party_2.key"
        )
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    # The site certificate never got past TLS: the identity check saw one peer only.
    assert err.count("event=mpyc-impostor ") == 1
    assert "Traceback" not in err
    assert "peer claims to be party 0 but its certificate is for party 2" in err
    assert "event=mpyc-impostor peer=127.0.0.1:" in err
    assert 'claimed=0 subject="MPyC party 2"' in err
    assert "did not all connect within 8 s" in err


def test_session_failure_names_the_party(keys_dir, tmp_path):
    """A task whose share file is the wrong size fails that party with the reason."""
    sectype = SecType(kind="int", bit_length=24, prime=MERSENNE61)
    bad = tmp_path / "bad.share"
    bad.write_bytes(bytes(12))
    tasks = [
        SessionTask(
            job="broken",
            party=i,
            sectype=sectype,
            inputs=[TaskInput(name="x", shape=(2,), shares=[ShareRef(site="oslo", path=bad)])],
        )
        for i in range(3)
    ]
    kits = [keys_dir / "kits" / name for name in PARTIES]
    addresses = [("127.0.0.1", free_port()) for _ in range(3)]
    with pytest.raises(SessionFailed, match="has 12 bytes, expected 16"):
        run_local_sessions(tasks, kits, addresses, 1, tmp_path, timeout=20)


def _session(keys_dir: Path, tmp_path: Path, index: int, addresses, inputs: int, **options):
    """Party ``index``'s session over ``inputs`` one-element inputs (opened one by one, so
    the session computes for seconds), its stderr lines collected by a thread."""
    body = tmp_path / "one.share"
    body.write_bytes(bytes(8))
    task = SessionTask(
        job="watch",
        party=index,
        sectype=SecType(kind="int", bit_length=24, prime=MERSENNE61),
        inputs=[
            TaskInput(name=f"x{k}", shape=(1,), shares=[ShareRef(site="oslo", path=body)])
            for k in range(inputs)
        ],
        party_names=PARTIES,
    )
    task_path = tmp_path / f"watch{index}.json"
    task.write(task_path)
    cmd = session_command(
        kit=keys_dir / "kits" / PARTIES[index], task=task_path,
        result=tmp_path / f"watch{index}.result.json", addresses=addresses, index=index,
        threshold=1, **options,
    )  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.lines = []  # type: ignore[attr-defined]
    reader = threading.Thread(target=lambda: proc.lines.extend(proc.stderr), daemon=True)
    reader.start()
    proc.reader = reader  # type: ignore[attr-defined]
    return proc


def _wait_line(proc, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in proc.lines):
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in {proc.lines}")


def _ended(proc, timeout: float) -> tuple[int, str, float]:
    """Exit status, stderr and seconds it took to end."""
    start = time.monotonic()
    proc.wait(timeout)
    proc.reader.join(5)
    return proc.returncode, "".join(proc.lines), time.monotonic() - start


def _kill_all(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_peer_killed_mid_session_is_named_at_every_surviving_party(keys_dir, tmp_path):
    """beta is SIGKILLed while all three compute: alpha and gamma fail at once naming it."""
    addresses = [("127.0.0.1", free_port()) for _ in range(3)]
    procs = [_session(keys_dir, tmp_path, i, addresses, 6000, timeout=60) for i in range(3)]
    try:
        for proc in procs:
            _wait_line(proc, "event=mpyc-connected", 60)
        os.kill(procs[1].pid, signal.SIGKILL)
        for i in (0, 2):
            code, err, took = _ended(procs[i], LOST_PEER_BOUND + 5)
            assert code == 1, err
            assert "lost party beta (index 1) during the session" in err.splitlines()[-1]
            assert "event=mpyc-peer-lost party=beta index=1" in err
            assert took <= LOST_PEER_BOUND
            assert not (tmp_path / f"watch{i}.result.json").exists()
    finally:
        _kill_all(procs)


def test_a_party_that_never_connects_is_named_after_the_grace(keys_dir, tmp_path):
    """gamma never starts: alpha and beta connect to each other, then name gamma."""
    addresses = [("127.0.0.1", free_port()) for _ in range(3)]
    procs = [
        _session(keys_dir, tmp_path, i, addresses, 1, timeout=60, connect_grace=3) for i in range(2)
    ]
    try:
        for proc in procs:
            code, err, took = _ended(proc, 30)
            assert code == 1, err
            # The first to give up says so; the other may see it leave first.
            last = err.splitlines()[-1]
            assert last.endswith("missing gamma (index 2)"), last
            assert last.startswith(
                (
                    "session: job watch: parties did not all connect within 3 s of the first",
                    "session: job watch: lost party alpha (index 0) while connecting",
                    "session: job watch: lost party beta (index 1) while connecting",
                )
            ), last
            assert took <= 20  # the grace, not the 60 s connect timeout
    finally:
        _kill_all(procs)
