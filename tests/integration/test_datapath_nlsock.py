"""The hand-built rtnetlink path of ADD/DEL against the real kernel: batches, namespaces,
the ENI index hint and rule removal."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from ipaddress import IPv4Address

import pytest

from tests.fixtures.netns import ns_run as _ns_run
from vpc_cni.datapath import DatapathError
from vpc_cni.datapath.netns import run_in_netns, visiting
from vpc_cni.datapath.nlops import eni_index, link_named, set_up
from vpc_cni.datapath.nlsock import NetlinkFailure, Rtnl
from vpc_cni.datapath.rules import delete_rules

pytestmark = pytest.mark.root

_MAC = "02:00:5e:10:00:01"


def ns_run(netns: str, *argv: str) -> str:
    return _ns_run(netns, *argv).stdout


def _ifindex(netns: str, ifname: str) -> int:
    return int(ns_run(netns, "ip", "-o", "link", "show", "dev", ifname).split(":", 1)[0])


def _netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_batch_reports_each_request_and_call_names_the_failing_one(
    make_netns: Callable[[str], str],
) -> None:
    netns = make_netns("nl")

    def batch() -> list[NetlinkFailure | None]:
        with Rtnl() as rt:
            lo = link_named(rt, "lo")
            assert lo is not None
            outcome = rt.batch([set_up(123456, "up a missing link"), set_up(lo.index, "up lo")])
            with pytest.raises(DatapathError, match=r"^up a missing link: No such device$"):
                rt.call(set_up(lo.index, "up lo"), set_up(123456, "up a missing link"))
            return outcome

    missing, lo_up = run_in_netns(netns, batch)
    assert isinstance(missing, NetlinkFailure) and missing.errno == errno.ENODEV
    assert lo_up is None  # the kernel carried on after the failure
    assert "state UNKNOWN" in ns_run(netns, "ip", "link", "show", "lo")


def test_visiting_opens_sockets_there_and_returns_home(
    make_netns: Callable[[str], str], prefix: str
) -> None:
    home, pod = make_netns("home"), make_netns("pod")
    only_here = f"{prefix}x"
    ns_run(pod, "ip", "link", "add", only_here, "type", "veth", "peer", "name", f"{prefix}y")

    def visit() -> tuple[int, int, bool, bool]:
        before = _netns_inode()
        with visiting(pod):
            rt = Rtnl()
        with rt:
            seen_from_socket = link_named(rt, only_here) is not None
        with pytest.raises(DatapathError, match="does not exist"), visiting(pod + "-missing"):
            pass
        with Rtnl() as here:
            seen_at_home = link_named(here, only_here) is not None
        return before, _netns_inode(), seen_from_socket, seen_at_home

    before, after, seen_from_socket, seen_at_home = run_in_netns(home, visit)
    assert before == after
    assert seen_from_socket and not seen_at_home


def test_eni_index_follows_a_nic_plugged_in_again(
    make_netns: Callable[[str], str], prefix: str
) -> None:
    netns = make_netns("eni")
    nic_a, nic_b, filler = f"{prefix}a", f"{prefix}b", f"{prefix}f"

    def plug(name: str) -> None:
        ns_run(
            netns, "ip", "link", "add", name, "address", _MAC, "type", "veth", "peer", f"{name}p"
        )

    def lookup() -> int | None:
        with Rtnl() as rt:
            return eni_index(rt, _MAC.upper())

    plug(nic_a)
    first = run_in_netns(netns, lookup)
    assert first == _ifindex(netns, nic_a)
    assert run_in_netns(netns, lookup) == first  # the hint, confirmed
    ns_run(netns, "ip", "link", "del", nic_a)
    assert run_in_netns(netns, lookup) is None
    ns_run(netns, "ip", "link", "add", filler, "type", "veth", "peer", f"{filler}p")
    plug(nic_b)
    second = run_in_netns(netns, lookup)
    assert second == _ifindex(netns, nic_b)
    assert second != first


def test_delete_rules_removes_every_duplicate_whatever_its_table(
    make_netns: Callable[[str], str],
) -> None:
    netns = make_netns("rules")
    address = IPv4Address("10.252.0.77")
    for table in ("101", "102", "103"):
        ns_run(
            netns, "ip", "rule", "add", "priority", "1536", "from", str(address), "lookup", table
        )
    ns_run(netns, "ip", "rule", "add", "priority", "1536", "from", "10.252.0.78", "lookup", "101")

    def delete() -> None:
        with Rtnl() as rt:
            delete_rules(rt, 1536, "src", address)
            delete_rules(rt, 1536, "src", address)  # nothing left: still fine

    run_in_netns(netns, delete)
    rules = ns_run(netns, "ip", "rule", "show", "priority", "1536")
    assert str(address) + " " not in rules
    assert "10.252.0.78" in rules
