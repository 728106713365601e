"""The rtnetlink messages a pod's ADD and DEL are made of, built for nlsock.Rtnl.

Each builder returns a Request (or reads the one reply field it needs), so the pod code
can send several in one write. IPv4 only, like the datapath.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from vpc_cni.datapath.nlsock import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NetlinkFailure,
    Request,
    Rtnl,
    attr,
    attr_str,
    attr_u32,
    attrs,
)
from vpc_cni.datapath.rtnl import NTF_PROXY, NUD_PERMANENT, SCOPE_LINK

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR = 20
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
RTM_NEWRULE, RTM_DELRULE = 32, 33

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR = 1, 2
FRA_DST, FRA_SRC, FRA_PRIORITY, FRA_TABLE = 1, 2, 6, 15

_IFF_UP = 0x1
_RTPROT_BOOT = 3
_RTN_UNICAST = 1
_SCOPE_NOWHERE = 255  # in a route deletion: any scope
_RT_TABLE_COMPAT = 252  # header byte for tables above 255, which travel as an attribute
_SCOPE_UNIVERSE = 0
_FR_ACT_TO_TBL = 1
_NLA_F_NESTED = 0x8000
_CREATE = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
_REPLACE = NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE

_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_RULE = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, -, -, action, flags


@dataclass(frozen=True)
class Link:
    """What the pod path needs to know about a link."""

    index: int
    mac: str


def _table_byte(table: int) -> int:
    return table if table < 256 else _RT_TABLE_COMPAT


def _ifinfo(index: int = 0, *, up: bool = False) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, _IFF_UP if up else 0, _IFF_UP if up else 0)


def _nested(kind: int, payload: bytes) -> bytes:
    return attr(kind | _NLA_F_NESTED, payload)


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _link(payload: memoryview) -> Link:
    index = _IFINFO.unpack_from(payload)[2]
    return Link(index=index, mac=_mac(attrs(payload, _IFINFO.size).get(IFLA_ADDRESS, b"")))


def link_named(rt: Rtnl, ifname: str) -> Link | None:
    """The link called ``ifname`` (looked up by the kernel, not by a dump), or None."""
    try:
        replies = rt.fetch(RTM_GETLINK, _ifinfo() + attr_str(IFLA_IFNAME, ifname), dump=False)
    except NetlinkFailure:
        return None  # ENODEV; any other refusal also means we cannot use it
    return _link(replies[0]) if replies else None


def link_with_index(rt: Rtnl, index: int) -> Link | None:
    try:
        replies = rt.fetch(RTM_GETLINK, _ifinfo(index), dump=False)
    except NetlinkFailure:
        return None
    return _link(replies[0]) if replies else None


def links(rt: Rtnl) -> list[Link]:
    """Every link of the namespace."""
    return [_link(p) for p in rt.fetch(RTM_GETLINK, _ifinfo(), dump=True)]


# (namespace inode, MAC) -> ifindex of an ENI; a hint, checked on every use.
_eni_indexes: dict[tuple[int, str], int] = {}


def eni_index(rt: Rtnl, mac: str) -> int | None:
    """Index of the link with this MAC in the socket's namespace, or None.

    Finding it means a dump of every link (two per pod on a busy node), so the answer
    is remembered per namespace and confirmed with one get: a NIC that was unplugged
    and plugged again comes back under another index, and then the dump runs again."""
    wanted = mac.lower()
    key = (rt.namespace, wanted)
    cached = _eni_indexes.get(key)
    if cached is not None:
        link = link_with_index(rt, cached)
        if link is not None and link.mac == wanted:
            return cached
    for link in links(rt):
        if link.mac == wanted:
            _eni_indexes[key] = link.index
            return link.index
    return None


def create_veth(host: str, peer: str, mtu: int, peer_netns_fd: int, what: str) -> Request:
    """A veth whose peer is created directly in another namespace (both ends down)."""
    peer_info = (
        _ifinfo()
        + attr_str(IFLA_IFNAME, peer)
        + attr_u32(IFLA_MTU, mtu)
        + attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
    )
    linkinfo = attr_str(IFLA_INFO_KIND, "veth") + _nested(
        IFLA_INFO_DATA, _nested(VETH_INFO_PEER, peer_info)
    )
    body = (_ifinfo() + attr_str(IFLA_IFNAME, host) + attr_u32(IFLA_MTU, mtu)) + _nested(
        IFLA_LINKINFO, linkinfo
    )
    return Request(what, RTM_NEWLINK, _CREATE, body)


def set_up(index: int, what: str) -> Request:
    return Request(what, RTM_NEWLINK, NLM_F_ACK, _ifinfo(index, up=True))


def delete_link(index: int, what: str) -> Request:
    return Request(what, RTM_DELLINK, NLM_F_ACK, _ifinfo(index))


def add_address(index: int, address: IPv4Address, prefixlen: int, what: str) -> Request:
    body = _IFADDR.pack(socket.AF_INET, prefixlen, 0, _SCOPE_UNIVERSE, index)
    body += attr(IFA_LOCAL, address.packed) + attr(IFA_ADDRESS, address.packed)
    return Request(what, RTM_NEWADDR, _CREATE, body)


def _route(
    dst: IPv4Address,
    dst_len: int,
    table: int,
    oif: int | None,
    gateway: bytes = b"",
    *,
    scope: int,
    protocol: int = _RTPROT_BOOT,
    kind: int = _RTN_UNICAST,
) -> bytes:
    body = _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, _table_byte(table), protocol, scope, kind, 0)
    body += attr_u32(RTA_TABLE, table)
    if dst_len:
        body += attr(RTA_DST, dst.packed)
    if oif is not None:
        body += attr_u32(RTA_OIF, oif)
    if gateway:
        body += attr(RTA_GATEWAY, gateway)
    return body


def add_link_route(
    dst: IPv4Address, oif: int, table: int, what: str, *, replace: bool = False
) -> Request:
    """``dst/32 dev OIF scope link`` in ``table``."""
    body = _route(dst, 32, table, oif, scope=SCOPE_LINK)
    return Request(what, RTM_NEWROUTE, _REPLACE if replace else _CREATE, body)


def add_default_route(gateway: IPv4Address, oif: int, table: int, what: str) -> Request:
    body = _route(IPv4Address(0), 0, table, oif, gateway.packed, scope=_SCOPE_UNIVERSE)
    return Request(what, RTM_NEWROUTE, _CREATE, body)


def delete_host_route(dst: IPv4Address, oif: int, table: int, what: str) -> Request:
    body = _route(dst, 32, table, oif, scope=_SCOPE_NOWHERE, protocol=0, kind=0)
    return Request(what, RTM_DELROUTE, NLM_F_ACK, body)


def host_route_owner(rt: Rtnl, dst: IPv4Address, table: int) -> int | None:
    """Interface index of the ``dst/32`` route in ``table``, if any (the kernel filters
    the dump to the table, we pick the /32)."""
    request = _RTMSG.pack(socket.AF_INET, 0, 0, 0, _table_byte(table), 0, 0, 0, 0)
    request += attr_u32(RTA_TABLE, table)
    for payload in rt.fetch(RTM_GETROUTE, request, dump=True):
        if payload[1] != 32:  # rtm_dst_len
            continue
        found = attrs(payload, _RTMSG.size)
        if found.get(RTA_DST) == dst.packed and RTA_OIF in found:
            return int(struct.unpack("=I", found[RTA_OIF])[0])
    return None


def _neigh(address: IPv4Address, index: int, state: int, flags: int) -> bytes:
    return _NDMSG.pack(socket.AF_INET, index, state, flags, 0) + attr(NDA_DST, address.packed)


def add_permanent_neighbour(address: IPv4Address, mac: str, index: int, what: str) -> Request:
    body = _neigh(address, index, NUD_PERMANENT, 0)
    body += attr(NDA_LLADDR, bytes.fromhex(mac.replace(":", "")))
    return Request(what, RTM_NEWNEIGH, _CREATE, body)


def replace_proxy_neighbour(address: IPv4Address, index: int, what: str) -> Request:
    return Request(what, RTM_NEWNEIGH, _REPLACE, _neigh(address, index, NUD_PERMANENT, NTF_PROXY))


def delete_proxy_neighbour(address: IPv4Address, index: int, what: str) -> Request:
    return Request(what, RTM_DELNEIGH, NLM_F_ACK, _neigh(address, index, 0, NTF_PROXY))


def _rule(priority: int, field: str, address: IPv4Address, table: int) -> bytes:
    """A rule selecting ``field`` ("src"/"dst") == address/32; table 0 matches any table
    when deleting."""
    dst_len, src_len = (32, 0) if field == "dst" else (0, 32)
    action = _FR_ACT_TO_TBL if table else 0
    body = _RULE.pack(socket.AF_INET, dst_len, src_len, 0, _table_byte(table), 0, 0, action, 0)
    body += attr_u32(FRA_PRIORITY, priority)
    if table:
        body += attr_u32(FRA_TABLE, table)
    return body + attr(FRA_DST if field == "dst" else FRA_SRC, address.packed)


def add_rule(priority: int, field: str, address: IPv4Address, table: int, what: str) -> Request:
    return Request(what, RTM_NEWRULE, _CREATE, _rule(priority, field, address, table))


def delete_rule(priority: int, field: str, address: IPv4Address, what: str) -> Request:
    """Removes one rule at ``priority`` for address/32, whatever table it points at."""
    return Request(what, RTM_DELRULE, NLM_F_ACK, _rule(priority, field, address, 0))
