"""The two per-pod policy rules, keyed by the pod address.

"to POD lookup main" comes first so traffic towards a pod (from anywhere, including
other pods) follows the /32 host route; "from POD lookup <ENI table>" sends the pod's
own egress out of the ENI that owns its address.
"""

from __future__ import annotations

from pyroute2 import IPRoute

from vpc_cni.datapath.names import FROM_POD_PRIORITY, MAIN_TABLE, TO_POD_PRIORITY
from vpc_cni.datapath.rtnl import (
    Message,
    remove_quietly,
    rule_selects,
    rule_table,
    rules_at,
    step,
)


def pod_rule_specs(route_table: int) -> tuple[tuple[int, str, int], ...]:
    """(priority, selector field, table) of each rule a pod needs."""
    return (
        (TO_POD_PRIORITY, "dst", MAIN_TABLE),
        (FROM_POD_PRIORITY, "src", route_table),
    )


def find_rules(ipr: IPRoute, priority: int, field: str, address: str) -> list[Message]:
    """Rules at ``priority`` that select ``field`` == address/32."""
    return [r for r in rules_at(ipr, priority) if rule_selects(r, field, address)]


def delete_rules(ipr: IPRoute, priority: int, field: str, address: str) -> None:
    """Remove every rule at ``priority`` for address/32, whatever table it points at."""
    for rule in find_rules(ipr, priority, field, address):
        remove_quietly(
            f"remove rule {field} {address} priority {priority}",
            ipr.rule,
            "del",
            priority=priority,
            table=rule_table(rule),
            **{field: address, f"{field}_len": 32},
        )


def replace_rule(ipr: IPRoute, priority: int, field: str, address: str, table: int) -> None:
    """Make the rule for address/32 at ``priority`` point at ``table`` and nothing else."""
    delete_rules(ipr, priority, field, address)
    with step(f"add rule {field} {address} lookup {table} priority {priority}"):
        ipr.rule("add", priority=priority, table=table, **{field: address, f"{field}_len": 32})
