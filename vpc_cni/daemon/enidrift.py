"""What the ENI guard last found that something else put on the ENIs, for status.

The guard (eni_guard.py) runs on its own schedule; the status reporter builds status
on its own. This is the one value they share, so neither has to know the other: the
guard reports, the reporter reads it into the `EniForeignConfiguration` condition.
"""

from __future__ import annotations

ENI_DRIFT = "EniForeignConfiguration"

_found: str | None = None


def report_eni_drift(found: str | None) -> None:
    """What the last check found on the ENIs that vpc-cni did not make; None: nothing."""
    global _found
    _found = found


def eni_drift() -> str | None:
    return _found
