"""Gratuitous ARP: telling the fabric and the subnet that an address now lives here.

After an address moves between nodes (a fixed pod IP held as an address pair), the
SDN and the neighbours still point at the old port until the new holder announces.
"""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address

from vpc_cni.datapath.model import DatapathError
from vpc_cni.datapath.netns import run_in_netns
from vpc_cni.datapath.rtnl import find_eni, rtnl

_ETH_P_ARP = 0x0806
_ARP_REQUEST = 1
_BROADCAST = b"\xff" * 6


def garp_frame(mac: str, address: IPv4Address) -> bytes:
    """An ARP request for our own address (sender IP == target IP), broadcast."""
    hw = bytes.fromhex(mac.replace(":", ""))
    ip = address.packed
    ethernet = _BROADCAST + hw + struct.pack("!H", _ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, _ARP_REQUEST) + hw + ip + b"\0" * 6 + ip
    return ethernet + arp


def announce(host_netns: str | None, eni_mac: str, address: IPv4Address) -> None:
    """Send one gratuitous ARP for ``address`` out of the ENI with ``eni_mac``."""
    run_in_netns(host_netns, send_garp, eni_mac, address)


def send_garp(eni_mac: str, address: IPv4Address) -> None:
    """Send the announcement from the calling thread's namespace."""
    with rtnl() as ipr:
        ifname = find_eni(ipr, eni_mac).get("ifname")
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((ifname, 0))
            sock.send(garp_frame(eni_mac, address))
    except OSError as exc:
        raise DatapathError(f"announce {address} on {ifname}: {exc.strerror}") from None
