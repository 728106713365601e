"""`vpcctl node VIEW`: what the node daemon holds, asked over its inspection socket.

Runs on the node (as root, like the daemon). It imports nothing of the daemon's
runtime: it connects to the socket, names a view, and prints the JSON answer as
tables or, with --json, as it is.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from vpc_cni.daemon.inspect_view import RENDERERS, show

DEFAULT_SOCKET = Path("/run/vpc-cni/inspect.sock")
TIMEOUT_SECONDS = 30.0
# Exit status of `status` when the daemon answers but is not ready, as probes expect.
NOT_READY = 3
# Scripts and pipes get no terminal width; cutting addresses to 80 columns would hide
# exactly what they grep for.
PIPE_WIDTH = 200

DESCRIPTION = """\
Show what the vpc-cni daemon on this node holds, read from its inspection socket
(root only; the daemon config's inspectSocket, by default inspect.sock beside the
CNI socket). Views:
  status  readiness (socket, NodeNetwork watch, ENIs) and counts; exit 3 if not ready
  pool    addresses per ENI and subnet: free, used, withheld (asked back by the
          controller), cooling (released, resting before reuse)
  pods    allocations: address, pod, container, ifname, state, age, ENI, subnet
  enis    the pool's ENIs as the kernel has them: NIC, addresses, and per subnet
          the routes of its table and the policy rules pointing at it
  errors  the last CNI errors (time, verb, pod, container, code, message)
Exit status 1 with one line on stderr when the daemon does not answer.
"""


class InspectError(Exception):
    """The daemon did not answer the view; the message says why in one line."""


def fetch(path: Path, view: str) -> Any:
    """One request, one JSON line back (docs/daemon.md, Inspection)."""
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(TIMEOUT_SECONDS)
            conn.connect(str(path))
            conn.sendall(view.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(1 << 16):
                chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError):
        raise InspectError(f"the vpc-cni daemon is not running (nothing serves {path})") from None
    except PermissionError:
        raise InspectError(f"{path}: permission denied (run as root)") from None
    except TimeoutError:
        wait = f"{TIMEOUT_SECONDS:.0f} s"
        raise InspectError(f"no answer from the daemon at {path} within {wait}") from None
    except OSError as error:
        raise InspectError(f"{path}: {error.strerror or error}") from None
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise InspectError(f"the daemon at {path} sent a malformed answer") from None
    if "error" in reply:
        raise InspectError(f"the daemon refused: {reply['error']}")
    return reply["data"]


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 or more)")
    return value


def add_node_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "node",
        help="inspect the node daemon: pool, pods, ENIs, recent errors",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("view", choices=list(RENDERERS), help="what to show")
    parser.add_argument("--json", action="store_true", help="print the view as JSON")
    parser.add_argument(
        "--socket",
        type=Path,
        default=DEFAULT_SOCKET,
        metavar="PATH",
        help=f"the daemon's inspection socket (default {DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--last", type=_count, metavar="N", help="errors: only the newest N (default all kept)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        data = fetch(args.socket, args.view)
    except InspectError as error:
        print(f"vpcctl node {args.view}: {error}", file=sys.stderr)
        return 1
    if args.view == "errors" and args.last is not None:
        data = data[max(0, len(data) - args.last) :]
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        show(args.view, data, Console(width=None if sys.stdout.isatty() else PIPE_WIDTH))
    if args.view == "status" and not data["ready"]:
        return NOT_READY
    return 0
