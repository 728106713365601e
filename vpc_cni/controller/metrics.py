"""The controller's Prometheus metrics (cloud calls are counted in vpc_cni.cloud.metrics)."""

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram(
    "vpccni_controller_reconcile_seconds",
    "Time to reconcile one node's pool",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RECONCILE_ERRORS = Counter(
    "vpccni_controller_reconcile_errors_total", "Failed node reconciles by reason", ["reason"]
)
ADDRESS_STATES = ("total", "used", "free", "releasing")
NODE_ADDRESSES = Gauge(
    "vpccni_node_addresses",
    "Pool addresses per node by state (total = used + free + releasing)",
    ["node", "state"],
)
GC_RUNS = Counter(
    "vpccni_controller_gc_runs_total", "Garbage-collection passes by result", ["result"]
)
LEADER = Gauge("vpccni_controller_leader", "1 while this replica leads")
