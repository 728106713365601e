"""Per-pod choices in cluster mode: the daemon's side of docs/contracts.md section 5.

An ADD asks `PodChoices.want` what the pod needs (a subnet, or an exact address) and
`place` whether that address is on this node yet. Problems become `ChoiceError`s; the
caller turns them into the CNI reply and, through `PodEvents`, an Event on the pod,
since `kubectl describe pod` is where an operator looks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Literal

import aiohttp
from kubernetes_asyncio.client import CoreV1Api, V1ObjectReference
from kubernetes_asyncio.client.exceptions import ApiException

from vpc_cni.cni.errors import CniError, ErrorCode
from vpc_cni.cni.request import CniRequest
from vpc_cni.daemon.podinfo import PodInfo
from vpc_cni.daemon.pool import PoolAddress, PoolSnapshot
from vpc_cni.daemon.selection import (
    ADDRESS_CONFLICT,
    INVALID_ANNOTATION,
    TRANSIENT_REASONS,
    WAITING_FOR_ADDRESS,
    AddressWish,
    ChoiceError,
    Labelled,
    SubnetChoice,
    address_wish,
    choose_subnet,
    owner_is,
    static_claimant,
)
from vpc_cni.kube.events import DAEMON, record_event

log = logging.getLogger(__name__)

# One ADD waits at most this long for an address to arrive: the runtime's own timeout
# is far longer, but a request held open ties up the runtime's sandbox worker.
IN_REQUEST_WAIT = 5.0
# The same Event is not repeated while the runtime retries the ADD.
EVENT_REPEAT_SECONDS = 60.0
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Want:
    """What one pod needs: an exact address, else a subnet (None: any pool address)."""

    pod: Labelled | None = None
    namespace: str = ""
    subnet: SubnetChoice | None = None
    wish: AddressWish | None = None

    def describe_pod(self) -> str:
        return f"{self.namespace}/{self.pod.name}" if self.pod else "(no pod)"


class PodEvents:
    """Fire-and-forget Events on pods, deduplicated: recording never delays or fails
    an ADD, and a pod whose ADD the runtime retries every few seconds gets one Event
    per reason and message a minute, not one per retry."""

    def __init__(
        self, core: CoreV1Api, node_name: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.core = core
        self.node_name = node_name
        self._clock = clock
        self._recent: dict[tuple[str, str, str, str], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def record(
        self,
        want: Want,
        reason: str,
        message: str,
        kind: Literal["Normal", "Warning"] = "Warning",
    ) -> None:
        if want.pod is None:
            return
        now = self._clock()
        key = (want.namespace, want.pod.name, reason, message)
        if now - self._recent.get(key, -EVENT_REPEAT_SECONDS) < EVENT_REPEAT_SECONDS:
            return
        self._recent = {k: t for k, t in self._recent.items() if now - t < EVENT_REPEAT_SECONDS}
        self._recent[key] = now
        involved = V1ObjectReference(
            api_version="v1",
            kind="Pod",
            namespace=want.namespace,
            name=want.pod.name,
            uid=want.pod.uid,
        )
        task = asyncio.create_task(
            record_event(
                self.core, involved, reason, message, kind, component=DAEMON, host=self.node_name
            )
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class PodChoices:
    """Resolves what a pod wants from the caches, and whether this node can serve it."""

    def __init__(
        self,
        info: PodInfo,
        static_wait_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.info = info
        self.events = PodEvents(info.core, info.node_name)
        self.static_wait_seconds = static_wait_seconds
        self._clock = clock
        self._first_wait: dict[tuple[str, str], float] = {}

    async def _synced(self) -> None:
        deadline = self._clock() + IN_REQUEST_WAIT
        while not self.info.synced:
            if self._clock() >= deadline:
                raise CniError(
                    ErrorCode.TRY_AGAIN_LATER,
                    "pod information not loaded yet",
                    "the daemon is still listing pods, namespaces, VPCSubnets and StaticIPs",
                )
            await asyncio.sleep(POLL_SECONDS)

    async def want(self, request: CniRequest) -> Want:
        """What the request's pod asks for; raises ChoiceError (with an Event) for a
        request that cannot be served as asked."""
        await self._synced()
        ref = request.pod
        pod: Labelled | None = None
        namespace = Labelled("", {}, {})
        if ref is not None:
            try:
                pod = await self.info.pod(ref.namespace, ref.name)
                namespace = await self.info.namespace(ref.namespace)
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
                raise CniError(
                    ErrorCode.TRY_AGAIN_LATER,
                    f"cannot read pod {ref.namespace}/{ref.name} from the apiserver",
                    str(error),
                ) from None
            pod = pod or Labelled(ref.name, {}, {}, ref.uid)
        want = Want(pod, ref.namespace if ref else "")
        try:
            wish = address_wish(pod, want.namespace, self.info.static_ips.values()) if pod else None
            if wish is not None:
                return Want(pod, want.namespace, wish=wish)
            subnet = choose_subnet(
                pod or Labelled("", {}, {}), namespace, self.info.vpc_subnets.values()
            )
        except ChoiceError as error:
            self.refused(want, error)
            raise
        return Want(pod, want.namespace, subnet=subnet)

    def place(self, want: Want, snapshot: PoolSnapshot) -> PoolAddress | None:
        """The pool entry of the wished address if this node holds it and the pod may
        have it; None while it is not here yet. A StaticIP's address goes only to its
        owner, whatever the asking pod's annotation says."""
        wish = want.wish
        assert wish is not None and want.pod is not None
        if wish.address is None:
            return None
        claimant = static_claimant(wish.address, self.info.static_ips.values())
        if claimant is not None and not (
            claimant.namespace == want.namespace and owner_is(claimant.spec.owner, want.pod.name)
        ):
            raise ChoiceError(
                ErrorCode.INVALID_NETWORK_CONFIG,
                ADDRESS_CONFLICT,
                f"pod {want.describe_pod()} asks for {wish.describe()}, but that address"
                f" belongs to StaticIP {claimant.namespace}/{claimant.name}",
                "a StaticIP's address goes only to its owner pod",
            )
        entry = snapshot.static_entry(wish.address)
        if entry is not None:
            return entry
        if wish.address in snapshot.withheld:
            return None
        entry = snapshot.locate(wish.address)
        if entry is not None:
            return entry
        if snapshot.subnet_holding(wish.address) is None and not any(
            s.cidr is not None and wish.address in s.cidr for s in self.info.vpc_subnets.values()
        ):
            raise ChoiceError(
                ErrorCode.INVALID_NETWORK_CONFIG,
                INVALID_ANNOTATION,
                f"pod {want.describe_pod()} asks for {wish.describe()}, which is in no"
                " subnet of this node or of any VPCSubnet",
            )
        return None

    def wait_deadline(self, want: Want, address: IPv4Address | None) -> float:
        """Until when this ADD may wait for the address: a few seconds per request,
        and no more once the pod has waited `staticWaitSeconds` in all (its retries
        then answer at once, so a pod that never gets its address holds no worker)."""
        now = self._clock()
        key = (want.describe_pod(), str(address))
        horizon = now - 10 * max(self.static_wait_seconds, IN_REQUEST_WAIT)
        self._first_wait = {k: t for k, t in self._first_wait.items() if t > horizon}
        first = self._first_wait.setdefault(key, now)
        return max(now, min(now + IN_REQUEST_WAIT, first + self.static_wait_seconds))

    def passed(self, deadline: float) -> bool:
        return self._clock() >= deadline

    def arrived(self, want: Want, address: IPv4Address | None) -> None:
        self._first_wait.pop((want.describe_pod(), str(address)), None)

    def not_here(self, want: Want, snapshot: PoolSnapshot) -> ChoiceError:
        """The code-11 answer for an address that did not arrive in time."""
        wish = want.wish
        assert wish is not None
        if wish.address is None:
            waits_for = "the controller to pick the StaticIP's address"
        elif wish.address in snapshot.withheld:
            waits_for = "the controller to finish releasing it from this node"
        else:
            waits_for = "the controller to place it on this node (NodeNetwork staticAddresses)"
        return ChoiceError(
            ErrorCode.TRY_AGAIN_LATER,
            WAITING_FOR_ADDRESS,
            f"pod {want.describe_pod()} waits for {wish.describe()}",
            f"waiting for {waits_for}; try again later",
        )

    def refused(self, want: Want, error: ChoiceError) -> None:
        """The Event for a refused ADD: waiting is Normal (it resolves by itself), the
        rest a Warning (someone has to fix something)."""
        kind: Literal["Normal", "Warning"] = (
            "Normal" if error.reason in TRANSIENT_REASONS else "Warning"
        )
        self.events.record(want, error.reason, str(error), kind)
