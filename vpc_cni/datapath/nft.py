"""Running nft in the calling thread's namespace (a child inherits the thread's namespace)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from vpc_cni.datapath.model import DatapathError


def _nft(args: list[str], script: str | None = None) -> str:
    try:
        done = subprocess.run(
            ["nft", *args], input=script, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise DatapathError("nft is not installed") from None
    if done.returncode != 0:
        raise DatapathError(f"nft {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def run_nft(script: str) -> None:
    """Apply an nft script as one transaction."""
    _nft(["-f", "-"], script)


def nft_json(*command: str) -> list[dict[str, Any]]:
    """``nft -j <command>``, the list of objects it prints."""
    return json.loads(_nft(["-j", *command]))["nftables"]
