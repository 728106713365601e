"""Kubernetes Events: where `kubectl describe` shows an operator why something waits
or failed. Best effort: an Event that cannot be written never fails a reconcile."""

from __future__ import annotations

import logging
import time
from typing import Literal

from kubernetes_asyncio.client import (
    CoreV1Api,
    V1EventSource,
    V1ObjectMeta,
    V1ObjectReference,
)
from kubernetes_asyncio.client import (
    CoreV1Event as V1Event,
)

log = logging.getLogger(__name__)
CONTROLLER = "vpc-cni-controller"
DAEMON = "vpc-cni-daemon"
CLUSTER_EVENTS_NAMESPACE = "default"  # Events about cluster-scoped objects live here


async def record_event(
    core: CoreV1Api,
    involved: V1ObjectReference,
    reason: str,
    message: str,
    kind: Literal["Normal", "Warning"] = "Warning",
    component: str = CONTROLLER,
    host: str | None = None,
) -> None:
    """One Event about ``involved``, in its namespace (``default`` for cluster objects);
    ``component`` and ``host`` say who wrote it, as `kubectl describe` shows."""
    namespace = involved.namespace or CLUSTER_EVENTS_NAMESPACE
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = V1Event(
        metadata=V1ObjectMeta(generate_name=f"{involved.name}.", namespace=namespace),
        involved_object=involved,
        reason=reason,
        message=message[:1000],
        type=kind,
        source=V1EventSource(component=component, host=host),
        first_timestamp=now,
        last_timestamp=now,
        count=1,
    )
    try:
        await core.create_namespaced_event(namespace, body)
    except Exception as exc:  # the caller's log line stays; the Event is extra
        log.warning("could not record event %s for %s: %s", reason, involved.name, exc)
