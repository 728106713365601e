"""A real neutron-server for the lab and the integration tests.

Neutron lives in its own virtualenv (its ~130 pinned packages would clash with
ours), built once per requirements hash under the cache directory. The server runs
with noauth, a fake message bus, ML2/openvswitch without any agent process, and
sqlite; FACTS.md explains each setting. Ports only bind when an "Open vSwitch agent"
row exists for their host, so :meth:`NeutronServer.register_agents` writes those rows.
"""

from __future__ import annotations

import configparser
import fcntl
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vpc_cni.lab import procs
from vpc_cni.lab.paths import cache_root

REQUIREMENTS = Path(__file__).with_name("neutron-requirements.txt")
LAUNCHER = Path(__file__).with_name("neutron_server.py")
START_TIMEOUT = 180.0
STOP_GRACE = 30.0
# The agent must look alive for ever: nothing will ever send it a heartbeat.
_FAR_FUTURE = "2999-01-01 00:00:00.000000"


class NeutronError(RuntimeError):
    """neutron-server could not be installed, started or prepared."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ensure_venv() -> Path:
    """Returns the neutron venv for the pinned requirements, building it if missing.

    The directory name carries the requirements hash, so a changed pin gets a fresh
    venv. It is built under a temporary name and renamed only when complete, under a
    lock, so a crashed or concurrent build never leaves a half-installed venv in use.
    """
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    root = cache_root()
    venv = root / f"neutron-venv-{digest}"
    if venv.is_dir():
        return venv
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"neutron-venv-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if venv.is_dir():
            return venv
        building = root / f"neutron-venv-{digest}.building"
        shutil.rmtree(building, ignore_errors=True)
        log = root / f"neutron-venv-{digest}.log"
        try:
            with open(log, "w") as out:
                subprocess.run(
                    [sys.executable, "-m", "venv", str(building)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=True,
                )
                subprocess.run(
                    [
                        str(building / "bin" / "python"),
                        "-m",
                        "pip",
                        "install",
                        "--no-input",
                        "-r",
                        str(REQUIREMENTS),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=True,
                )
        except subprocess.CalledProcessError as err:
            shutil.rmtree(building, ignore_errors=True)
            raise NeutronError(f"building the neutron venv failed:\n{_tail(log)}") from err
        building.rename(venv)
    return venv


def _wait_for_port(port_file: Path, process: procs.ProcessRecord) -> int:
    """The launcher writes the port once the app is loaded and the socket listens."""
    log = Path(process.log)
    deadline = time.monotonic() + START_TIMEOUT
    while not port_file.exists():
        if not process.alive():
            raise NeutronError(f"neutron-server exited while starting; log {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise NeutronError(
                f"neutron-server did not start within {START_TIMEOUT:.0f} s; "
                f"log {log}:\n{_tail(log)}"
            )
        time.sleep(0.1)
    return int(port_file.read_text())


def _config(state_dir: Path, max_allowed_address_pair: int) -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    config.read_dict(
        {
            "DEFAULT": {
                "auth_strategy": "noauth",
                # Without a fake bus, network create hangs retrying a broker.
                "transport_url": "fake://",
                "core_plugin": "ml2",
                # The trunk plugin refuses to load without the openvswitch driver.
                "service_plugins": "trunk",
                "notify_nova_on_port_status_changes": "false",
                "notify_nova_on_port_data_changes": "false",
                "dhcp_agent_notification": "false",
                "max_allowed_address_pair": str(max_allowed_address_pair),
                "state_path": str(state_dir),
                "api_paste_config": str(state_dir / "api-paste.ini"),
                "use_stderr": "true",
            },
            "database": {
                "connection": f"sqlite:///{state_dir / 'neutron.sqlite'}",
                "sqlite_synchronous": "false",
            },
            "oslo_concurrency": {"lock_path": str(state_dir / "lock")},
            "ml2": {
                "type_drivers": "geneve,vlan,flat",
                "tenant_network_types": "geneve",
                "mechanism_drivers": "openvswitch",
                # Without the tag driver, tags given at create are silently dropped.
                "extension_drivers": "port_security,tag_ports_during_bulk_creation",
            },
            "ml2_type_geneve": {"vni_ranges": "1:65535"},
            "ml2_type_flat": {"flat_networks": "*"},
            # The lab is one cluster's cloud: quotas would only get in the way.
            "quotas": {
                "default_quota": "-1",
                "quota_network": "-1",
                "quota_subnet": "-1",
                "quota_port": "-1",
            },
        }
    )
    return config


@dataclass(frozen=True)
class NeutronServer:
    """One running neutron-server: its state directory, process and endpoint.

    It is saved as ``server.json`` in the state directory, so ``lab down`` (another
    process) can stop exactly this server with :meth:`load` and :meth:`stop`.
    """

    state_dir: Path
    process: procs.ProcessRecord
    url: str

    @classmethod
    def start(
        cls, state_dir: Path, name: str, *, max_allowed_address_pair: int = 10
    ) -> NeutronServer:
        """Starts neutron-server on a free loopback port and waits until it serves.

        ``name`` tags the process (a test prefix, or the lab's name). A failed start
        raises :class:`NeutronError` with the tail of the server's log.
        """
        if max_allowed_address_pair < 1:
            raise NeutronError(
                f"max_allowed_address_pair must be at least 1, not {max_allowed_address_pair}"
            )
        venv = ensure_venv()
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "port").unlink(missing_ok=True)
        shutil.copy(venv / "etc" / "neutron" / "api-paste.ini", state_dir / "api-paste.ini")
        with open(state_dir / "neutron.conf", "w") as conf:
            _config(state_dir, max_allowed_address_pair).write(conf)
        log = state_dir / "neutron.log"
        process = procs.spawn(
            f"neutron-server-{name}",
            [str(venv / "bin" / "python"), "-I", str(LAUNCHER), str(state_dir), name],
            log,
        )
        try:
            port = _wait_for_port(state_dir / "port", process)
        except BaseException:
            procs.stop(process, STOP_GRACE)
            raise
        server = cls(state_dir, process, f"http://127.0.0.1:{port}")
        (state_dir / "server.json").write_text(
            json.dumps({"process": process.to_dict(), "url": server.url})
        )
        return server

    @classmethod
    def load(cls, state_dir: Path) -> NeutronServer:
        """The server started with this state directory, as saved by :meth:`start`."""
        saved = json.loads((state_dir / "server.json").read_text())
        return cls(state_dir, procs.ProcessRecord.from_dict(saved["process"]), saved["url"])

    def stop(self) -> None:
        """Stops the server; idempotent. The state directory is left to the caller."""
        procs.stop(self.process, STOP_GRACE)

    def register_agents(self, hosts: Iterable[str]) -> None:
        """Inserts an always-alive "Open vSwitch agent" row per host so ports bind there.

        Without one, ML2 marks ports ``binding_failed`` and retries binding on every
        update. Neutron reads agent rows from the database on each bind, so rows added
        while the server runs take effect at once. Existing rows are kept.
        """
        configurations = json.dumps(
            {"tunnel_types": ["geneve"], "bridge_mappings": {}, "integration_bridge": "br-int"}
        )
        rows = [
            (
                str(uuid.uuid4()),
                host,
                _FAR_FUTURE,
                _FAR_FUTURE,
                _FAR_FUTURE,
                configurations,
            )
            for host in hosts
        ]
        with sqlite3.connect(self.state_dir / "neutron.sqlite", timeout=60) as db:
            db.executemany(
                "INSERT OR IGNORE INTO agents (id, agent_type, binary, topic, host,"
                " admin_state_up, created_at, started_at, heartbeat_timestamp,"
                " configurations, load) VALUES (?, 'Open vSwitch agent',"
                " 'neutron-openvswitch-agent', 'N/A', ?, 1, ?, ?, ?, ?, 0)",
                rows,
            )
        db.close()


if __name__ == "__main__":
    # `python -m vpc_cni.lab.neutron` builds the venv ahead of time (CI's install step).
    print(ensure_venv())
