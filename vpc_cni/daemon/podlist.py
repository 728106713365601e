"""The pod-list confirmer of reconcile: is an allocation's pod still in the cluster?

A vanished netns path proves nothing on its own (a daemon without mount propagation
of /run/netns sees no paths at all), so in cluster mode reconcile also asks the API
server. One list of this node's pods (fieldSelector spec.nodeName=NODE) serves a whole
reconcile run, read only when some allocation needs it; it is a quorum read, so a
pod that existed when the allocation was made and still exists is in it. When the
list cannot be had, the answer is "unknown", and reconcile keeps the address: an
address is never freed on missing information.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from vpc_cni.daemon.reconcile import Confirmer, ConfirmerFactory, Finding, netns_confirmer
from vpc_cni.daemon.store import Allocation, PodOwner

log = logging.getLogger(__name__)

# Phases after which the kubelet has torn the pod's sandbox down: no container of it
# uses the address any more, even while the object lingers in the API.
TERMINATED_PHASES = frozenset({"Succeeded", "Failed"})
LIST_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class PodFacts:
    """What the decision needs from one Pod object."""

    uid: str
    phase: str | None
    deleting: bool


PodIndex = Mapping[tuple[str, str], PodFacts]


class PodListError(Exception):
    """The pod list could not be read; the message says why."""


def pod_finding(owner: PodOwner, pods: PodIndex | None, why_unknown: str = "") -> Finding:
    """The decision table (docs/daemon.md "Reconcile"); `pods` None = no list to go by.

    An allocation made without a pod name (not a Kubernetes pod: podman, ctr) is
    outside what the pod list can judge, so it raises no objection and the netns
    check alone decides, as on a node without a cluster. An allocation that recorded
    no uid (the runtime passed none) is matched by namespace and name alone.
    """
    if owner.namespace is None or owner.name is None:
        return Finding("gone", "no pod name was given at ADD, the pod list has no say")
    name = f"{owner.namespace}/{owner.name}"
    if pods is None:
        return Finding("unknown", f"cannot tell whether pod {name} exists: {why_unknown}")
    facts = pods.get((owner.namespace, owner.name))
    if facts is None:
        return Finding("gone", f"pod {name} is not on this node in the API")
    if owner.uid and facts.uid != owner.uid:
        return Finding("gone", f"pod {name} is now another pod (uid {facts.uid}, not {owner.uid})")
    if facts.phase in TERMINATED_PHASES:
        return Finding("gone", f"pod {name} has terminated (phase {facts.phase})")
    deleting = ", being deleted" if facts.deleting else ""
    return Finding("alive", f"pod {name} still exists (phase {facts.phase}{deleting})")


def _facts(item: dict[str, Any]) -> tuple[tuple[str, str], PodFacts]:
    meta = item.get("metadata") or {}
    status = item.get("status") or {}
    key = (meta.get("namespace") or "", meta.get("name") or "")
    return key, PodFacts(
        uid=meta.get("uid") or "",
        phase=status.get("phase"),
        deleting=meta.get("deletionTimestamp") is not None,
    )


class PodList:
    """This node's pods as the API server has them now."""

    def __init__(
        self, client: ApiClient, node_name: str, timeout: float = LIST_TIMEOUT_SECONDS
    ) -> None:
        self.core = CoreV1Api(client)
        self.node_name = node_name
        self.timeout = timeout

    async def fetch(self) -> dict[tuple[str, str], PodFacts]:
        """One list call, read as raw JSON because only three fields of each pod matter.

        Raw responses skip the client's status check (an error Status would read as
        an empty list, every pod "gone"), so the status is checked here.
        """
        try:
            response = await self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.node_name}",
                _preload_content=False,
                _request_timeout=self.timeout,
            )
            try:
                if not 200 <= response.status <= 299:
                    raise PodListError(
                        f"the API server answered {response.status} {response.reason}"
                    )
                body = await response.json()
            finally:
                response.release()
        except ApiException as error:
            raise PodListError(f"the API server answered {error.status} {error.reason}") from None
        except ValueError as error:
            raise PodListError(f"the API server's answer is not JSON: {error}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise PodListError(f"the API server is unreachable: {error!r}") from None
        if not isinstance(body, dict) or body.get("kind") != "PodList":
            raise PodListError("the API server's answer is not a PodList")
        return dict(_facts(item) for item in body.get("items") or [])

    def confirmer(self) -> Confirmer:
        """The confirmer of one reconcile run: it lists on first use, at most once."""
        return _OneRun(self)


class _OneRun:
    """One reconcile run's view of the pod list (runs ask one allocation at a time)."""

    def __init__(self, pods: PodList) -> None:
        self.pods = pods
        self.listed = False
        self.index: PodIndex | None = None
        self.why_unknown = ""

    async def __call__(self, allocation: Allocation) -> Finding:
        if not self.listed:
            self.listed = True
            try:
                self.index = await self.pods.fetch()
            except PodListError as error:
                log.warning("pod list of node %s unavailable: %s", self.pods.node_name, error)
                self.why_unknown = str(error)
        return pod_finding(allocation.owner, self.index, self.why_unknown)


def reconcile_confirmers(client: ApiClient | None, node_name: str | None) -> list[ConfirmerFactory]:
    """The netns check everywhere; in cluster mode (a client) the pod list must agree."""
    if client is None or node_name is None:
        return [netns_confirmer]
    return [netns_confirmer, PodList(client, node_name).confirmer]
