"""Where the lab keeps its caches and per-instance state.

Caches (built binaries, downloaded sources) are outside the repository and shared by
every checkout on the machine, so only the first run pays; per-instance state lives
under a separate root so ``lab down`` can remove it without touching the caches.
"""

from __future__ import annotations

import os
from pathlib import Path

_DEFAULT_CACHE = Path("/var/cache/vpc-cni")
_DEFAULT_STATE = Path("/var/lib/vpc-cni-lab")


def cache_root() -> Path:
    """Root of the machine-wide build cache (env ``VPC_CNI_CACHE`` overrides)."""
    return Path(os.environ.get("VPC_CNI_CACHE") or _DEFAULT_CACHE)


def kubernetes_cache() -> Path:
    """Where Kubernetes sources, Go build cache and binaries are kept, per source version."""
    return cache_root() / "kubernetes"


def state_root() -> Path:
    """Root of per-instance lab state (env ``VPC_CNI_LAB_STATE`` overrides)."""
    return Path(os.environ.get("VPC_CNI_LAB_STATE") or _DEFAULT_STATE)
