"""Property tests: valid configs round-trip in every version; any input fails only as CniError."""

from __future__ import annotations

import json
import string
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpc_cni.cni.errors import CniError
from vpc_cni.cni.request import CniRequest, parse_request
from vpc_cni.cni.result import encode_result, parse_result
from vpc_cni.cni.versions import LEGACY_RESULT_VERSIONS, SUPPORTED_VERSIONS

# The machine is shared and noisy: no per-example deadline. No example database either:
# tests leave no files behind.
PATIENT = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

ATTACHMENT_ENV = {
    "CNI_CONTAINERID": "4f2c0a1b",
    "CNI_NETNS": "/run/netns/prop",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
}
COMMANDS = ["ADD", "DEL", "CHECK", "GC", "STATUS"]
KNOWN_KEYS = [
    "cniVersion",
    "name",
    "type",
    "mtu",
    "subnet",
    "daemonSocket",
    "ipam",
    "runtimeConfig",
    "prevResult",
    "args",
    "cni.dev/valid-attachments",
]

names = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]{0,30}", fullmatch=True)
ifnames = st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=15).filter(
    lambda name: name not in {".", ".."}
)
ipv4 = st.integers(0, 2**32 - 1).map(IPv4Address)
prefixes = st.integers(0, 32)
macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
    lambda octets: ":".join(f"{octet:02x}" for octet in octets)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=16,
)


@st.composite
def raw_results(draw: st.DrawFn, version: str) -> dict[str, Any]:
    """A result written by hand in ``version``'s shape (not by the code under test)."""
    interfaces = []
    for _ in range(draw(st.integers(0, 3))):
        interface: dict[str, Any] = {"name": draw(ifnames), "mac": draw(macs)}
        if draw(st.booleans()):
            interface["sandbox"] = "/run/netns/" + draw(names)
        if version == "1.1.0" and draw(st.booleans()):
            interface["mtu"] = draw(st.integers(68, 65535))
        interfaces.append(interface)
    ips = []
    for _ in range(draw(st.integers(0, 3))):
        ip: dict[str, Any] = {"address": f"{draw(ipv4)}/{draw(prefixes)}"}
        if version in LEGACY_RESULT_VERSIONS:
            ip["version"] = "4"
        if draw(st.booleans()):
            ip["gateway"] = str(draw(ipv4))
        if interfaces and draw(st.booleans()):
            ip["interface"] = draw(st.integers(0, len(interfaces) - 1))
        ips.append(ip)
    routes = []
    for _ in range(draw(st.integers(0, 3))):
        route = {"dst": str(IPv4Network((int(draw(ipv4)), draw(prefixes)), strict=False))}
        if draw(st.booleans()):
            route["gw"] = str(draw(ipv4))
        routes.append(route)
    dns = {"nameservers": [str(draw(ipv4))]} if draw(st.booleans()) else {}
    return {
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    }


@st.composite
def versions_and_results(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    version = draw(st.sampled_from(SUPPORTED_VERSIONS))
    return version, draw(raw_results(version))


@PATIENT
@given(versions_and_results(), names, st.sampled_from(["ADD", "DEL"]))
def test_valid_configs_round_trip_in_every_version(
    version_and_result: tuple[str, dict[str, Any]], network: str, command: str
) -> None:
    version, raw = version_and_result
    config = {"cniVersion": version, "name": network, "type": "vpc-cni", "prevResult": raw}
    request = parse_request({"CNI_COMMAND": command, **ATTACHMENT_ENV}, json.dumps(config).encode())
    prev = request.config.prev_result
    assert prev is not None
    assert [ip.address for ip in prev.ips] == [IPv4Interface(ip["address"]) for ip in raw["ips"]]
    assert [i.name for i in prev.interfaces] == [i["name"] for i in raw["interfaces"]]

    body = json.loads(encode_result(prev, version))
    assert body["cniVersion"] == version
    legacy = version in LEGACY_RESULT_VERSIONS
    assert all(("version" in ip) == legacy for ip in body.get("ips", []))
    assert parse_result(body) == prev


def _parses_or_cni_error(env: dict[str, str], stdin: bytes) -> None:
    try:
        request = parse_request(env, stdin)
    except CniError as error:
        assert error.code > 0
        assert error.msg
        json.loads(error.to_json("1.0.0"))
    else:
        assert isinstance(request, CniRequest)
        assert request.command == env["CNI_COMMAND"]


@PATIENT
@given(json_values, st.sampled_from(COMMANDS))
def test_any_json_document_fails_only_as_cni_error(value: Any, command: str) -> None:
    _parses_or_cni_error({"CNI_COMMAND": command, **ATTACHMENT_ENV}, json.dumps(value).encode())


@PATIENT
@given(
    st.sampled_from(KNOWN_KEYS),
    json_values,
    st.sampled_from(SUPPORTED_VERSIONS),
    st.sampled_from(COMMANDS),
)
def test_any_value_for_a_known_key_fails_only_as_cni_error(
    key: str, value: Any, version: str, command: str
) -> None:
    config = {"cniVersion": version, "name": "vpc", "type": "vpc-cni", key: value}
    _parses_or_cni_error({"CNI_COMMAND": command, **ATTACHMENT_ENV}, json.dumps(config).encode())


@PATIENT
@given(
    st.sampled_from(["hostPort", "HostPort", "containerPort", "protocol", "hostIP", "HostIP"]),
    json_values,
    st.sampled_from(["portMappings", "bandwidth", "ips"]),
)
def test_any_runtime_config_value_fails_only_as_cni_error(
    key: str, value: Any, capability: str
) -> None:
    entry = {"hostPort": 8080, "containerPort": 80, key: value}
    runtime = {capability: [entry] if capability != "bandwidth" else {"ingressRate": value}}
    config = {"cniVersion": "1.0.0", "name": "vpc", "type": "vpc-cni", "runtimeConfig": runtime}
    _parses_or_cni_error({"CNI_COMMAND": "ADD", **ATTACHMENT_ENV}, json.dumps(config).encode())


env_text = st.text(max_size=30) | st.sampled_from(["", "\udcff", "a\nb", "x" * 20])


@PATIENT
@given(
    st.sampled_from([*COMMANDS, "VERSION", "", "add"]),
    st.dictionaries(
        st.sampled_from(["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"]), env_text
    ),
    st.binary(max_size=200),
)
def test_any_environment_and_bytes_fail_only_as_cni_error(
    command: str, env: dict[str, str], stdin: bytes
) -> None:
    _parses_or_cni_error({"CNI_COMMAND": command, **env}, stdin)
