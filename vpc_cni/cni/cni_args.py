"""CNI_ARGS: ``KEY=VALUE;KEY=VALUE``, read with libcni's rules.

libcni refuses a pair without exactly one ``=``, and refuses keys the plugin does not
know unless ``IgnoreUnknown`` is true. Runtimes rely on that switch: containerd and
podman always send it along with the Kubernetes pod identity.
"""

from __future__ import annotations

from collections.abc import Mapping

from vpc_cni.cni.errors import CniError, ErrorCode

KNOWN_KEYS: frozenset[str] = frozenset(
    {
        "IgnoreUnknown",
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_UID",
        "K8S_POD_INFRA_CONTAINER_ID",
    }
)


def _invalid(reason: str) -> CniError:
    return CniError(ErrorCode.INVALID_ENVIRONMENT, f"invalid CNI_ARGS: {reason}")


def _flag(value: str) -> bool:
    """libcni's UnmarshallableBool: 1/true and 0/false, any case."""
    lowered = value.lower()
    if lowered in {"1", "true"}:
        return True
    if lowered in {"0", "false"}:
        return False
    raise _invalid(f"IgnoreUnknown must be 1, 0, true or false, got {value[:20]!r}")


def parse_cni_args(text: str) -> Mapping[str, str]:
    """Splits CNI_ARGS into a mapping; empty segments (a trailing ``;``) are tolerated."""
    pairs: dict[str, str] = {}
    for segment in text.split(";"):
        if not segment:
            continue
        parts = segment.split("=")
        if len(parts) != 2 or not parts[0]:
            raise _invalid(f"{segment[:40]!r} is not a KEY=VALUE pair")
        pairs[parts[0]] = parts[1]
    unknown = sorted(set(pairs) - KNOWN_KEYS)
    ignore_unknown = _flag(pairs["IgnoreUnknown"]) if "IgnoreUnknown" in pairs else False
    if unknown and not ignore_unknown:
        keys = ", ".join(key[:40] for key in unknown[:5])
        raise _invalid(f"unknown keys {keys} (add IgnoreUnknown=1 to allow them)")
    return pairs
