"""The tags that mark a Neutron port as ours, so GC can find leaks and never touch
anything else: untagged ports and other clusters' ports are invisible to it."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address

OWNER = "vpccni"


def cluster_tag(cluster: str) -> str:
    return f"vpccni-cluster={cluster}"


def node_tag(node: str) -> str:
    return f"vpccni-node={node}"


def purpose_tag(purpose: str) -> str:
    return f"vpccni-purpose={purpose}"


def primary_tag(address: IPv4Address) -> str:
    """Which fixed IP is the ENI's own: Neutron lists fixed_ips in no fixed order, so
    after a crash a new leader could not otherwise tell it from pool addresses."""
    return f"vpccni-primary={address}"


def primary_from_tags(tags: Iterable[str]) -> IPv4Address | None:
    for tag in tags:
        if tag.startswith("vpccni-primary="):
            return IPv4Address(tag.split("=", 1)[1])
    return None


def port_tags(cluster: str, purpose: str, node: str | None = None) -> list[str]:
    tags = [OWNER, cluster_tag(cluster), purpose_tag(purpose)]
    if node:
        tags.append(node_tag(node))
    return tags


def validate_name(kind: str, value: str) -> str:
    """Neutron filters tags as a comma-separated list, so a comma would split one tag
    into two when listing: refuse it up front with a clear message."""
    if not value or "," in value or len(value) > 200:
        raise ValueError(f"{kind} {value!r} cannot be used in a Neutron tag (empty, ',' or >200)")
    return value
