"""The real apiserver does what vpc-cni's controller and daemon rely on.

CRDs with a status subresource (the spec/status split between controller and daemon
on NodeNetwork), structural-schema validation and pruning, and watches resumed from a
resourceVersion (how both resume after a restart without replaying history).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio.client import (
    ApiClient,
    ApiextensionsV1Api,
    CoreV1Api,
    CustomObjectsApi,
    V1ConfigMap,
)
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fixtures.kube import config_map_events, eventually

MERGE_PATCH = "application/merge-patch+json"
VERSION = "v1"
PLURAL = "gadgets"


def gadget_crd(group: str) -> dict[str, Any]:
    """A namespaced CRD with a structural schema and a status subresource."""
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {"size": {"type": "integer", "minimum": 1}},
            },
            "status": {"type": "object", "properties": {"used": {"type": "integer"}}},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


@pytest.fixture
async def gadget_group(kube_client: ApiClient, prefix: str) -> AsyncIterator[str]:
    """An established Gadget CRD in a group unique to the test; deleted afterwards."""
    group = f"{prefix}.test.vpccni.io"
    ext = ApiextensionsV1Api(kube_client)
    crd = await ext.create_custom_resource_definition(gadget_crd(group))
    try:

        async def established() -> bool | None:
            got = await ext.read_custom_resource_definition(crd.metadata.name)
            conditions = got.status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conditions) or None

        await eventually(established, "the CRD to be established")
        yield group
    finally:
        await ext.delete_custom_resource_definition(crd.metadata.name)


async def test_crd_status_subresource_splits_spec_and_status(
    kube_client: ApiClient, kube_namespace: str, gadget_group: str
) -> None:
    objects = CustomObjectsApi(kube_client)
    where = (gadget_group, VERSION, kube_namespace, PLURAL)
    body = {
        "apiVersion": f"{gadget_group}/{VERSION}",
        "kind": "Gadget",
        "metadata": {"name": "g1"},
        "spec": {"size": 2, "colour": "red"},
        "status": {"used": 5},
    }
    created = await eventually(
        lambda: objects.create_namespaced_custom_object(*where, body), "the Gadget API to serve"
    )
    # Status is not writable through the main resource, and unknown fields are pruned.
    assert "status" not in created
    assert created["spec"] == {"size": 2}
    assert created["metadata"]["generation"] == 1

    status = await objects.patch_namespaced_custom_object_status(
        *where, "g1", {"status": {"used": 1}, "spec": {"size": 7}}, _content_type=MERGE_PATCH
    )
    # The status endpoint writes only status; spec and generation stay.
    assert status["status"] == {"used": 1}
    assert status["spec"] == {"size": 2}
    assert status["metadata"]["generation"] == 1

    updated = await objects.patch_namespaced_custom_object(
        *where, "g1", {"spec": {"size": 3}, "status": {"used": 99}}, _content_type=MERGE_PATCH
    )
    assert updated["spec"] == {"size": 3}
    assert updated["status"] == {"used": 1}
    assert updated["metadata"]["generation"] == 2


@pytest.mark.parametrize("spec", [{"size": 0}, {"size": "big"}, {}])
async def test_crd_schema_rejects_invalid_spec(
    kube_client: ApiClient, kube_namespace: str, gadget_group: str, spec: dict[str, Any]
) -> None:
    objects = CustomObjectsApi(kube_client)
    body = {"apiVersion": f"{gadget_group}/{VERSION}", "kind": "Gadget",
            "metadata": {"name": "bad"}, "spec": spec}  # fmt: skip

    async def rejected() -> ApiException | None:
        try:
            await objects.create_namespaced_custom_object(
                gadget_group, VERSION, kube_namespace, PLURAL, body
            )
        except ApiException as err:
            if err.status == 404:
                raise  # discovery not there yet: try again
            return err
        raise AssertionError(f"invalid spec {spec} was accepted")

    err = await eventually(rejected, "the Gadget API to serve")
    assert err.status == 422
    assert "spec" in err.body


async def test_watch_resumed_from_resource_version_sees_only_later_events(
    kube_client: ApiClient, kube_namespace: str
) -> None:
    core = CoreV1Api(kube_client)
    first = await core.create_namespaced_config_map(
        kube_namespace, V1ConfigMap(metadata={"name": "a"}, data={"n": "1"})
    )
    resume_from = first.metadata.resource_version
    await core.create_namespaced_config_map(kube_namespace, V1ConfigMap(metadata={"name": "b"}))
    await core.patch_namespaced_config_map("a", kube_namespace, {"data": {"n": "2"}})
    await core.delete_namespaced_config_map("b", kube_namespace)

    seen = await config_map_events(core, kube_namespace, resume_from, 3)
    assert seen == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
