"""Failover between two real controller processes (``vpcctl controller``), with the
leader SIGKILLed while Neutron has created its ENI port but the answer is still held
at the proxy: the standby takes the Lease only once it expired, adopts the tagged
port the dead leader never recorded, and Neutron ends with no duplicate and no
orphan."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio.client import CoordinationV1Api, V1Lease

from tests.fixtures.cloud_proxy import Rule
from tests.fixtures.controller import ControllerEnv
from tests.fixtures.controller_run import assert_neutron_agrees, wait_for_pool
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.neutron import Cloud
from vpc_cni.cloud.tags import OWNER, node_tag

pytestmark = pytest.mark.root

VPCCTL = Path(sys.executable).with_name("vpcctl")
LEASE_NAMESPACE = "default"
LEASE_SECONDS = 4


@dataclass
class Replica:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def leads_as(self, identity: str) -> bool:
        return f"{identity} leads " in self.log.read_text(errors="replace")


StartReplica = Callable[[str], Replica]


@pytest.fixture
def start_replica(
    ctl: ControllerEnv, cloud: Cloud, kube_api: KubeApi, tmp_path: Path, prefix: str
) -> Iterator[StartReplica]:
    """``start_replica("a")``: a ``vpcctl controller`` process on ``ctl``'s cluster,
    SIGKILLed and reaped afterwards whatever happened."""
    config = tmp_path / f"{prefix}-controller.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "clusterName": ctl.config.cluster_name,
                "cloud": {"networkEndpoint": ctl.proxy.url, "computeEndpoint": cloud.nova.url},
                "watermarks": ctl.config.watermarks.wire(),
                "resyncSeconds": 2,
                "leaseSeconds": LEASE_SECONDS,
                "leaseRenewSeconds": 3,
                "leaseRetrySeconds": 0.5,
            }
        )
    )
    started: list[Replica] = []

    def start(name: str) -> Replica:
        log = tmp_path / f"{prefix}-controller-{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    str(VPCCTL),
                    "controller",
                    "--config",
                    str(config),
                    "--kubeconfig",
                    str(kube_api.kubeconfig),
                    "--lease-namespace",
                    LEASE_NAMESPACE,
                    "--metrics-port",
                    "0",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        started.append(Replica(name, process, log))
        return started[-1]

    try:
        yield start
    finally:
        for replica in started:
            if replica.process.poll() is None:
                replica.process.kill()
            replica.process.wait()


async def test_standby_takes_over_and_adopts_the_port_of_a_killed_leader(
    ctl: ControllerEnv, start_replica: StartReplica, kube_client
):
    held = threading.Event()
    create = ctl.proxy.add_rule(Rule("POST", r"^/v2\.0/ports$", hold=held, times=1))
    replicas = [start_replica("a"), start_replica("b")]
    leases = CoordinationV1Api(kube_client)
    lease_name = f"vpc-cni-controller-{ctl.config.cluster_name}"

    async def lease() -> V1Lease | None:
        found = await leases.read_namespaced_lease(lease_name, LEASE_NAMESPACE)
        return found if found.spec.holder_identity else None

    first = await eventually(lease, "a replica to lead")
    # the leader's ENI create has reached Neutron, and its answer is held back
    assert await asyncio.to_thread(create.reached.wait, 120), "the leader never created its ENI"

    async def created() -> list | None:
        ports = await ctl.ports.list(tags=[OWNER, node_tag(ctl.node)])
        return ports or None

    [orphan] = await eventually(created, "the ENI port on Neutron")
    [leader] = [r for r in replicas if r.leads_as(first.spec.holder_identity)]
    [standby] = [r for r in replicas if r is not leader]
    leader.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    leader.process.wait()
    held.set()  # the answer now goes to a dead connection
    # the dead leader's last renewal (a lease can expire no sooner than this + duration)
    last = await leases.read_namespaced_lease(lease_name, LEASE_NAMESPACE)
    assert last.spec.holder_identity == first.spec.holder_identity

    async def taken_over() -> V1Lease | None:
        found = await lease()
        if found is None or found.spec.holder_identity == first.spec.holder_identity:
            return None
        return found

    second = await eventually(taken_over, "the standby to take the lease")
    takeover = time.monotonic() - killed_at
    print(f"takeover {takeover:.2f} s after SIGKILL (lease {LEASE_SECONDS} s)")
    assert standby.leads_as(second.spec.holder_identity)
    # never early: the dead leader's lease ran out before the standby took it
    assert (second.spec.acquire_time - last.spec.renew_time).total_seconds() >= LEASE_SECONDS
    assert second.spec.lease_transitions == (first.spec.lease_transitions or 0) + 1

    await wait_for_pool(ctl, ctl.node, 6)
    spec = await ctl.spec()
    assert spec.enis[0].port_id == orphan.id  # adopted, not created again
    await assert_neutron_agrees(ctl, [ctl.node])
    assert standby.process.poll() is None
