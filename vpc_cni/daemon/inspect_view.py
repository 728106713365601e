"""Rich tables for `vpcctl node`: one renderer per view of the inspection endpoint.

Renderers take the JSON views exactly as `--json` prints them, so the tables can
never show something a script would not see.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

Renderer = Callable[[Any], Any]


def age(seconds: float) -> str:
    """kubectl-style ages: 42s, 3m12s, 5h7m, 2d3h."""
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60}m"
    return f"{total // 86400}d{total % 86400 // 3600}h"


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def render_status(view: dict[str, Any]) -> Any:
    if view["ready"]:
        headline = Text("ready", style="bold green")
    else:
        headline = Text("not ready: " + "; ".join(view["problems"]), style="bold red")
    counts = Text(
        f"ENIs: {view['enis']}  pool addresses: {view['poolAddresses']}"
        f"  allocations: {view['allocations']}  recent errors: {view['recentErrors']}"
    )
    return Group(headline, counts)


def render_pool(rows: list[dict[str, Any]]) -> Any:
    table = _table("Pool", "ENI", "Subnet", "CIDR", "Table", "Free", "Used", "Withheld", "Cooling")
    for row in rows:
        table.add_row(
            row["eni"],
            row["subnet"],
            row["cidr"],
            str(row["routeTable"]),
            *(str(row[state]) for state in ("free", "used", "withheld", "cooling")),
        )
    return table


def render_pods(rows: list[dict[str, Any]]) -> Any:
    table = _table(
        "Allocations", "Address", "Pod", "Container", "Ifname", "State", "Age", "ENI", "Subnet"
    )
    for row in rows:
        pod = f"{row['namespace']}/{row['pod']}" if row["pod"] else None
        state = row["state"] if row["inPool"] else f"{row['state']} (not in pool)"
        table.add_row(
            row["address"],
            _text(pod),
            row["containerID"],
            row["ifname"],
            state,
            age(row["ageSeconds"]),
            row["eni"],
            row["subnet"],
        )
    return table


def _route(route: dict[str, Any]) -> str:
    text = route["dst"]
    if route["gateway"]:
        text += f" via {route['gateway']}"
    if route["dev"]:
        text += f" dev {route['dev']}"
    if route["prefsrc"]:
        text += f" src {route['prefsrc']}"
    return text


def _rule(rule: dict[str, Any]) -> str:
    parts = [f"{rule['priority']}:"]
    parts.append(f"from {rule['src'] or 'all'}")
    if rule["dst"]:
        parts.append(f"to {rule['dst']}")
    if rule["fwmark"]:
        parts.append(f"fwmark {rule['fwmark']:#x}")
    parts.append(f"lookup {rule['table']}")
    return " ".join(parts)


def _eni_heading(eni: dict[str, Any]) -> Text:
    link = eni["link"]
    heading = Text(f"ENI {eni['id']} ({eni['mac']}, {eni['primaryIp']}): ", style="bold")
    if link["ifname"] is None:
        heading.append("no NIC with this MAC", style="red")
    else:
        state = "up" if link["up"] else "DOWN"
        addresses = ", ".join(link["addresses"]) or "no address"
        heading.append(f"{link['ifname']} {state} mtu {link['mtu']} {addresses}")
    if eni["setupError"]:
        heading.append(f"\nset-up failed: {eni['setupError']}", style="red")
    return heading


def render_enis(enis: list[dict[str, Any]]) -> Any:
    parts: list[Any] = []
    for eni in enis:
        table = _table("", "Subnet", "Table", "Routes (kernel)", "Rules (kernel)")
        for subnet in eni["subnets"]:
            table.add_row(
                f"{subnet['id']}\n{subnet['cidr']} gw {subnet['gateway']}",
                str(subnet["routeTable"]),
                "\n".join(_route(r) for r in subnet["routes"]) or Text("none", style="red"),
                "\n".join(_rule(r) for r in subnet["rules"]) or "none",
            )
        parts += [_eni_heading(eni), table]
    return Group(*parts) if parts else Text("no ENIs in the pool")


def render_errors(entries: list[dict[str, Any]]) -> Any:
    table = _table("Recent CNI errors", "Time", "Verb", "Pod", "Container", "Code", "Message")
    for entry in entries:
        message = entry["msg"] + (f": {entry['details']}" if entry["details"] else "")
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["time"])),
            entry["verb"],
            _text(entry["pod"]),
            _text(entry["containerId"]),
            str(entry["code"]),
            message,
        )
    return table


RENDERERS: dict[str, Renderer] = {
    "status": render_status,
    "pool": render_pool,
    "pods": render_pods,
    "enis": render_enis,
    "errors": render_errors,
}


def show(view: str, data: Any, console: Console) -> None:
    console.print(RENDERERS[view](data))
