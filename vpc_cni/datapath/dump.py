"""What the kernel holds for the node's ENIs, read back for inspection (`vpcctl node enis`).

The daemon's own records say what it meant to build; an operator debugging a pod that
cannot reach its gateway needs what is actually there: the NIC found by MAC, its
addresses, and for each of its route tables the routes and the policy rules that
point at it. Read-only; plain JSON-ready dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyroute2 import IPRoute

from vpc_cni.datapath.netns import run_in_netns
from vpc_cni.datapath.rtnl import Message, is_up, link_by_mac, rtnl, rule_table

# One ENI to look for: its MAC and the route tables of its subnets.
EniTables = tuple[str, Sequence[int]]


def dump_enis(host_netns: str | None, enis: Sequence[EniTables]) -> list[dict[str, Any]]:
    """One entry per ENI, in order; `ifname` is None when no NIC has the MAC."""
    return run_in_netns(host_netns, _dump_here, enis)


def _prefix(address: str | None, length: int) -> str | None:
    return f"{address}/{length}" if address else None


def _route(route: Message, names: dict[int, str]) -> dict[str, Any]:
    oif = route.get("oif")
    return {
        "dst": _prefix(route.get("dst"), route["dst_len"]) or "default",
        "gateway": route.get("gateway"),
        "dev": names.get(oif, str(oif)) if oif is not None else None,
        "prefsrc": route.get("prefsrc"),
    }


def _rule(rule: Message) -> dict[str, Any]:
    return {
        "priority": rule.get("priority", 0),
        "src": _prefix(rule.get("src"), rule["src_len"]),
        "dst": _prefix(rule.get("dst"), rule["dst_len"]),
        "fwmark": rule.get("fwmark"),
        "table": rule_table(rule),
    }


def _eni(
    ipr: IPRoute, mac: str, tables: Sequence[int], rules: list[Message], names: dict[int, str]
) -> dict[str, Any]:
    link = link_by_mac(ipr, mac)
    found: dict[str, Any] = {"mac": mac, "ifname": None, "tables": []}
    if link is not None:
        found.update(
            ifname=link.get("ifname"),
            ifindex=link["index"],
            up=is_up(link),
            mtu=link.get("mtu"),
            addresses=[
                f"{a.get('address')}/{a['prefixlen']}"
                for a in ipr.addr("dump", index=link["index"], family=2)
            ],
        )
    for table in tables:
        found["tables"].append(
            {
                "table": table,
                "routes": [_route(r, names) for r in ipr.route("dump", table=table)],
                "rules": [_rule(r) for r in rules if rule_table(r) == table],
            }
        )
    return found


def _dump_here(enis: Sequence[EniTables]) -> list[dict[str, Any]]:
    with rtnl() as ipr:
        rules = sorted(ipr.rule("dump", family=2), key=lambda r: r.get("priority", 0))
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        return [_eni(ipr, mac, tables, rules, names) for mac, tables in enis]
