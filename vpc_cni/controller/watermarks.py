"""How many addresses a node's pool should gain or give back (Cilium's semantics).

``available`` counts the addresses the pool holds, ``used`` those handed to pods.
The pool wants ``pre_allocate`` free at all times and at least ``min_allocate`` in
total. When it has to grow it asks for ``max_above_watermark`` extra in the same
batch, so a node that keeps growing pays one Neutron call per batch rather than
one per pod; and it gives back only what lies beyond that margin, so a pool that
just grew does not shrink on the next pass.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable

from vpc_cni.kube.resources import Watermarks


def deficit(available: int, used: int, marks: Watermarks) -> int:
    """Addresses needed to reach the watermarks (0 when the pool is large enough)."""
    needed = marks.pre_allocate - (available - used)
    if marks.min_allocate:
        needed = max(needed, marks.min_allocate - available)
    return max(needed, 0)


def margin(marks: Watermarks, recent_growth: int) -> int:
    """The headroom above the watermark: ``max_above_watermark``, or what the pool's
    use rose by lately when that is more (a pool filling fast gets batches sized to
    its pace instead of one Neutron call per few pods)."""
    return max(marks.max_above_watermark, recent_growth)


def to_allocate(
    available: int, used: int, marks: Watermarks, limit: int, recent_growth: int = 0
) -> int:
    """The batch to ask Neutron for: the deficit plus the margin, capped by what the
    node can still hold (``limit`` addresses left on its ENIs)."""
    need = deficit(available, used, marks)
    if need == 0:
        return 0
    return max(0, min(need + margin(marks, recent_growth), limit))


def surplus(available: int, used: int, marks: Watermarks, recent_growth: int = 0) -> int:
    """Free addresses beyond the watermark and its margin: the ones that may be
    released (never below ``min_allocate`` in total). The margin includes recent
    growth, so what a growing pool was just given is not handed back."""
    excess = available - used - marks.pre_allocate - margin(marks, recent_growth)
    if marks.min_allocate:
        excess = min(excess, available - marks.min_allocate)
    return max(excess, 0)


class Growth:
    """How much each pool's use rose within the last ``window`` seconds.

    Memory only: a new leader starts with none and sizes its first batches by the
    watermarks alone, which is merely less efficient, never wrong."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._seen: dict[Hashable, deque[tuple[float, int]]] = {}

    def observe(self, pool: Hashable, used: int) -> int:
        """Records `used` for `pool` now; returns the rise since the window's lowest."""
        now = self.clock()
        history = self._seen.setdefault(pool, deque())
        history.append((now, used))
        while len(history) > 1 and history[0][0] < now - self.window:
            history.popleft()
        return max(0, used - min(u for _, u in history))

    def forget(self, pool: Hashable) -> None:
        self._seen.pop(pool, None)
