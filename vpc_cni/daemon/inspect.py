"""The daemon's read-only inspection endpoint, for `vpcctl node` on the same machine.

A second unix socket beside the CNI socket, root-only like it (0600 in a 0700
directory, and the peer's uid checked), with the smallest protocol that serves a CLI:
the client sends one line naming a view, the daemon answers one JSON line,
`{"view": NAME, "data": ...}` or `{"error": MESSAGE}`, and closes. It never changes
anything, so it can stay open while the daemon serves pods.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from vpc_cni.daemon.inspect_state import NodeInspector
from vpc_cni.daemon.server import PrivateUnixServer, peer_credentials
from vpc_cni.datapath import DatapathError

log = logging.getLogger(__name__)

SOCKET_NAME = "inspect.sock"
READ_TIMEOUT_SECONDS = 5.0


def default_inspect_socket(cni_socket: Path) -> Path:
    """Beside the CNI socket: each daemon on a machine (the lab runs several) gets its own."""
    return cni_socket.parent / SOCKET_NAME


class InspectServer(PrivateUnixServer):
    """Answers one view per connection from the inspector."""

    def __init__(self, path: Path, inspector: NodeInspector) -> None:
        super().__init__(path)
        self.inspector = inspector

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._answer(reader, writer)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except ConnectionError as error:
            log.warning("inspection client went away: %s", error)
        finally:
            await self._close(writer)

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any]:
        pid, uid, _ = peer_credentials(writer.get_extra_info("socket"))
        if uid != 0:
            log.warning("refused inspection from pid %d uid %d: only root may inspect", pid, uid)
            return {"error": f"permission denied: caller uid {uid} is not 0"}
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_SECONDS)
        except TimeoutError:
            return {"error": f"no request line within {READ_TIMEOUT_SECONDS:.0f} s"}
        except ValueError:  # a line beyond the stream's limit
            return {"error": "request line too long"}
        name = line.decode("utf-8", "replace").strip()
        build = self.inspector.views.get(name)
        if build is None:
            known = ", ".join(self.inspector.views)
            return {"error": f"unknown view {name[:40]!r}; known: {known}"}
        try:
            return {"view": name, "data": await build()}
        except DatapathError as error:
            return {"error": f"reading the kernel failed: {error}"}
        except Exception as error:  # the CLI gets one line; the traceback goes to the log
            log.exception("inspection view %s failed", name)
            return {"error": f"internal error: {type(error).__name__}: {error}"}
