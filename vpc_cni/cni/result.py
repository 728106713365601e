"""The CNI result: one model for every spec version, converted at the edges.

The daemon builds a ``Result`` without caring which version the runtime speaks;
``encode_result`` writes the shape that version expects and ``parse_result`` reads a
``prevResult`` written in any supported version.
"""

from __future__ import annotations

import json
from typing import Any, Self

from pydantic import Field, ValidationError, model_validator

from vpc_cni.cni.errors import CniError, ErrorCode
from vpc_cni.cni.fields import Address, CidrAddress, Network, NonEmptyStr, NonNegative
from vpc_cni.cni.model import CniModel
from vpc_cni.cni.validation import config_error
from vpc_cni.cni.versions import LEGACY_RESULT_VERSIONS, require_supported


class Interface(CniModel):
    """A link the plugin made: the host veth (no sandbox) or the pod's interface."""

    name: NonEmptyStr
    mac: str = ""
    sandbox: str = ""
    mtu: NonNegative | None = None


class IPConfig(CniModel):
    """An address given to the pod; ``interface`` indexes ``Result.interfaces``."""

    address: CidrAddress
    gateway: Address | None = None
    interface: NonNegative | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_version(cls, data: Any) -> Any:
        """0.3.x/0.4.0 results tag each entry with ``"version"``; only ``"4"`` fits here."""
        if isinstance(data, dict) and "version" in data:
            if data["version"] != "4":
                raise ValueError(f'version must be "4" (IPv4 only), got {data["version"]!r}')
            data = {key: value for key, value in data.items() if key != "version"}
        return data


class Route(CniModel):
    """A route in the pod; no ``gw`` means the interface's default gateway."""

    dst: Network
    gw: Address | None = None


class Result(CniModel):
    """What ADD returns and what later plugins pass back as ``prevResult``."""

    interfaces: list[Interface] = Field(default_factory=list)
    ips: list[IPConfig] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    dns: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _interface_indexes_exist(self) -> Self:
        """portmap and bandwidth follow these indexes; a dangling one breaks them silently."""
        for position, ip in enumerate(self.ips):
            if ip.interface is not None and ip.interface >= len(self.interfaces):
                raise ValueError(
                    f"ips[{position}].interface is {ip.interface} but there are only "
                    f"{len(self.interfaces)} interfaces"
                )
        return self


def _interface_json(interface: Interface, with_mtu: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"name": interface.name}
    if interface.mac:
        body["mac"] = interface.mac
    if with_mtu and interface.mtu is not None:
        body["mtu"] = interface.mtu
    if interface.sandbox:
        body["sandbox"] = interface.sandbox
    return body


def _ip_json(ip: IPConfig, legacy: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"version": "4"} if legacy else {}
    body["address"] = str(ip.address)
    if ip.gateway is not None:
        body["gateway"] = str(ip.gateway)
    if ip.interface is not None:
        body["interface"] = ip.interface
    return body


def _route_json(route: Route) -> dict[str, Any]:
    body: dict[str, Any] = {"dst": str(route.dst)}
    if route.gw is not None:
        body["gw"] = str(route.gw)
    return body


def result_json(result: Result, cni_version: str) -> dict[str, Any]:
    """The result as the JSON object of ``cni_version`` (empty lists left out, as libcni does)."""
    require_supported(cni_version)
    legacy = cni_version in LEGACY_RESULT_VERSIONS
    body: dict[str, Any] = {"cniVersion": cni_version}
    if result.interfaces:
        # Interface MTU entered the result in 1.1.0; older parsers would not expect it.
        with_mtu = cni_version == "1.1.0"
        body["interfaces"] = [_interface_json(i, with_mtu) for i in result.interfaces]
    if result.ips:
        body["ips"] = [_ip_json(ip, legacy) for ip in result.ips]
    if result.routes:
        body["routes"] = [_route_json(route) for route in result.routes]
    body["dns"] = result.dns
    return body


def encode_result(result: Result, cni_version: str) -> bytes:
    """The bytes to print on stdout for a successful ADD."""
    return json.dumps(result_json(result, cni_version)).encode()


def parse_result(data: dict[str, Any]) -> Result:
    """Reads a ``prevResult`` of any supported version; bad content is a code 7 error."""
    if not isinstance(data, dict):
        raise CniError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            "invalid network config: prevResult: must be a JSON object",
            f"got {type(data).__name__}",
        )
    try:
        return Result.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, root="prevResult") from None
