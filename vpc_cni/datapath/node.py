"""Once-per-node plumbing: replies to hostPort/NodePort connections leave by the primary NIC.

A connection that enters by the primary NIC and is DNATed to a pod gets a connmark;
the pod's replies get that mark restored as the packet mark, and a fwmark rule ahead
of the pods' from-rules sends them through main, i.e. back out of the primary NIC
that the client used (aws-vpc-cni does the same with iptables). Without it the reply
would leave by the pod's ENI with the node's address and be dropped by the cloud's
port security, or arrive from an address the client never talked to.

Optionally the same table blocks the metadata address for pods: their packets leave
from the node's port, so the cloud's metadata proxy would serve them the node's
user-data (and credentials in it).

`repair_node` looks for each of these pieces and, when one is gone (an operator's
`nft flush ruleset`, a firewall reload, `ip rule flush`), runs the set-up again.
"""

from __future__ import annotations

from pyroute2 import IPRoute

from vpc_cni.datapath.model import DatapathError
from vpc_cni.datapath.names import (
    FWMARK_PRIORITY,
    HOST_IFNAME_PREFIX,
    MAIN_TABLE,
    METADATA_ADDRESS,
    NFT_TABLE,
    PRIMARY_CONNMARK,
    check_ifname,
)
from vpc_cni.datapath.netns import read_sysctl, run_in_netns, write_sysctl
from vpc_cni.datapath.nft import nft_json, run_nft
from vpc_cni.datapath.rtnl import link_by_index, remove_quietly, rtnl, rules_at, step

# Refuse at once (the pod sees EHOSTUNREACH) rather than let clients time out.
_REJECT = "reject with icmp type admin-prohibited"


def setup_node(
    host_netns: str | None, primary_ifname: str | None = None, *, block_metadata: bool = False
) -> None:
    """Install the connmark plumbing (and the metadata block) and node sysctls; idempotent."""
    if primary_ifname is not None:
        check_ifname(primary_ifname, "primary interface name")
    run_in_netns(host_netns, _setup_node_here, primary_ifname, block_metadata)


def repair_node(
    host_netns: str | None, primary_ifname: str | None = None, *, block_metadata: bool = False
) -> tuple[str, ...]:
    """Put back what setup_node made if any of it is gone; returns the missing pieces."""
    if primary_ifname is not None:
        check_ifname(primary_ifname, "primary interface name")
    return run_in_netns(host_netns, _repair_node_here, primary_ifname, block_metadata)


def teardown_node(host_netns: str | None) -> None:
    """Remove what setup_node made; repeatable."""
    run_in_netns(host_netns, _teardown_node_here)


def nft_ruleset(primary_ifname: str, block_metadata: bool) -> str:
    """The vpc_cni table, replaced as a whole in one nft transaction."""
    mark = f"{PRIMARY_CONNMARK:#x}"
    metadata = (
        f"""
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{HOST_IFNAME_PREFIX}*" ip daddr {METADATA_ADDRESS} {_REJECT}
    }}"""
        if block_metadata
        else ""
    )
    return f"""
table ip {NFT_TABLE}
delete table ip {NFT_TABLE}
table ip {NFT_TABLE} {{
    chain prerouting {{
        type filter hook prerouting priority mangle; policy accept;
        iifname "{primary_ifname}" fib daddr type local ct mark set ct mark | {mark}
        iifname "{HOST_IFNAME_PREFIX}*" ct mark & {mark} == {mark} meta mark set meta mark | {mark}
    }}{metadata}
}}
"""


def primary_interface(ipr: IPRoute) -> str:
    """The interface of main's default route: the NIC node traffic uses."""
    for route in ipr.route("dump", table=MAIN_TABLE, family=2):
        if route["dst_len"] == 0 and route.get("oif"):
            link = link_by_index(ipr, route.get("oif"))
            if link is not None:
                return link.get("ifname")
    raise DatapathError("no default route in the main table to find the primary interface by")


def _fwmark_rules(ipr: IPRoute) -> list:
    return [r for r in rules_at(ipr, FWMARK_PRIORITY) if r.get("fwmark") == PRIMARY_CONNMARK]


def _setup_node_here(primary_ifname: str | None, block_metadata: bool) -> None:
    with rtnl() as ipr:
        primary = primary_ifname or primary_interface(ipr)
        write_sysctl("2", "net", "ipv4", "conf", primary, "rp_filter")
        write_sysctl("1", "net", "ipv4", "conf", "all", "forwarding")
        run_nft(nft_ruleset(primary, block_metadata))
        if not _fwmark_rules(ipr):
            with step(f"add rule fwmark {PRIMARY_CONNMARK:#x} lookup main"):
                ipr.rule(
                    "add",
                    priority=FWMARK_PRIORITY,
                    table=MAIN_TABLE,
                    fwmark=PRIMARY_CONNMARK,
                    fwmask=PRIMARY_CONNMARK,
                )


def _nft_rule_count() -> int | None:
    """Rules in our nft table, None if the table is gone."""
    try:
        found = nft_json("list", "table", "ip", NFT_TABLE)
    except DatapathError:
        return None
    return sum(1 for obj in found if "rule" in obj)


def _repair_node_here(primary_ifname: str | None, block_metadata: bool) -> tuple[str, ...]:
    missing = []
    with rtnl() as ipr:
        primary = primary_ifname or primary_interface(ipr)
        if not _fwmark_rules(ipr):
            missing.append(f"rule fwmark {PRIMARY_CONNMARK:#x} lookup main")
    if read_sysctl("net", "ipv4", "conf", primary, "rp_filter") != "2":
        missing.append(f"sysctl net.ipv4.conf.{primary}.rp_filter=2")
    if read_sysctl("net", "ipv4", "conf", "all", "forwarding") != "1":
        missing.append("sysctl net.ipv4.conf.all.forwarding=1")
    rules = _nft_rule_count()
    if rules != 2 + int(block_metadata):
        missing.append(f"nft table ip {NFT_TABLE}" + (f" ({rules} rules)" if rules else ""))
    if missing:
        _setup_node_here(primary, block_metadata)
    return tuple(missing)


def _teardown_node_here() -> None:
    run_nft(f"table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n")
    with rtnl() as ipr:
        for rule in _fwmark_rules(ipr):
            remove_quietly(
                "remove fwmark rule",
                ipr.rule,
                "del",
                priority=FWMARK_PRIORITY,
                table=MAIN_TABLE,
                fwmark=rule.get("fwmark"),
                fwmask=rule.get("fwmask"),
            )
