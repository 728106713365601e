"""The cloud layer through a fault-injecting proxy in front of a real neutron-server:
what reached Neutron is counted at the proxy, not from our own metrics."""

from __future__ import annotations

import openstack
import pytest

from tests.fixtures.cloud_proxy import Rule, neutron_error
from vpc_cni.cloud.caller import CloudCaller, RetryPolicy
from vpc_cni.cloud.errors import CloudError, Kind
from vpc_cni.cloud.ports import Ports
from vpc_cni.cloud.ratelimit import TokenBucket

PORT_PUT = r"^/v2\.0/ports/[0-9a-f-]+$"


@pytest.fixture
def proxied_ports(neutron_proxy) -> Ports:
    conn = openstack.connect(auth_type="none", network_endpoint_override=neutron_proxy.url)
    return Ports(conn, CloudCaller("network", TokenBucket(100, 50), RetryPolicy(5, 0.01, 0.05)))


async def new_eni(ports: Ports, net, prefix: str):
    return await ports.create(
        name=f"{prefix}-eni",
        network_id=net.network.id,
        subnet_id=net.a.id,
        cluster=prefix,
        purpose="eni",
    )


async def test_transient_500s_are_retried_and_land_once(
    proxied_ports, neutron_proxy, neutron_net, prefix
):
    eni = await new_eni(proxied_ports, neutron_net, prefix)
    neutron_proxy.add_rule(Rule("PUT", PORT_PUT, status=500, times=2))
    added = await proxied_ports.add_addresses(eni.id, neutron_net.a.id, count=3)
    assert len(added) == 3
    puts = [c for c in neutron_proxy.writes() if c.method == "PUT"]
    assert [c.status for c in puts] == [500, 500, 200]
    port = await proxied_ports.get(eni.id)
    assert len(port.addresses()) == 4  # its own plus exactly three, no duplicates


async def test_injected_412_refetches_and_redoes(proxied_ports, neutron_proxy, neutron_net, prefix):
    eni = await new_eni(proxied_ports, neutron_net, prefix)
    neutron_proxy.add_rule(
        Rule(
            "PUT",
            PORT_PUT,
            status=412,
            times=1,
            body=neutron_error("RevisionNumberConstraintFailed", "stale"),
        )
    )
    added = await proxied_ports.add_addresses(eni.id, neutron_net.a.id, count=2)
    assert len(added) == 2
    # the first PUT plans on the port remembered from the create; after the 412 the
    # port is read afresh and the change redone on it
    calls = [(c.method, c.status) for c in neutron_proxy.calls if eni.id in c.path]
    assert calls == [("PUT", 412), ("GET", 200), ("PUT", 200)]


async def test_quota_is_not_retried(proxied_ports, neutron_proxy, neutron_net, prefix):
    neutron_proxy.add_rule(
        Rule(
            "POST",
            r"^/v2\.0/ports$",
            status=409,
            body=neutron_error("OverQuota", "Quota exceeded for resources: ['port']."),
        )
    )
    with pytest.raises(CloudError) as err:
        await new_eni(proxied_ports, neutron_net, prefix)
    assert err.value.kind is Kind.QUOTA
    assert "Quota exceeded" in err.value.message
    assert len([c for c in neutron_proxy.writes() if c.method == "POST"]) == 1
