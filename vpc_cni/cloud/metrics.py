"""Prometheus metrics for every cloud call: what we asked, how it ended, how long it took."""

from prometheus_client import Counter, Histogram

CALLS = Counter(
    "vpccni_cloud_calls_total",
    "Cloud API calls by API, operation and result",
    ["api", "operation", "result"],
)
CALL_SECONDS = Histogram(
    "vpccni_cloud_call_seconds",
    "Latency of cloud API calls, retries included",
    ["api", "operation"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
