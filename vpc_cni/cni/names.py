"""The naming rules libcni enforces, as predicates shared by env and config checks.

Each function returns why a value is unacceptable, or None. Callers pick the error
code: the same container-id rule is an environment error (4) for CNI_CONTAINERID and
a config error (7) inside GC's valid-attachments.
"""

from __future__ import annotations

import re

# libcni's rule for container ids and network names.
_ID_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_ID_RULE = "must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"

# Linux IFNAMSIZ is 16 including the terminating NUL.
MAX_IFNAME_BYTES = 15
# Linux PATH_MAX, terminating NUL included.
_MAX_PATH_BYTES = 4095


def _id_problem(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if _ID_PATTERN.fullmatch(value) is None:
        return _ID_RULE
    return None


def container_id_problem(value: str) -> str | None:
    """libcni's ValidateContainerID."""
    return _id_problem(value)


def network_name_problem(value: str) -> str | None:
    """libcni's ValidateNetworkName (the same rule as container ids)."""
    return _id_problem(value)


def ifname_problem(value: str) -> str | None:
    """libcni's ValidateInterfaceName: what the kernel accepts as a link name."""
    if not value:
        return "must not be empty"
    if len(value.encode()) > MAX_IFNAME_BYTES:
        return f"must be at most {MAX_IFNAME_BYTES} bytes"
    if value in {".", ".."}:
        return "must not be '.' or '..'"
    if any(char in "/:" or char.isspace() for char in value):
        return "must not contain '/', ':' or whitespace"
    return None


def path_problem(value: str) -> str | None:
    """For netns and socket paths. Linux allows control characters in paths, but no
    runtime makes such a path: one means a broken caller, and it would garble logs."""
    if not value.startswith("/"):
        return "must be an absolute path"
    if len(value.encode()) > _MAX_PATH_BYTES:
        return f"must be at most {_MAX_PATH_BYTES} bytes"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return "must not contain control characters"
    return None
