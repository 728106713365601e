"""What a failed cloud call means for the caller: retry it, report it, or give up.

Neutron says why a call failed in the body (`NeutronError.type`), not only in the
status: a 409 is a lost race worth retrying when two writers collide, but a 409
OverQuota or IpAddressGenerationFailure will fail the same way until an operator
acts, so it must become a condition, never a retry loop.
"""

from __future__ import annotations

import enum

from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as sdk_exc


class Kind(enum.Enum):
    RETRY = "retry"  # 5xx, timeouts, connection errors, plain 409
    STALE = "stale"  # 412: our revision is old; refetch and redo
    QUOTA = "quota"  # OverQuota
    EXHAUSTED = "exhausted"  # no free address in the subnet
    ADDRESS_IN_USE = "address-in-use"  # an explicit address is held by another port
    PAIR_LIMIT = "pair-limit"  # max_allowed_address_pair reached
    NOT_FOUND = "not-found"
    FATAL = "fatal"  # anything else: a bug or a bad request


_NEUTRON_TYPES = {
    "OverQuota": Kind.QUOTA,
    "IpAddressGenerationFailure": Kind.EXHAUSTED,
    "IpAddressAlreadyAllocated": Kind.ADDRESS_IN_USE,
    "AllowedAddressPairExhausted": Kind.PAIR_LIMIT,
}


class CloudError(Exception):
    """A cloud call that failed for good (after retries, or not worth retrying)."""

    def __init__(self, operation: str, kind: Kind, message: str) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation = operation
        self.kind = kind
        self.message = message


def neutron_error_type(exc: BaseException) -> tuple[str | None, str]:
    """The `NeutronError` type and message in a failed response, if there is one."""
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("NeutronError"), dict):
            err = body["NeutronError"]
            return err.get("type"), str(err.get("message") or err)
    return None, str(getattr(exc, "details", None) or exc)


def classify(exc: BaseException) -> tuple[Kind, str]:
    """Maps an exception from openstacksdk or keystoneauth to a Kind and a message."""
    if isinstance(exc, ksa_exc.RetriableConnectionFailure | ksa_exc.ConnectionError):
        return Kind.RETRY, f"cloud unreachable: {exc}"
    if isinstance(exc, TimeoutError):
        return Kind.RETRY, f"timed out: {exc}"
    if not isinstance(exc, sdk_exc.HttpException):
        if isinstance(exc, sdk_exc.SDKException):
            return Kind.RETRY, str(exc)
        return Kind.FATAL, f"{type(exc).__name__}: {exc}"
    status = exc.status_code or 0
    neutron_type, message = neutron_error_type(exc)
    if neutron_type in _NEUTRON_TYPES:
        return _NEUTRON_TYPES[neutron_type], message
    if status == 412:
        return Kind.STALE, message
    if status == 404:
        return Kind.NOT_FOUND, message
    if status == 409 or status >= 500 or status == 429:
        return Kind.RETRY, message
    if "address pair" in message.lower() and "exceed" in message.lower():
        return Kind.PAIR_LIMIT, message
    return Kind.FATAL, message
