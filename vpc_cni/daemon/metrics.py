"""The daemon's Prometheus metrics, all in one place so names stay consistent."""

from __future__ import annotations

from collections.abc import Callable

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
ENIS = Gauge(
    "vpccni_enis",
    "ENIs in this node's pool, by state (up: set up in the kernel; broken: set-up failed).",
    ["state"],
)
RECONCILE_ALLOCATIONS = Counter(
    "vpccni_reconcile_allocations_total",
    "Allocations examined by reconcile (at start-up and in each periodic sweep), by"
    " outcome (kept: the pod still lives; freed: its address went back to the pool).",
    ["outcome"],
)
NODENETWORK_WATCH_CONNECTED = Gauge(
    "vpccni_nodenetwork_watch_connected",
    "1 while the NodeNetwork list/watch follows the apiserver, 0 while it retries.",
)
READY = Gauge(
    "vpccni_ready",
    "1 while the daemon is ready (socket open, NodeNetwork watch connected, ENIs set up).",
)
DATAPATH_REPAIRS = Counter(
    "vpccni_datapath_repairs_total",
    "Datapath pieces the periodic check found missing and put back, by owner (node:"
    " setup_node's rules and nft table; eni: an ENI's address, tables, sysctls; pod: a"
    " running pod's host route, rules, proxy neighbour).",
    ["kind"],
)

# Zero-valued series from the start: a dashboard tells "none yet" from "not exported".
for _outcome in ("kept", "freed"):
    RECONCILE_ALLOCATIONS.labels(_outcome)
for _kind in ("node", "eni", "pod"):
    DATAPATH_REPAIRS.labels(_kind)


def follow_enis(total: Callable[[], int], broken: Callable[[], int]) -> None:
    """ENI gauges read at scrape time, so they can never lag the pool or the datapath."""
    ENIS.labels("broken").set_function(broken)
    ENIS.labels("up").set_function(lambda: total() - broken())
