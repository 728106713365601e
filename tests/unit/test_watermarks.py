"""Pool arithmetic: properties that must hold for any pool, and the worked cases."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vpc_cni.controller.watermarks import Growth, deficit, surplus, to_allocate
from vpc_cni.kube.resources import Watermarks

marks_st = st.builds(
    Watermarks,
    pre_allocate=st.integers(0, 64),
    min_allocate=st.integers(0, 64),
    max_above_watermark=st.integers(0, 64),
)
pool_st = st.integers(0, 256).flatmap(lambda a: st.tuples(st.just(a), st.integers(0, a)))


def test_worked_cases():
    marks = Watermarks(pre_allocate=8, min_allocate=10, max_above_watermark=4)
    assert deficit(0, 0, marks) == 10  # min_allocate dominates on an empty node
    assert to_allocate(0, 0, marks, limit=100) == 14
    assert to_allocate(0, 0, marks, limit=5) == 5  # the ENI capacity caps the batch
    assert deficit(16, 10, marks) == 2  # six free, eight wanted
    assert surplus(30, 10, marks) == 8  # twenty free, twelve is the ceiling
    assert surplus(12, 0, marks) == 0  # never below min_allocate


@given(marks_st, pool_st, st.integers(0, 512))
def test_growing_then_settles(marks, pool, limit):
    available, used = pool
    add = to_allocate(available, used, marks, limit)
    assert 0 <= add <= limit
    if add and add < limit:
        # after the batch the pool meets its watermarks and wants nothing more
        assert deficit(available + add, used, marks) == 0


@given(marks_st, pool_st)
def test_never_grow_and_shrink_at_once(marks, pool):
    available, used = pool
    assert not (deficit(available, used, marks) and surplus(available, used, marks))


@given(marks_st, pool_st)
def test_release_keeps_the_pool_within_marks(marks, pool):
    available, used = pool
    give = surplus(available, used, marks)
    assert give <= available - used  # only free addresses are released
    if give:
        assert deficit(available - give, used, marks) == 0
        assert available - give >= marks.min_allocate


def test_recent_growth_widens_the_batch_and_holds_back_release() -> None:
    marks = Watermarks(pre_allocate=8, min_allocate=0, max_above_watermark=8)
    assert to_allocate(16, 10, marks, limit=200) == 2 + 8
    assert to_allocate(16, 10, marks, limit=200, recent_growth=30) == 2 + 30
    assert surplus(60, 10, marks) == 34
    assert surplus(60, 10, marks, recent_growth=30) == 12


def test_growth_is_the_rise_within_the_window() -> None:
    now = [0.0]
    growth = Growth(window=60.0, clock=lambda: now[0])
    assert growth.observe("n", 5) == 0
    now[0] = 10
    assert growth.observe("n", 25) == 20
    now[0] = 65  # the first sample left the window; 25 is the lowest left
    assert growth.observe("n", 30) == 5
    assert growth.observe("other", 30) == 0
    now[0] = 200
    assert growth.observe("n", 30) == 0
