"""parse_request on well-formed calls as containerd, podman, Cilium and libcni make them."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from vpc_cni.cni.config import DEFAULT_DAEMON_SOCKET
from vpc_cni.cni.errors import CniError, ErrorCode
from vpc_cni.cni.request import Attachment, PodRef, error_version, parse_request

CONTAINERD_ARGS = (
    "K8S_POD_INFRA_CONTAINER_ID=4f2c;IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;"
    "K8S_POD_NAME=web-0;K8S_POD_UID=8d1c0c52-6f3e-4d2e-9d59-0e3f2c1a7b11"
)


def env(command: str = "ADD", **overrides: str) -> dict[str, str]:
    base = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "4f2c0a1b",
        "CNI_NETNS": "/var/run/netns/cni-1234",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": CONTAINERD_ARGS,
        "CNI_PATH": "/opt/cni/bin",
    }
    base.update(overrides)
    return base


def stdin(version: str = "1.0.0", **extra: Any) -> bytes:
    return json.dumps({"cniVersion": version, "name": "vpc", "type": "vpc-cni", **extra}).encode()


PREV_RESULT_031 = {
    "cniVersion": "0.4.0",
    "interfaces": [
        {"name": "vpc4f2c0a1b", "mac": "02:00:00:00:00:01"},
        {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/var/run/netns/cni-1234"},
    ],
    "ips": [{"version": "4", "address": "10.0.1.20/32", "gateway": "169.254.1.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
    "dns": {},
}


def test_containerd_add_carries_attachment_and_pod() -> None:
    request = parse_request(env(), stdin(subnet="subnet-a", mtu=1450))
    assert request.command == "ADD"
    assert request.cni_version == "1.0.0"
    assert request.network == "vpc"
    assert (request.container_id, request.netns, request.ifname) == (
        "4f2c0a1b",
        "/var/run/netns/cni-1234",
        "eth0",
    )
    assert request.pod == PodRef("shop", "web-0", "8d1c0c52-6f3e-4d2e-9d59-0e3f2c1a7b11")
    assert request.cni_args["K8S_POD_INFRA_CONTAINER_ID"] == "4f2c"
    assert request.config.subnet == "subnet-a"
    assert request.config.mtu == 1450
    assert request.config.daemon_socket == DEFAULT_DAEMON_SOCKET
    assert not request.ipam_only
    assert request.valid_attachments is None


def test_podman_args_without_namespace_give_no_pod() -> None:
    request = parse_request(env(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=nginx"), stdin())
    assert request.pod is None
    assert request.cni_args["K8S_POD_NAME"] == "nginx"


def test_pod_uid_is_optional() -> None:
    args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0"
    request = parse_request(env(CNI_ARGS=args), stdin())
    assert request.pod == PodRef("shop", "web-0", None)


def test_no_cni_args_at_all() -> None:
    request = parse_request(env(CNI_ARGS=""), stdin())
    assert request.pod is None
    assert dict(request.cni_args) == {}


def test_del_without_netns_or_prev_result() -> None:
    """containerd's second DEL: empty netns, no prevResult; must still parse."""
    request = parse_request(env("DEL", CNI_NETNS=""), stdin())
    assert request.netns == ""
    assert request.config.prev_result is None
    no_netns = {key: value for key, value in env("DEL").items() if key != "CNI_NETNS"}
    assert parse_request(no_netns, stdin()).netns == ""


def test_del_with_prev_result_of_legacy_version() -> None:
    request = parse_request(env("DEL"), stdin("0.4.0", prevResult=PREV_RESULT_031))
    prev = request.config.prev_result
    assert prev is not None
    assert [str(ip.address) for ip in prev.ips] == ["10.0.1.20/32"]
    assert prev.interfaces[1].sandbox == "/var/run/netns/cni-1234"


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_allowed_from_0_4_0(version: str) -> None:
    request = parse_request(env("CHECK"), stdin(version, prevResult=PREV_RESULT_031))
    assert request.command == "CHECK"
    assert request.config.prev_result is not None


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_reads_valid_attachments(key: str) -> None:
    attachments = [
        {"containerID": "4f2c0a1b", "ifname": "eth0"},
        {"containerID": "9a9a", "ifname": "net1"},
    ]
    request = parse_request({"CNI_COMMAND": "GC"}, stdin("1.1.0", **{key: attachments}))
    assert request.valid_attachments == (Attachment("4f2c0a1b", "eth0"), Attachment("9a9a", "net1"))
    assert (request.container_id, request.netns, request.ifname) == ("", "", "")


def test_gc_with_empty_list_means_nothing_is_valid() -> None:
    request = parse_request(
        {"CNI_COMMAND": "GC"}, stdin("1.1.0", **{"cni.dev/valid-attachments": []})
    )
    assert request.valid_attachments == ()


def test_gc_with_null_list_means_nothing_is_valid() -> None:
    """libcni marshals its nil list of valid attachments as null."""
    body = stdin("1.1.0", **{"cni.dev/valid-attachments": None, "cni.dev/attachments": None})
    assert parse_request({"CNI_COMMAND": "GC"}, body).valid_attachments == ()


def test_gc_ignores_attachment_env_vars() -> None:
    body = stdin("1.1.0", **{"cni.dev/valid-attachments": []})
    request = parse_request(env("GC", CNI_CONTAINERID="-not-checked-"), body)
    assert request.container_id == ""


def test_status_needs_only_the_command() -> None:
    request = parse_request({"CNI_COMMAND": "STATUS"}, stdin("1.1.0"))
    assert request.command == "STATUS"
    assert request.valid_attachments is None
    assert request.pod is None


def test_cilium_delegated_ipam_reads_settings_from_ipam() -> None:
    """Cilium's own top-level keys (its mtu among them) are not vpc-cni's settings."""
    config = {
        "cniVersion": "1.0.0",
        "name": "cilium",
        "type": "cilium-cni",
        "mtu": 9000,
        "enable-debug": True,
        "ipam": {"type": "vpc-cni", "daemonSocket": "/run/lab/v1.sock", "subnet": "blue"},
    }
    request = parse_request(env(), json.dumps(config).encode())
    assert request.ipam_only
    assert request.network == "cilium"
    assert request.config.type == "cilium-cni"
    assert request.config.daemon_socket == "/run/lab/v1.sock"
    assert request.config.subnet == "blue"
    assert request.config.mtu is None


def test_plugin_mode_accepts_ipam_naming_itself() -> None:
    request = parse_request(env(), stdin(ipam={"type": "vpc-cni"}))
    assert not request.ipam_only


def test_unknown_top_level_keys_are_ignored() -> None:
    extra = {
        "capabilities": {"portMappings": True},
        "cniVersions": ["1.0.0"],
        "dns": {"nameservers": ["10.0.0.10"]},
        "somethingNew": [1, 2, {"x": None}],
    }
    assert parse_request(env(), stdin(**extra)).network == "vpc"


def test_edge_of_valid_names() -> None:
    request = parse_request(
        env(CNI_CONTAINERID="a_b.c-d", CNI_IFNAME="e" * 15), stdin(name="n.e_t-1")
    )
    assert request.container_id == "a_b.c-d"
    assert request.ifname == "e" * 15
    assert request.network == "n.e_t-1"


def test_version_is_left_to_the_executable() -> None:
    with pytest.raises(CniError) as caught:
        parse_request({"CNI_COMMAND": "VERSION"}, stdin())
    assert caught.value.code == ErrorCode.INVALID_ENVIRONMENT
    assert "VERSION" in caught.value.msg


def test_request_is_immutable() -> None:
    request = parse_request(env(), stdin())
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.ifname = "eth1"  # type: ignore[misc]
    with pytest.raises(TypeError):
        request.cni_args["K8S_POD_NAME"] = "other"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (stdin("0.3.1"), "0.3.1"),
        (stdin("1.1.0", name="bad name"), "1.1.0"),
        (stdin("0.2.0"), "1.0.0"),
        (b'{"cniVersion": 1}', "1.0.0"),
        (b"\xff\xfe", "1.0.0"),
        (b"[]", "1.0.0"),
        (b"", "1.0.0"),
    ],
)
def test_error_version_prefers_the_configs_own(body: bytes, expected: str) -> None:
    assert error_version(body) == expected


def test_null_cni_version_is_a_missing_one() -> None:
    with pytest.raises(CniError) as caught:
        parse_request(env(), stdin(None))  # type: ignore[arg-type]
    assert caught.value.code == ErrorCode.INCOMPATIBLE_VERSION
    assert "cniVersion is missing" in caught.value.msg
