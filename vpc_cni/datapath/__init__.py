"""The node datapath: veths, addresses, routes, policy rules and neighbours (netlink).

Synchronous by design: the daemon calls it from a worker thread. ADD and DEL talk to
the host and pod namespaces through netlink sockets opened inside them; the rarer calls
do their work in a short-lived thread of their own inside the target namespace
(docs/datapath.md, "Threads and namespaces").
"""

from vpc_cni.datapath.announce import announce
from vpc_cni.datapath.check import check_pod
from vpc_cni.datapath.eni import (
    EniHealth,
    guard_eni,
    release_tables,
    setup_eni,
    teardown_eni,
)
from vpc_cni.datapath.model import (
    DatapathCheckError,
    DatapathError,
    EniLink,
    EniSpec,
    PodInterfaces,
    PodSpec,
    SubnetRoute,
)
from vpc_cni.datapath.names import host_ifname
from vpc_cni.datapath.node import repair_node, setup_node, teardown_node
from vpc_cni.datapath.pod import add_pod, del_pod
from vpc_cni.datapath.podrepair import missing_pod_pieces, repair_pod

__all__ = [
    "DatapathCheckError",
    "DatapathError",
    "EniHealth",
    "EniLink",
    "EniSpec",
    "PodInterfaces",
    "PodSpec",
    "SubnetRoute",
    "add_pod",
    "announce",
    "check_pod",
    "del_pod",
    "guard_eni",
    "host_ifname",
    "missing_pod_pieces",
    "release_tables",
    "repair_node",
    "repair_pod",
    "setup_eni",
    "setup_node",
    "teardown_eni",
    "teardown_node",
]
