"""Small pools and a hand-moved clock for the daemon's unit tests."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address

from vpc_cni.daemon.config import PoolConfig


class FakeClock:
    """Time that only moves when the test says so (cooldown is about time)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def one_eni_pool(addresses: Iterable[IPv4Address | str]) -> PoolConfig:
    """One ENI (eni-a, 10.0.0.10/16) with one subnet (subnet-a, table 101) holding
    `addresses`."""
    return PoolConfig.model_validate(
        {
            "enis": [
                {
                    "id": "eni-a",
                    "mac": "fa:16:3e:00:00:01",
                    "primaryIp": "10.0.0.10/16",
                    "subnets": [
                        {
                            "id": "subnet-a",
                            "cidr": "10.0.0.0/16",
                            "gateway": "10.0.0.1",
                            "routeTable": 101,
                            "addresses": [str(a) for a in addresses],
                        }
                    ],
                }
            ]
        }
    )
