"""The two per-pod policy rules, keyed by the pod address.

"to POD lookup main" comes first so traffic towards a pod (from anywhere, including
other pods) follows the /32 host route; "from POD lookup <ENI table>" sends the pod's
own egress out of the ENI that owns its address.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from pyroute2 import IPRoute

from vpc_cni.datapath.names import FROM_POD_PRIORITY, MAIN_TABLE, TO_POD_PRIORITY
from vpc_cni.datapath.nlops import add_rule, delete_rule
from vpc_cni.datapath.nlsock import Rtnl
from vpc_cni.datapath.rtnl import Message, rule_selects, rules_at


def pod_rule_specs(route_table: int) -> tuple[tuple[int, str, int], ...]:
    """(priority, selector field, table) of each rule a pod needs."""
    return (
        (TO_POD_PRIORITY, "dst", MAIN_TABLE),
        (FROM_POD_PRIORITY, "src", route_table),
    )


def find_rules(ipr: IPRoute, priority: int, field: str, address: str) -> list[Message]:
    """Rules at ``priority`` that select ``field`` == address/32."""
    return [r for r in rules_at(ipr, priority) if rule_selects(r, field, address)]


def delete_rules(rt: Rtnl, priority: int, field: str, address: IPv4Address) -> None:
    """Remove every rule at ``priority`` for address/32, whatever table it points at.

    The kernel deletes one matching rule per request (a table of 0 matches any), so
    this asks until nothing matches: one round trip when there was none."""
    what = f"remove rule {field} {address} priority {priority}"
    while rt.call_quietly(delete_rule(priority, field, address, what)):
        pass


def replace_rule(rt: Rtnl, priority: int, field: str, address: IPv4Address, table: int) -> None:
    """Make the rule for address/32 at ``priority`` point at ``table`` and nothing else."""
    delete_rules(rt, priority, field, address)
    what = f"add rule {field} {address} lookup {table} priority {priority}"
    rt.call(add_rule(priority, field, address, table, what))
