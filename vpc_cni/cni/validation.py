"""Turns pydantic validation failures into CNI errors that name the offending field.

Operators read these messages in ``kubectl describe pod``; a field path such as
``runtimeConfig.portMappings[0].hostPort`` tells them what to fix, a pydantic dump
does not.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from vpc_cni.cni.errors import CniError, ErrorCode

# Pydantic's wording names Python types and model classes; operators write JSON.
_JSON_WORDING = {
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "list_type": "must be a JSON array",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
}

# Longest input value quoted back in a message: a 1 MiB string must not become a 1 MiB error.
_MAX_QUOTED = 80


def field_path(loc: Sequence[int | str], root: str = "") -> str:
    """Renders a pydantic location as ``a.b[0].c``, under an optional root field."""
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path or "(top level)"


def _describe(error: dict[str, object], root: str) -> str:
    loc = error.get("loc", ())
    where = field_path(loc if isinstance(loc, tuple) else (), root)
    kind = str(error.get("type", ""))
    message = _JSON_WORDING.get(kind) or str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if kind == "missing":
        return f"{where}: field required"
    value = error.get("input")
    if isinstance(value, dict | list):
        return f"{where}: {message}"
    shown = repr(value)
    if len(shown) > _MAX_QUOTED:
        shown = shown[:_MAX_QUOTED] + "..."
    return f"{where}: {message} (got {shown})"


def config_error(exc: ValidationError, root: str = "") -> CniError:
    """Code 7 naming the first bad field in msg and any further ones in details."""
    problems = [_describe(dict(error), root) for error in exc.errors(include_url=False)]
    details = f"also: {'; '.join(problems[1:])}" if len(problems) > 1 else ""
    return CniError(
        ErrorCode.INVALID_NETWORK_CONFIG, f"invalid network config: {problems[0]}", details
    )
