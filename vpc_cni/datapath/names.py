"""Names and numbers every part of the datapath agrees on."""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address

from vpc_cni.datapath.model import DatapathError

# The pod's next hop: never on the wire, only answered by a permanent neighbour entry
# in the pod that points at the host veth (as Calico and aws-vpc-cni do).
POD_GATEWAY = IPv4Address("169.254.1.1")

# Policy-routing priorities, in the order the kernel consults them.
TO_POD_PRIORITY = 512
FWMARK_PRIORITY = 1024
FROM_POD_PRIORITY = 1536

MAIN_TABLE = 254

# Connection-mark bit for connections that entered by the primary NIC (hostPort,
# NodePort); replies carrying it are routed by the main table, back out the same NIC.
PRIMARY_CONNMARK = 0x80

# Every host-side veth starts with this, so nftables can match "from a pod" by name.
HOST_IFNAME_PREFIX = "vpc"

NFT_TABLE = "vpc_cni"

# The cloud's metadata service, which pods may be kept away from (setup_node).
METADATA_ADDRESS = IPv4Address("169.254.169.254")

_IFNAME_MAX = 15


def host_ifname(network: str, container_id: str, ifname: str) -> str:
    """Stable host veth name for one CNI key, so DEL and CHECK find what ADD made."""
    if not network or not container_id or not ifname:
        raise DatapathError(
            "host_ifname needs a network name, a container id and an interface name"
        )
    key = "\0".join((network, container_id, ifname)).encode()
    digest = hashlib.sha256(key).hexdigest()
    return HOST_IFNAME_PREFIX + digest[: _IFNAME_MAX - len(HOST_IFNAME_PREFIX)]


def check_ifname(name: str, what: str) -> None:
    """Reject names the kernel would refuse, before anything is created."""
    if not name or len(name) > _IFNAME_MAX or "/" in name or any(c.isspace() for c in name):
        raise DatapathError(f"{what} {name!r} is not a valid interface name (1-15 chars)")
