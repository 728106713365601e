"""Which CNI spec versions vpc-cni speaks, and which verbs each version allows."""

from __future__ import annotations

from vpc_cni.cni.errors import CniError, ErrorCode

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

# Versions whose results carry ``"version": "4"`` in every ``ips`` entry.
LEGACY_RESULT_VERSIONS: frozenset[str] = frozenset({"0.3.0", "0.3.1", "0.4.0"})

# The first spec version that defines each verb; older configs must not use it.
_MINIMUM_VERSION: dict[str, str] = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}


def version_key(version: str) -> tuple[int, ...]:
    """Orders supported versions numerically (``"0.10.0"`` would sort wrong as text)."""
    return tuple(int(part) for part in version.split("."))


def require_supported(version: str) -> None:
    """Rejects a cniVersion vpc-cni cannot answer in."""
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ErrorCode.INCOMPATIBLE_VERSION,
            f"incompatible CNI version: cniVersion {version[:20]!r} is not supported",
            f"vpc-cni supports {', '.join(SUPPORTED_VERSIONS)}",
        )


def require_command_allowed(command: str, version: str) -> None:
    """Rejects a verb the config's version predates (CHECK < 0.4.0, GC/STATUS < 1.1.0)."""
    minimum = _MINIMUM_VERSION.get(command)
    if minimum is not None and version_key(version) < version_key(minimum):
        raise CniError(
            ErrorCode.INCOMPATIBLE_VERSION,
            f"incompatible CNI version: {command} needs cniVersion {minimum} or later, "
            f"the config has {version}",
        )
