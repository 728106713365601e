"""The node daemon's configuration file (docs/contracts.md section 2), validated up front.

An operator who mistypes a key or an address should learn it from one line naming the
field at start-up, not from a pod that fails to start an hour later; so every model
forbids unknown keys and cross-checks addresses against their subnets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# Route tables 253-255 are the kernel's default/main/local; 0 means "unspecified".
_RESERVED_TABLES = frozenset({0, 253, 254, 255})


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class SubnetConfig(_Model):
    """One Neutron subnet on an ENI and the secondary addresses the node holds in it."""

    id: Annotated[str, Field(min_length=1)]
    cidr: IPv4Network
    gateway: IPv4Address
    route_table: Annotated[int, Field(ge=1, le=2**32 - 1)]
    addresses: list[IPv4Address] = []

    @field_validator("route_table")
    @classmethod
    def _not_kernel_table(cls, value: int) -> int:
        if value in _RESERVED_TABLES:
            raise ValueError(f"table {value} is reserved by the kernel (default/main/local)")
        return value

    @model_validator(mode="after")
    def _addresses_inside(self) -> SubnetConfig:
        if self.gateway not in self.cidr:
            raise ValueError(f"gateway {self.gateway} is not in {self.cidr}")
        reserved = {self.cidr.network_address, self.cidr.broadcast_address, self.gateway}
        for address in self.addresses:
            if address not in self.cidr:
                raise ValueError(f"address {address} is not in {self.cidr}")
            if address in reserved:
                raise ValueError(f"address {address} is the gateway, network or broadcast")
        _reject_duplicates(self.addresses, "address")
        return self


class EniConfig(_Model):
    """A Neutron port attached to the node as a NIC, found by its MAC."""

    id: Annotated[str, Field(min_length=1)]
    mac: str
    primary_ip: IPv4Interface
    mtu: Annotated[int, Field(ge=576, le=9216)] = 1500
    subnets: list[SubnetConfig] = []

    @field_validator("mac", mode="before")
    @classmethod
    def _normalise_mac(cls, value: Any) -> str:
        text = str(value).lower()
        if not _MAC.match(text):
            raise ValueError(f"{value!r} is not a MAC address like fa:16:3e:00:00:01")
        return text


class PoolConfig(_Model):
    """The node's address pool, or where to find it.

    With `source: file` the pool is `enis` itself. With `source: nodeNetwork` the pool
    is the spec of the NodeNetwork named `nodeName` (the controller owns it), so the
    file must not list ENIs: two owners of one pool would disagree sooner or later.
    """

    source: Literal["file", "nodeNetwork"] = "file"
    node_name: Annotated[str, Field(min_length=1)] | None = None
    kubeconfig: Path | None = None
    enis: list[EniConfig] = []

    @model_validator(mode="after")
    def _source_fields(self) -> PoolConfig:
        if self.source == "nodeNetwork":
            if self.node_name is None:
                raise ValueError("source nodeNetwork needs nodeName (this node's name)")
            if self.enis:
                raise ValueError("source nodeNetwork takes the ENIs from the cluster; drop enis")
        elif self.node_name is not None or self.kubeconfig is not None:
            raise ValueError("nodeName and kubeconfig only apply to source nodeNetwork")
        return self

    @model_validator(mode="after")
    def _unique(self) -> PoolConfig:
        _reject_duplicates((eni.id for eni in self.enis), "ENI id")
        _reject_duplicates((eni.mac for eni in self.enis), "ENI mac")
        subnets = [subnet for eni in self.enis for subnet in eni.subnets]
        _reject_duplicates((subnet.id for subnet in subnets), "subnet id")
        _reject_duplicates((subnet.route_table for subnet in subnets), "routeTable")
        _reject_duplicates((a for subnet in subnets for a in subnet.addresses), "pool address")
        return self


class EniSetupConfig(_Model):
    """How the daemon keeps its ENIs in shape (docs/daemon.md, "ENI lifecycle")."""

    repair_seconds: Annotated[float, Field(ge=0.5, le=3600)] = 5.0
    # null: only when hostNetns is null, i.e. the daemon runs on the node itself; in
    # the lab the machine's own /etc does not belong to the simulated node.
    mark_unmanaged: bool | None = None
    network_manager_dir: Path | None = Path("/etc/NetworkManager/conf.d")
    networkd_dir: Path | None = Path("/etc/systemd/network")


class DaemonConfig(_Model):
    """Everything `vpcctl daemon` needs; see docs/daemon.md for each key."""

    socket: Path = Path("/run/vpc-cni/cni.sock")
    state_dir: Path = Path("/var/lib/vpc-cni")
    host_netns: Path | None = None
    cooldown_seconds: Annotated[float, Field(ge=0, le=86400)] = 30.0
    static_wait_seconds: Annotated[float, Field(ge=0, le=3600)] = 30.0
    reconcile_seconds: Annotated[float, Field(gt=0, le=86400)] = 60.0
    block_metadata: bool = False
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    ready_file: Path | None = None
    # null: inspect.sock beside `socket`, so every daemon on a machine has its own.
    inspect_socket: Path | None = None
    eni_setup: EniSetupConfig = Field(default_factory=EniSetupConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)

    @field_validator("socket", "state_dir", "host_netns", "ready_file", "inspect_socket")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"{value} must be an absolute path")
        return value


def _reject_duplicates(values: Iterable[object], what: str) -> None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value}")
        seen.add(value)


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field the way the file spells it."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def parse_config(data: object, source: str) -> DaemonConfig:
    """Validates an already decoded document; `source` only labels the error message."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {describe_validation_error(error)}") from None


def read_document(path: Path) -> object:
    """Reads JSON or YAML (YAML is a superset, but JSON errors read better from json)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read: {error}") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ConfigError(f"{path}: not valid {kind}: {error}") from None


def load_config(path: Path) -> DaemonConfig:
    """Reads and validates the daemon configuration file."""
    return parse_config(read_document(path), str(path))
