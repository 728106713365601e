"""The port cache's rules: expiry at max_age, the newer revision wins, 0 is off."""

from __future__ import annotations

import pytest

from vpc_cni.cloud.portcache import PortCache
from vpc_cni.cloud.ports import Port


def port(revision: int, port_id: str = "p1") -> Port:
    return Port(
        id=port_id,
        name="eni",
        network_id="net",
        mac="fa:16:3e:00:00:01",
        revision=revision,
        fixed_ips=(),
        address_pairs=(),
        tags=(),
        device_id="",
        device_owner="",
        security_groups=(),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_serves_until_max_age_then_goes():
    clock = Clock()
    cache = PortCache(30.0, clock)
    cache.remember([port(3)])
    clock.now += 30.0
    assert cache.fresh("p1") == port(3)
    clock.now += 0.5
    assert cache.fresh("p1") is None
    assert len(cache) == 0


def test_an_older_answer_does_not_replace_a_newer_one():
    cache = PortCache(30.0, Clock())
    cache.remember([port(5)])
    cache.remember([port(4)])  # a slow GET that started before our PUT
    assert cache.fresh("p1").revision == 5
    cache.remember([port(7)])
    assert cache.fresh("p1").revision == 7


def test_a_newer_answer_restarts_the_age():
    clock = Clock()
    cache = PortCache(30.0, clock)
    cache.remember([port(1)])
    clock.now += 20.0
    cache.remember([port(1)])
    clock.now += 20.0
    assert cache.fresh("p1") == port(1)


def test_clear_forgets_everything():
    cache = PortCache(30.0, Clock())
    cache.remember([port(1, "gone"), port(9, "p1")])
    cache.clear()
    assert cache.fresh("gone") is None
    cache.remember([port(2, "p1")])  # an older revision is taken after a clear
    assert cache.fresh("p1").revision == 2
    assert len(cache) == 1


def test_forget_and_zero_age():
    cache = PortCache(30.0, Clock())
    cache.remember([port(1)])
    cache.forget("p1")
    cache.forget("never-seen")
    assert cache.fresh("p1") is None
    off = PortCache(0.0, Clock())
    off.remember([port(1)])
    assert off.fresh("p1") is None


def test_negative_age_is_refused():
    with pytest.raises(ValueError, match="max_age"):
        PortCache(-1.0)
