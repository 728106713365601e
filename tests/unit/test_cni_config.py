"""The network config model: runtimeConfig spellings, defaults, settings checks."""

from __future__ import annotations

from ipaddress import IPv4Interface
from typing import Any

import pytest

from vpc_cni.cni.config import DEFAULT_DAEMON_SOCKET, PortMapping, load_netconf
from vpc_cni.cni.errors import CniError, ErrorCode


def conf(**extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "vpc", "type": "vpc-cni", **extra}


def test_port_mappings_in_podman_and_cri_spelling_are_equal() -> None:
    podman = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "10.0.0.1"}
    cri = {"HostPort": 8080, "ContainerPort": 80, "Protocol": "TCP", "HostIP": "10.0.0.1"}
    config, _ = load_netconf(conf(runtimeConfig={"portMappings": [podman, cri]}))
    first, second = config.runtime_config.port_mappings
    assert (
        first
        == second
        == PortMapping(host_port=8080, container_port=80, protocol="tcp", host_ip="10.0.0.1")
    )


def test_port_mapping_defaults() -> None:
    config, _ = load_netconf(
        conf(runtimeConfig={"portMappings": [{"HostPort": 53, "ContainerPort": 53}]})
    )
    mapping = config.runtime_config.port_mappings[0]
    assert (mapping.protocol, mapping.host_ip) == ("tcp", "")


def test_bandwidth_and_static_ips() -> None:
    runtime = {
        "bandwidth": {"ingressRate": 1000000, "ingressBurst": 0, "egressRate": 5},
        "ips": ["10.0.1.30/24", "10.0.1.31"],
    }
    config, _ = load_netconf(conf(runtimeConfig=runtime))
    bandwidth = config.runtime_config.bandwidth
    assert bandwidth is not None
    assert (bandwidth.ingress_rate, bandwidth.ingress_burst, bandwidth.egress_rate) == (
        1000000,
        0,
        5,
    )
    assert bandwidth.egress_burst is None
    assert config.runtime_config.ips == [
        IPv4Interface("10.0.1.30/24"),
        IPv4Interface("10.0.1.31/32"),
    ]


def test_defaults() -> None:
    config, ipam_only = load_netconf(conf())
    assert not ipam_only
    assert config.daemon_socket == DEFAULT_DAEMON_SOCKET
    assert (config.mtu, config.subnet, config.ipam, config.prev_result) == (None, None, None, None)
    assert config.runtime_config.port_mappings == []
    assert config.args == {}


def test_python_names_work_as_well_as_json_names() -> None:
    config, _ = load_netconf(
        {"cni_version": "1.0.0", "name": "vpc", "type": "vpc-cni", "daemon_socket": "/run/x.sock"}
    )
    assert config.cni_version == "1.0.0"
    assert config.daemon_socket == "/run/x.sock"


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"daemonSocket": "run/vpc-cni/cni.sock"}, "daemonSocket"),
        ({"daemonSocket": 5}, "daemonSocket"),
        ({"mtu": 65536}, "mtu"),
        ({"mtu": 67}, "mtu"),
    ],
)
def test_bad_settings_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(CniError) as caught:
        load_netconf(conf(**settings))
    assert caught.value.code == ErrorCode.INVALID_NETWORK_CONFIG
    assert caught.value.msg.startswith(f"invalid network config: {field}: ")


@pytest.mark.parametrize("mtu", [68, 1500, 9000, 65535])
def test_mtu_range(mtu: int) -> None:
    config, _ = load_netconf(conf(mtu=mtu))
    assert config.mtu == mtu


def test_ipam_only_bad_socket_is_named_under_ipam() -> None:
    with pytest.raises(CniError) as caught:
        load_netconf(conf(type="cilium-cni", ipam={"type": "vpc-cni", "daemonSocket": "x"}))
    assert "ipam.daemonSocket" in caught.value.msg


def test_config_is_immutable() -> None:
    config, _ = load_netconf(conf())
    with pytest.raises(ValueError, match="frozen"):
        config.name = "other"  # type: ignore[misc]


def test_daemon_socket_with_control_character_is_refused() -> None:
    with pytest.raises(CniError) as caught:
        load_netconf(conf(daemonSocket="/run/vpc-cni/cni.sock\n"))
    assert "daemonSocket" in caught.value.msg
    assert "control characters" in caught.value.msg


def test_go_nulls_mean_absent() -> None:
    """containerd marshals a pod without hostPorts as ``"portMappings": null``."""
    config, _ = load_netconf(
        conf(
            mtu=None,
            subnet=None,
            ipam=None,
            args=None,
            prevResult=None,
            daemonSocket=None,
            runtimeConfig={
                "portMappings": None,
                "bandwidth": None,
                "ips": None,
                "mac": None,
            },
        )
    )
    assert config.runtime_config.port_mappings == []
    assert config.runtime_config.bandwidth is None
    assert config.args == {}
    assert config.daemon_socket == DEFAULT_DAEMON_SOCKET
    mapping = {"HostPort": 80, "ContainerPort": 8080, "Protocol": None, "HostIP": None}
    config, _ = load_netconf(conf(runtimeConfig={"portMappings": [mapping]}))
    assert config.runtime_config.port_mappings[0].protocol == "tcp"
    assert config.runtime_config.port_mappings[0].host_ip == ""


def test_null_required_field_is_reported_as_missing() -> None:
    with pytest.raises(CniError) as caught:
        load_netconf(conf(name=None))
    assert caught.value.msg == "invalid network config: name: field required"
