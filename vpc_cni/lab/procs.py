"""Long-running lab component processes: start with a log file, wait for health, stop.

Processes are plain ``subprocess.Popen`` children, not asyncio subprocesses: those are
bound to the event loop that started them and are killed when it closes, while a lab
outlives loops (a session fixture starts it in one loop, tests use others).

A started process is held as a :class:`ProcessRecord` (from :func:`spawn`), because
another process may have to stop it later: ``vpcctl lab up`` starts daemons and exits,
``lab down`` runs later and must stop exactly those daemons, never an unrelated process
that reused the pid.
A record is therefore (pid, start time in clock ticks since boot), which together
name one process for the life of the machine.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

LOG_TAIL_LINES = 30


class ComponentError(RuntimeError):
    """A component failed to start or became unhealthy; says which, with its log tail."""

    def __init__(self, component: str, reason: str, log_tail: str = "") -> None:
        self.component = component
        text = f"{component}: {reason}"
        if log_tail:
            text += f"\n--- last lines of {component}'s log ---\n{log_tail}"
        super().__init__(text)


def log_tail(log: Path | str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a component's log ("" if it has none yet)."""
    try:
        text = Path(log).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_healthy(record: ProcessRecord, probe: Callable[[], bool], timeout: float) -> None:
    """Poll ``probe`` until it passes; fail early, with the log tail, if the process dies."""
    deadline = time.monotonic() + timeout
    while True:
        if not record.alive():
            _reap(record.pid)
            raise ComponentError(record.name, "exited during start-up", log_tail(record.log))
        if probe():
            return
        if time.monotonic() > deadline:
            raise ComponentError(
                record.name, f"not healthy after {timeout:.0f} s", log_tail(record.log)
            )
        time.sleep(0.2)


def http_ok(url: str, token: str | None = None, ca_file: Path | None = None) -> bool:
    """True if GET ``url`` answers 200; any connection error or other status is False.

    ``ca_file=None`` on an https URL skips verification: used for components that
    serve only a self-signed health endpoint.
    """
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if ca_file is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass(frozen=True)
class ProcessRecord:
    """One started process: enough to find it again from another process."""

    name: str
    pid: int
    start_ticks: int
    log: str

    def alive(self) -> bool:
        return start_ticks(self.pid) == self.start_ticks

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ProcessRecord:
        return cls(**data)


class ProcessError(RuntimeError):
    """A recorded lab process failed to start or to stop."""


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None  # a zombie has already exited; only its parent's wait is missing
    return int(fields[19])


def spawn(
    name: str,
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    before_exec: Callable[[], None] | None = None,
) -> ProcessRecord:
    """Start ``argv`` in its own session, output appended to ``log``.

    ``before_exec`` runs in the child between fork and exec (used to join cgroups, so
    that not even the first thread of a daemon runs outside them).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=before_exec,
            )
        except OSError as err:
            raise ProcessError(f"cannot execute {argv[0]} for {name}: {err}") from err
    ticks = start_ticks(proc.pid)
    if ticks is None:
        proc.wait()
        raise ProcessError(f"{name} exited at once (exit {proc.returncode}); see {log}")
    # From here on the record, not this Popen, owns the process (stop() reaps it):
    # mark the Popen finished so its destructor does not warn about a live child.
    proc.returncode = 0
    return ProcessRecord(name=name, pid=proc.pid, start_ticks=ticks, log=str(log))


def stop(record: ProcessRecord, grace: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds. True if it was running."""
    if not record.alive():
        _reap(record.pid)
        return False
    _signal(record.pid, signal.SIGTERM)
    if not wait_gone(record, grace):
        _signal(record.pid, signal.SIGKILL)
        if not wait_gone(record, grace):
            raise ProcessError(f"{record.name} (pid {record.pid}) survives SIGKILL")
    return True


def wait_gone(record: ProcessRecord, timeout: float) -> bool:
    """Poll until the process has exited (reaping it if it is our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not record.alive():
            return True
        time.sleep(0.05)
    return not record.alive()


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its own parent (or init) reaps it


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
