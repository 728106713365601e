"""What the ENI guard last found that something else put on the ENIs, for status.

The guard (eni_guard.py) runs on its own schedule; the status reporter builds status
on its own. This is the one value they share, so neither has to know the other: the
daemon hands both the same `EniDrift`, the guard reports into it, the reporter reads
it into the `EniForeignConfiguration` condition.
"""

from __future__ import annotations

ENI_DRIFT = "EniForeignConfiguration"


class EniDrift:
    """What the last check found on the ENIs that vpc-cni did not make; None: nothing."""

    def __init__(self) -> None:
        self.found: str | None = None
