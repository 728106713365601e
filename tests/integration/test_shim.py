"""The real vpc-cni executable against a scripted daemon speaking the socket protocol.

The daemon here is a stand-in on purpose: these tests pin down the forwarder
(docs/contracts.md section 1) byte for byte, which the real daemon cannot be
made to misbehave for (closing mid-reply, never answering, huge replies).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.shim import build_shim

MAGIC = b"VPCCNI1\n"
VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
DEFAULT_SOCKET = "/run/vpc-cni/cni.sock"
STDIN_CAP = 16 * 1024 * 1024 + 1
RUN_TIMEOUT = 120
# musl and glibc word a few errno texts differently; the build may use either.
MUSL_TEXT = {errno.ENAMETOOLONG: "Filename too long", errno.ETIMEDOUT: "Operation timed out"}


def errno_text(*errs: int) -> set[str]:
    """The details texts the executable may print for these errnos."""
    return {os.strerror(e) for e in errs} | {MUSL_TEXT[e] for e in errs if e in MUSL_TEXT}


@dataclass
class Request:
    env_raw: bytes
    stdin: bytes

    @property
    def env(self) -> dict[str, str]:
        entries = self.env_raw.split(b"\0")
        assert entries[-1] == b"", "every env entry ends with NUL"
        return dict(e.decode().split("=", 1) for e in entries[:-1])


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(min(n - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def read_request(conn: socket.socket) -> Request:
    assert recv_exact(conn, 8) == MAGIC
    (env_len,) = struct.unpack(">I", recv_exact(conn, 4))
    env_raw = recv_exact(conn, env_len)
    (stdin_len,) = struct.unpack(">I", recv_exact(conn, 4))
    return Request(env_raw, recv_exact(conn, stdin_len))


def reply(conn: socket.socket, code: int, out: bytes) -> None:
    conn.sendall(struct.pack(">II", code, len(out)) + out)


Handler = Callable[[socket.socket], None]


class ScriptedDaemon:
    """Listens on a unix socket; each connection runs the current handler in a thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[Request] = []
        self.connections = 0
        self.handler: Handler = self.answer(0, b"{}")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def answer(self, code: int, out: bytes) -> Handler:
        """A well-behaved daemon: read the whole request, send one reply."""

        def handle(conn: socket.socket) -> None:
            self.requests.append(read_request(conn))
            reply(conn, code, out)

        return handle

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.handler(conn)
            except OSError:
                pass  # the executable gave up first: that is what some tests provoke

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=30)


@pytest.fixture
def sockdir(prefix: str) -> Iterator[Path]:
    """A short per-test directory: unix socket paths must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(sockdir: Path) -> Iterator[ScriptedDaemon]:
    d = ScriptedDaemon(str(sockdir / "cni.sock"))
    try:
        yield d
    finally:
        d.close()


def conf(socket_path: str, **extra: object) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "daemonSocket": socket_path, **extra}).encode()


def run(
    shim: Path, stdin: bytes, command: str = "ADD", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    full_env = {"CNI_COMMAND": command, **(env or {})}
    return subprocess.run(
        [str(shim)], input=stdin, env=full_env, capture_output=True, timeout=RUN_TIMEOUT
    )


def error_json(proc: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    assert proc.returncode == 1, proc
    return json.loads(proc.stdout)


# ---- the binary itself ----


def test_binary_is_static(shim_path: Path) -> None:
    out = subprocess.run(["ldd", str(shim_path)], capture_output=True, text=True)
    assert "not a dynamic executable" in out.stdout + out.stderr


# ---- VERSION ----


@pytest.mark.parametrize("version", VERSIONS)
def test_version_echoes_a_supported_request(
    shim_path: Path, daemon: ScriptedDaemon, version: str
) -> None:
    proc = run(shim_path, json.dumps({"cniVersion": version}).encode(), "VERSION")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"cniVersion": version, "supportedVersions": VERSIONS}
    assert daemon.connections == 0


@pytest.mark.parametrize(
    "stdin",
    [
        b"",
        b"not json",
        b'{"cniVersion": "0.2.0"}',
        b'{"cniVersion": "1.0.00"}',
        b'{"cniVersion": 1}',
        b'{"name": "n", "prevResult": {"cniVersion": "0.3.0"}}',
        b'{"cniVersion": "1.0.',
    ],
    ids=["empty", "garbage", "old", "lookalike", "number", "nested-only", "truncated"],
)
def test_version_defaults_to_newest(shim_path: Path, stdin: bytes) -> None:
    proc = run(shim_path, stdin, "VERSION")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"cniVersion": "1.1.0", "supportedVersions": VERSIONS}


# ---- forwarding ----


def test_forwards_only_cni_environment(shim_path: Path, daemon: ScriptedDaemon) -> None:
    env = {
        "CNI_CONTAINERID": "abc",
        "CNI_NETNS": "/run/netns/x",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=a=b",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
        "CNI_EMPTY": "",
        "PATH": "/usr/bin",
        "HOME": "/root",
        "XCNI_NOT": "1",
        "cni_lower": "1",
        "CNI": "bare",
    }
    proc = run(shim_path, conf(daemon.path), "DEL", env)
    assert proc.returncode == 0, proc
    (req,) = daemon.requests
    assert req.env == {"CNI_COMMAND": "DEL"} | {k: v for k, v in env.items() if k[:4] == "CNI_"}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(tail=st.binary(max_size=4096))
def test_stdin_forwarded_byte_exact(shim_path: Path, daemon: ScriptedDaemon, tail: bytes) -> None:
    stdin = conf(daemon.path) + tail
    proc = run(shim_path, stdin)
    assert proc.returncode == 0, proc
    assert daemon.requests[-1].stdin == stdin


def test_stdin_with_nuls_and_invalid_utf8(shim_path: Path, daemon: ScriptedDaemon) -> None:
    stdin = conf(daemon.path) + b"\0\xff\xfe\xc0\xaf\0\0\x80" + bytes(range(256))
    assert run(shim_path, stdin).returncode == 0
    assert daemon.requests[-1].stdin == stdin


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [(0, 0), (1, 1), (7, 7), (255, 255), (256, 1), (2**32 - 1, 1)],
)
def test_reply_and_exit_code_relayed(
    shim_path: Path, daemon: ScriptedDaemon, code: int, exit_code: int
) -> None:
    out = b'{"code": 7}\n\0\xff\xfe' + bytes(range(256))
    daemon.handler = daemon.answer(code, out)
    proc = run(shim_path, conf(daemon.path))
    assert (proc.returncode, proc.stdout) == (exit_code, out)


def test_large_reply_relayed(shim_path: Path, daemon: ScriptedDaemon) -> None:
    out = os.urandom(3 * 1024 * 1024)
    daemon.handler = daemon.answer(0, out)
    proc = run(shim_path, conf(daemon.path))
    assert proc.returncode == 0
    assert proc.stdout == out


def test_slow_reading_daemon_gets_every_byte(shim_path: Path, daemon: ScriptedDaemon) -> None:
    """Forces many partial writes: the daemon drains the socket a few bytes at a time."""

    def trickle(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        data = bytearray()
        while len(data) < 16 or len(data) < 16 + struct.unpack(">I", data[8:12])[0] + 4:
            data += conn.recv(977)
        env_len = struct.unpack(">I", data[8:12])[0]
        (stdin_len,) = struct.unpack(">I", data[12 + env_len : 16 + env_len])
        while len(data) < 16 + env_len + stdin_len:
            data += conn.recv(977)
        daemon.requests.append(Request(bytes(data[12 : 12 + env_len]), bytes(data[16 + env_len :])))
        reply(conn, 0, b"ok")

    daemon.handler = trickle
    stdin = conf(daemon.path) + os.urandom(512 * 1024)
    proc = run(shim_path, stdin)
    assert (proc.returncode, proc.stdout) == (0, b"ok")
    assert daemon.requests[-1].stdin == stdin


@pytest.mark.parametrize("size", [STDIN_CAP - 1, STDIN_CAP, STDIN_CAP + 1, STDIN_CAP + 4096])
def test_huge_stdin_cut_at_cap(shim_path: Path, daemon: ScriptedDaemon, size: int) -> None:
    head = conf(daemon.path)
    stdin = head + b"x" * (size - len(head))
    proc = run(shim_path, stdin)
    assert proc.returncode == 0, proc.stdout[:200]
    got = daemon.requests[-1].stdin
    assert len(got) == min(size, STDIN_CAP)
    assert got == stdin[:STDIN_CAP]


# ---- where the socket is ----


def test_socket_taken_from_ipam_section(shim_path: Path, daemon: ScriptedDaemon) -> None:
    stdin = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "n",
            "ipam": {"type": "vpc-cni", "daemonSocket": daemon.path},
        }
    ).encode()
    assert run(shim_path, stdin).returncode == 0
    assert daemon.requests[-1].stdin == stdin


def test_socket_path_json_escapes_decoded(sockdir: Path, shim_path: Path) -> None:
    d = ScriptedDaemon(str(sockdir / 'q"\\é.sock'))
    try:
        raw = json.dumps(d.path, ensure_ascii=True).replace("/", "\\/")
        stdin = b'{"cniVersion": "1.0.0", "daemonSocket": ' + raw.encode() + b"}"
        proc = run(shim_path, stdin)
        assert proc.returncode == 0, proc
        assert d.requests[-1].stdin == stdin
    finally:
        d.close()


def test_first_daemon_socket_key_wins(shim_path: Path, daemon: ScriptedDaemon) -> None:
    stdin = (
        b'{"name": "has \\"daemonSocket\\": \\"/nope\\" inside", "daemonSocket": '
        + json.dumps(daemon.path).encode()
        + b', "ipam": {"daemonSocket": "/elsewhere.sock"}}'
    )
    assert run(shim_path, stdin).returncode == 0
    assert daemon.requests[-1].stdin == stdin


@pytest.fixture
def no_default_daemon() -> None:
    """Fallback tests read the default path from the error: no daemon may sit there."""
    if os.path.exists(DEFAULT_SOCKET):
        pytest.fail(f"{DEFAULT_SOCKET} exists: these tests need it absent")


MALFORMED_SOCKET_VALUES = {
    "number": b"42",
    "null": b"null",
    "empty": b'""',
    "nul": b'"\\u0000x"',
    "bad-escape": b'"\\q"',
    "surrogate": b'"\\ud800"',
    "hex-with-space": b'"\\u 12a"',
    "hex-with-sign": b'"\\u-001"',
    "short-hex": b'"\\u12"',
    "bad-utf8": b'"a\xffb"',
    "overlong-utf8": b'"a\xc0\xafb"',
    "raw-control": b'"a\nb"',
    "unterminated": b'"x',
}


@pytest.mark.usefixtures("no_default_daemon")
@pytest.mark.parametrize(
    "value", MALFORMED_SOCKET_VALUES.values(), ids=list(MALFORMED_SOCKET_VALUES)
)
def test_malformed_socket_value_falls_back_to_default(shim_path: Path, value: bytes) -> None:
    body = error_json(run(shim_path, b'{"cniVersion": "0.4.0", "daemonSocket": ' + value + b"}"))
    assert body["msg"] == f"vpc-cni daemon not reachable at {DEFAULT_SOCKET}"


# ---- daemon unreachable ----


@pytest.mark.parametrize(
    ("command", "code"), [("ADD", 11), ("DEL", 11), ("GC", 11), ("STATUS", 50)]
)
def test_missing_socket_gives_error_json(
    shim_path: Path, sockdir: Path, command: str, code: int
) -> None:
    path = str(sockdir / "absent.sock")
    body = error_json(run(shim_path, conf(path, cniVersion="0.4.0"), command))
    assert body == {
        "cniVersion": "0.4.0",
        "code": code,
        "msg": f"vpc-cni daemon not reachable at {path}",
        "details": os.strerror(errno.ENOENT),
    }


def test_socket_without_listener_is_refused(shim_path: Path, sockdir: Path) -> None:
    path = str(sockdir / "dead.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
    body = error_json(run(shim_path, conf(path)))
    assert body["code"] == 11
    assert body["details"] in errno_text(errno.ECONNREFUSED)


def test_error_json_escapes_the_path(shim_path: Path, sockdir: Path) -> None:
    path = str(sockdir / 'a"b\\c\nd\te\x01é')
    body = error_json(run(shim_path, conf(path)))
    assert body["msg"] == f"vpc-cni daemon not reachable at {path}"


def test_overlong_socket_path_named_in_error(shim_path: Path, sockdir: Path) -> None:
    path = str(sockdir / ("x" * 200))
    body = error_json(run(shim_path, conf(path)))
    assert body["msg"] == f"vpc-cni daemon not reachable at {path}"
    assert body["details"] in errno_text(errno.ENAMETOOLONG)


def test_daemon_closing_mid_reply(shim_path: Path, daemon: ScriptedDaemon) -> None:
    def half(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(struct.pack(">II", 0, 100) + b'{"cniVersion"')

    daemon.handler = half
    body = error_json(run(shim_path, conf(daemon.path), "DEL"))
    assert body["code"] == 11
    assert body["details"] in errno_text(errno.ECONNRESET)


def test_daemon_closing_before_header(shim_path: Path, daemon: ScriptedDaemon) -> None:
    def short(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"\0\0")

    daemon.handler = short
    body = error_json(run(shim_path, conf(daemon.path, cniVersion="0.3.1"), "STATUS"))
    assert (body["cniVersion"], body["code"]) == ("0.3.1", 50)


def test_daemon_closing_without_reading(shim_path: Path, daemon: ScriptedDaemon) -> None:
    daemon.handler = lambda conn: None
    stdin = conf(daemon.path) + b" " * (4 * 1024 * 1024)
    body = error_json(run(shim_path, stdin))
    assert body["code"] == 11
    assert body["details"] in errno_text(errno.EPIPE, errno.ECONNRESET)


def test_early_full_reply_wins_over_unsent_stdin(shim_path: Path, daemon: ScriptedDaemon) -> None:
    """A daemon that rejects after the header still gets its answer to the runtime."""

    def reject(conn: socket.socket) -> None:
        recv_exact(conn, 16)
        reply(conn, 4, b'{"code": 4, "msg": "too big"}')
        conn.shutdown(socket.SHUT_RDWR)

    daemon.handler = reject
    proc = run(shim_path, conf(daemon.path) + b" " * (4 * 1024 * 1024))
    assert (proc.returncode, proc.stdout) == (4, b'{"code": 4, "msg": "too big"}')


def test_closed_stdout_does_not_kill_by_sigpipe(shim_path: Path, daemon: ScriptedDaemon) -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [str(shim_path)],
            input=conf(daemon.path),
            stdout=w,
            env={"CNI_COMMAND": "ADD"},
            timeout=RUN_TIMEOUT,
        )
    finally:
        os.close(w)
    assert proc.returncode == 1
    assert len(daemon.requests) == 1


@pytest.fixture(scope="module")
def quick_timeout_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same source with a 2 s reply timeout, so the timeout path runs in a test."""
    return build_shim(tmp_path_factory.mktemp("shim-timeout"), "EXTRA_CFLAGS=-DREPLY_TIMEOUT_S=2")


def test_silent_daemon_times_out(quick_timeout_shim: Path, daemon: ScriptedDaemon) -> None:
    release = threading.Event()

    def silent(conn: socket.socket) -> None:
        read_request(conn)
        release.wait(RUN_TIMEOUT)

    daemon.handler = silent
    try:
        body = error_json(run(quick_timeout_shim, conf(daemon.path)))
    finally:
        release.set()
    assert body["code"] == 11
    assert body["details"] in errno_text(errno.ETIMEDOUT)


# ---- sanitizers over the paths with the most pointer arithmetic ----


@pytest.fixture(scope="module")
def asan_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("shim-asan"), target="asan")


@pytest.mark.parametrize(
    "stdin_tail",
    [b"", b'"\\u00', b'{"daemonSocket": "\\u12', b"\xf4\x90\x80\x80", b'"\\', b"x" * STDIN_CAP],
    ids=["plain", "cut-unicode", "cut-escape-key", "bad-utf8", "cut-backslash", "over-cap"],
)
def test_asan_clean(asan_shim: Path, daemon: ScriptedDaemon, stdin_tail: bytes) -> None:
    env = {"CNI_COMMAND": "ADD", "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0"}
    for stdin in (conf(daemon.path) + stdin_tail, b'{"daemonSocket": ' + stdin_tail):
        proc = subprocess.run(
            [str(asan_shim)], input=stdin, env=env, capture_output=True, timeout=RUN_TIMEOUT
        )
        assert b"Sanitizer" not in proc.stderr and b"runtime error" not in proc.stderr, proc.stderr
        assert proc.returncode in (0, 1)
        json.loads(proc.stdout)


def expected_socket(text: str, ascii_escaped: bool) -> str:
    """The path the executable should take from a JSON string holding `text`."""
    if not text or "\0" in text or (ascii_escaped and max(map(ord, text)) > 0xFFFF):
        return DEFAULT_SOCKET  # non-BMP characters arrive as surrogate escapes
    return text


@pytest.mark.usefixtures("no_default_daemon")
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=st.text(max_size=40), ascii_escaped=st.booleans(), junk=st.binary(max_size=40))
def test_any_socket_value_gives_valid_error_json(
    asan_shim: Path, sockdir: Path, text: str, ascii_escaped: bool, junk: bytes
) -> None:
    """Whatever the value (escaped text or raw bytes), the reply is valid JSON naming the
    path actually tried, and the sanitizers see no memory error."""
    env = {"CNI_COMMAND": "ADD", "ASAN_OPTIONS": "detect_leaks=0"}
    value = json.dumps(text, ensure_ascii=ascii_escaped).encode()
    for stdin, path in (
        (b'{"daemonSocket": ' + value + b"}", expected_socket(text, ascii_escaped)),
        (b'{"daemonSocket": "' + junk + b'"}', None),
    ):
        proc = subprocess.run(
            [str(asan_shim)], input=stdin, env=env, cwd=sockdir, capture_output=True,
            timeout=RUN_TIMEOUT,
        )  # fmt: skip
        assert proc.stderr == b""
        body = error_json(proc)
        assert body["code"] == 11
        if path is not None:
            assert body["msg"] == f"vpc-cni daemon not reachable at {path}"


def test_closed_stdio_never_aliases_the_socket(shim_path: Path, daemon: ScriptedDaemon) -> None:
    """With stdout closed, the socket must not become fd 1 and get the reply echoed back."""
    echoed: list[bytes] = []
    done = threading.Event()

    def answer_then_listen(conn: socket.socket) -> None:
        daemon.requests.append(read_request(conn))
        reply(conn, 3, b"reply")
        echoed.append(conn.recv(64))  # b"" once the executable exits without writing
        done.set()

    daemon.handler = answer_then_listen
    proc = subprocess.run(
        ["sh", "-c", f"exec {shim_path} >&-"],
        input=conf(daemon.path),
        env={"CNI_COMMAND": "ADD"},
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 3
    assert done.wait(RUN_TIMEOUT)
    assert echoed == [b""]
