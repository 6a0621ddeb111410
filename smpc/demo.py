"""``smpc demo``: the whole pipeline on this machine, on bundled cohort data.

Three hospitals (``smpc/data/demo/*.csv``: age, BMI, systolic blood pressure)
and three computing parties on 127.0.0.1.

Part A runs ``smpc local`` twice — a broker (Mosquitto when installed, else the
embedded one), three party daemons,
one uploader per site and the analyst, as real processes: a secure sum (count
and mean of every column) and one FedAvg round over each site's own
least-squares fit.

Part B shows the MPyC layer on its own:

1. ``smpc keys init`` provisions both CAs and every kit in the work directory.
2. Each site computes its local sufficient statistics (per column: Σx, Σx², and
   the record count), encodes them in the field of MPyC's ``SecFxp``, splits them
   into Shamir shares (t = 1, compact), and seals one envelope per party.
3. Each party verifies and decrypts the envelopes addressed to it and stores the
   share bodies.
4. The parties run one MPyC session each, as separate processes over TLS with the
   party certificates, and open the pooled sums.
5. The pooled mean and standard deviation are printed next to the plaintext ones.

Envelopes are handed over as files here; the transport issue puts the broker
in between.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import cast

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from smpc.core.encoding import FixedPoint
from smpc.mpc.launch import run_local_sessions
from smpc.mpc.task import SecType, SessionTask, ShareRef, TaskInput
from smpc.pki.kit import load_kit
from smpc.pki.provision import init_keys
from smpc.wire.packaging import open_share, seal_shares

SITES = ("oslo", "bergen", "tromso")
PARTIES = ("alpha", "beta", "gamma")
COLUMNS = ("age", "bmi", "systolic_bp")
JOB = "demo-cohort"
# |x| < 2^36 leaves room for Σx² of millions of records; sums stay below 2^(60−1−20).
SECTYPE = SecType(kind="fxp", bit_length=60, frac_bits=20)
ENCODING = FixedPoint(frac_bits=20, int_bits=36)


def _ports(party: int) -> tuple[int, int]:
    """The MPyC port range of a demo party."""
    return 14000 + 100 * party, 14049 + 100 * party


def _federation(workdir: Path) -> Path:
    federation = {
        "name": "demo",
        "threshold": 1,
        "broker": {"host": "127.0.0.1", "port": 8883},
        "parties": [
            {"name": name, "host": "127.0.0.1", "mpyc_ports": "{}-{}".format(*_ports(i))}
            for i, name in enumerate(PARTIES)
        ],
        "sites": [{"name": s} for s in SITES],
        "analysts": [{"name": "analyst"}],
    }
    path = workdir / "federation.yaml"
    path.write_text(yaml.safe_dump(federation, sort_keys=False))
    return path


def load_site_table(site: str) -> np.ndarray:
    """The bundled records of one site: one row per patient, one column per variable."""
    text = resources.files("smpc.data.demo").joinpath(f"{site}.csv").read_text()
    return np.loadtxt(text.splitlines(), delimiter=",", skiprows=1, ndmin=2)


def local_statistics(records: np.ndarray) -> np.ndarray:
    """A site's sufficient statistics: Σx and Σx² per column, then the count."""
    return np.concatenate([records.sum(axis=0), (records**2).sum(axis=0), [len(records)]])


def _free_port(low: int, high: int) -> int:
    import socket

    for port in range(low, high + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def run_demo(workdir: Path | None = None, console: Console | None = None) -> int:
    """Both parts of the demo; 0 when every secure result matches the plaintext one."""
    console = console or Console()
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="smpc-demo-") as tmp:
            return run_demo(Path(tmp), console)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ok = _federation_part(workdir / "local", console)
    ok = _gwas_part(workdir / "gwas", console) and ok
    ok = _mpyc_part(workdir, console) and ok
    verdict = "[green]all secure results match[/green]" if ok else "[red]MISMATCH[/red]"
    console.print(f"{verdict}; demo done in {time.perf_counter() - started:.1f} s")
    return 0 if ok else 1


def _federation_part(workdir: Path, console: Console) -> bool:
    """`smpc local` twice: a secure sum and a FedAvg round, against plaintext."""
    from smpc.local import run_local

    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]A. smpc local[/bold]: broker, 3 party daemons, 3 uploaders, the analyst")
    csvs = {}
    for site in SITES:
        csvs[site] = workdir / f"{site}.csv"
        csvs[site].write_text(resources.files("smpc.data.demo").joinpath(f"{site}.csv").read_text())
    spec = workdir / "cohort.yaml"
    spec.write_text(f"name: cohort\nprotocol: sum\ninputs: [{', '.join(COLUMNS)}]\n")
    console.print("secure sum, count and mean of each column (spec protocols/cohort.yaml)")
    run_local(spec, csvs, workdir / "cohort", workdir=workdir / "run-sum")
    result = json.loads((workdir / "cohort" / "result.json").read_text())
    pooled = np.concatenate([load_site_table(site) for site in SITES])
    rows = []
    for j, col in enumerate(COLUMNS):
        rows.append((f"count {col}", result[col]["count"], len(pooled)))
        rows.append((f"mean {col}", result[col]["mean"], pooled[:, j].mean()))
    ok = _table(console, "pooled cohort (secure sum)", rows)

    console.print("FedAvg of each site's own least-squares fit: systolic_bp ~ 1 + age + bmi")
    models = {}
    for site in SITES:
        records = load_site_table(site)
        x = np.column_stack([np.ones(len(records)), records[:, :2]])
        coef = np.linalg.lstsq(x, records[:, 2], rcond=None)[0]
        models[site] = (len(records), coef)
        np.savez(workdir / f"{site}.npz", coef=coef, num_examples=len(records))
    spec = workdir / "round.yaml"
    spec.write_text("name: round\nprotocol: fedavg\n")
    run_local(
        spec,
        {s: workdir / f"{s}.npz" for s in SITES},
        workdir / "round",
        workdir=workdir / "run-fedavg",
    )
    with np.load(workdir / "round" / "model.npz") as model:
        secure = model["coef"]
    total = sum(n for n, _ in models.values())
    plain = sum(n * coef for n, coef in models.values()) / total
    rows = [
        (f"coef {name}", s, p)
        for name, s, p in zip(("intercept", "age", "bmi"), secure, plain, strict=True)
    ]
    return _table(console, "federated model (secure FedAvg)", rows) and ok


def _gwas_part(workdir: Path, console: Console) -> bool:
    """A case/control GWAS of the bundled cohort, against the plaintext pooled data."""
    import shutil
    import subprocess

    from smpc.local import run_local
    from smpc.protocols.gwas.align import pooled_bim_swap, site_counts
    from smpc.protocols.gwas.genotypes import open_site
    from smpc.protocols.gwas.plink.counts import assoc_table
    from smpc.protocols.gwas.plink.qc import minor_allele_swap, swap_alleles

    workdir.mkdir(parents=True, exist_ok=True)
    data = Path(str(resources.files("smpc.data.gwas")))
    console.print(
        "GWAS of the bundled cohort (3 sites, 600 samples, 1,000 SNPs; each site's own "
        "allele coding and variant order): allelic association computed inside MPyC, "
        "as plink1.9 --assoc"
    )
    spec = workdir / "cc.yaml"
    spec.write_text("name: cc\nprotocol: gwas\ntests: [assoc]\n")  # reveal: statistics
    sites = {site: data / site for site in SITES}
    run_local(spec, sites, workdir / "out", workdir=workdir / "run")
    secure = _assoc_rows((workdir / "out" / "cc.assoc").read_text())
    with open_site(data / "POOLED") as pooled:  # the plaintext: every sample in one place
        genotypes = pooled.read_chunk(np.arange(pooled.n_variants))
        status = pooled.samples.phenotype
        pheno_class = np.select([status == 1, status == 2], [0, 1], 2)
        counts = site_counts(
            genotypes, np.zeros(pooled.n_variants, bool), pheno_class, pooled.samples.founder
        )
        counts = swap_alleles(counts, pooled_bim_swap(counts))
        table = assoc_table(swap_alleles(counts, minor_allele_swap(counts)))
        plain = dict(zip(pooled.variants.snp, table["CHISQ"], strict=True))
    top = sorted(secure, key=lambda snp: -secure[snp])[:5]
    title = "top allelic chi-square (secure as PLINK prints it, 4 digits; pooled plaintext)"
    rows = [(f"CHISQ {snp}", secure[snp], plain[snp]) for snp in top]
    ok = _table(console, title, rows, tolerance=5e-4)
    if shutil.which("plink1.9"):
        subprocess.run(
            ["plink1.9", "--bfile", str(data / "POOLED"), "--allow-no-sex", "--assoc",
             "--out", str(workdir / "plink")],
            check=True, capture_output=True,
        )  # fmt: skip
        same = (workdir / "plink.assoc").read_bytes() == (workdir / "out" / "cc.assoc").read_bytes()
        console.print(f"cc.assoc identical to plink1.9 on the pooled fileset: {same}")
        ok = ok and same
    return ok


def _assoc_rows(text: str) -> dict[str, float]:
    """SNP -> CHISQ of a .assoc file (NA left out)."""
    rows = [line.split() for line in text.splitlines()[1:]]
    return {r[1]: float(r[7]) for r in rows if r[7] != "NA"}


def _table(
    console: Console,
    title: str,
    rows: Sequence[tuple[str, float, float]],
    tolerance: float = 1e-6,
) -> bool:
    table = Table(title=title)
    for header in ("statistic", "secure", "plaintext", "|difference|"):
        table.add_column(header, justify="right" if header != "statistic" else "left")
    worst = 0.0
    for name, secure, plain in rows:
        worst = max(worst, abs(secure - plain) / max(1.0, abs(plain)))
        table.add_row(name, f"{secure:.6f}", f"{plain:.6f}", f"{abs(secure - plain):.1e}")
    console.print(table)
    return worst < tolerance


def _mpyc_part(workdir: Path, console: Console) -> bool:
    """The same pooled statistics opened inside MPyC, three processes over TLS."""
    console.rule("[bold]B. MPyC[/bold]: shares → envelopes → 3 MPyC processes over TLS")
    started = time.perf_counter()

    console.print("[bold]1. keys[/bold]: party CA, federation CA and 7 kits")
    init_keys(_federation(workdir), workdir / "keys")
    kits = {name: load_kit(workdir / "keys" / "kits" / name) for name in (*PARTIES, *SITES)}
    directory = kits[PARTIES[0]].directory
    recipients = [directory.party_encryption_key(i) for i in range(len(PARTIES))]

    console.print("[bold]2. sites[/bold]: statistics → fixed point → Shamir shares → envelopes")
    field = SECTYPE.field
    plain = {}
    inbox = workdir / "inbox"
    for site in SITES:
        stats = local_statistics(load_site_table(site))
        plain[site] = stats
        envelopes = seal_shares(
            stats,
            ENCODING,
            field,
            job=JOB,
            input="cohort",
            site=site,
            t=1,
            recipients=recipients,
            signer=kits[site].signing_key,
        )
        for party, envelope in zip(PARTIES, envelopes, strict=True):
            (inbox / party).mkdir(parents=True, exist_ok=True)
            assert envelope is not None  # without sinks the envelopes are returned
            (inbox / party / f"{site}.cohort.env").write_bytes(envelope)
        sizes = ", ".join(f"{len(e or b'')} B" for e in envelopes)
        console.print(f"   {site}: {int(stats[-1])} records, envelopes {sizes}")

    console.print("[bold]3. parties[/bold]: verify signatures, decrypt, store shares")
    site_keys = {site: directory.verify_key(site) for site in SITES}
    tasks = []
    for index, party in enumerate(PARTIES):
        store = workdir / "store" / party
        store.mkdir(parents=True, exist_ok=True)
        refs = []
        for site in SITES:
            data = (inbox / party / f"{site}.cohort.env").read_bytes()
            key = kits[party].encryption_key
            assert key is not None  # every party kit has one
            share = open_share(data, key, site_keys, party=index)
            path = store / f"{site}.cohort.share"
            path.write_bytes(share.body)
            refs.append(ShareRef(site=site, path=path.resolve(), seed=share.header.seed))
        shape = (len(plain[SITES[0]]),)
        tasks.append(
            SessionTask(
                job=JOB,
                party=index,
                sectype=SECTYPE,
                inputs=[TaskInput(name="cohort", shape=shape, shares=refs)],
            )
        )

    console.print("[bold]4. MPyC[/bold]: 3 party processes over TLS open the pooled sums")
    addresses = [("127.0.0.1", _free_port(*_ports(i))) for i in range(len(PARTIES))]
    results = run_local_sessions(
        tasks, [kits[p].path for p in PARTIES], addresses, 1, workdir, timeout=60
    )
    opened = [np.array(r["outputs"]["cohort"]["values"], dtype=float) for r in results]
    if any(not np.array_equal(opened[0], o) for o in opened[1:]):
        console.print("[red]parties disagree on the opened result[/red]")
        return False
    secure = opened[0] / 2.0**ENCODING.frac_bits
    pooled = cast(np.ndarray, sum(plain.values()))
    return _report(console, secure, pooled, time.perf_counter() - started)


def _summaries(stats: np.ndarray) -> dict[str, float]:
    k = len(COLUMNS)
    n = stats[-1]
    out = {"records": n}
    for j, col in enumerate(COLUMNS):
        mean = stats[j] / n
        out[f"mean {col}"] = mean
        out[f"sd {col}"] = np.sqrt((stats[k + j] - n * mean**2) / (n - 1))
    return out


def _report(console: Console, secure: np.ndarray, pooled: np.ndarray, seconds: float) -> bool:
    rows = [
        (name, s, p)
        for (name, s), p in zip(
            _summaries(secure).items(), _summaries(pooled).values(), strict=True
        )
    ]
    ok = _table(console, "pooled cohort: opened in MPyC", rows)
    console.print(f"MPyC part done in {seconds:.1f} s")
    return ok
