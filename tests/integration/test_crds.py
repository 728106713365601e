"""Our CRDs on a real kube-apiserver: schemas enforced, the spec/status split held,
and the typed models round-trip what the apiserver stores."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from vpc_cni.kube.custom import CustomObjects, install_crds
from vpc_cni.kube.resources import NodeNetworkSpec, NodeNetworkStatus, StaticIPSpec

ENI = {
    "portID": "p-1",
    "mac": "fa:16:3e:00:00:01",
    "networkID": "net-1",
    "primaryIP": "10.1.0.5/24",
    "subnets": [
        {
            "subnetID": "s-1",
            "cidr": "10.1.0.0/24",
            "gateway": "10.1.0.1",
            "routeTable": 101,
            "addresses": ["10.1.0.20", "10.1.0.21"],
        }
    ],
}


@pytest.fixture
async def crds(kube_client):
    async with asyncio.timeout(60):
        await install_crds(kube_client)
    return kube_client


async def test_nodenetwork_spec_and_status_are_separate_halves(crds, prefix):
    nodes = CustomObjects(crds, "NodeNetwork")
    name = f"{prefix}-node"
    try:
        await nodes.create(name, {"instanceID": "i-1", "enis": [ENI]})
        await nodes.patch_status(name, {"inUse": [{"address": "10.1.0.20", "pod": "ns/a"}]})
        # a spec write that also carries status changes only spec
        await nodes.api.patch_cluster_custom_object(
            "vpccni.io",
            "v1alpha1",
            "nodenetworks",
            name,
            {"spec": {"release": ["10.1.0.21"]}, "status": {"inUse": []}},
            _content_type="application/merge-patch+json",
        )
        stored = await nodes.get(name)
        spec = NodeNetworkSpec.model_validate(stored["spec"])
        status = NodeNetworkStatus.model_validate(stored["status"])
        assert [str(a) for a in spec.release] == ["10.1.0.21"]
        assert [str(u.address) for u in status.in_use] == ["10.1.0.20"]
        assert spec.enis[0].subnets[0].route_table == 101
        # and the model writes back exactly what the schema accepts
        await nodes.patch_spec(name, spec.wire())
    finally:
        await nodes.delete(name)


async def test_schema_rejects_a_bad_mac(crds, prefix):
    nodes = CustomObjects(crds, "NodeNetwork")
    with pytest.raises(ApiException) as err:
        await nodes.create(f"{prefix}-bad", {"enis": [{**ENI, "mac": "FA-16"}]})
    assert err.value.status == 422
    assert "mac" in err.value.body


async def test_staticip_is_namespaced_and_policy_is_enumerated(crds, kube_namespace):
    ips = CustomObjects(crds, "StaticIP")
    spec = {"address": "10.1.0.50", "subnet": "default", "owner": {"pod": "db-0"}}
    created = await ips.create("db-0", spec, namespace=kube_namespace)
    assert StaticIPSpec.model_validate(created["spec"]).release_policy == "WhileOwnerExists"
    with pytest.raises(ApiException) as err:
        await ips.create("db-1", {**spec, "releasePolicy": "Sometimes"}, namespace=kube_namespace)
    assert err.value.status == 422
    await ips.delete("db-0", namespace=kube_namespace)
    assert await ips.get("db-0", namespace=kube_namespace) is None
