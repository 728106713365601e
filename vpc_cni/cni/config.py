"""The plugin's network config (stdin JSON) as typed models.

Unknown keys are ignored: runtimes and chained plugins add their own (capabilities,
cniVersions, plugin-specific keys), and the spec lets a plugin skip what it does not
use. Known keys are checked strictly, so ``"hostPort": "8080"`` is an error rather
than a silent conversion.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
)

from vpc_cni.cni.errors import CniError, ErrorCode
from vpc_cni.cni.fields import AnyAddress, NonEmptyStr, NonNegative, Port, rule
from vpc_cni.cni.model import CniModel
from vpc_cni.cni.names import network_name_problem, path_problem
from vpc_cni.cni.result import Result
from vpc_cni.cni.validation import config_error

PLUGIN_TYPE = "vpc-cni"
DEFAULT_DAEMON_SOCKET = "/run/vpc-cni/cni.sock"

_M = TypeVar("_M", bound=BaseModel)


def _spellings(*names: str) -> AliasChoices:
    """podman sends ``hostPort``, containerd's CRI sends ``HostPort``: take either."""
    return AliasChoices(*names)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _host_ip(value: str) -> str:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("must be an IP address or empty") from None
    return value


class _ConfigModel(CniModel):
    """Config is input: nothing downstream may change what the runtime sent."""

    model_config = ConfigDict(frozen=True)


class PortMapping(_ConfigModel):
    """One hostPort from the ``portMappings`` capability (applied by the portmap plugin)."""

    host_port: Port = Field(validation_alias=_spellings("hostPort", "HostPort", "host_port"))
    container_port: Port = Field(
        validation_alias=_spellings("containerPort", "ContainerPort", "container_port")
    )
    protocol: Annotated[Literal["tcp", "udp", "sctp"], BeforeValidator(_lower)] = Field(
        default="tcp", validation_alias=_spellings("protocol", "Protocol")
    )
    host_ip: Annotated[StrictStr, AfterValidator(_host_ip)] = Field(
        default="", validation_alias=_spellings("hostIP", "HostIP", "hostIp", "host_ip")
    )


class Bandwidth(_ConfigModel):
    """The ``bandwidth`` capability: rates in bit/s, bursts in bits."""

    ingress_rate: NonNegative | None = None
    ingress_burst: NonNegative | None = None
    egress_rate: NonNegative | None = None
    egress_burst: NonNegative | None = None


class RuntimeConfig(_ConfigModel):
    """Per-container values the runtime fills in for capabilities the config declares."""

    port_mappings: list[PortMapping] = Field(default_factory=list)
    bandwidth: Bandwidth | None = None
    ips: list[AnyAddress] = Field(default_factory=list)
    mac: StrictStr | None = None


class PluginSettings(_ConfigModel):
    """vpc-cni's own keys: top level as a plugin, inside ``ipam`` as a delegated IPAM plugin."""

    daemon_socket: Annotated[StrictStr, rule(path_problem)] = DEFAULT_DAEMON_SOCKET
    mtu: Annotated[StrictInt, Field(ge=68, le=65535)] | None = None
    subnet: NonEmptyStr | None = None


class NetConf(PluginSettings):
    """The whole plugin config as the runtime passed it."""

    cni_version: StrictStr
    name: Annotated[StrictStr, rule(network_name_problem)]
    type: NonEmptyStr
    ipam: dict[str, Any] | None = None
    runtime_config: RuntimeConfig = Field(default_factory=RuntimeConfig)
    prev_result: Result | None = None
    args: dict[str, Any] = Field(default_factory=dict)


# Keys of PluginSettings in either spelling; in IPAM-only mode the top-level ones belong
# to the delegating plugin (Cilium has its own "mtu") and must not be read as ours.
_SETTINGS_KEYS = frozenset(
    key for name, field in PluginSettings.model_fields.items() for key in (name, field.alias) if key
)


def _validated(model: type[_M], data: dict[str, Any], root: str = "") -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, root) from None


def _ipam_type(raw: dict[str, Any]) -> Any:
    ipam = raw.get("ipam")
    return ipam.get("type") if isinstance(ipam, dict) else None


def load_netconf(raw: dict[str, Any]) -> tuple[NetConf, bool]:
    """Validates the config and tells whether vpc-cni runs as the plugin or only as its IPAM.

    Returns the config with vpc-cni's settings in place (from ``ipam`` in IPAM-only mode)
    and the IPAM-only flag.
    """
    if raw.get("type") != PLUGIN_TYPE and _ipam_type(raw) == PLUGIN_TYPE:
        settings = _validated(PluginSettings, raw["ipam"], root="ipam")
        outer = {key: value for key, value in raw.items() if key not in _SETTINGS_KEYS}
        conf = _validated(NetConf, outer)
        return conf.model_copy(update=dict(settings)), True
    conf = _validated(NetConf, raw)
    if conf.type != PLUGIN_TYPE:
        raise CniError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            f"invalid network config: type: must be {PLUGIN_TYPE!r}, "
            f"or ipam.type {PLUGIN_TYPE!r} for delegated IPAM (got {conf.type!r})",
        )
    ipam_type = _ipam_type(raw)
    if ipam_type not in (None, PLUGIN_TYPE):
        raise CniError(
            ErrorCode.UNSUPPORTED_FIELD,
            f"unsupported field ipam.type {ipam_type!r}",
            f"{PLUGIN_TYPE} allocates addresses itself: drop ipam or set its type to "
            f"{PLUGIN_TYPE!r}",
        )
    return conf, False
