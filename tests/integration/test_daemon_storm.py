"""A storm of concurrent ADD/DEL over a small pool: no address twice, nothing leaked.

200 pods race for 20 addresses (cooldown 0.2 s). Each retries ADD on "try again later"
as a runtime would, holds its address for a moment, and deletes. Ownership is checked
in the kernel: when a pod's ADD returns, the address is read from inside its netns and
registered; it stays registered until just before its DEL. Only DEL removes a pod's
address, so two pods registered with the same address at once means the kernel had it
in two namespaces at once.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface

from tests.fixtures.daemon import Cluster, host_veths, pod_addresses

PODS = 200
POOL = 20
ADD_ATTEMPTS = 200


class Registry:
    """Which pod holds which address right now, as read from the kernel."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders: dict[IPv4Address, str] = {}
        self.conflicts: list[str] = []

    def take(self, address: IPv4Address, pod: str) -> None:
        with self.lock:
            if address in self.holders:
                self.conflicts.append(f"{address} in {pod} while {self.holders[address]} has it")
            self.holders[address] = pod

    def give_back(self, address: IPv4Address, pod: str) -> None:
        with self.lock:
            if self.holders.get(address) == pod:
                del self.holders[address]


def test_storm_never_shares_an_address(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(pool_size=POOL, cooldown=0.2, running=1)
    node, daemon = cluster.node(0)
    conf = cluster.cni.conf(daemon)
    sandboxes = [cluster.pods.create() for _ in range(PODS)]
    registry = Registry()
    errors: list[str] = []
    outcomes = {"added": 0, "try_again": 0}
    outcome_lock = threading.Lock()
    start = threading.Barrier(PODS)

    def pod(n: int) -> None:
        try:
            run_pod(n)
        except Exception as error:  # a dead thread must fail the test, not vanish
            errors.append(f"storm-{n}: {error!r}")

    def run_pod(n: int) -> None:
        rng = random.Random(n)
        name, netns = f"storm-{n}", sandboxes[n]
        start.wait()
        for _ in range(ADD_ATTEMPTS):
            reply = cluster.cni.call("ADD", conf, name, netns)
            if reply.code == 0:
                break
            if reply.json["code"] != 11:
                errors.append(f"{name}: ADD {reply.stdout}")
                return
            with outcome_lock:
                outcomes["try_again"] += 1
            threading.Event().wait(rng.uniform(0.02, 0.2))  # runtime-style backoff
        else:
            return
        with outcome_lock:
            outcomes["added"] += 1
        address = IPv4Interface(reply.json["ips"][0]["address"]).ip
        in_kernel = pod_addresses(netns)
        if in_kernel != {address}:
            errors.append(f"{name}: result {address} but kernel has {in_kernel}")
        registry.take(address, name)
        if rng.random() < 0.2:  # a repeated ADD in the middle of the storm
            again = cluster.cni.call("ADD", conf, name, netns)
            if again.json != reply.json:
                errors.append(f"{name}: repeated ADD gave {again.stdout}")
        threading.Event().wait(rng.uniform(0, 0.05))
        registry.give_back(address, name)
        for _ in range(2 if rng.random() < 0.3 else 1):  # containerd's double DEL
            deleted = cluster.cni.call("DEL", conf, name, netns)
            if deleted.code != 0:
                errors.append(f"{name}: DEL {deleted.stdout}")

    threads = [threading.Thread(target=pod, args=(n,)) for n in range(PODS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    print(f"storm: {outcomes['added']} ADDs succeeded after {outcomes['try_again']} try-agains")
    assert errors == []
    assert registry.conflicts == []
    assert outcomes["added"] >= 150, outcomes
    assert outcomes["try_again"] > 0  # the pool really was contended
    # Nothing leaked: no address in any pod, no host veth, no allocation.
    assert [ns for ns in sandboxes if pod_addresses(ns)] == []
    assert host_veths(node) == set()
    assert daemon.allocations() == {}
