"""Daemon configuration: what a valid file gives, and that every mistake names its field."""

from __future__ import annotations

import copy
import json
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from vpc_cni.daemon.config import ConfigError, load_config, parse_config

VALID: dict[str, Any] = {
    "socket": "/run/vpc-cni/cni.sock",
    "stateDir": "/var/lib/vpc-cni",
    "hostNetns": None,
    "cooldownSeconds": 30,
    "blockMetadata": False,
    "pool": {
        "enis": [
            {
                "id": "port-1",
                "mac": "FA:16:3E:00:00:01",
                "primaryIp": "10.0.1.10/24",
                "mtu": 1450,
                "subnets": [
                    {
                        "id": "subnet-a",
                        "cidr": "10.0.1.0/24",
                        "gateway": "10.0.1.1",
                        "routeTable": 101,
                        "addresses": ["10.0.1.20", "10.0.1.21"],
                    }
                ],
            }
        ]
    },
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """VALID with one dotted path replaced (list indexes as numbers)."""
    data = copy.deepcopy(VALID)
    node: Any = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[parts[-1]] = value
    return data


def test_valid_config_in_both_formats(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text(json.dumps(VALID))
    yaml_text = json.dumps(VALID)  # JSON is YAML; the .yaml suffix takes the YAML path
    (tmp_path / "d.yaml").write_text(yaml_text)
    for name in ("d.json", "d.yaml"):
        config = load_config(tmp_path / name)
        eni = config.pool.enis[0]
        assert eni.mac == "fa:16:3e:00:00:01"
        assert eni.subnets[0].addresses == [IPv4Address("10.0.1.20"), IPv4Address("10.0.1.21")]
        assert config.cooldown_seconds == 30


def test_defaults_from_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").write_text("")
    config = load_config(tmp_path / "d.yaml")
    assert str(config.socket) == "/run/vpc-cni/cni.sock"
    assert str(config.state_dir) == "/var/lib/vpc-cni"
    assert config.host_netns is None
    assert config.cooldown_seconds == 30
    assert config.pool.enis == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("socket", "relative.sock", "socket: Value error, relative.sock must be an absolute"),
        ("cooldownSeconds", -1, "cooldownSeconds"),
        ("cooldwnSeconds", 5, "cooldwnSeconds: Extra inputs are not permitted"),
        ("pool.enis.0.mac", "zz:16", "pool.enis.0.mac"),
        ("pool.enis.0.primaryIp", "10.0.1.300/24", "pool.enis.0.primaryIp"),
        ("pool.enis.0.mtu", 100, "pool.enis.0.mtu"),
        ("pool.enis.0.subnets.0.gateway", "10.0.2.1", "gateway 10.0.2.1 is not in 10.0.1.0/24"),
        ("pool.enis.0.subnets.0.routeTable", 254, "table 254 is reserved"),
        ("pool.enis.0.subnets.0.addresses", ["10.0.9.9"], "address 10.0.9.9 is not in"),
        ("pool.enis.0.subnets.0.addresses", ["10.0.1.1"], "10.0.1.1 is the gateway"),
        ("pool.enis.0.subnets.0.addresses", ["10.0.1.5", "10.0.1.5"], "duplicate address"),
    ],
)
def test_bad_field_is_named(path: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_change(path, value), "test.yaml")
    assert str(caught.value).startswith("test.yaml: ")
    assert expected in str(caught.value)


def test_duplicate_address_across_enis_is_rejected() -> None:
    data = copy.deepcopy(VALID)
    second = copy.deepcopy(data["pool"]["enis"][0])
    second.update(id="port-2", mac="fa:16:3e:00:00:02")
    second["subnets"][0].update(id="subnet-b", routeTable=102)
    data["pool"]["enis"].append(second)
    with pytest.raises(ConfigError, match=r"duplicate pool address 10\.0\.1\.20"):
        parse_config(data, "x")


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bad.json", "{nope", "not valid JSON"),
        ("bad.yaml", "a: [1, 2", "not valid YAML"),
        ("list.yaml", "- 1\n- 2\n", "expected a mapping"),
    ],
)
def test_unreadable_documents(tmp_path: Path, name: str, text: str, expected: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(tmp_path / name)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
