"""One way to call the cloud: rate limited, retried with backoff and jitter, measured.

openstacksdk is synchronous, so each call runs in a worker thread; the controller's
event loop never blocks on the cloud.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from vpc_cni.cloud.errors import CloudError, Kind, classify
from vpc_cni.cloud.metrics import CALL_SECONDS, CALLS
from vpc_cni.cloud.ratelimit import TokenBucket

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")

    def delay(self, attempt: int) -> float:
        """Full jitter: a random delay up to the exponential cap, so replicas and
        nodes that failed together do not retry together."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


class CloudCaller:
    """Runs blocking SDK calls for one API (``network`` or ``compute``)."""

    def __init__(self, api: str, bucket: TokenBucket, retry: RetryPolicy | None = None) -> None:
        self.api = api
        self.bucket = bucket
        self.retry = retry or RetryPolicy()

    async def __call__(self, operation: str, fn: Callable[[], T]) -> T:
        """Calls ``fn`` until it succeeds or fails for good; STALE is the caller's to
        handle (it must refetch before trying again), so it is raised at once."""
        started = time.monotonic()
        attempt = 0
        try:
            while True:
                await self.bucket.acquire()
                try:
                    result = await asyncio.to_thread(fn)
                except Exception as exc:  # every SDK failure is classified
                    kind, message = classify(exc)
                    CALLS.labels(self.api, operation, kind.value).inc()
                    if kind is not Kind.RETRY or attempt + 1 == self.retry.attempts:
                        raise CloudError(operation, kind, message) from exc
                    delay = self.retry.delay(attempt)
                    log.warning(
                        "%s %s failed (%s), retry %d in %.2fs",
                        self.api,
                        operation,
                        message,
                        attempt + 1,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    attempt += 1
                else:
                    CALLS.labels(self.api, operation, "ok").inc()
                    return result
        finally:
            CALL_SECONDS.labels(self.api, operation).observe(time.monotonic() - started)
