"""Whether the node daemon is ready, kept in `readyFile` and the `vpccni_ready` gauge.

Ready means a pod scheduled here now would get an address and a datapath: the CNI
socket is open, the watches follow the apiserver (a daemon cut off from it hands
out a pool the controller may be taking back, and decides subnets and fixed
addresses from stale pods, VPCSubnets and StaticIPs), and every ENI is set up.
Each input calls `update` when it changes, so readiness flips back by itself once
the problem is gone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vpc_cni.daemon import metrics
from vpc_cni.daemon.netlink import NodeDatapath
from vpc_cni.kube.watch import Informer

log = logging.getLogger(__name__)


class Readiness:
    """Computes readiness from its inputs and writes `ready_file` (None: gauge only)."""

    def __init__(self, ready_file: Path | None, datapath: NodeDatapath) -> None:
        self.ready_file = ready_file
        self.datapath = datapath
        self.serving = False
        self._watches: dict[str, Informer] = {}
        self._reported: list[str] | None = None

    def follow_watch(self, what: str, informer: Informer) -> None:
        """Readiness also needs this informer connected (cluster mode)."""
        self._watches[what] = informer
        informer.on_health = lambda _connected: self.update()

    def problems(self) -> list[str]:
        """Why the daemon is not ready; empty when it is."""
        found = []
        if not self.serving:
            found.append("the CNI socket is not open")
        cut = [what for what, informer in self._watches.items() if not informer.connected]
        if cut:
            found.append(f"watches not connected to the apiserver: {', '.join(cut)}")
        broken = self.datapath.broken_enis()
        if broken:
            found.append(f"ENIs not set up: {', '.join(sorted(broken))}")
        return found

    def update(self) -> None:
        problems = self.problems()
        metrics.READY.set(0 if problems else 1)
        if problems != self._reported:
            if problems:
                log.warning("not ready: %s", "; ".join(problems))
            else:
                log.info("ready")
            self._reported = problems
        if self.ready_file is None:
            return
        if problems:
            self.ready_file.unlink(missing_ok=True)
        else:
            self.ready_file.parent.mkdir(parents=True, exist_ok=True)
            self.ready_file.write_text("ready\n")

    def stop(self) -> None:
        """Not ready from here on (shutting down)."""
        self.serving = False
        self.update()
