"""A federation across hosts: every participant in a network namespace of its own.

The test builds one namespace per computing party (alpha, beta, gamma), one for the
broker, one per site (oslo, bergen, tromso) and one for the analyst, each with a veth
link to one bridge. The bridge lives in a namespace of its own too, so nothing is added
to the host's network: the only addresses are those of ``NET`` on the namespaces' links
(and each namespace's own loopback), and nothing is routed anywhere else. Each process
runs in its namespace (``ip netns exec``) exactly as an organisation runs it: Mosquitto
with the config :func:`smpc.broker.mosquitto.mosquitto_config` generates for the
federation's broker host, ``smpc party serve``, ``smpc site serve`` and ``smpc run``,
against a federation file that names those addresses; ``smpc keys init`` issues the
certificates for them. The analyst runs a secure sum, a FedAvg round and a GWAS with
``reveal: statistics`` (the association test inside MPyC, over the parties' links), each
checked against the plaintext (NumPy; ``plink1.9 --assoc`` on the pooled fileset).

Every process binds only its namespace's address (or 127.0.0.1 there). While the jobs
run, the test reads each namespace's sockets (``/proc/PID/net/tcp*`` and ``udp*`` of a
process inside it) and requires that every listening or bound socket is on that
namespace's own address or its loopback, that the broker listened on its address, and
that MPyC's connections joined every pair of parties over the links. MPyC listens only
until its peers have connected, too briefly to be sure to be seen, so each party's
namespace also has 127.0.0.1 held on every MPyC port: a session listening on all
addresses (0.0.0.0) could not bind there (EADDRINUSE), and the GWAS would fail.

Skipped, with the reason, only where network namespaces cannot be created (not root,
no ``ip``, no CAP_NET_ADMIN): the probe creates and deletes one. Namespace names carry
this process's id and a random part, so concurrent runs do not clash, and the
fixture's finalizer kills every process in the namespaces and deletes them (their
links and the bridge go with them), whatever happened.
"""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from smpc.broker.mosquitto import MOSQUITTO, broker_kit_files, mosquitto_config
from smpc.config.federation import load_federation
from tests.plaintext import (
    DEMO,
    GWAS,
    SITES,
    SUM_COLUMNS,
    check_assoc,
    check_fedavg,
    check_sum,
    require_plink,
)

ROOT = Path(__file__).resolve().parents[1]
NET = ipaddress.ip_network("10.213.0.0/24")
PARTIES = ("alpha", "beta", "gamma")
HOSTS = {  # namespace (participant) -> its address on the bridge
    **{name: NET[1 + i] for i, name in enumerate(PARTIES)},
    "broker": NET[10],
    **{name: NET[21 + i] for i, name in enumerate(SITES)},
    "analyst": NET[30],
}
BROKER_PORT = 8883
MPYC_PORTS = range(14000, 14050)  # the same range on every party: they are separate hosts
LOOPBACK = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
HOLD_LOOPBACK = f"""
import socket, time
held = []
for port in range({MPYC_PORTS.start}, {MPYC_PORTS.stop}):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server
    s.bind(("127.0.0.1", port))
    s.listen()
    held.append(s)
print("held", flush=True)
time.sleep(3600)
"""  # a listener on 127.0.0.1:PORT makes binding 0.0.0.0:PORT fail (EADDRINUSE)
DEADLINE = 420.0  # seconds for the whole run, inside the test's timeout

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be created here, or None: create and delete one."""
    if shutil.which("ip") is None:
        return "no `ip` command (Debian package iproute2)"
    probe = f"smpc-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        made = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` failed: {exc}"
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}, not root"
    if made.returncode != 0:
        return f"cannot create a network namespace ({who}): {made.stderr.strip()}"
    try:
        inside = _ip("netns", "exec", probe, "true", check=False)
    finally:
        _ip("netns", "delete", probe, check=False)
    if inside.returncode != 0:
        return f"cannot run a process in a network namespace ({who}): {inside.stderr.strip()}"
    return None


# --- the namespaces and their sockets --------------------------------------------------


def _hex_address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:1F90`` of /proc/net/tcp (host-order 32-bit words) as (address, port)."""
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw), int(port, 16)


@dataclass
class Sockets:
    """What one namespace's sockets were seen doing: listening, bound (UDP), connected."""

    listening: set[tuple[object, int]] = field(default_factory=set)
    bound: set[tuple[object, int]] = field(default_factory=set)
    connected: set[tuple[object, int]] = field(default_factory=set)  # remote ends


def _read_sockets(pid: int, into: Sockets) -> None:
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            return  # the process ended
        for line in lines:
            fields = line.split()
            local, remote, state = _hex_address(fields[1]), _hex_address(fields[2]), fields[3]
            if table.startswith("udp"):
                into.bound.add(local)
            elif state == "0A":  # LISTEN
                into.listening.add(local)
            elif state == "01":  # ESTABLISHED
                into.connected.add(remote)


class Network:
    """The namespaces of one run, their processes, and a watch on their sockets."""

    def __init__(self, workdir: Path) -> None:
        self.prefix = f"smpc{os.getpid()}{secrets.token_hex(2)}"
        self.bridge = f"{self.prefix}-net"
        self.workdir = workdir
        self.created: list[str] = []
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {n: [] for n in HOSTS}
        self.sockets: dict[str, Sockets] = {n: Sockets() for n in HOSTS}
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watch_sockets, daemon=True)
        self.host_links = socket.if_nameindex()  # the host's interfaces, before and after

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def build(self) -> None:
        """The bridge namespace, and one namespace per participant linked to its bridge."""
        self._add(self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "addrgenmode", "none")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for i, (name, address) in enumerate(HOSTS.items()):
            ns = self.ns(name)
            self._add(ns)
            port = f"v{i}"
            _ip("-n", self.bridge, "link", "add", port, "type", "veth",
                "peer", "name", "eth0", "netns", ns)  # fmt: skip
            _ip("-n", self.bridge, "link", "set", port, "addrgenmode", "none")
            _ip("-n", self.bridge, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "link", "set", "eth0", "addrgenmode", "none")  # no IPv6 link-local
            _ip("-n", ns, "addr", "add", f"{address}/{NET.prefixlen}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        self._watch.start()

    def _add(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.created.append(ns)

    def start(self, name: str, args: list[str], log: str) -> subprocess.Popen[bytes]:
        """Start ``args`` in participant ``name``'s namespace, stdout and stderr to ``log``."""
        with (self.workdir / "logs" / log).open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(name), *args],
                cwd=self.workdir, env=_env(), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs[name].append(proc)
        return proc

    def run(self, name: str, args: list[str], log: str, timeout: float) -> None:
        """Run ``args`` in ``name``'s namespace to the end; fail with its log if it fails."""
        proc = self.start(name, args, log)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            pytest.fail(f"{' '.join(args)} timed out after {timeout:.0f} s\n{self.logs()}")
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(args)}: exit {proc.returncode}\n{self.logs()}")

    def _watch_sockets(self) -> None:
        while not self._stop.wait(0.1):
            for name, procs in self.procs.items():
                for proc in procs:
                    if proc.poll() is None:  # any live process shows its namespace's sockets
                        _read_sockets(proc.pid, self.sockets[name])
                        break

    def logs(self) -> str:
        return "".join(
            f"\n--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted((self.workdir / "logs").glob("*.log"))
        )

    def destroy(self) -> None:
        """Kill every process in the namespaces, then delete them (links and bridge too)."""
        self._stop.set()
        with contextlib.suppress(RuntimeError):
            self._watch.join(5)
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            pids = self._pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while pids and time.monotonic() < deadline:
                for procs in self.procs.values():
                    for proc in procs:
                        proc.poll()  # reap our own children
                pids = [p for p in pids if _alive(p)]
                time.sleep(0.1)
        for ns in reversed(self.created):
            _ip("netns", "delete", ns, check=False)

    def _pids(self) -> list[int]:
        pids = {p.pid for procs in self.procs.values() for p in procs if p.poll() is None}
        for ns in self.created:
            listed = _ip("netns", "pids", ns, check=False).stdout.split()
            pids.update(int(p) for p in listed if p.isdigit())
        return sorted(pids)


def _strays(net: Network) -> dict[str, set[tuple[object, int]]]:
    """Per namespace, the sockets seen listening or bound elsewhere than its own address
    or loopback (e.g. 0.0.0.0, all of them)."""
    strays = {}
    for name, seen in net.sockets.items():
        own = {HOSTS[name], *LOOPBACK}
        stray = {(a, p) for a, p in seen.listening | seen.bound if a not in own}
        if stray:
            strays[name] = stray
    return strays


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie of someone else's is as good as gone
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SMPC_MPYC_BIND", None)  # sessions bind the party's own host from the federation
    return env


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    reason = _namespaces_unavailable()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    (tmp_path / "logs").mkdir()
    net = Network(tmp_path)
    try:
        net.build()
        yield net
    finally:
        net.destroy()
    leftover = _ip("netns", "list").stdout
    assert net.prefix not in leftover, leftover


# --- the federation's files ------------------------------------------------------------


def _smpc(*args: str) -> list[str]:
    return [sys.executable, "-m", "smpc.cli", *args]


def _write_federation(work: Path) -> Path:
    """The federation file naming the namespaces' addresses, the party and site configs."""
    doc = {
        "name": "multihost",
        "threshold": 1,
        "broker": {"host": str(HOSTS["broker"]), "port": BROKER_PORT},
        "parties": [
            {"name": p, "host": str(HOSTS[p]), "mpyc_ports": f"{MPYC_PORTS[0]}-{MPYC_PORTS[-1]}"}
            for p in PARTIES
        ],
        "sites": [{"name": s} for s in SITES],
        "analysts": [{"name": "analyst"}],
    }
    federation = work / "federation.yaml"
    federation.write_text(yaml.safe_dump(doc, sort_keys=False))
    for party in PARTIES:
        config = {"kit": str(work / "keys" / "kits" / party), "store": str(work / "var" / party)}
        (work / f"{party}.yaml").write_text(yaml.safe_dump(config))
    for site in SITES:
        inputs = {column: f"{DEMO / site}.csv:{column}" for column in SUM_COLUMNS}
        inputs["coef"] = f"{DEMO / site}.npz:coef"
        inputs["num_examples"] = f"{DEMO / site}.npz:num_examples"
        config = {
            "kit": str(work / "keys" / "kits" / site),
            "inputs": inputs,
            "data": {"gwas": str(GWAS / site)},
        }
        (work / f"{site}.yaml").write_text(yaml.safe_dump(config))
    (work / "cc-assoc.yaml").write_text(
        "name: cc-assoc\nprotocol: gwas\ntests: [assoc]\nreveal: [statistics]\n"
    )
    return federation


def _write_broker_config(work: Path, federation_file: Path) -> Path:
    """Mosquitto's config and ACL as smpc generates them, on the federation's broker host."""
    from smpc.broker.acl import mosquitto_acl

    federation = load_federation(federation_file)
    (work / "broker-data").mkdir()
    acl = work / "acl"
    acl.write_text(mosquitto_acl(federation))
    conf = work / "mosquitto.conf"
    conf.write_text(
        mosquitto_config(
            federation,
            broker_kit_files(work / "keys" / "kits" / "broker"),
            host=federation.broker.host,
            port=federation.broker.port,
            data_dir=work / "broker-data",
            acl_file=acl,
            user=getpass.getuser() if os.geteuid() == 0 else None,  # as MosquittoBroker does
            log_file=work / "logs" / "broker.log",
        )
    )
    return conf


def _wait(what: str, ready: Callable[[], bool], net: Network, deadline: float) -> None:
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{net.logs()}")
        time.sleep(0.2)


def _daemons_alive(net: Network) -> bool:
    """Fail if a daemon has exited; False otherwise (so it can lead an ``or``)."""
    for name, procs in net.procs.items():
        for proc in procs:
            if proc.poll() is not None and name != "analyst":
                pytest.fail(f"{name}: {' '.join(proc.args)} exited {proc.returncode}{net.logs()}")
    return False


def _broker_answers(net: Network) -> bool:
    """The broker's TLS port accepts a connection from the analyst's namespace."""
    probe = f": > /dev/tcp/{HOSTS['broker']}/{BROKER_PORT}"
    done = subprocess.run(
        ["ip", "netns", "exec", net.ns("analyst"), "bash", "-c", probe],
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    return done.returncode == 0


def test_a_federation_across_network_namespaces(network: Network) -> None:
    require_plink()
    if not Path(MOSQUITTO).is_file():
        pytest.fail(f"{MOSQUITTO}: not installed (tests/run.sh installs the Debian package)")
    net, work = network, network.workdir
    deadline = time.monotonic() + DEADLINE
    federation = _write_federation(work)
    subprocess.run(  # the operator, once, on the host: no network needed
        _smpc("keys", "init", str(federation), "--out", str(work / "keys")),
        check=True, capture_output=True, env=_env(), timeout=120,
    )  # fmt: skip
    server = x509.load_pem_x509_certificate(
        (work / "keys" / "kits" / "broker" / "tls" / "server.crt").read_bytes()
    )
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [HOSTS["broker"]]

    conf = _write_broker_config(work, federation)
    net.start("broker", [MOSQUITTO, "-c", str(conf)], "broker-stdout.log")
    _wait("the broker", lambda: _daemons_alive(net) or _broker_answers(net), net, deadline)

    # 127.0.0.1 of every MPyC port held in each party's namespace: a session that listened
    # on all addresses (0.0.0.0) could not bind, and the GWAS would fail
    holders = {p: net.start(p, [sys.executable, "-c", HOLD_LOOPBACK], f"hold-{p}.log")
               for p in PARTIES}  # fmt: skip
    held = [work / "logs" / f"hold-{p}.log" for p in PARTIES]
    _wait("the loopback holders", lambda: all("held" in f.read_text() for f in held), net, deadline)
    for party in PARTIES:
        net.start(party, _smpc("party", "serve", "--config", str(work / f"{party}.yaml")),
                  f"{party}.log")  # fmt: skip
    for site in SITES:
        net.start(site, _smpc("site", "serve", "--config", str(work / f"{site}.yaml")),
                  f"{site}.log")  # fmt: skip

    def connected() -> bool:
        _daemons_alive(net)
        logs = [(work / "logs" / f"{p}.log").read_text(errors="replace") for p in PARTIES]
        return all("event=party-connected" in log for log in logs)

    _wait("every party to connect to the broker", connected, net, deadline)

    kit = str(work / "keys" / "kits" / "analyst")
    results = work / "results"
    for spec in (ROOT / "protocols" / "cohort.yaml", ROOT / "protocols" / "cohort-fit.yaml",
                 work / "cc-assoc.yaml"):  # fmt: skip
        out = results / spec.stem
        net.run("analyst", _smpc("run", str(spec), "--kit", kit, "--out", str(out)),
                "analyst.log", timeout=max(deadline - time.monotonic(), 1))  # fmt: skip
        _daemons_alive(net)

    check_sum(results / "cohort" / "result.json")
    check_fedavg(results / "cohort-fit" / "model.npz")
    check_assoc(results / "cc-assoc" / "cc-assoc.assoc", work)
    analyst_log = (work / "logs" / "analyst.log").read_text()
    for spec in ("cohort", "cohort-fit", "cc-assoc"):
        assert f"{spec}: 3 sites ({', '.join(SITES)})" in analyst_log, analyst_log
    for site in SITES:
        log = (work / "logs" / f"{site}.log").read_text()
        assert log.count("event=upload-complete") == 3, log
        assert "event=upload-failed" not in log and "Traceback" not in log

    # every socket of every namespace on its own address or loopback; the traffic crossed
    # the links: the broker listened on its address, MPyC joined every pair of parties
    assert not _strays(net), f"bound elsewhere than their own address: {_strays(net)}"
    assert (HOSTS["broker"], BROKER_PORT) in net.sockets["broker"].listening
    links = set()
    for party in PARTIES:
        seen = net.sockets[party]
        links |= {frozenset((HOSTS[party], a)) for a, p in seen.connected if p in MPYC_PORTS}
        assert (HOSTS["broker"], BROKER_PORT) in seen.connected
    pairs = {frozenset((HOSTS[a], HOSTS[b])) for a in PARTIES for b in PARTIES if a < b}
    assert links == pairs, links
    for party, holder in holders.items():  # it held 127.0.0.1 throughout
        assert holder.poll() is None, f"{party}: the loopback holder exited{net.logs()}"
    for site in SITES:
        assert (HOSTS["broker"], BROKER_PORT) in net.sockets[site].connected


def test_a_socket_outside_the_namespace_address_is_seen(network: Network) -> None:
    """The socket watch can fail: a listener on every address of a namespace is seen as
    one on 0.0.0.0, which the multi-host test refuses."""
    script = "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 14001)); s.listen(); "
    script += "time.sleep(30)"
    network.start("alpha", [sys.executable, "-c", script], "listener.log")
    seen = network.sockets["alpha"]
    deadline = time.monotonic() + 20
    while (ipaddress.ip_address("0.0.0.0"), 14001) not in seen.listening:
        assert time.monotonic() < deadline, "the watch did not see the listener"
        time.sleep(0.1)
    assert _strays(network) == {"alpha": {(ipaddress.ip_address("0.0.0.0"), 14001)}}
    # and the namespaces are separate hosts: beta cannot reach alpha's loopback
    probe = subprocess.run(
        ["ip", "netns", "exec", network.ns("beta"), "bash", "-c", ": > /dev/tcp/127.0.0.1/14001"],
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    assert probe.returncode != 0
    reach = subprocess.run(
        ["ip", "netns", "exec", network.ns("beta"), "bash", "-c",
         f": > /dev/tcp/{HOSTS['alpha']}/14001"],
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    assert reach.returncode == 0, reach.stderr
    assert socket.if_nameindex() == network.host_links  # the host's network is untouched
    # nothing is routed beyond the links: each namespace knows only NET, and no IPv6 at all
    for name, address in HOSTS.items():
        routes = _ip("-n", network.ns(name), "-4", "route", "show").stdout
        assert [r.split()[:3] for r in routes.splitlines()] == [[str(NET), "dev", "eth0"]], routes
        assert _ip("-n", network.ns(name), "-6", "route", "show").stdout == ""
        assert _ip("-n", network.ns(name), "-6", "addr", "show", "dev", "eth0").stdout == ""
        assert f"inet {address}/{NET.prefixlen} " in _ip("-n", network.ns(name), "addr").stdout
