"""Result conversion per spec version, and prevResult parsing of every version's shape."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import pytest

from vpc_cni.cni.errors import CniError, ErrorCode
from vpc_cni.cni.result import Interface, IPConfig, Result, Route, encode_result, parse_result
from vpc_cni.cni.versions import SUPPORTED_VERSIONS

LEGACY = ["0.3.0", "0.3.1", "0.4.0"]
CURRENT = ["1.0.0", "1.1.0"]


def pod_result() -> Result:
    """What the daemon returns for a pod: host veth, pod eth0, one /32, default route."""
    return Result(
        interfaces=[
            Interface(name="vpc4f2c0a1b", mac="02:00:00:00:00:01", mtu=1450),
            Interface(name="eth0", mac="02:00:00:00:00:02", sandbox="/run/netns/p", mtu=1450),
        ],
        ips=[
            IPConfig(
                address=IPv4Interface("10.0.1.20/32"),
                gateway=IPv4Address("169.254.1.1"),
                interface=1,
            )
        ],
        routes=[Route(dst=IPv4Network("0.0.0.0/0"), gw=IPv4Address("169.254.1.1"))],
        dns={"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
    )


def encoded(result: Result, version: str) -> dict[str, Any]:
    return json.loads(encode_result(result, version))


@pytest.mark.parametrize("version", LEGACY)
def test_legacy_versions_tag_ips_with_version_4(version: str) -> None:
    body = encoded(pod_result(), version)
    assert body["cniVersion"] == version
    assert body["ips"] == [
        {"version": "4", "address": "10.0.1.20/32", "gateway": "169.254.1.1", "interface": 1}
    ]
    assert all("mtu" not in interface for interface in body["interfaces"])


@pytest.mark.parametrize("version", CURRENT)
def test_current_versions_drop_the_ip_version(version: str) -> None:
    body = encoded(pod_result(), version)
    assert body["cniVersion"] == version
    assert body["ips"] == [{"address": "10.0.1.20/32", "gateway": "169.254.1.1", "interface": 1}]


def test_interface_mtu_only_from_1_1_0() -> None:
    assert [i.get("mtu") for i in encoded(pod_result(), "1.1.0")["interfaces"]] == [1450, 1450]
    assert all("mtu" not in i for i in encoded(pod_result(), "1.0.0")["interfaces"])


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_host_interface_has_no_sandbox_and_pod_interface_has_one(version: str) -> None:
    """portmap and bandwidth tell host from pod side by the sandbox field."""
    host, pod = encoded(pod_result(), version)["interfaces"]
    assert "sandbox" not in host
    assert pod["sandbox"] == "/run/netns/p"
    assert host["mac"] == "02:00:00:00:00:01"


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_routes_and_dns_are_kept(version: str) -> None:
    body = encoded(pod_result(), version)
    assert body["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
    assert body["dns"] == {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}


def test_ipam_only_result_has_ips_and_gateway_only() -> None:
    result = Result(ips=[IPConfig(address="10.0.1.21/24", gateway="10.0.1.1")])
    body = encoded(result, "1.0.0")
    assert body == {
        "cniVersion": "1.0.0",
        "ips": [{"address": "10.0.1.21/24", "gateway": "10.0.1.1"}],
        "dns": {},
    }


def test_encode_refuses_unsupported_version() -> None:
    with pytest.raises(CniError) as caught:
        encode_result(pod_result(), "0.2.0")
    assert caught.value.code == ErrorCode.INCOMPATIBLE_VERSION


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_version_parses_back_to_the_same_result(version: str) -> None:
    """Lossless except interface MTU, which versions before 1.1.0 cannot carry."""
    expected = pod_result()
    if version != "1.1.0":
        expected.interfaces = [i.model_copy(update={"mtu": None}) for i in expected.interfaces]
    assert parse_result(encoded(pod_result(), version)) == expected


def test_route_destination_host_bits_are_masked() -> None:
    result = parse_result({"routes": [{"dst": "10.0.1.7/24"}]})
    assert result.routes[0].dst == IPv4Network("10.0.1.0/24")


def test_unknown_result_keys_are_ignored() -> None:
    data = {
        "interfaces": [{"name": "eth0", "socketPath": "/x", "pciID": "0000:00:01.0"}],
        "routes": [{"dst": "0.0.0.0/0", "table": 100, "priority": 5}],
    }
    result = parse_result(data)
    assert result.interfaces[0].name == "eth0"


@pytest.mark.parametrize("data", [[], "x", None, 5])
def test_parse_result_refuses_non_objects(data: Any) -> None:
    with pytest.raises(CniError) as caught:
        parse_result(data)
    assert caught.value.code == ErrorCode.INVALID_NETWORK_CONFIG
    assert "prevResult" in caught.value.msg


def test_parse_result_names_every_bad_field() -> None:
    data = {"ips": [{"address": "10.0.1.5"}], "routes": [{"dst": "nowhere"}]}
    with pytest.raises(CniError) as caught:
        parse_result(data)
    assert "prevResult.ips[0].address" in caught.value.msg
    assert "prevResult.routes[0].dst" in caught.value.details


def test_go_nulls_in_a_result_mean_absent() -> None:
    data = {
        "cniVersion": "1.0.0",
        "interfaces": None,
        "ips": [{"address": "10.0.1.5/32", "gateway": None, "interface": None}],
        "routes": None,
        "dns": None,
    }
    assert parse_result(data) == Result(ips=[IPConfig(address="10.0.1.5/32")])
