"""Small netlink helpers shared by the ENI, pod, node and check code.

They run in whatever namespace the calling thread is in (see netns.py) and turn
netlink errors into DatapathError messages that say which object was involved.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vpc_cni.datapath.model import DatapathError

NTF_PROXY = 0x08
NTF_MASTER = 0x04
NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
SCOPE_LINK = 253
IFA_F_NOPREFIXROUTE = 0x200

# Errors that mean "it is already gone" when removing something.
_GONE = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL})

Message = Any  # a pyroute2 netlink message; pyroute2 ships no type stubs


@contextmanager
def rtnl() -> Iterator[IPRoute]:
    """An rtnetlink socket in the calling thread's namespace."""
    with IPRoute() as ipr:
        yield ipr


@contextmanager
def step(what: str) -> Iterator[None]:
    """Name the piece being built in any error that escapes."""
    try:
        yield
    except NetlinkError as exc:
        raise DatapathError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}") from None
    except OSError as exc:
        raise DatapathError(f"{what}: {exc.strerror or exc}") from None


def remove_quietly(what: str, fn: Callable[..., object], *args: object, **kwargs: object) -> None:
    """Remove something that may already be gone; any other failure is an error."""
    try:
        fn(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise DatapathError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}") from None


def link_by_name(ipr: IPRoute, ifname: str) -> Message | None:
    """The link called ``ifname``, or None."""
    found = ipr.link("dump", ifname=ifname)
    return found[0] if found else None


def link_by_index(ipr: IPRoute, index: int) -> Message | None:
    """The link with ``index``, or None."""
    try:
        return ipr.link("get", index=index)[0]
    except NetlinkError as exc:
        if exc.code in _GONE:
            return None
        raise


def link_by_mac(ipr: IPRoute, mac: str) -> Message | None:
    """The first link whose hardware address is ``mac``, or None."""
    wanted = mac.lower()
    for link in ipr.link("dump"):
        if (link.get("address") or "").lower() == wanted:
            return link
    return None


def find_eni(ipr: IPRoute, mac: str) -> Message:
    """The ENI link with this MAC, or a DatapathError naming the MAC."""
    link = link_by_mac(ipr, mac)
    if link is None:
        raise DatapathError(f"no network interface with MAC {mac}")
    return link


def link_kind(link: Message) -> str | None:
    """The rtnetlink kind of a link ("veth", "bridge", ...), None for physical NICs."""
    info = link.get("linkinfo")
    return info.get("kind") if info is not None else None


def is_up(link: Message) -> bool:
    """Administratively up (IFF_UP)."""
    return bool(link["flags"] & 1)


def proxy_neighbours(ipr: IPRoute) -> list[Message]:
    """All proxy (pneigh) entries; an ordinary neighbour dump leaves them out."""
    return list(ipr.neigh("dump", dump_filter=lambda _msg: True, flags=NTF_PROXY))


def rules_at(ipr: IPRoute, priority: int) -> list[Message]:
    """IPv4 policy rules at one priority."""
    return [r for r in ipr.rule("dump", family=2) if r.get("priority") == priority]


def rule_table(rule: Message) -> int:
    """A rule's table (the 32-bit attribute; the header byte overflows above 255)."""
    return int(rule.get("FRA_TABLE") or rule["table"])


def rule_selects(rule: Message, field: str, address: str) -> bool:
    """Whether a rule matches exactly ``field`` ("src"/"dst") == address/32."""
    return rule.get(field) == address and rule[f"{field}_len"] == 32
