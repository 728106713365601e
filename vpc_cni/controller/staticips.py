"""Fixed pod addresses: a StaticIP owns its address through a reservation port and
follows its owner pod from node to node as an allowed address pair.

The reservation port (unbound, empty device_owner, tagged purpose=reservation) holds
the address for the StaticIP's whole life, so Neutron never hands it to anyone else
while it moves: a move adds the pair on the new node's ENI and only then removes it
from the old one. The move is fenced on the old node: the new ENI gets the pair only
once the old pod is gone and the old node's daemon no longer reports the address in
use, so two nodes never answer for it at once.

Like the node pools, everything is derived from Kubernetes (the StaticIP, its owner
pod, the NodeNetworks) and Neutron (the reservation port, which ENIs carry the pair);
a leader that died half-way through a move leaves nothing the next one cannot
finish. Release goes through a finalizer, so deleting a StaticIP by hand and the
release policies take the same path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any, Literal

from kubernetes_asyncio.client import (
    ApiClient,
    AppsV1Api,
    CoreV1Api,
    CustomObjectsApi,
    V1ObjectReference,
    V1Pod,
)
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from vpc_cni.cloud.errors import CloudError, Kind
from vpc_cni.cloud.ports import Port, Ports
from vpc_cni.cloud.tags import OWNER, cluster_tag, node_tag, purpose_tag
from vpc_cni.controller.config import ControllerConfig
from vpc_cni.controller.nodepool import SubnetInfo, SubnetInfos
from vpc_cni.kube.custom import MERGE_PATCH, CustomObjects
from vpc_cni.kube.events import record_event
from vpc_cni.kube.resources import (
    API_VERSION,
    GROUP,
    PLURALS,
    VERSION,
    Condition,
    NodeNetworkSpec,
    NodeNetworkStatus,
    StaticIPOwner,
    StaticIPSpec,
    StaticIPStatus,
    VPCSubnetSpec,
)
from vpc_cni.kube.subnet_choice import (
    IP_ANNOTATION,
    SubnetChoiceError,
    candidate_of,
    choose_subnet,
)

log = logging.getLogger(__name__)

FINALIZER = "vpccni.io/staticip"
SPEC_WRITE_ATTEMPTS = 8
Policy = Literal["WhileOwnerExists", "TTL", "Never"]


class SpecError(ValueError):
    """A StaticIP that cannot be served as written; the message says what to fix."""


def owner_pod_name(owner: StaticIPOwner) -> str:
    """The owner's pod name (StaticIPOwner.pod_name), a SpecError when it names none."""
    try:
        return owner.pod_name()
    except ValueError as error:
        raise SpecError(str(error)) from None


def statefulset_member(pod: V1Pod) -> tuple[str, int] | None:
    """(StatefulSet name, ordinal) of a pod its StatefulSet controller made, else None."""
    for ref in pod.metadata.owner_references or ():
        if ref.kind == "StatefulSet" and ref.controller:
            stem, _, ordinal = pod.metadata.name.rpartition("-")
            if stem == ref.name and ordinal.isdigit():
                return ref.name, int(ordinal)
    return None


def rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class Verdict:
    """What the release policy says now: release, since when the owner is gone, and
    when to look again (a TTL running out is not an event anything would send)."""

    release: bool
    gone_since: float | None
    recheck_after: float | None = None


def release_verdict(
    policy: Policy,
    ttl_seconds: int | None,
    owner_exists: bool,
    was_placed: bool,
    gone_since: float | None,
    now: float,
) -> Verdict:
    """An owner that was never placed has not gone yet: a StaticIP made ahead of its
    pod must not be released before the pod arrives."""
    if owner_exists or not was_placed:
        return Verdict(False, None)
    since = now if gone_since is None else gone_since
    if policy == "Never":
        return Verdict(False, since)
    if policy == "WhileOwnerExists":
        return Verdict(True, since)
    left = since + (ttl_seconds or 0) - now
    if left <= 0:
        return Verdict(True, since)
    return Verdict(False, since, left)


def with_condition(
    conditions: Iterable[Condition],
    type_: str,
    status: Literal["True", "False"],
    reason: str,
    message: str,
    now: str,
) -> tuple[tuple[Condition, ...], bool]:
    """The conditions with one set; True as second value when it changed in status or
    reason (worth an Event). The transition time moves only with the status."""
    kept = [c for c in conditions if c.type != type_]
    old = next((c for c in conditions if c.type == type_), None)
    changed = old is None or (old.status, old.reason) != (status, reason)
    since = old.last_transition_time if old and old.status == status else now
    new = Condition(
        type=type_, status=status, reason=reason, message=message, last_transition_time=since
    )
    return tuple(sorted([*kept, new], key=lambda c: c.type)), changed


@dataclass
class _Work:
    """One reconcile's view of a StaticIP and the status it is building."""

    namespace: str
    name: str
    ref: V1ObjectReference
    stored: StaticIPStatus
    node: str | None
    reservation_port_id: str | None
    gone_since: float | None
    conditions: tuple[Condition, ...]
    warnings: list[tuple[str, str]] = field(default_factory=list)
    gone: bool = False  # released: the object is about to vanish, no status to write

    @classmethod
    def of(cls, obj: dict[str, Any]) -> _Work:
        meta = obj["metadata"]
        stored = StaticIPStatus.model_validate(obj.get("status") or {})
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            ref=V1ObjectReference(
                api_version=API_VERSION,
                kind="StaticIP",
                namespace=meta["namespace"],
                name=meta["name"],
                uid=meta.get("uid"),
            ),
            stored=stored,
            node=stored.node,
            reservation_port_id=stored.reservation_port_id,
            gone_since=parse_rfc3339(stored.owner_gone_since) if stored.owner_gone_since else None,
            conditions=stored.conditions,
        )

    def condition(
        self,
        type_: str,
        status: Literal["True", "False"],
        reason: str,
        message: str,
        warn: bool = False,
    ) -> None:
        now = rfc3339(time.time())
        self.conditions, changed = with_condition(
            self.conditions, type_, status, reason, message, now
        )
        if warn and changed:
            self.warnings.append((reason, message))

    def status_patch(self) -> dict[str, Any] | None:
        """A merge patch for status (None clears a field), or None when unchanged."""
        patch = {
            "node": self.node,
            "reservationPortID": self.reservation_port_id,
            "ownerGoneSince": rfc3339(self.gone_since) if self.gone_since is not None else None,
            "conditions": [c.wire() for c in self.conditions],
        }
        stored = self.stored
        before = {
            "node": stored.node,
            "reservationPortID": stored.reservation_port_id,
            "ownerGoneSince": stored.owner_gone_since,
            "conditions": [c.wire() for c in stored.conditions],
        }
        return None if patch == before else patch


def reservation_name(uid: str) -> str:
    """The port's name carries the StaticIP's uid: set atomically at create, it lets a
    new leader adopt a port whose id a crashed one never wrote to status."""
    return f"vpccni-sip-{uid}"


class StaticIPs:
    """Reconciles StaticIPs: one call of :meth:`reconcile` per StaticIP and event."""

    def __init__(
        self,
        config: ControllerConfig,
        kube: ApiClient,
        ports: Ports,
        subnets: SubnetInfos,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.core = CoreV1Api(kube)
        self.apps = AppsV1Api(kube)
        self.custom = CustomObjectsApi(kube)
        self.staticips = CustomObjects(kube, "StaticIP")
        self.nodenetworks = CustomObjects(kube, "NodeNetwork")
        self.vpcsubnets = CustomObjects(kube, "VPCSubnet")
        self.ports = ports
        self.subnets = subnets
        self.clock = clock

    # ---- the reconcile -------------------------------------------------------------

    async def reconcile(self, namespace: str, name: str) -> float | None:
        """Brings one StaticIP to its owner's node; returns seconds after which to look
        again when only time can change the outcome (a TTL), else None."""
        obj = await self.staticips.get(name, namespace)
        if obj is None:
            return None
        work = _Work.of(obj)
        try:
            if obj["metadata"].get("deletionTimestamp"):
                await self._release(obj, work)
                return None
            return await self._serve(obj, work)
        finally:
            await self._write_status(work)

    async def _serve(self, obj: dict[str, Any], work: _Work) -> float | None:
        try:
            spec = StaticIPSpec.model_validate(obj.get("spec") or {})
            pod_name = owner_pod_name(spec.owner)
            if spec.release_policy == "TTL" and spec.ttl_seconds is None:
                raise SpecError("releasePolicy TTL needs ttlSeconds")
        except (ValidationError, SpecError) as exc:
            work.condition("Reserved", "False", "InvalidSpec", _brief(exc), warn=True)
            return None
        subnet = await self._subnet(spec.subnet, work)
        if subnet is None:
            return None
        if spec.address is not None and spec.address not in subnet.cidr:
            message = f"address {spec.address} is not in subnet {spec.subnet} ({subnet.cidr})"
            work.condition("Reserved", "False", "InvalidSpec", message, warn=True)
            return None
        await self._ensure_finalizer(obj)
        address = await self._reserve(obj, spec, subnet, work)
        if address is None:
            return None
        pod = await self._pod(work.namespace, pod_name)
        owner_exists = pod is not None or await self._statefulset_exists(
            work.namespace, spec.owner.stateful_set
        )
        # made for one pod (vpccni.io/ip): that pod's going releases it, placed or not,
        # and a new pod of the same name is another owner
        made_for = _made_for_pod(obj)
        if made_for is not None and (pod is None or pod.metadata.uid != made_for):
            owner_exists, pod = False, None
        verdict = release_verdict(
            spec.release_policy,
            spec.ttl_seconds,
            owner_exists,
            work.node is not None or made_for is not None,
            work.gone_since,
            self.clock(),
        )
        work.gone_since = verdict.gone_since
        if verdict.release:
            log.info("staticip %s/%s: owner gone, releasing", work.namespace, work.name)
            await record_event(
                self.core,
                work.ref,
                "Released",
                f"owner {pod_name} is gone; releasing {address} ({spec.release_policy})",
                "Normal",
            )
            await self.staticips.delete(work.name, work.namespace)
            refreshed = await self.staticips.get(work.name, work.namespace)
            if refreshed is not None:
                await self._release(refreshed, work)
            return None
        if pod is not None and pod.spec.node_name:
            await self._place(address, pod.spec.node_name, subnet, work)
        elif work.node is None:
            message = f"pod {pod_name} is not scheduled yet"
            work.condition("Placed", "False", "OwnerNotScheduled", message)
        return verdict.recheck_after

    async def _subnet(self, name: str, work: _Work) -> SubnetInfo | None:
        stored = await self.vpcsubnets.get(name)
        if stored is None:
            work.condition("Reserved", "False", "SubnetNotFound", f"no VPCSubnet {name}", True)
            return None
        return await self.subnets.get(VPCSubnetSpec.model_validate(stored["spec"]).subnet_id)

    # ---- the reservation port --------------------------------------------------------

    async def _reserve(
        self, obj: dict[str, Any], spec: StaticIPSpec, subnet: SubnetInfo, work: _Work
    ) -> IPv4Address | None:
        port = await self._reservation_port(obj, work)
        if port is None:
            try:
                port = await self.ports.create(
                    name=reservation_name(obj["metadata"]["uid"]),
                    network_id=subnet.network_id,
                    subnet_id=subnet.id,
                    cluster=self.config.cluster_name,
                    purpose="reservation",
                    address=spec.address,
                )
            except CloudError as exc:
                if exc.kind is Kind.ADDRESS_IN_USE and spec.address is not None:
                    holder = await self._holder(subnet, spec.address)
                    work.condition("Reserved", "False", "AddressInUse", holder, warn=True)
                    await self._owner_event(work, spec, "AddressInUse", holder)
                    return None
                if exc.kind in (Kind.EXHAUSTED, Kind.QUOTA):
                    reason = "SubnetExhausted" if exc.kind is Kind.EXHAUSTED else "QuotaExceeded"
                    work.condition("Reserved", "False", reason, exc.message, warn=True)
                    return None
                raise
            log.info("staticip %s/%s: reserved with port %s", work.namespace, work.name, port.id)
        work.reservation_port_id = port.id
        held = port.addresses(subnet.id)
        if not held or (spec.address is not None and spec.address != held[0]):
            message = (
                f"reservation port {port.id} holds {held or 'nothing'} in subnet {spec.subnet}, "
                f"spec asks for {spec.address}: the address of a StaticIP cannot change"
            )
            work.condition("Reserved", "False", "AddressMismatch", message, warn=True)
            return None
        address = held[0]
        if spec.address is None:
            # the address Neutron picked goes into spec, where the daemon and users read it
            await self.staticips.patch_spec(work.name, {"address": str(address)}, work.namespace)
        message = f"{address} held by reservation port {port.id}"
        work.condition("Reserved", "True", "Reserved", message)
        return address

    async def _reservation_port(self, obj: dict[str, Any], work: _Work) -> Port | None:
        if work.reservation_port_id:
            try:
                # read from Neutron, not the cache: the reservation is the address's
                # one owner, and a port deleted behind our back must be seen at once
                return await self.ports.get(work.reservation_port_id, fresh=True)
            except CloudError as exc:
                if exc.kind is not Kind.NOT_FOUND:
                    raise
                log.warning("staticip %s/%s: reservation port vanished", work.namespace, work.name)
        found = await self.ports.list(
            tags=self._tags("reservation"), name=reservation_name(obj["metadata"]["uid"])
        )
        return found[0] if found else None

    async def _holder(self, subnet: SubnetInfo, address: IPv4Address) -> str:
        """Who holds the address, as an operator would look for it: another
        StaticIP (and its pod), a node's pool, or a foreign port."""
        found = await self.ports.list(
            network_id=subnet.network_id, fixed_ips=f"ip_address={address}"
        )
        if not found:
            return f"{address} is in use by another port in network {subnet.network_id}"
        port = found[0]
        if port.name.startswith(reservation_name("")):
            uid = port.name[len(reservation_name("")) :]
            listed = await self.custom.list_cluster_custom_object(
                GROUP, VERSION, PLURALS["StaticIP"]
            )
            for item in listed["items"]:
                if item["metadata"].get("uid") == uid:
                    meta, owner = item["metadata"], item["spec"].get("owner") or {}
                    pod = owner.get("pod") or f"{owner.get('statefulSet')}-{owner.get('ordinal')}"
                    return (
                        f"{address} is held by StaticIP {meta['namespace']}/{meta['name']} "
                        f"of pod {pod} (reservation port {port.id})"
                    )
        node = next((t[len(node_tag("")) :] for t in port.tags if t.startswith(node_tag(""))), None)
        if node and purpose_tag("eni") in port.tags:
            return f"{address} is in the address pool of node {node} (ENI port {port.id})"
        owner = port.device_owner or "no device owner"
        return f"{address} is held by port {port.id} ({port.name or 'unnamed'}, {owner})"

    async def _owner_event(self, work: _Work, spec: StaticIPSpec, reason: str, text: str) -> None:
        """The same Warning on the owner pod, where its user looks first (once per
        change of the StaticIP's condition, like the StaticIP's own Event)."""
        if not any(r == reason for r, _ in work.warnings):
            return
        pod = await self._pod(work.namespace, owner_pod_name(spec.owner))
        if pod is not None:
            await self._pod_event(pod, reason, text)

    # ---- placement ---------------------------------------------------------------------

    async def _place(
        self, address: IPv4Address, target: str, subnet: SubnetInfo, work: _Work
    ) -> None:
        holders = await self._pair_holders(subnet.network_id, address)
        old_nodes = ({work.node} | set(holders)) - {None, target}
        busy = [n for n in sorted(old_nodes) if await self._in_use_on(n, address)]
        if busy:
            message = f"{address} moves to {target} once {', '.join(busy)} stop using it"
            work.condition("Placed", "False", "WaitingForOldNode", message)
            return
        eni = await self._add_pair(target, subnet, address, holders.get(target, []), work)
        if eni is None:
            return
        work.node = target
        for node in sorted(old_nodes):
            for port_id in holders.get(node, []):
                await self.ports.set_address_pair(port_id, address, False)
            await self._set_static(node, address, None)
        for port_id in holders.get(target, []):
            if port_id != eni:  # an interrupted spill left a second pair on this node
                await self.ports.set_address_pair(port_id, address, False)
        work.condition("Placed", "True", "Placed", f"{address} on node {target}, ENI {eni}")

    async def _add_pair(
        self,
        node: str,
        subnet: SubnetInfo,
        address: IPv4Address,
        holding: list[str],
        work: _Work,
    ) -> str | None:
        """Adds the pair on the first ENI of the node in the subnet's network that has
        room, preferring one that already carries it; returns that ENI's port id."""
        stored = await self.nodenetworks.get(node)
        spec = NodeNetworkSpec.model_validate((stored or {}).get("spec") or {})
        enis = sorted(
            (e for e in spec.enis if e.network_id == subnet.network_id),
            key=lambda e: (e.port_id not in holding, e.device_index),
        )
        if not enis:
            message = f"node {node} has no ENI in network {subnet.network_id} yet"
            work.condition("Placed", "False", "NoEni", message)
            return None
        full = []
        for eni in enis:
            try:
                await self.ports.set_address_pair(eni.port_id, address, True)
            except CloudError as exc:
                if exc.kind is not Kind.PAIR_LIMIT:
                    raise
                full.append(eni.port_id)
                continue
            await self._set_static(node, address, eni.port_id)
            work.condition("PlacementFailed", "False", "Placed", f"on ENI {eni.port_id}")
            return eni.port_id
        message = (
            f"cannot place {address} on node {node}: its ENIs {', '.join(full)} hold the "
            "most allowed address pairs Neutron permits (max_allowed_address_pair); raise "
            "that limit or let the node get another ENI in this network"
        )
        work.condition("PlacementFailed", "True", "AddressPairLimit", message, warn=True)
        work.condition("Placed", "False", "AddressPairLimit", message)
        return None

    async def _pair_holders(self, network_id: str, address: IPv4Address) -> dict[str, list[str]]:
        """node -> ENI port ids that carry the address as a pair, from Neutron itself."""
        holders: dict[str, list[str]] = {}
        prefix = node_tag("")
        for port in await self.ports.list(tags=self._tags("eni"), network_id=network_id):
            if address in port.address_pairs:
                node = next((t[len(prefix) :] for t in port.tags if t.startswith(prefix)), "")
                holders.setdefault(node, []).append(port.id)
        return holders

    async def _in_use_on(self, node: str, address: IPv4Address) -> bool:
        """Whether the node's daemon still reports the address. A deleted Node reports
        nothing: that is how a move off a dead node is let through."""
        try:
            await self.core.read_node(node)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        stored = await self.nodenetworks.get(node)
        status = NodeNetworkStatus.model_validate((stored or {}).get("status") or {})
        return any(use.address == address for use in status.in_use)

    async def _set_static(self, node: str, address: IPv4Address, port_id: str | None) -> None:
        """Lists the address in staticAddresses of ENI ``port_id`` only (None: of none)
        in the node's NodeNetwork spec. The write carries the resourceVersion it was
        computed from, so a concurrent spec write (the pool's) is never overwritten."""
        for _ in range(SPEC_WRITE_ATTEMPTS):
            stored = await self.nodenetworks.get(node)
            if stored is None:
                return
            spec = NodeNetworkSpec.model_validate(stored.get("spec") or {})
            enis = tuple(
                e.model_copy(
                    update={
                        "static_addresses": tuple(
                            sorted(
                                ({*e.static_addresses} - {address})
                                | ({address} if e.port_id == port_id else set())
                            )
                        )
                    }
                )
                for e in spec.enis
            )
            if enis == spec.enis:
                return
            body = {
                "metadata": {"resourceVersion": stored["metadata"]["resourceVersion"]},
                "spec": {"enis": [e.wire() for e in enis]},
            }
            try:
                await self.custom.patch_cluster_custom_object(
                    GROUP, VERSION, PLURALS["NodeNetwork"], node, body, _content_type=MERGE_PATCH
                )
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
        raise CloudError("staticAddresses", Kind.RETRY, f"NodeNetwork {node} kept changing")

    # ---- release -----------------------------------------------------------------------

    async def _release(self, obj: dict[str, Any], work: _Work) -> None:
        """Gives the address back once no node reports it in use: pairs, the nodes'
        staticAddresses, the reservation port, then the finalizer."""
        finalizers = obj["metadata"].get("finalizers") or []
        if FINALIZER not in finalizers:
            return
        port = await self._reservation_port(obj, work)
        if port is not None and port.fixed_ips:
            address = port.fixed_ips[0].address
            holders = await self._pair_holders(port.network_id, address)
            nodes = ({work.node} | set(holders)) - {None, ""}
            busy = [n for n in sorted(nodes) if await self._in_use_on(n, address)]
            if busy:
                message = f"{address} is released once {', '.join(busy)} stop using it"
                work.condition("Released", "False", "WaitingForNode", message)
                return
            for ports in holders.values():
                for port_id in ports:
                    await self.ports.set_address_pair(port_id, address, False)
            for node in sorted(nodes):
                await self._set_static(node, address, None)
            await self.ports.delete(port.id)
            log.info("staticip %s/%s: released %s", work.namespace, work.name, address)
        work.gone = True
        await self._patch_meta(
            obj, {"finalizers": [f for f in finalizers if f != FINALIZER] or None}
        )

    # ---- StatefulSet pods ----------------------------------------------------------------

    async def ensure_for_pod(self, namespace: str, pod_name: str) -> str | None:
        """Creates the StaticIP a pod needs: ``<sts>-<ordinal>`` for a StatefulSet pod
        whose VPCSubnet keeps StatefulSet addresses (staticIPsForStatefulSets), or
        one named after a bare pod that asks for ``vpccni.io/ip``; returns its name."""
        pod = await self._pod(namespace, pod_name)
        if pod is None:
            return None
        member = statefulset_member(pod)
        if member is None:
            if IP_ANNOTATION in (pod.metadata.annotations or {}):
                return await self._ensure_for_annotated_pod(pod)
            return None
        try:
            subnet_name = await self._subnet_of(pod)
        except SubnetChoiceError as exc:
            log.info("pod %s/%s: no StaticIP: %s", namespace, pod_name, exc)
            return None
        stored = await self.vpcsubnets.get(subnet_name)
        if stored is None:
            return None
        if not VPCSubnetSpec.model_validate(stored["spec"]).static_ips_for_stateful_sets:
            return None
        statefulset, ordinal = member
        name = f"{statefulset}-{ordinal}"
        if await self.staticips.get(name, namespace) is None:
            spec = {
                "subnet": subnet_name,
                "owner": {"statefulSet": statefulset, "ordinal": ordinal},
            }
            try:
                await self.staticips.create(name, spec, namespace)
            except ApiException as exc:
                if exc.status != 409:  # another replica was first: same object
                    raise
            log.info("staticip %s/%s: created for StatefulSet pod", namespace, name)
        return name

    async def _ensure_for_annotated_pod(self, pod: V1Pod) -> str | None:
        """The StaticIP of a bare pod with ``vpccni.io/ip``: named after the pod, owned
        by it (ownerReference, so Kubernetes deletes it with the pod), policy
        WhileOwnerExists. A malformed annotation or an undecidable subnet is an Event
        on the pod; an address someone else holds is reported by the reconcile."""
        meta = pod.metadata
        text = (meta.annotations or {})[IP_ANNOTATION]
        try:
            address = IPv4Address(text.strip())
            subnet_name = await self._subnet_of(pod)
        except ValueError as exc:  # AddressValueError and SubnetChoiceError alike
            reason = "InvalidSubnet" if isinstance(exc, SubnetChoiceError) else "InvalidAddress"
            detail = str(exc) if reason == "InvalidSubnet" else "not one IPv4 address"
            await self._pod_event(pod, reason, f"{IP_ANNOTATION}={text!r}: {detail}")
            return None
        existing = await self.staticips.get(meta.name, meta.namespace)
        if existing is not None:
            owner = StaticIPOwner.model_validate(existing["spec"].get("owner") or {})
            if owner.pod != meta.name:
                message = (
                    f"{IP_ANNOTATION}={address}: StaticIP {meta.namespace}/{meta.name} "
                    "already exists for another owner"
                )
                await self._pod_event(pod, "StaticIPConflict", message)
                return None
            return meta.name
        body = {
            "apiVersion": API_VERSION,
            "kind": "StaticIP",
            "metadata": {
                "name": meta.name,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": meta.name, "uid": meta.uid}
                ],
            },
            "spec": {
                "address": str(address),
                "subnet": subnet_name,
                "owner": {"pod": meta.name},
                "releasePolicy": "WhileOwnerExists",
            },
        }
        try:
            await self.custom.create_namespaced_custom_object(
                GROUP, VERSION, meta.namespace, PLURALS["StaticIP"], body
            )
        except ApiException as exc:
            if exc.status != 409:  # another replica was first: same object
                raise
        log.info(
            "staticip %s/%s: created for %s=%s", meta.namespace, meta.name, IP_ANNOTATION, address
        )
        return meta.name

    async def _subnet_of(self, pod: V1Pod) -> str:
        """The pod's VPCSubnet by the rule the daemon uses (kube/subnet_choice.py)."""
        namespace = await self.core.read_namespace(pod.metadata.namespace)
        items, _ = await self.vpcsubnets.list()
        return choose_subnet(
            [c for c in map(candidate_of, items) if c is not None],
            pod.metadata.annotations or {},
            pod.metadata.labels or {},
            namespace.metadata.annotations or {},
            namespace.metadata.labels or {},
        )

    async def _pod_event(self, pod: V1Pod, reason: str, message: str) -> None:
        meta = pod.metadata
        log.warning("pod %s/%s: %s: %s", meta.namespace, meta.name, reason, message)
        ref = V1ObjectReference(
            api_version="v1", kind="Pod", namespace=meta.namespace, name=meta.name, uid=meta.uid
        )
        await record_event(self.core, ref, reason, message)

    # ---- small helpers -------------------------------------------------------------------

    def _tags(self, purpose: str) -> list[str]:
        return [OWNER, cluster_tag(self.config.cluster_name), purpose_tag(purpose)]

    async def _pod(self, namespace: str, name: str) -> V1Pod | None:
        try:
            return await self.core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def _statefulset_exists(self, namespace: str, name: str | None) -> bool:
        if not name:
            return False
        try:
            await self.apps.read_namespaced_stateful_set(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _ensure_finalizer(self, obj: dict[str, Any]) -> None:
        finalizers = obj["metadata"].get("finalizers") or []
        if FINALIZER not in finalizers:
            await self._patch_meta(obj, {"finalizers": [*finalizers, FINALIZER]})
            obj["metadata"]["finalizers"] = [*finalizers, FINALIZER]

    async def _patch_meta(self, obj: dict[str, Any], meta: dict[str, Any]) -> None:
        """A metadata change guarded by resourceVersion (a 409 fails the reconcile,
        which is retried on fresh state)."""
        meta = {**meta, "resourceVersion": obj["metadata"]["resourceVersion"]}
        updated = await self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            obj["metadata"]["namespace"],
            PLURALS["StaticIP"],
            obj["metadata"]["name"],
            {"metadata": meta},
            _content_type=MERGE_PATCH,
        )
        obj["metadata"]["resourceVersion"] = updated["metadata"]["resourceVersion"]

    async def _write_status(self, work: _Work) -> None:
        for reason, message in work.warnings:
            log.warning("staticip %s/%s: %s: %s", work.namespace, work.name, reason, message)
            await record_event(self.core, work.ref, reason, message)
        patch = None if work.gone else work.status_patch()
        if patch is None:
            return
        try:
            await self.staticips.patch_status(work.name, patch, work.namespace)
        except ApiException as exc:
            if exc.status != 404:  # released and gone meanwhile
                raise


def _made_for_pod(obj: dict[str, Any]) -> str | None:
    """The uid of the pod a StaticIP was made for (its Pod ownerReference), if any."""
    refs = obj["metadata"].get("ownerReferences") or []
    return next((r.get("uid") for r in refs if r.get("kind") == "Pod"), None)


def _brief(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)
