"""Leader election settings and the Lease time format (pure logic)."""

from __future__ import annotations

import datetime

import pytest

from vpc_cni.kube.leader import LeaderElectionError, LeaseTimings, micro_time


@pytest.mark.parametrize(
    "timings",
    [
        LeaseTimings(lease_seconds=10, renew_deadline=10, retry_period=2),
        LeaseTimings(lease_seconds=15, renew_deadline=2, retry_period=2),
        LeaseTimings(lease_seconds=15, renew_deadline=10, retry_period=0),
    ],
)
def test_inconsistent_timings_are_refused(timings: LeaseTimings) -> None:
    with pytest.raises(LeaderElectionError, match="lease_seconds > renew_deadline"):
        timings.validate()


def testmicro_time_keeps_six_digits_and_utc() -> None:
    whole_second = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert micro_time(whole_second) == "2026-01-02T03:04:05.000000Z"
    berlin = datetime.timezone(datetime.timedelta(hours=1))
    local = datetime.datetime(2026, 1, 2, 4, 4, 5, 7, tzinfo=berlin)
    assert micro_time(local) == "2026-01-02T03:04:05.000007Z"
