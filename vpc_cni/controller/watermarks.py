"""How many addresses a node's pool should gain or give back (Cilium's semantics).

``available`` counts the addresses the pool holds, ``used`` those handed to pods.
The pool wants ``pre_allocate`` free at all times and at least ``min_allocate`` in
total. When it has to grow it asks for ``max_above_watermark`` extra in the same
batch, so a node that keeps growing pays one Neutron call per batch rather than
one per pod; and it gives back only what lies beyond that margin, so a pool that
just grew does not shrink on the next pass.
"""

from __future__ import annotations

from vpc_cni.kube.resources import Watermarks


def deficit(available: int, used: int, marks: Watermarks) -> int:
    """Addresses needed to reach the watermarks (0 when the pool is large enough)."""
    needed = marks.pre_allocate - (available - used)
    if marks.min_allocate:
        needed = max(needed, marks.min_allocate - available)
    return max(needed, 0)


def to_allocate(available: int, used: int, marks: Watermarks, limit: int) -> int:
    """The batch to ask Neutron for: the deficit plus the margin, capped by what the
    node can still hold (``limit`` addresses left on its ENIs)."""
    need = deficit(available, used, marks)
    if need == 0:
        return 0
    return max(0, min(need + marks.max_above_watermark, limit))


def surplus(available: int, used: int, marks: Watermarks) -> int:
    """Free addresses beyond the watermark and its margin: the ones that may be
    released (never below ``min_allocate`` in total)."""
    excess = available - used - marks.pre_allocate - marks.max_above_watermark
    if marks.min_allocate:
        excess = min(excess, available - marks.min_allocate)
    return max(excess, 0)
