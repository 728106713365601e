"""A StaticIP's address follows its owner pod: back at once on the same node despite
the cooldown, and, moved to another node, announced so the fabric (the SDN) sends it
there and a third namespace reaches it.

Two cluster-mode daemons on two lab nodes and a third node as the observer. The test
plays the controller: it moves the address from node A's `staticAddresses` to node
B's, and, as Neutron, the address pair from A's ENI port to B's. The pods' nodes have
no pool addresses at all, so a pod that did not get its static address gets nothing.
"""

from __future__ import annotations

import pytest

from tests.fixtures.cluster_node import ClusterNode
from tests.fixtures.cluster_nodes import STATIC_ADDRESS, LabNodes, lab_nodes_fixture  # noqa: F401
from tests.fixtures.daemon import pod_addresses
from tests.fixtures.kube import eventually
from tests.fixtures.netns import ns_run, ping_ok, wait_for

POD = "db-0"


async def hold_static(lab: LabNodes, env: ClusterNode) -> None:
    """The controller's placement on `env`'s node: the pair on its ENI port, the
    address in its staticAddresses; taken off every other node."""
    for other in lab.nodes:
        here = other is env
        lab.place(other, pairs=[STATIC_ADDRESS] if here else [])
        await lab.set_spec(other, [], static=[STATIC_ADDRESS] if here else [])


def reachable_from_observer(lab: LabNodes) -> bool:
    ns_run(lab.observer.netns, "ip", "neigh", "flush", "all", check=False)
    return ping_ok(lab.observer.netns, STATIC_ADDRESS)


@pytest.mark.parametrize("lab_nodes", [{"daemons": 2, "cooldown": 600.0}], indirect=True)
async def test_static_ip_comes_back_despite_cooldown_and_follows_its_pod(
    lab_nodes: LabNodes,
) -> None:
    lab = lab_nodes
    node_a, node_b = lab.nodes
    fabric = lab.topology.fabric
    await lab.make_vpc_subnet("main", "subnet-pods", default=True)
    await lab.make_static_ip("db-0-ip", STATIC_ADDRESS, {"statefulSet": "db", "ordinal": 0})
    await hold_static(lab, node_a)
    node_a.daemon.start()
    node_b.daemon.start()
    await lab.make_pod(POD, node_a)

    # The daemon may not have seen the StaticIP yet; the empty pool then refuses.
    async def added() -> bool | None:
        return node_a.add(POD, lab.namespace).code == 0 or None

    await eventually(added, "the owner's ADD on node A")
    assert pod_addresses(node_a.netns_of[POD]) == {STATIC_ADDRESS}
    wait_for(lambda: fabric.holder(STATIC_ADDRESS) == node_a.node.eni_port, "announced on A")
    wait_for(lambda: reachable_from_observer(lab), "the address reachable on A")

    # Deleted and recreated on the same node: a new sandbox gets the address at once,
    # although released addresses rest 600 s here.
    node_a.delete(POD)
    await lab.delete_pod(POD)
    await lab.make_pod(POD, node_a)
    again = node_a.added(POD, lab.namespace, container="ctr-db-0-again")
    assert again == STATIC_ADDRESS

    # The pod moves: its sandbox on A goes, the controller moves the pair to B.
    node_a.delete(POD, container="ctr-db-0-again")
    await node_a.status_when(lambda s: not s.in_use, "A no longer reports the address")
    await lab.delete_pod(POD)
    await hold_static(lab, node_b)
    await lab.make_pod(POD, node_b)
    assert node_b.added(POD, lab.namespace) == STATIC_ADDRESS
    assert pod_addresses(node_b.netns_of[POD]) == {STATIC_ADDRESS}
    wait_for(lambda: fabric.holder(STATIC_ADDRESS) == node_b.node.eni_port, "announced on B")
    wait_for(lambda: reachable_from_observer(lab), "the address reachable on B")
    status = await node_b.status_when(lambda s: bool(s.in_use), "B reports the address")
    assert [(u.address, u.pod) for u in status.in_use] == [
        (STATIC_ADDRESS, f"{lab.namespace}/{POD}")
    ]
