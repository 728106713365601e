"""Lease-based leader election against the real apiserver, as the controller uses it.

Two candidates contend for one ``coordination.k8s.io`` Lease: exactly one leads and
keeps renewing. When the leader loses the API it stops leading by itself and the
other takes over once the lease expires; when it shuts down it releases the lease,
so the other takes over without waiting for expiry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api, V1LeaseSpec

from tests.fixtures.kube import API_WAIT, KubeApi, eventually
from vpc_cni.kube.leader import LeaseElector, LeaseTimings

# Short enough for a quick crash failover, long enough for a loaded machine.
CRASH_TIMINGS = LeaseTimings(lease_seconds=6, renew_deadline=4.0, retry_period=1.0)
# Far longer than any test waits: a takeover within API_WAIT proves the lease was released.
RELEASE_TIMINGS = LeaseTimings(
    lease_seconds=int(API_WAIT) * 5, renew_deadline=4.0, retry_period=1.0
)


@dataclass
class Candidate:
    """One replica: its client, its elector task, and what its leader work observed."""

    identity: str
    client: ApiClient
    task: asyncio.Task[None] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    async def lead(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()  # the controller's work: runs until cancelled
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture
async def candidates(kube_api: KubeApi) -> AsyncIterator[dict[str, Candidate]]:
    async with kube_api.api_client() as client_a, kube_api.api_client() as client_b:
        pair = {"a": Candidate("a", client_a), "b": Candidate("b", client_b)}
        try:
            yield pair
        finally:
            tasks = [c.task for c in pair.values() if c.task]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def start(
    candidates: dict[str, Candidate], namespace: str, lease: str, timings: LeaseTimings
) -> None:
    for c in candidates.values():
        elector = LeaseElector(c.client, namespace, lease, c.identity, timings)
        c.task = asyncio.create_task(elector.run(c.lead), name=c.identity)


async def read_spec(client: ApiClient, namespace: str, lease: str) -> V1LeaseSpec:
    return (await CoordinationV1Api(client).read_namespaced_lease(lease, namespace)).spec


async def elect_one(
    candidates: dict[str, Candidate], client: ApiClient, namespace: str, lease: str
) -> tuple[Candidate, Candidate]:
    """Wait for a leader; check it renews (three fresh renewTimes) while the other waits."""

    async def leader() -> Candidate | None:
        return next((c for c in candidates.values() if c.started.is_set()), None)

    winner = await eventually(leader, "a leader")
    loser = next(c for c in candidates.values() if c is not winner)
    renewals: set[object] = set()

    async def renewed_three_times() -> bool | None:
        spec = await read_spec(client, namespace, lease)
        assert spec.holder_identity == winner.identity
        renewals.add(spec.renew_time)
        return len(renewals) >= 3 or None

    await eventually(renewed_three_times, f"{winner.identity} to renew its lease")
    assert not loser.started.is_set()
    return winner, loser


async def wait_set(event: asyncio.Event, what: str) -> None:
    async def is_set() -> bool | None:
        return event.is_set() or None

    await eventually(is_set, what)


async def test_leader_that_loses_the_api_steps_down_and_the_other_takes_over(
    candidates: dict[str, Candidate], kube_client: ApiClient, kube_namespace: str, prefix: str
) -> None:
    lease = f"{prefix}-crash"
    start(candidates, kube_namespace, lease, CRASH_TIMINGS)
    winner, loser = await elect_one(candidates, kube_client, kube_namespace, lease)
    before = await read_spec(kube_client, kube_namespace, lease)

    # The leader's API becomes unreachable: it can neither renew nor release.
    winner.client.configuration.host = "https://127.0.0.1:1"

    await wait_set(winner.cancelled, f"{winner.identity} to stop leading")
    await wait_set(loser.started, f"{loser.identity} to take over")
    after = await read_spec(kube_client, kube_namespace, lease)
    assert after.holder_identity == loser.identity
    assert after.lease_transitions == (before.lease_transitions or 0) + 1


async def test_leader_shutting_down_releases_the_lease_for_a_prompt_takeover(
    candidates: dict[str, Candidate], kube_client: ApiClient, kube_namespace: str, prefix: str
) -> None:
    lease = f"{prefix}-release"
    start(candidates, kube_namespace, lease, RELEASE_TIMINGS)
    winner, loser = await elect_one(candidates, kube_client, kube_namespace, lease)

    assert winner.task is not None
    winner.task.cancel()
    await asyncio.gather(winner.task, return_exceptions=True)
    assert winner.cancelled.is_set()

    # Without the release this would take RELEASE_TIMINGS.lease_seconds, far past the wait.
    await wait_set(loser.started, f"{loser.identity} to take over the released lease")
    spec = await read_spec(kube_client, kube_namespace, lease)
    assert spec.holder_identity == loser.identity
