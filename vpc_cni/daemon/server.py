"""The daemon end of the CNI executable's unix socket (docs/contracts.md section 1).

This module only moves bytes: it checks who is calling, reads one framed request,
hands it to the request handler and writes the framed reply. Whatever goes wrong,
the caller gets CNI error JSON, because the executable prints our reply verbatim and a
runtime that reads a traceback (or nothing) cannot tell the operator anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from vpc_cni.cni.errors import CniError, ErrorCode
from vpc_cni.cni.request import DEFAULT_ERROR_VERSION

log = logging.getLogger(__name__)

MAGIC = b"VPCCNI1\n"
# The executable forwards at most this much stdin (16 MiB + 1, so "cut" is visible).
MAX_FORWARDED_STDIN = (16 << 20) + 1
# CNI configs are small; parse_request rejects anything over 1 MiB, so keeping one byte
# more than that is enough for it to see the overflow without us holding 16 MiB.
KEPT_STDIN = (1 << 20) + 1
# The CNI_* environment is a handful of short variables; 1 MiB is already absurd.
MAX_ENV = 1 << 20
READ_TIMEOUT_SECONDS = 30.0
DRAIN_SECONDS = 5.0
_U32 = struct.Struct(">I")
_PEERCRED = struct.Struct("3i")

# Plugin-specific code (100+): the caller is not root, so it may not use the daemon.
CODE_PERMISSION_DENIED = 102


@dataclass(frozen=True)
class RawRequest:
    """One request as the executable sent it, before any CNI parsing."""

    env: dict[str, str]
    stdin: bytes
    peer_pid: int


Reply = tuple[int, bytes]
Handler = Callable[[RawRequest], Awaitable[Reply]]


class FramingError(Exception):
    """The bytes on the socket do not follow the executable's framing."""


def encode_reply(exit_code: int, out: bytes) -> bytes:
    return _U32.pack(exit_code) + _U32.pack(len(out)) + out


def decode_env(data: bytes) -> dict[str, str]:
    """Splits `KEY=VALUE\\0` records; a record without `=` is a framing error."""
    env: dict[str, str] = {}
    for record in data.split(b"\0"):
        if not record:
            continue
        key, sep, value = record.partition(b"=")
        if not sep or not key:
            raise FramingError(f"environment record {record[:40]!r} has no KEY=")
        # surrogateescape: bad UTF-8 reaches the CNI parser, which names the variable.
        env[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return env


async def _read_u32(reader: asyncio.StreamReader) -> int:
    return int(_U32.unpack(await reader.readexactly(_U32.size))[0])


async def _read_capped(reader: asyncio.StreamReader, length: int, keep: int) -> bytes:
    """Reads `length` bytes but keeps only the first `keep`, draining the rest.

    Draining matters: the executable writes everything before it reads the reply, so
    closing on it early would turn a clear "too large" error into a broken pipe.
    """
    kept = bytearray()
    remaining = length
    while remaining:
        chunk = await reader.read(min(remaining, 1 << 16))
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(kept), length)
        remaining -= len(chunk)
        if len(kept) < keep:
            kept += chunk[: keep - len(kept)]
    return bytes(kept)


async def read_request(reader: asyncio.StreamReader, peer_pid: int) -> RawRequest:
    magic = await reader.readexactly(len(MAGIC))
    if magic != MAGIC:
        raise FramingError(f"bad magic {magic!r}; expected {MAGIC!r}")
    env_len = await _read_u32(reader)
    if env_len > MAX_ENV:
        raise FramingError(f"environment of {env_len} bytes exceeds {MAX_ENV}")
    env = decode_env(await reader.readexactly(env_len))
    stdin_len = await _read_u32(reader)
    if stdin_len > MAX_FORWARDED_STDIN:
        raise FramingError(f"stdin of {stdin_len} bytes exceeds {MAX_FORWARDED_STDIN}")
    stdin = await _read_capped(reader, stdin_len, KEPT_STDIN)
    return RawRequest(env, stdin, peer_pid)


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 16):
        pass


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connected process, from the kernel, not from the peer."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def _error_reply(error: CniError) -> Reply:
    """Framing errors come before any config is read: the default version it is."""
    return 1, error.to_json(DEFAULT_ERROR_VERSION)


def prepare_socket_path(path: Path) -> None:
    """A 0700 directory holding nothing but, possibly, our previous socket.

    A stale socket from a killed daemon is removed; anything else at that path is left
    alone and reported, since deleting an operator's file would be worse than not starting.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; refusing to replace it")
    path.unlink()


async def start_private_unix_server(
    path: Path, serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
) -> asyncio.Server:
    """A unix socket only root can reach: 0600 in a 0700 directory (prepare_socket_path)."""
    prepare_socket_path(path)
    # umask first: the socket must never exist, even for an instant, with wider mode.
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(serve, path=str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server


class PrivateUnixServer:
    """A root-only unix socket whose connections `_serve` answers; the CNI socket and
    the inspection socket differ only in that."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await start_private_unix_server(self.path, self._serve)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        """Closes a connection whose peer may already have gone."""
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


class CniServer(PrivateUnixServer):
    """Accepts connections on the unix socket and answers each with one reply."""

    def __init__(self, path: Path, handler: Handler) -> None:
        super().__init__(path)
        self._handler = handler

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._answer(reader, writer.get_extra_info("socket"))
            writer.write(encode_reply(*reply))
            await writer.drain()
            # After a framing error bytes may remain unread; closing on them would reset
            # the connection and destroy the reply in flight. The caller closes once it
            # has read the reply, so wait (briefly) for that.
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(_discard(reader), DRAIN_SECONDS)
        except asyncio.IncompleteReadError as error:
            if error.partial or error.expected != len(MAGIC):
                log.warning("CNI client went away mid-request: %s", error)
            # else: connected and closed without a byte, as health probes do
        except ConnectionError as error:
            log.warning("CNI client went away before its reply: %s", error)
        finally:
            await self._close(writer)

    async def _answer(self, reader: asyncio.StreamReader, sock: socket.socket) -> Reply:
        """Reads the whole request before judging it: replying early and closing on unread
        bytes would reset the connection, and the caller would see no reason at all."""
        pid, uid, _ = peer_credentials(sock)
        try:
            request = await asyncio.wait_for(read_request(reader, pid), READ_TIMEOUT_SECONDS)
        except FramingError as error:
            log.warning("malformed request from pid %d: %s", pid, error)
            msg = "malformed request from the CNI executable"
            return _error_reply(CniError(ErrorCode.IO_FAILURE, msg, str(error)))
        except TimeoutError:
            log.warning("pid %d sent no complete request in %.0f s", pid, READ_TIMEOUT_SECONDS)
            return _error_reply(
                CniError(ErrorCode.IO_FAILURE, "request from the CNI executable timed out")
            )
        if uid != 0:
            log.warning("refused CNI request from pid %d uid %d: only root may call", pid, uid)
            return _error_reply(
                CniError(CODE_PERMISSION_DENIED, "permission denied", f"caller uid {uid} is not 0")
            )
        return await self._handler(request)
