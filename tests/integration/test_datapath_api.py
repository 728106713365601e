"""Pure parts of the datapath API: names and announcement frames."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpc_cni.datapath import DatapathError, host_ifname
from vpc_cni.datapath.announce import garp_frame

_text = st.text(min_size=1, max_size=80)


@given(network=_text, container=_text, ifname=_text)
def test_host_ifname_is_a_stable_valid_link_name(network: str, container: str, ifname: str) -> None:
    name = host_ifname(network, container, ifname)
    assert name == host_ifname(network, container, ifname)
    assert name.startswith("vpc") and len(name) == 15 and name.isalnum()


def test_host_ifname_differs_per_key() -> None:
    names = {
        host_ifname("net", "c1", "eth0"),
        host_ifname("net", "c1", "eth1"),
        host_ifname("net", "c2", "eth0"),
        host_ifname("other", "c1", "eth0"),
    }
    assert len(names) == 4


@pytest.mark.parametrize("missing", ["network", "container", "ifname"])
def test_host_ifname_refuses_empty_parts(missing: str) -> None:
    parts = {"network": "net", "container": "c1", "ifname": "eth0"} | {missing: ""}
    with pytest.raises(DatapathError, match="needs a network name"):
        host_ifname(parts["network"], parts["container"], parts["ifname"])


def test_garp_frame_announces_the_address_as_its_own() -> None:
    frame = garp_frame("fa:16:3e:00:00:02", IPv4Address("10.252.0.64"))
    mac, ip = bytes.fromhex("fa163e000002"), IPv4Address("10.252.0.64").packed
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac and frame[12:14] == b"\x08\x06"
    arp = frame[14:]
    assert arp[6:8] == b"\x00\x01", "an ARP request"
    assert arp[8:14] == mac and arp[14:18] == ip and arp[24:28] == ip
