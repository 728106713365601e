"""A token bucket per API, so a storm of pods cannot turn into a storm of cloud calls.

OpenStack deployments rate-limit per project at the API gateway and answer 429 or
503 when crossed; staying under our own budget keeps the controller's calls
predictable and leaves room for every other tool that shares the project.
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Allows ``rate`` calls per second on average with bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> float:
        """Takes one token, waiting for it if needed; returns the seconds waited."""
        waited = 0.0
        async with self._lock:
            self._refill()
            while self._tokens < 1:
                delay = (1 - self._tokens) / self.rate
                await asyncio.sleep(delay)
                waited += delay
                self._refill()
            self._tokens -= 1
        return waited
