"""The ``smpc`` command.

Thin by design: every subcommand parses its arguments and calls one function of
the layer that does the work, so the same operations are available from Python.
Errors that a user can fix (a malformed federation file, a missing key) are
printed as one clear line and exit with status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smpc import __version__
from smpc.errors import UserError


def _keys_init(args: argparse.Namespace) -> int:
    from smpc.pki.provision import init_keys

    report = init_keys(Path(args.federation), Path(args.out))
    for line in report.lines():
        print(line)
    return 0


def _daemon(serve, config) -> int:
    """Run ``serve(config, stop)`` until SIGTERM or SIGINT sets ``stop``."""
    import asyncio

    from smpc import log
    from smpc.aio import stop_on_signals

    log.setup(config.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await serve(config, stop)

    asyncio.run(main())
    return 0


def _party_serve(args: argparse.Namespace) -> int:
    from smpc.party.config import load_party_config
    from smpc.party.daemon import serve

    return _daemon(serve, load_party_config(Path(args.config)))


def _party_status(args: argparse.Namespace) -> int:
    from smpc.party.config import load_party_config
    from smpc.party.status import holdings, print_rows
    from smpc.party.store import PartyStore

    config = load_party_config(Path(args.config))
    with PartyStore(config.store) as store:
        print_rows(holdings(store), f"shares held in {config.store}", args.json)
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from smpc.party.config import load_party_config
    from smpc.party.status import jobs, print_rows
    from smpc.party.store import PartyStore

    config = load_party_config(Path(args.config))
    with PartyStore(config.store) as store:
        print_rows(jobs(store), f"jobs known to {config.store}", args.json)
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    import json

    from smpc.party.audit import AUDIT_FILE, verify
    from smpc.party.config import load_party_config

    config = load_party_config(Path(args.config))
    path = config.store / AUDIT_FILE
    signed: list[str] = []
    if args.result:  # the heads this party signed into a run's results
        from smpc.pki.kit import load_kit

        name = load_kit(config.kit).name
        audit = json.loads(Path(args.result).read_text()).get("audit", {})
        signed = [heads[name] for heads in audit.values() if name in heads]
    count, head = verify(path, signed)  # AuditError (a UserError) names the first bad entry
    also = f"; the {len(signed)} head(s) it signed into {args.result} are in it" if signed else ""
    print(f"{path}: {count} entries verify; chain head {head}{also}")
    return 0


def _audit_show(args: argparse.Namespace) -> int:
    from smpc.party.audit import AUDIT_FILE, rows
    from smpc.party.config import load_party_config
    from smpc.party.status import print_rows

    path = load_party_config(Path(args.config)).store / AUDIT_FILE
    print_rows(rows(path, args.last), f"audit trail {path}", args.json)
    return 0


def _upload(args: argparse.Namespace) -> int:
    import asyncio

    from smpc import log
    from smpc.config.federation import load_federation
    from smpc.io.inputs import parse_assignment
    from smpc.pki.kit import load_kit
    from smpc.site.kept import default_keep_dir
    from smpc.site.upload import upload

    log.setup("warning")
    kit = load_kit(Path(args.kit))
    federation = load_federation(Path(args.federation) if args.federation else kit.federation_file)
    if bool(args.input) == bool(args.data):
        raise UserError(
            "give either --data PATH (the job's protocol reads it) or --input NAME=PATH"
        )
    if args.data:
        from smpc.site.inputs import protocol_inputs

        inputs = protocol_inputs(Path(args.data), federation, kit.name)
    else:
        from smpc.site.inputs import configured_inputs

        sources: dict[str, str] = {}
        for assignment in args.input:
            name, source = parse_assignment(assignment)
            if name in sources:
                raise UserError(f"--input {name}: given twice ({sources[name]}, {source})")
            path = source if Path(source).exists() else source.partition(":")[0]
            if not Path(path).exists():
                raise UserError(f"--input {name}={source}: file {path} does not exist")
            sources[name] = source
        inputs = configured_inputs(sources, federation, kit.name)
    keep = Path(args.keep) if args.keep else default_keep_dir(kit.name)
    report = asyncio.run(
        upload(
            kit,
            federation,
            args.job,
            inputs,
            timeout=args.timeout,
            progress=sys.stderr.isatty(),
            keep=keep,
        )
    )
    mb = report.bytes_sent / 1e6
    n = len(kit.directory.parties)
    to = f"{n - len(report.missing)} of {n}" if report.missing else f"{n}"
    print(
        f"job {report.job}: {kit.name} uploaded {', '.join(sorted(report.stored))} "
        f"to {to} parties ({mb:.1f} MB in {report.seconds:.1f} s)"
        + (f"; no ack from {', '.join(report.missing)}" if report.missing else "")
    )
    return 0


def _site_serve(args: argparse.Namespace) -> int:
    from smpc.site.config import load_site_config
    from smpc.site.daemon import serve

    return _daemon(serve, load_site_config(Path(args.config)))


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from smpc import log
    from smpc.analyst.driver import run_spec
    from smpc.config.federation import load_federation
    from smpc.pki.kit import load_kit
    from smpc.protocols.registry import load_spec
    from smpc.wire.messages import Job

    log.setup("warning")
    kit = load_kit(Path(args.kit))
    federation = load_federation(Path(args.federation) if args.federation else kit.federation_file)
    spec = load_spec(Path(args.spec), federation)
    out = Path(args.out or spec.name)
    announced = False

    async def announce(job: Job) -> None:  # the first job's id: sites upload for it
        nonlocal announced
        if not announced:
            sites, parties = len(federation.site_names), len(federation.parties)
            print(f"job {job.id}: {spec.protocol} over {sites} sites, {parties} parties, "
                  f"t={job.t} ({job.scheme})", flush=True)  # fmt: skip
            announced = True

    run = asyncio.run(
        run_spec(kit, federation, spec, out=out, upload_window=args.wait, on_job=announce)
    )
    print(f"{spec.name}: {len(run.sites)} sites ({', '.join(run.sites)}); results in {out}/")
    return 0


def _local(args: argparse.Namespace) -> int:
    from smpc.io.inputs import parse_assignment
    from smpc.local import run_local

    sites: dict[str, str | None] = {}
    for a in args.site:
        name, path = parse_assignment(a) if "=" in a or not args.trainer else (a, None)
        if name in sites:
            raise UserError(f"--site {name}: given twice; one --site NAME=PATH per site")
        sites[name] = path
    spec, _, used = run_local(
        Path(args.spec), {k: None if v is None else Path(v) for k, v in sites.items()},
        Path(args.out), parties=args.parties, threshold=args.threshold,
        workdir=Path(args.workdir) if args.workdir else None, trainer=args.trainer,
        initial_model=Path(args.initial_model) if args.initial_model else None,
        broker=args.broker,
    )  # fmt: skip
    print(f"{spec.name}: {spec.protocol} over {len(used)} of {len(sites)} sites "
          f"({', '.join(used)}) with {args.parties} parties (t={args.threshold}); "
          f"results in {args.out}/")  # fmt: skip
    return 0


def _demo(args: argparse.Namespace) -> int:
    from smpc.demo import run_demo

    return run_demo(workdir=Path(args.workdir) if args.workdir else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smpc",
        description="Secure multi-party computation for biomedical research.",
    )
    parser.add_argument("--version", action="version", version=f"smpc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    keys = commands.add_parser("keys", help="provision keys and certificates")
    keys_commands = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")
    init = keys_commands.add_parser(
        "init",
        help="create the party CA, the federation CA and one kit per participant",
        description=(
            "Create (or complete) the key material of a federation: a party CA for "
            "MPyC links, a federation CA for broker clients, and one kit directory per "
            "computing party, site and analyst. Existing keys are never overwritten."
        ),
    )
    init.add_argument("federation", help="federation file, e.g. parties/federation.yaml")
    init.add_argument("--out", required=True, help="output directory for CAs and kits")
    init.set_defaults(func=_keys_init)

    party = commands.add_parser("party", help="computing-party daemon and its state")
    party_commands = party.add_subparsers(dest="party_command", metavar="SUBCOMMAND")
    serve = party_commands.add_parser(
        "serve",
        help="run a computing party: receive, verify and store shares; acknowledge them",
        description="Run one computing party until SIGTERM/SIGINT. Reconnects to the broker "
        "when it goes away; a restart recovers every stored share and job.",
    )
    serve.add_argument("--config", required=True, help="party config, e.g. parties/alpha.yaml")
    serve.set_defaults(func=_party_serve)
    status = party_commands.add_parser("status", help="what this party holds, per job and site")
    status.add_argument("--config", required=True, help="party config, e.g. parties/alpha.yaml")
    status.add_argument("--json", action="store_true", help="JSON for scripts")
    status.set_defaults(func=_party_status)

    jobs = commands.add_parser("jobs", help="the jobs a party knows and how far they got")
    jobs.add_argument("--config", required=True, help="party config, e.g. parties/alpha.yaml")
    jobs.add_argument("--json", action="store_true", help="JSON for scripts")
    jobs.set_defaults(func=_jobs)

    audit = commands.add_parser("audit", help="a party's hash-chained audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    verify = audit_commands.add_parser(
        "verify", help="check the chain; name the first entry that was altered, removed or moved"
    )
    verify.add_argument("--config", required=True, help="party config, e.g. parties/alpha.yaml")
    verify.add_argument(
        "--result", default=None, metavar="RESULT_JSON",
        help="also check the chain heads this party signed into a run's result.json",
    )  # fmt: skip
    verify.set_defaults(func=_audit_verify)
    show = audit_commands.add_parser("show", help="the audit trail as a table")
    show.add_argument("--config", required=True, help="party config, e.g. parties/alpha.yaml")
    show.add_argument("--last", type=int, default=None, metavar="N", help="only the last N")
    show.add_argument("--json", action="store_true", help="JSON for scripts")
    show.set_defaults(func=_audit_show)

    up = commands.add_parser(
        "upload",
        help="share a site's inputs for one job and wait until every party stored them",
        description="Read the inputs, fetch the signed job from the broker, secret-share each "
        "input, encrypt one share to each party, sign, publish, and wait for every party's "
        "signed ack. Exits non-zero naming the parties that did not answer or refused.",
    )
    up.add_argument("--kit", required=True, help="the site's kit directory")
    up.add_argument("--job", required=True, help="job id")
    up.add_argument(
        "--data", metavar="PATH",
        help="the site's data file; the job's protocol computes what to share from it",
    )  # fmt: skip
    up.add_argument(
        "--input", action="append", default=[], metavar="NAME=PATH",
        help="a spec input (e.g. age=site.csv:age) or one of the job's own inputs: "
        "PATH.npy, PATH.npz[:KEY] or PATH.csv[:COLUMN]; repeat per input",
    )  # fmt: skip
    up.add_argument("--federation", help="federation file (default: the kit's copy)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all acks")
    up.add_argument(
        "--keep", metavar="DIR",
        help="where sealed envelopes wait for every party's ack, so a re-run re-sends the "
        "same upload (default: $XDG_STATE_HOME/smpc/<site>/uploads)",
    )  # fmt: skip
    up.set_defaults(func=_upload)

    site = commands.add_parser("site", help="site daemon")
    site_commands = site.add_subparsers(dest="site_command", metavar="SUBCOMMAND")
    site_serve = site_commands.add_parser(
        "serve", help="stay connected and upload the configured inputs for every job"
    )
    site_serve.add_argument("--config", required=True, help="site config, e.g. parties/oslo.yaml")
    site_serve.set_defaults(func=_site_serve)

    run = commands.add_parser(
        "run",
        help="run a protocol spec on the federation (analyst)",
        description="Sign and publish the job, wait for the sites' uploads, close the job with "
        "the sites every party holds, collect the parties' result shares (encrypted to you), "
        "check that they agree and write the results.",
    )
    run.add_argument("spec", help="protocol spec file, e.g. protocols/cohort.yaml")
    run.add_argument("--kit", required=True, help="the analyst's kit directory")
    run.add_argument("--out", help="output directory (default: the spec's name)")
    run.add_argument("--federation", help="federation file (default: the kit's copy)")
    run.add_argument("--wait", type=float, default=300.0, help="seconds to wait for uploads")
    run.set_defaults(func=_run)

    local = commands.add_parser(
        "local",
        help="the whole federation on this machine: keys, broker, parties, sites, analyst",
    )
    local.add_argument("--parties", type=int, default=3, help="number of computing parties")
    local.add_argument("--threshold", type=int, default=1, help="collusion threshold t")
    local.add_argument("--spec", required=True, help="protocol spec file")
    local.add_argument(
        "--site", action="append", required=True, metavar="NAME=PATH",
        help="a site and its data file (.csv, .npy or .npz); repeat per site; with "
        "--trainer, NAME alone (or NAME=PATH, given to the trainer as data=PATH)",
    )  # fmt: skip
    local.add_argument(
        "--trainer", metavar="MODULE:FUNCTION",
        help="fedavg training: every site runs `smpc site serve` with this trainer "
        "(module:function or file.py:function) for every round of the spec",
    )  # fmt: skip
    local.add_argument(
        "--initial-model", metavar="PATH", help="round 0's global model (.npz, .safetensors, .pt)"
    )
    local.add_argument("--out", required=True, help="output directory")
    local.add_argument("--workdir", help="keep keys, stores and logs here")
    local.add_argument(
        "--broker", default="auto", metavar="{auto,mosquitto,embedded}",
        help="MQTT broker: Mosquitto when installed (auto, the default), or the embedded one",
    )  # fmt: skip
    local.set_defaults(func=_local)

    demo = commands.add_parser(
        "demo",
        help="run a whole federation on this machine on bundled data",
        description=(
            "Provision keys, secret-share bundled example data from three sites and "
            "compute on it with three computing parties in separate MPyC processes "
            "over TLS; print each secure result next to the plaintext one."
        ),
    )
    demo.add_argument("--workdir", help="keep keys and shares here (default: a temporary dir)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # `smpc` or `smpc keys` without a subcommand: show the relevant help.
        sub = args.command if args.command in ("keys", "party", "site") else None
        parser.parse_args([sub, "--help"] if sub else ["--help"])
        return 2
    try:
        return func(args)
    except UserError as exc:
        print(f"smpc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
