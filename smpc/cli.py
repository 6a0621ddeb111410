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
    from smpc.keys import init_keys

    report = init_keys(Path(args.federation), Path(args.out))
    for line in report.lines():
        print(line)
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
        sub = {"keys": "keys"}.get(args.command or "")
        parser.parse_args([sub, "--help"] if sub else ["--help"])
        return 2
    try:
        return func(args)
    except UserError as exc:
        print(f"smpc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
