"""Fixtures the daemon's unit tests share: a hand-moved clock and a store on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.pools import FakeClock
from vpc_cni.daemon.store import Store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    opened = Store(tmp_path, clock=clock)
    yield opened
    opened.close()
