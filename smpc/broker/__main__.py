"""``python -m smpc.broker``: run the embedded broker, or write Mosquitto files.

The embedded broker's plugins are loaded by amqtt from :mod:`smpc.broker.embedded` by
dotted path; this module only dispatches, so that module is imported once, normally.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from smpc.broker.embedded import serve_amqtt
from smpc.broker.mosquitto import write_mosquitto_files
from smpc.errors import UserError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m smpc.broker``: run the embedded broker, or write Mosquitto files."""
    parser = argparse.ArgumentParser(prog="python -m smpc.broker", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("amqtt", help="run the embedded amqtt broker (EmbeddedBroker)")
    run.add_argument("config", type=Path, help="the amqtt.json EmbeddedBroker writes")
    files = commands.add_parser(
        "mosquitto-files", help="write mosquitto.conf and acl for a federation file"
    )
    files.add_argument("federation", type=Path)
    files.add_argument("--out", type=Path, default=Path("deploy/mosquitto"))
    files.add_argument("--kit", type=Path, default=Path("keys/kits/broker"))
    files.add_argument("--data-dir", type=Path, default=Path("broker-data"))
    args = parser.parse_args(argv)
    if args.command == "mosquitto-files":
        try:
            paths = write_mosquitto_files(
                args.federation, args.out, kit_dir=args.kit, data_dir=args.data_dir
            )
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print("\n".join(str(p) for p in paths))
        return 0
    config = json.loads(args.config.read_text())
    logging.basicConfig(
        level=getattr(logging, str(config.get("log_level", "INFO")).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,  # line-buffered, also when redirected to the log file
    )
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    asyncio.run(serve_amqtt(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
