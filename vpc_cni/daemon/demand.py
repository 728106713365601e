"""Subnets pods asked for and found empty: the daemon's request for more addresses.

The controller fills the default subnet by watermarks, but a subnet only some pods
ask for is filled on demand; `NodeNetwork.status.subnetDemand` is how it learns of
that demand the moment an ADD is refused (docs/contracts.md section 5). An entry
goes once an address of its subnet was handed out, or when nobody asked for
`forget_after` seconds (the pods went elsewhere).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vpc_cni.kube.resources import SubnetDemand

FORGET_AFTER = 300.0


def rfc3339(moment: float) -> str:
    """Seconds since the epoch as Kubernetes writes times."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Entry:
    vpc_subnet: str | None
    since: float
    last_asked: float
    pods: set[str] = field(default_factory=set)


class SubnetDemands:
    """Refusals per subnet, counted by distinct pod; cheap enough to call on every ADD."""

    def __init__(
        self, clock: Callable[[], float] = time.time, forget_after: float = FORGET_AFTER
    ) -> None:
        self._clock = clock
        self._forget_after = forget_after
        self._entries: dict[str, _Entry] = {}

    def refused(self, subnet_id: str, vpc_subnet: str | None, pod: str) -> None:
        """A pod (`namespace/name`, or the container id when no pod is known) found no
        free address of `subnet_id`."""
        now = self._clock()
        entry = self._entries.setdefault(subnet_id, _Entry(vpc_subnet, now, now))
        entry.last_asked = now
        entry.vpc_subnet = vpc_subnet or entry.vpc_subnet
        entry.pods.add(pod)

    def served(self, subnet_id: str) -> None:
        """An address of the subnet was handed out: the controller has caught up."""
        self._entries.pop(subnet_id, None)

    def current(self) -> tuple[SubnetDemand, ...]:
        """The entries to report now, oldest refusals forgotten, in subnet order."""
        horizon = self._clock() - self._forget_after
        for subnet_id in [s for s, e in self._entries.items() if e.last_asked < horizon]:
            del self._entries[subnet_id]
        return tuple(
            SubnetDemand(
                subnet_id=subnet_id,
                vpc_subnet=entry.vpc_subnet,
                waiting=len(entry.pods),
                since=rfc3339(entry.since),
            )
            for subnet_id, entry in sorted(self._entries.items())
        )
