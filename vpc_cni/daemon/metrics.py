"""The daemon's Prometheus metrics, all in one place so names stay consistent."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUEST_SECONDS = Histogram(
    "vpccni_cni_request_seconds",
    "Time the daemon spent answering one CNI request, by command.",
    ["command"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REQUEST_ERRORS = Counter(
    "vpccni_cni_request_errors_total",
    "CNI requests answered with an error, by command and CNI error code.",
    ["command", "code"],
)
POOL_ADDRESSES = Gauge(
    "vpccni_pool_addresses",
    "Pool addresses by subnet and state (free: an ADD could take it now; used: allocated).",
    ["subnet", "state"],
)
STATUS_PATCHES = Counter(
    "vpccni_nodenetwork_status_patches_total",
    "Status subresource patches written to this node's NodeNetwork (one per burst).",
)
NODENETWORK_RELISTS = Gauge(
    "vpccni_nodenetwork_relists",
    "Full lists of this node's NodeNetwork (the first, then one per expired watch).",
)
