"""The daemon's socket server: framing, size limits, peer check, and errors as CNI JSON.

A real unix socket and real client processes; only the request handler is a stand-in,
since what is under test is the byte-level contract with the executable.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from vpc_cni.daemon.commands import NodeCommands
from vpc_cni.daemon.handler import RequestHandler
from vpc_cni.daemon.server import (
    KEPT_STDIN,
    MAGIC,
    CniServer,
    RawRequest,
    Reply,
)

U32 = struct.Struct(">I")


def frame(env: dict[str, str] | bytes, stdin: bytes, magic: bytes = MAGIC) -> bytes:
    raw_env = (
        env
        if isinstance(env, bytes)
        else b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    )
    return magic + U32.pack(len(raw_env)) + raw_env + U32.pack(len(stdin)) + stdin


def exchange(path: Path, payload: bytes) -> tuple[int, bytes]:
    """Blocking client: send everything, then read the framed reply (as the shim does)."""
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    code, length = struct.unpack(">II", data[:8])
    assert len(data) == 8 + length
    return code, data[8:]


class Recorder:
    """Handler that remembers what it got and answers a fixed reply."""

    def __init__(self) -> None:
        self.requests: list[RawRequest] = []

    async def __call__(self, request: RawRequest) -> Reply:
        self.requests.append(request)
        return 0, b'{"ok": true}'


@pytest.fixture
async def served(tmp_path: Path, prefix: str) -> AsyncIterator[tuple[CniServer, Recorder]]:
    recorder = Recorder()
    server = CniServer(tmp_path / f"{prefix}-run" / "cni.sock", recorder)
    await server.start()
    try:
        yield server, recorder
    finally:
        await server.close()


async def call(server: CniServer, payload: bytes) -> tuple[int, Any]:
    code, out = await asyncio.to_thread(exchange, server.path, payload)
    return code, json.loads(out)


async def test_round_trip_passes_env_and_stdin(served: tuple[CniServer, Recorder]) -> None:
    server, recorder = served
    code, body = await call(server, frame({"CNI_COMMAND": "ADD", "CNI_IFNAME": "a=b"}, b"{}"))
    assert (code, body) == (0, {"ok": True})
    (request,) = recorder.requests
    assert request.env == {"CNI_COMMAND": "ADD", "CNI_IFNAME": "a=b"}
    assert request.stdin == b"{}"
    assert request.peer_pid == os.getpid()


async def test_socket_and_directory_modes(served: tuple[CniServer, Recorder]) -> None:
    server, _ = served
    assert server.path.stat().st_mode & 0o777 == 0o600
    assert server.path.parent.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (frame({}, b"", magic=b"VPCCNI9\n"), "bad magic"),
        (MAGIC + U32.pack(2 << 20), "environment of 2097152 bytes"),
        (frame(b"NOEQUALS\0", b"{}"), "has no KEY="),
        (frame({}, b"")[:-4] + U32.pack((16 << 20) + 2), "stdin of 16777218 bytes"),
    ],
)
async def test_framing_errors_get_io_error_json(
    served: tuple[CniServer, Recorder], payload: bytes, detail: str
) -> None:
    server, recorder = served
    code, body = await call(server, payload)
    assert code == 1
    assert body["code"] == 5
    assert detail in body["details"]
    assert recorder.requests == []


async def test_oversized_stdin_is_drained_and_cut(served: tuple[CniServer, Recorder]) -> None:
    """The handler sees one byte past the limit (so the CNI parser rejects it), and the
    client still gets its reply instead of a broken pipe."""
    server, recorder = served
    stdin = b"x" * (KEPT_STDIN + 300_000)
    code, body = await call(server, frame({"CNI_COMMAND": "ADD"}, stdin))
    assert (code, body) == (0, {"ok": True})
    assert len(recorder.requests[0].stdin) == KEPT_STDIN


async def test_non_root_caller_is_refused(prefix: str) -> None:
    # Under /run (tmp_path's parents are closed to nobody) and opened up, so that only
    # the SO_PEERCRED check stands between nobody and the daemon.
    recorder = Recorder()
    server = CniServer(Path("/run") / f"{prefix}-peer" / "cni.sock", recorder)
    await server.start()
    try:
        os.chmod(server.path.parent, 0o755)
        os.chmod(server.path, 0o666)
        code, body = await asyncio.to_thread(_call_as_nobody, server.path)
    finally:
        await server.close()
        server.path.parent.rmdir()
    assert code == 1
    assert body["code"] == 102
    assert recorder.requests == []


def _call_as_nobody(path: Path) -> tuple[int, Any]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, call, report the reply (or the error) on the pipe
        try:
            os.setgid(65534)
            os.setuid(65534)
            code, out = exchange(path, frame({"CNI_COMMAND": "ADD"}, b"{}"))
            os.write(write_end, json.dumps([code, out.decode()]).encode())
        except BaseException as error:
            os.write(write_end, json.dumps([-1, repr(error)]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        raw = reader.read()
    os.waitpid(pid, 0)
    code, out = json.loads(raw)
    assert code != -1, out
    return code, json.loads(out)


async def test_stale_socket_is_replaced_but_a_file_is_not(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / f"{prefix}-d" / "cni.sock"
    first = CniServer(path, Recorder())
    await first.start()
    # Simulate a SIGKILLed daemon: the socket file stays behind.
    assert first._server is not None
    first._server.close()
    await first._server.wait_closed()
    assert path.exists()
    second = CniServer(path, Recorder())
    await second.start()
    await second.close()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        await CniServer(path, Recorder()).start()


class ExplodingCommands:
    """Verbs that fail the way a bug would: not with a CniError."""

    async def add(self, request: Any, timings: Any) -> Any:
        raise RuntimeError("boom in add")

    delete = check = gc = status = add


async def test_unexpected_exception_is_internal_error_json() -> None:
    handler = RequestHandler(cast(NodeCommands, ExplodingCommands()))
    stdin = json.dumps({"cniVersion": "0.4.0", "name": "n", "type": "vpc-cni"}).encode()
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/run/netns/x",
        "CNI_IFNAME": "eth0",
    }
    code, out = await handler(RawRequest(env, stdin, 1))
    body = json.loads(out)
    assert code == 1
    assert body == {
        "cniVersion": "0.4.0",
        "code": 999,
        "msg": "internal error",
        "details": "RuntimeError: boom in add",
    }


async def test_parse_errors_answer_in_the_configs_version() -> None:
    handler = RequestHandler(cast(NodeCommands, ExplodingCommands()))
    stdin = json.dumps({"cniVersion": "0.3.1", "name": "n", "type": "vpc-cni"}).encode()
    code, out = await handler(RawRequest({"CNI_COMMAND": "ADD"}, stdin, 1))
    body = json.loads(out)
    assert code == 1
    assert (body["cniVersion"], body["code"]) == ("0.3.1", 4)
