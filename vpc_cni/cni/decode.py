"""Stdin bytes to a JSON object, with limits that keep hostile input cheap to refuse."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from vpc_cni.cni.errors import CniError, ErrorCode

# Real configs are a few KiB; the executable forwards up to 16 MiB, the daemon takes 1.
MAX_STDIN_BYTES = 1 << 20
# Real configs nest four or five levels; deeper input only serves to exhaust recursion
# in whatever walks it later.
MAX_DEPTH = 64


# A \uD800-\uDFFF escape; paired ones decode to one character, lone ones stay surrogates.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _decode_failure(reason: str) -> CniError:
    return CniError(ErrorCode.DECODE_FAILURE, f"failed to decode network config: {reason}")


def _reject_constant(name: str) -> Any:
    """Python's json accepts NaN and Infinity; JSON (and Go's decoder) does not."""
    raise ValueError(f"{name} is not valid JSON")


def _has_lone_surrogate(data: Any) -> bool:
    """Python's json keeps an unpaired ``\\ud800`` as a lone surrogate, which is not
    Unicode: it would fail later, far from here, when a name is encoded to be stored."""
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _is_container(value: Any) -> bool:
    return isinstance(value, dict | list)


def _finite(text: str) -> float:
    """``1e400`` parses as infinity, which JSON cannot carry back out."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Walks level by level, so the check itself cannot hit the recursion limit."""
    level = [value] if _is_container(value) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for item in level:
            below.extend(filter(_is_container, item.values() if isinstance(item, dict) else item))
        level = below
    return False


def decode_config(stdin: bytes) -> dict[str, Any]:
    """Code 7 when too large (the spec's closest code), 6 for anything that is not a JSON object."""
    if len(stdin) > MAX_STDIN_BYTES:
        raise CniError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            f"network config too large: stdin has {len(stdin)} bytes, the limit is "
            f"{MAX_STDIN_BYTES}",
        )
    if not stdin.strip():
        raise _decode_failure("stdin is empty; the network config is expected there")
    try:
        text = stdin.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _decode_failure(
            f"stdin is not UTF-8: byte 0x{stdin[exc.start]:02x} at offset {exc.start}"
        ) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError:
        raise _decode_failure(f"stdin nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise _decode_failure(f"stdin is not valid JSON: {exc}") from None
    # Fewer brackets than the limit cannot nest past it: real configs skip the walk.
    brackets = stdin.count(b"[") + stdin.count(b"{")
    if brackets > MAX_DEPTH and _depth_exceeds(data, MAX_DEPTH):
        raise _decode_failure(f"stdin nests deeper than {MAX_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(stdin) and _has_lone_surrogate(data):
        raise _decode_failure("stdin has a \\u escape of an unpaired UTF-16 surrogate")
    if not isinstance(data, dict):
        raise _decode_failure(f"the network config must be a JSON object, got {_json_kind(data)}")
    return data


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")
