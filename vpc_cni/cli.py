"""`vpcctl`: the one command people run; each area adds its own subcommand.

Only the chosen subcommand's module is imported: the node daemon must not carry the
controller's cloud and Kubernetes clients in its memory, nor wait for them to load.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> "module:function" that adds its parser to the subparsers.
SUBCOMMANDS = {
    "daemon": "vpc_cni.daemon.cli:add_daemon_parser",
    "controller": "vpc_cni.controller.cli:add_controller_parser",
    "lab": "vpc_cni.lab.cli:add_lab_parser",
    "node": "vpc_cni.inspect_cli:add_node_parser",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with `only` that one."""
    parser = argparse.ArgumentParser(
        prog="vpcctl", description="vpc-cni: pods addressed straight from the VPC."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, target in SUBCOMMANDS.items():
        if only is None or name == only:
            module, function = target.split(":")
            getattr(importlib.import_module(module), function)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    chosen = args[0] if args and args[0] in SUBCOMMANDS else None
    parsed = build_parser(chosen).parse_args(args)
    return int(parsed.func(parsed))


if __name__ == "__main__":
    sys.exit(main())
