"""A private containerd (1.6, CRI enabled): its config file and its process.

The lab runs one per node namespace and the runtime tests one per test, next to
whatever else runs on the machine, so everything containerd would otherwise
share lives under the given directories: root, state, sockets, runc's root,
the `opt` plugin dir and (by default) the pod network namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

K8S_NAMESPACE = "k8s.io"


class ContainerdError(RuntimeError):
    """containerd did not start, or a ctr command against it failed."""


@dataclass(frozen=True)
class ContainerdConfig:
    """Where one containerd keeps its state and which CNI set-up its CRI plugin uses.

    netns: path of a network namespace containerd runs in (via nsenter), e.g. a
    lab node's; None = the caller's. systemd_cgroup/cgroup_path: cgroup driver
    for containers and containerd's own cgroup; the lab and tests use cgroupfs.
    """

    root: Path
    state: Path
    socket: Path
    cni_conf_dir: Path
    cni_bin_dir: Path
    sandbox_image: str
    netns: str | None = None
    systemd_cgroup: bool = False
    cgroup_path: str = ""
    snapshotter: str = "native"
    netns_under_state_dir: bool = True
    log_level: str = "info"

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"


def _s(value: object) -> str:
    """A TOML value: JSON's string, bool and int syntax are valid TOML for these."""
    return json.dumps(value)


def render_config(cfg: ContainerdConfig) -> str:
    """containerd config (version 2) text for cfg."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join(
        [
            "version = 2",
            f"root = {_s(str(cfg.root))}",
            f"state = {_s(str(cfg.state))}",
            # restrict_oom_score_adj: containerd may not lower its children's score
            # below its own when it is not the host's (FACTS: kubelet + containerd).
            "[cgroup]",
            f"path = {_s(cfg.cgroup_path)}",
            "[grpc]",
            f"address = {_s(str(cfg.socket))}",
            "[ttrpc]",
            f"address = {_s(str(cfg.socket) + '.ttrpc')}",
            '[plugins."io.containerd.internal.v1.opt"]',
            f"path = {_s(str(cfg.root / 'opt'))}",
            f"[{cri}]",
            f"sandbox_image = {_s(cfg.sandbox_image)}",
            "restrict_oom_score_adj = true",
            f"systemd_cgroup = {_s(cfg.systemd_cgroup)}",
            f"netns_mounts_under_state_dir = {_s(cfg.netns_under_state_dir)}",
            'stream_server_address = "127.0.0.1"',
            'stream_server_port = "0"',
            "enable_unprivileged_ports = false",
            f"[{cri}.cni]",
            f"bin_dir = {_s(str(cfg.cni_bin_dir))}",
            f"conf_dir = {_s(str(cfg.cni_conf_dir))}",
            "max_conf_num = 1",
            f"[{cri}.containerd]",
            f"snapshotter = {_s(cfg.snapshotter)}",
            'default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            'runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.containerd.runtimes.runc.options]",
            f"SystemdCgroup = {_s(cfg.systemd_cgroup)}",
            f"Root = {_s(str(cfg.state / 'runc'))}",
            "",
        ]
    )


def _nsenter(netns: str | None) -> list[str]:
    # `ip netns exec` would remount /sys and hide the cgroup hierarchies runc needs.
    return ["nsenter", f"--net={netns}"] if netns else []


class Containerd:
    """One containerd process for cfg: start() it, ctr() against it, stop() it.

    stop() also removes what a crashed or interrupted run leaves: tasks and their
    shims, and mounts under root/state. Shims outlive containerd, so they are
    found by the exact socket path on their command line, and killed by pid.
    """

    def __init__(self, cfg: ContainerdConfig, log: Path | None = None) -> None:
        """log: file containerd's output is appended to (None: a client of a containerd
        someone else started, e.g. the lab's, which only needs ctr())."""
        self.cfg = cfg
        self.log_path = log
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        for d in (self.cfg.root, self.cfg.state, self.cfg.cni_conf_dir, self.cfg.cni_bin_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.cfg.config_file.write_text(render_config(self.cfg))
        cmd = [*_nsenter(self.cfg.netns), "containerd", "--config", str(self.cfg.config_file)]
        cmd += ["--log-level", self.cfg.log_level]
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            cmd,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        log = f"log: {self.log_path or 'not kept'}"
        while True:
            if self._proc.poll() is not None:
                raise ContainerdError(f"containerd exited with {self._proc.returncode}; {log}")
            if self.cfg.socket.exists() and self._ctr_ok("version"):
                return
            if time.monotonic() > deadline:
                raise ContainerdError(f"containerd not serving on {self.cfg.socket}; {log}")
            time.sleep(0.1)

    def _ctr_cmd(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.cfg.socket), "--namespace", K8S_NAMESPACE, *args]

    def _ctr_ok(self, *args: str) -> bool:
        return subprocess.run(self._ctr_cmd(*args), capture_output=True).returncode == 0

    def ctr(self, *args: str) -> str:
        """Runs ctr against this containerd in the CRI namespace; returns stdout."""
        proc = subprocess.run(self._ctr_cmd(*args), capture_output=True, text=True)
        if proc.returncode != 0:
            raise ContainerdError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def import_image(self, archive: Path) -> None:
        """Imports (and unpacks) an OCI archive, e.g. the sandbox image, for the CRI."""
        self.ctr("images", "import", "--snapshotter", self.cfg.snapshotter, str(archive))

    def stop(self) -> None:
        """Stops containerd and everything it started; safe to call more than once."""
        if self._proc is not None and self._proc.poll() is None:
            self._remove_tasks()
            self._proc.terminate()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for pid in self.shim_pids():
            _kill(pid)
        unmount_under(self.cfg.root, self.cfg.state)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _remove_tasks(self) -> None:
        """Kills whatever tasks are left (normally none: callers remove pods first)."""
        listing = subprocess.run(self._ctr_cmd("tasks", "ls", "-q"), capture_output=True, text=True)
        for task in listing.stdout.split():
            self._ctr_ok("tasks", "kill", "--all", "--signal", "SIGKILL", task)
            deadline = time.monotonic() + 30
            while not self._ctr_ok("tasks", "delete", task) and time.monotonic() < deadline:
                time.sleep(0.2)

    def shim_pids(self) -> list[int]:
        """Pids of containerd shims serving this containerd (matched by socket path)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-address" in argv and str(self.cfg.socket).encode() in argv:
                if argv[0].endswith((b"containerd-shim-runc-v2", b"containerd-shim")):
                    pids.append(int(entry.name))
        return pids


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def mounts_under(*dirs: Path) -> list[str]:
    """Mount points at or below dirs, deepest first (the order to unmount them)."""
    roots = [str(d.resolve()) for d in dirs]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == r or point.startswith(r + "/") for r in roots):
            found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_under(*dirs: Path) -> None:
    """Lazily unmounts every mount below dirs: netns binds, shm, rootfs snapshots."""
    for point in mounts_under(*dirs):
        subprocess.run(["umount", "-l", point], capture_output=True)
