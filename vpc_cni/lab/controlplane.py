"""A real Kubernetes control plane on one machine: etcd, apiserver, controller-manager, scheduler.

Everything an instance makes lives under its own state directory and carries its
name (the test prefix or the lab's name): process names, etcd member name, the
paths in every argv. Ports are chosen free on start, so instances run side by side.
The instance is saved as ``controlplane.json`` so another process (``vpcctl lab
down``) can stop exactly it with :meth:`ControlPlane.load` and :meth:`ControlPlane.stop`.

Choices, and why:

- Static bearer tokens, one per identity: no CSR dance at start, and tests get a
  token they can hand to any client. The controller-manager's identity is in
  ``system:masters`` because it runs all controllers under its own credentials
  (per-controller service accounts would add a token-controller bootstrap race).
- ServiceAccount admission is off: the lab's pods need no API token, and with it on
  every pod create races the controller-manager creating the ``default`` account.
- With a loopback-only apiserver there is no address for the ``kubernetes`` Service
  (Endpoints reject loopback), so the endpoint reconciler is off in that case.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vpc_cni.lab import procs
from vpc_cni.lab.paths import state_root
from vpc_cni.lab.pki import ControlPlanePki, write_pki
from vpc_cni.lab.procs import ComponentError, ProcessRecord

ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
ALL_COMPONENTS = (ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER)
API_ONLY = (ETCD, APISERVER)

ADMIN_USER = "admin"
MASTERS = "system:masters"
CM_USER = "system:kube-controller-manager"
SCHEDULER_USER = "system:kube-scheduler"

# Start-up budgets; generous because the machine is shared and noisy.
START_TIMEOUTS = {ETCD: 60.0, APISERVER: 240.0, CONTROLLER_MANAGER: 120.0, SCHEDULER: 120.0}
STOP_GRACE = 10.0
STATE_FILE = "controlplane.json"


class ControlPlaneError(RuntimeError):
    """Bad control plane settings (component start failures are ComponentError)."""


@dataclass(frozen=True)
class ControlPlaneConfig:
    """What to run. ``name`` tags every process and file of the instance."""

    name: str
    components: Sequence[str] = ALL_COMPONENTS
    bind_address: str = "127.0.0.1"
    advertise_address: str | None = None
    service_cidr: str = "10.253.0.0/16"
    # Set to have the controller-manager allocate per-node pod CIDRs from it.
    cluster_cidr: str | None = None
    # False makes every watch and list go to etcd, so compaction yields 410 Gone.
    watch_cache: bool = True
    # Extra identities (user -> groups), e.g. system:node:<name> for kubelets.
    users: Mapping[str, Sequence[str]] = field(default_factory=dict)
    state_dir: Path | None = None

    def validate(self) -> None:
        if not self.name or not self.name.replace("-", "").isalnum():
            raise ControlPlaneError(f"name must be letters, digits and '-', not {self.name!r}")
        unknown = [c for c in self.components if c not in ALL_COMPONENTS]
        if unknown:
            raise ControlPlaneError(f"unknown components {unknown}; known: {ALL_COMPONENTS}")
        if tuple(self.components[:2]) != API_ONLY:
            raise ControlPlaneError(f"components must start with {API_ONLY}")
        for label, value in (("bind_address", self.bind_address),
                             ("advertise_address", self.advertise_address)):  # fmt: skip
            if value is not None:
                _parse(ipaddress.IPv4Address, label, value)
        _parse(ipaddress.IPv4Network, "service_cidr", self.service_cidr)
        if self.cluster_cidr is not None:
            _parse(ipaddress.IPv4Network, "cluster_cidr", self.cluster_cidr)


def _parse(parser: Callable[[str], object], label: str, value: str) -> None:
    try:
        parser(value)
    except ValueError as err:
        raise ControlPlaneError(f"{label}: {err}") from err


@dataclass
class ControlPlane:
    """A running (or stopped) instance: where to reach it and how to stop it."""

    name: str
    state_dir: Path
    server: str
    etcd_url: str
    ca_cert: Path
    ca_key: Path
    tokens: dict[str, str]
    kubeconfigs: dict[str, Path]
    records: dict[str, ProcessRecord] = field(default_factory=dict)

    @property
    def token(self) -> str:
        """The admin token (``system:masters``)."""
        return self.tokens[ADMIN_USER]

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig."""
        return self.kubeconfigs[ADMIN_USER]

    @classmethod
    def start(cls, config: ControlPlaneConfig, bin_dir: Path) -> ControlPlane:
        """Start the configured components in order, each healthy before the next.

        A failure stops what was started, removes the state and raises
        :class:`ComponentError` naming the component, with the tail of its log.
        """
        config.validate()
        state_dir = config.state_dir or state_root() / config.name
        if state_dir.exists():
            raise ControlPlaneError(f"{state_dir} exists: instance {config.name!r} is running?")
        start = _prepare(config, state_dir, bin_dir)
        plane = start.plane
        try:
            for component in config.components:
                plane._start_component(component, start)
        except BaseException:
            plane.stop()
            raise
        return plane

    @classmethod
    def load(cls, state_dir: Path) -> ControlPlane:
        """The instance saved in ``state_dir`` by :meth:`start`."""
        saved = json.loads((state_dir / STATE_FILE).read_text())
        return cls(
            name=saved["name"],
            state_dir=state_dir,
            server=saved["server"],
            etcd_url=saved["etcd_url"],
            ca_cert=Path(saved["ca_cert"]),
            ca_key=Path(saved["ca_key"]),
            tokens=saved["tokens"],
            kubeconfigs={user: Path(p) for user, p in saved["kubeconfigs"].items()},
            records={c: ProcessRecord.from_dict(r) for c, r in saved["records"].items()},
        )

    def stop(self) -> None:
        """Stop every component (last started first) and remove the state. Idempotent."""
        for component in reversed(list(self.records)):
            procs.stop(self.records[component], STOP_GRACE)
        self.records.clear()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _save(self) -> None:
        data = {
            "name": self.name,
            "server": self.server,
            "etcd_url": self.etcd_url,
            "ca_cert": str(self.ca_cert),
            "ca_key": str(self.ca_key),
            "tokens": self.tokens,
            "kubeconfigs": {user: str(p) for user, p in self.kubeconfigs.items()},
            "records": {c: r.to_dict() for c, r in self.records.items()},
        }
        tmp = self.state_dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.rename(self.state_dir / STATE_FILE)

    def _start_component(self, component: str, start: _Start) -> None:
        argv, probe = _LAUNCHERS[component](start)
        log = self.state_dir / "logs" / f"{component}.log"
        name = f"{self.name}-{component}"
        try:
            record = procs.spawn(name, argv, log)
        except procs.ProcessError as err:
            raise ComponentError(name, str(err), procs.log_tail(log)) from err
        self.records[component] = record
        self._save()
        procs.wait_healthy(record, probe, START_TIMEOUTS[component])


@dataclass(frozen=True)
class _Start:
    """Start-time details the launchers need but clients of the instance do not."""

    plane: ControlPlane
    config: ControlPlaneConfig
    bin_dir: Path
    pki: ControlPlanePki
    etcd_peer_port: int
    api_port: int
    cm_port: int
    scheduler_port: int


def _prepare(config: ControlPlaneConfig, state_dir: Path, bin_dir: Path) -> _Start:
    """Ports, PKI, tokens and kubeconfigs: everything written before any process starts."""
    state_dir.mkdir(parents=True)
    host = _client_host(config.bind_address)
    etcd_port, etcd_peer_port, api_port, cm_port, scheduler_port = _free_ports(5)
    server = f"https://{host}:{api_port}"
    pki = write_pki(state_dir / "pki", *_serving_names(config, host))
    users: dict[str, Sequence[str]] = {
        ADMIN_USER: [MASTERS],
        CM_USER: [MASTERS],
        SCHEDULER_USER: [],
        **config.users,
    }
    tokens = {user: secrets.token_hex(16) for user in users}
    _write_token_file(state_dir / "tokens.csv", tokens, users)
    kubeconfigs = {}
    for user in users:
        kubeconfigs[user] = state_dir / "kubeconfigs" / f"{user.replace(':', '-')}.yaml"
        write_kubeconfig(kubeconfigs[user], config.name, server, pki.ca_cert, user, tokens[user])
    plane = ControlPlane(
        name=config.name,
        state_dir=state_dir,
        server=server,
        etcd_url=f"http://{host}:{etcd_port}",
        ca_cert=pki.ca_cert,
        ca_key=pki.ca_key,
        tokens=tokens,
        kubeconfigs=kubeconfigs,
    )
    plane._save()
    return _Start(plane, config, bin_dir, pki, etcd_peer_port, api_port, cm_port, scheduler_port)


def _client_host(bind_address: str) -> str:
    """Where a local client connects: the bound address, or loopback for a wildcard bind."""
    return "127.0.0.1" if ipaddress.ip_address(bind_address).is_unspecified else bind_address


def _free_ports(count: int) -> list[int]:
    """Ports free on every address now (held open together so they differ).

    A wildcard bind fails if any address uses the port, so each is free wherever
    its component binds; a race with another process remains and shows as that
    component failing to start.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("0.0.0.0", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _serving_names(config: ControlPlaneConfig, host: str) -> tuple[list[str], list[str]]:
    """IPs and DNS names clients may use for the apiserver: local, advertised, in-cluster."""
    service_ip = str(next(ipaddress.ip_network(config.service_cidr).hosts()))
    ips = {"127.0.0.1", host, service_ip}
    if config.advertise_address:
        ips.add(config.advertise_address)
    dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
           "kubernetes.default.svc.cluster.local"]  # fmt: skip
    return sorted(ips), dns


def _write_token_file(
    path: Path, tokens: dict[str, str], users: Mapping[str, Sequence[str]]
) -> None:
    lines = [f'{tokens[user]},{user},{user},"{",".join(users[user])}"' for user in users]
    path.touch(mode=0o600)
    path.write_text("\n".join(lines) + "\n")


def write_kubeconfig(
    path: Path, cluster: str, server: str, ca_cert: Path, user: str, token: str
) -> None:
    """A kubeconfig for ``user``: the server, our CA (by path) and a bearer token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority": str(ca_cert)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


Launch = tuple[list[str], Callable[[], bool]]


def _etcd(start: _Start) -> Launch:
    plane = start.plane
    host = _client_host(start.config.bind_address)
    peer = f"http://{host}:{start.etcd_peer_port}"
    member = f"{plane.name}-etcd"
    argv = [
        shutil.which("etcd") or "etcd",
        f"--name={member}",
        f"--data-dir={plane.state_dir / 'etcd'}",
        f"--listen-client-urls={plane.etcd_url}",
        f"--advertise-client-urls={plane.etcd_url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={member}={peer}",
        f"--initial-cluster-token={member}",
        "--initial-cluster-state=new",
        "--logger=zap",
    ]
    return argv, lambda: procs.http_ok(f"{plane.etcd_url}/health")


def _apiserver(start: _Start) -> Launch:
    plane, config, pki = start.plane, start.config, start.pki
    argv = [
        str(start.bin_dir / APISERVER),
        f"--etcd-servers={plane.etcd_url}",
        f"--bind-address={config.bind_address}",
        f"--secure-port={start.api_port}",
        "--insecure-port=0",
        f"--cert-dir={plane.state_dir / 'apiserver'}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--token-auth-file={plane.state_dir / 'tokens.csv'}",
        "--authorization-mode=Node,RBAC",
        "--disable-admission-plugins=ServiceAccount",
        f"--service-cluster-ip-range={config.service_cidr}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--kubelet-preferred-address-types=InternalIP",
        "--allow-privileged=true",
        f"--watch-cache={'true' if config.watch_cache else 'false'}",
        "--profiling=false",
    ]
    if config.advertise_address:
        argv.append(f"--advertise-address={config.advertise_address}")
    elif ipaddress.ip_address(_client_host(config.bind_address)).is_loopback:
        argv.append("--endpoint-reconciler-type=none")
    return argv, lambda: procs.http_ok(f"{plane.server}/readyz", plane.token, plane.ca_cert)


def _component_common(plane: ControlPlane, component: str, user: str, port: int) -> list[str]:
    """Flags shared by controller-manager and scheduler: kubeconfig, loopback health port."""
    return [
        f"--kubeconfig={plane.kubeconfigs[user]}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--port=0",
        f"--cert-dir={plane.state_dir / component}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def _controller_manager(start: _Start) -> Launch:
    config, pki = start.config, start.pki
    port = start.cm_port
    common = _component_common(start.plane, CONTROLLER_MANAGER, CM_USER, port)
    argv = [
        str(start.bin_dir / CONTROLLER_MANAGER),
        *common,
        "--controllers=*",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_cert}",
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={config.service_cidr}",
    ]
    if config.cluster_cidr:
        argv += ["--allocate-node-cidrs=true", f"--cluster-cidr={config.cluster_cidr}"]
    return argv, lambda: procs.http_ok(f"https://127.0.0.1:{port}/healthz")


def _scheduler(start: _Start) -> Launch:
    port = start.scheduler_port
    common = _component_common(start.plane, SCHEDULER, SCHEDULER_USER, port)
    argv = [str(start.bin_dir / SCHEDULER), *common]
    return argv, lambda: procs.http_ok(f"https://127.0.0.1:{port}/healthz")


_LAUNCHERS: dict[str, Callable[[_Start], Launch]] = {
    ETCD: _etcd,
    APISERVER: _apiserver,
    CONTROLLER_MANAGER: _controller_manager,
    SCHEDULER: _scheduler,
}
