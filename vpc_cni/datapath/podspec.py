"""Validation of a PodSpec, shared by ADD, DEL and CHECK so each fails the same way."""

from __future__ import annotations

from vpc_cni.datapath.model import DatapathError, PodSpec
from vpc_cni.datapath.names import check_ifname


def validate_pod(pod: PodSpec, *, needs_netns: bool) -> None:
    """Refuse a spec that cannot work before touching the kernel."""
    check_ifname(pod.ifname, "pod interface name")
    check_ifname(pod.host_ifname, "host interface name")
    if needs_netns and not pod.netns:
        raise DatapathError("the pod network namespace path is empty")
    address = pod.address
    if address.is_unspecified or address.is_loopback or address.is_multicast:
        raise DatapathError(f"{address} cannot be a pod address")
    if address.is_link_local:
        raise DatapathError(f"{address} is link-local and cannot be a pod address")
    if not 68 <= pod.mtu <= 65535:
        raise DatapathError(f"pod MTU {pod.mtu} is outside 68..65535")
    if not 1 <= pod.route_table < 2**32 or pod.route_table in (253, 254, 255):
        raise DatapathError(f"route table {pod.route_table} is reserved or invalid")
