"""Pure logic of the cloud layer: error classification, backoff, token bucket."""

from __future__ import annotations

import json

import pytest
import requests
from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as sdk_exc

from vpc_cni.cloud.caller import CloudCaller, RetryPolicy
from vpc_cni.cloud.errors import CloudError, Kind, classify
from vpc_cni.cloud.ratelimit import TokenBucket


def http_error(status: int, neutron_type: str | None = None, message: str = "boom"):
    response = requests.Response()
    response.status_code = status
    body = {"NeutronError": {"type": neutron_type, "message": message}} if neutron_type else {}
    response._content = json.dumps(body).encode()
    response.headers["Content-Type"] = "application/json"
    return sdk_exc.HttpException(message=message, response=response)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (http_error(409, "OverQuota"), Kind.QUOTA),
        (http_error(409, "IpAddressGenerationFailure"), Kind.EXHAUSTED),
        (http_error(409, "IpAddressAlreadyAllocated"), Kind.ADDRESS_IN_USE),
        (http_error(400, "AllowedAddressPairExhausted"), Kind.PAIR_LIMIT),
        (http_error(409), Kind.RETRY),
        (http_error(412), Kind.STALE),
        (http_error(404), Kind.NOT_FOUND),
        (http_error(503), Kind.RETRY),
        (http_error(400), Kind.FATAL),
        (ksa_exc.ConnectFailure("refused"), Kind.RETRY),
        (TimeoutError("slow"), Kind.RETRY),
        (KeyError("bug"), Kind.FATAL),
    ],
)
def test_classify(exc, kind):
    assert classify(exc)[0] is kind


def test_backoff_is_capped_and_jittered():
    policy = RetryPolicy(attempts=10, base_delay=0.5, max_delay=4)
    delays = [policy.delay(9) for _ in range(200)]
    assert max(delays) <= 4
    assert len(set(delays)) > 100


def test_retry_policy_needs_an_attempt():
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


async def test_caller_retries_transient_then_succeeds():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise http_error(503)
        return "ok"

    caller = CloudCaller("network", TokenBucket(1000, 10), RetryPolicy(5, 0.001, 0.002))
    assert await caller("get_port", flaky) == "ok"
    assert len(calls) == 3


async def test_caller_does_not_retry_quota():
    calls = []

    def quota():
        calls.append(1)
        raise http_error(409, "OverQuota", "Quota exceeded for resources: ['port']")

    caller = CloudCaller("network", TokenBucket(1000, 10), RetryPolicy(5, 0.001, 0.002))
    with pytest.raises(CloudError) as err:
        await caller("create_port", quota)
    assert err.value.kind is Kind.QUOTA and len(calls) == 1
    assert "Quota exceeded" in str(err.value)


async def test_token_bucket_makes_the_call_past_the_burst_wait():
    bucket = TokenBucket(rate=200, burst=3)
    waits = [await bucket.acquire() for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] > 0


def test_token_bucket_rejects_nonsense():
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, burst=1)
