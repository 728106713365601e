"""Leader election on a ``coordination.k8s.io/v1`` Lease, for the controller's replicas.

Why our own and not ``kubernetes_asyncio.leaderelection``: that one returns for good
after losing the lease, leaves the leader's work running when its task is cancelled,
never releases the lease on shutdown (so failover always waits a full lease), and
stamps local time as UTC. The algorithm is client-go's: a candidate takes the lease
when it is free or when its record has not changed for a whole lease duration, as
measured on the candidate's own monotonic clock (never by comparing wall clocks
across machines); every write is a compare-and-swap on resourceVersion.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api, V1LeaseSpec
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)


class LeaderElectionError(ValueError):
    """Inconsistent election timings."""


@dataclass(frozen=True)
class LeaseTimings:
    """Lease duration > renew deadline > retry period, as in client-go (15/10/2 s)."""

    lease_seconds: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def validate(self) -> None:
        if not self.lease_seconds > self.renew_deadline > self.retry_period > 0:
            raise LeaderElectionError(
                "need lease_seconds > renew_deadline > retry_period > 0, got "
                f"{self.lease_seconds} / {self.renew_deadline} / {self.retry_period}"
            )


class LeaseElector:
    """One candidate. :meth:`run` leads whenever it holds the lease, until cancelled."""

    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        name: str,
        identity: str,
        timings: LeaseTimings | None = None,
    ) -> None:
        self.timings = timings or LeaseTimings()
        self.timings.validate()
        if not identity:
            raise LeaderElectionError("identity must not be empty")
        self._leases = CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.is_leader = False

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Acquire, run ``lead()`` while renewing; on loss cancel it and contend again.

        Returns when ``lead()`` returns (or raises what it raised). Cancelling
        :meth:`run` cancels ``lead()``; either way the lease is released, so another
        replica takes over at its next retry instead of after a full lease.
        """
        while True:
            await self._acquire()
            work = asyncio.create_task(lead(), name=f"leading:{self.name}")
            try:
                await self._renew_until_lost_or_done(work)
            finally:
                self.is_leader = False
                work.cancel()
                await asyncio.wait({work})
                await asyncio.shield(self._release())
            if not work.cancelled():
                work.result()  # re-raises what lead() raised
                return

    async def _acquire(self) -> None:
        while True:
            if await self._try_acquire_or_renew():
                break
            await asyncio.sleep(self.timings.retry_period)
        self.is_leader = True
        log.info("%s leads %s/%s", self.identity, self.namespace, self.name)

    async def _renew_until_lost_or_done(self, work: asyncio.Task[None]) -> None:
        """Renew every retry period until ``work`` ends or renewal fails for a deadline."""
        last_renewed = time.monotonic()
        while True:
            await asyncio.wait({work}, timeout=self.timings.retry_period)
            if work.done():
                return
            if await self._try_acquire_or_renew():
                last_renewed = time.monotonic()
            elif time.monotonic() - last_renewed > self.timings.renew_deadline:
                log.warning("%s lost %s/%s", self.identity, self.namespace, self.name)
                return

    async def _try_acquire_or_renew(self) -> bool:
        """One attempt; any API or transport failure counts as "not this time"."""
        try:
            return await self._attempt()
        except (ApiException, aiohttp.ClientError, TimeoutError) as err:
            log.warning("lease %s/%s: %s", self.namespace, self.name, err)
            return False

    async def _attempt(self) -> bool:
        try:
            lease = await self._leases.read_namespaced_lease(self.name, self.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            return await self._write(self._create_body(), create=True)
        spec = lease.spec or V1LeaseSpec()
        record = (spec.holder_identity, spec.renew_time, lease.metadata.resource_version)
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        if spec.holder_identity and spec.holder_identity != self.identity:
            duration = spec.lease_duration_seconds or self.timings.lease_seconds
            if time.monotonic() - self._observed_at < duration:
                return False
        body = self._create_body()
        body["metadata"]["resourceVersion"] = lease.metadata.resource_version
        transitions = spec.lease_transitions or 0
        if spec.holder_identity == self.identity and spec.acquire_time:
            body["spec"]["acquireTime"] = micro_time(spec.acquire_time)
            body["spec"]["leaseTransitions"] = transitions
        else:
            body["spec"]["leaseTransitions"] = transitions + 1
        return await self._write(body, create=False)

    def _create_body(self) -> dict[str, Any]:
        now = micro_time()
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.timings.lease_seconds,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }

    async def _write(self, body: dict[str, Any], *, create: bool) -> bool:
        """Create or compare-and-swap replace; a conflict means someone else won."""
        try:
            if create:
                await self._leases.create_namespaced_lease(self.namespace, body)
            else:
                await self._leases.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as err:
            if err.status not in (404, 409):
                raise
            return False
        return True

    async def _release(self) -> None:
        """Give the lease up (empty holder) if we hold it, so a successor need not wait.

        Bounded by the renew deadline: shutdown must not hang on an unreachable API.
        """
        try:
            async with asyncio.timeout(self.timings.renew_deadline):
                lease = await self._leases.read_namespaced_lease(self.name, self.namespace)
                if not lease.spec or lease.spec.holder_identity != self.identity:
                    return
                body = self._create_body()
                body["metadata"]["resourceVersion"] = lease.metadata.resource_version
                body["spec"].update(holderIdentity=None, leaseDurationSeconds=1)
                await self._write(body, create=False)
        except (ApiException, aiohttp.ClientError, TimeoutError) as err:
            log.warning("releasing lease %s/%s: %s", self.namespace, self.name, err)


def micro_time(value: datetime.datetime | None = None) -> str:
    """RFC 3339 with exactly six fraction digits, in UTC, as MicroTime requires.

    ``isoformat()`` drops the fraction when it is zero, which the apiserver rejects.
    """
    value = value or datetime.datetime.now(datetime.UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
