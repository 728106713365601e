"""Field types shared by the config and result models.

CNI JSON carries addresses as strings. Pydantic's lax mode would also turn a bare
integer into an address, which no runtime sends and which hides a broken config,
so these types take the address object itself or its text form only.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StrictInt, StrictStr


def _text_or(*accepted: type) -> BeforeValidator:
    def check(value: Any) -> Any:
        if isinstance(value, (str, *accepted)):
            return value
        raise ValueError("must be a string")

    return BeforeValidator(check)


def _cidr_required(value: Any) -> Any:
    """The spec writes result addresses as ``ip/prefix``; a bare IP is a config mistake."""
    if isinstance(value, str) and "/" not in value:
        raise ValueError("must be an address with prefix length, e.g. 10.0.0.5/24")
    return value


def _network_of(value: Any) -> Any:
    """Masks host bits as Go's ParseCIDR does, so ``10.0.0.5/24`` means ``10.0.0.0/24``."""
    if isinstance(value, str):
        try:
            return IPv4Network(value, strict=False)
        except ValueError as exc:
            raise ValueError(f"not an IPv4 network: {exc}") from None
    return value


def rule(problem_of: Callable[[str], str | None]) -> AfterValidator:
    """Applies one of the naming predicates in ``names`` as a field validator."""

    def check(value: str) -> str:
        problem = problem_of(value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(check)


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


Address = Annotated[IPv4Address, _text_or(IPv4Address)]
CidrAddress = Annotated[IPv4Interface, _text_or(IPv4Interface), BeforeValidator(_cidr_required)]
AnyAddress = Annotated[IPv4Interface, _text_or(IPv4Interface)]
Network = Annotated[IPv4Network, _text_or(IPv4Network), BeforeValidator(_network_of)]
NonEmptyStr = Annotated[StrictStr, AfterValidator(_non_empty)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
NonNegative = Annotated[StrictInt, Field(ge=0)]
