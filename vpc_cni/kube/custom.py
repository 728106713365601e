"""Reading and writing our custom resources, with the spec/status split kept honest.

The controller writes spec and the daemon writes status; spec goes through the main
resource and status only through the status subresource, so neither can change the
other's half by accident (the apiserver ignores status in a spec write and the
reverse).
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes_asyncio.client import ApiClient, ApiextensionsV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from vpc_cni.kube.resources import GROUP, PLURALS, VERSION, crd_manifests

MERGE_PATCH = "application/merge-patch+json"


async def install_crds(client: ApiClient) -> None:
    """Creates or updates the CRDs and waits (bounded by the caller's timeout) until
    the apiserver serves them."""
    api = ApiextensionsV1Api(client)
    for manifest in crd_manifests():
        name = manifest["metadata"]["name"]
        try:
            current = await api.read_custom_resource_definition(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            await api.create_custom_resource_definition(manifest)
        else:
            manifest["metadata"]["resourceVersion"] = current.metadata.resource_version
            await api.replace_custom_resource_definition(name, manifest)
    for manifest in crd_manifests():
        name = manifest["metadata"]["name"]
        while True:
            crd = await api.read_custom_resource_definition(name)
            conditions = (crd.status.conditions if crd.status else None) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            await asyncio.sleep(0.2)
    # Serving lags Established by a moment (discovery), and a first request may 404.
    objects = CustomObjectsApi(client)
    for plural in PLURALS.values():
        while True:
            try:
                await objects.list_cluster_custom_object(GROUP, VERSION, plural, limit=1)
                break
            except ApiException as exc:
                if exc.status != 404:
                    raise
            await asyncio.sleep(0.2)


class CustomObjects:
    """One resource kind (``VPCSubnet``, ``NodeNetwork``, ``StaticIP``)."""

    def __init__(self, client: ApiClient, kind: str) -> None:
        self.api = CustomObjectsApi(client)
        self.kind = kind
        self.plural = PLURALS[kind]

    def _where(self, namespace: str | None) -> tuple[str, ...]:
        return (GROUP, VERSION) + ((namespace,) if namespace else ()) + (self.plural,)

    async def get(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            if namespace:
                return await self.api.get_namespaced_custom_object(*self._where(namespace), name)
            return await self.api.get_cluster_custom_object(*self._where(None), name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, namespace: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """Items and the list's resourceVersion (where a watch resumes)."""
        if namespace:
            found = await self.api.list_namespaced_custom_object(*self._where(namespace))
        else:
            found = await self.api.list_cluster_custom_object(*self._where(None))
        return found["items"], found["metadata"]["resourceVersion"]

    async def create(
        self, name: str, spec: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": self.kind,
            "metadata": {"name": name},
            "spec": spec,
        }
        if namespace:
            return await self.api.create_namespaced_custom_object(*self._where(namespace), body)
        return await self.api.create_cluster_custom_object(*self._where(None), body)

    async def patch_spec(
        self,
        name: str,
        spec: dict[str, Any],
        namespace: str | None = None,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """With ``resource_version`` the write only lands on the version it was
        computed from (409 otherwise): lists in a merge patch replace the stored
        ones wholesale, so a write based on an old read would drop what another
        writer added meanwhile."""
        body: dict[str, Any] = {"spec": spec}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        if namespace:
            return await self.api.patch_namespaced_custom_object(
                *self._where(namespace), name, body, _content_type=MERGE_PATCH
            )
        return await self.api.patch_cluster_custom_object(
            *self._where(None), name, body, _content_type=MERGE_PATCH
        )

    async def patch_status(
        self, name: str, status: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        body = {"status": status}
        if namespace:
            return await self.api.patch_namespaced_custom_object_status(
                *self._where(namespace), name, body, _content_type=MERGE_PATCH
            )
        return await self.api.patch_cluster_custom_object_status(
            *self._where(None), name, body, _content_type=MERGE_PATCH
        )

    async def delete(self, name: str, namespace: str | None = None) -> None:
        try:
            if namespace:
                await self.api.delete_namespaced_custom_object(*self._where(namespace), name)
            else:
                await self.api.delete_cluster_custom_object(*self._where(None), name)
        except ApiException as exc:
            if exc.status != 404:
                raise
