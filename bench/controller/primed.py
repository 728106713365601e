"""``vpcctl`` with the controller's port cache primed at leader start.

This is the one line proposed for ``Controller.lead`` in controller/app.py, among the
tasks it starts (``tasks.create_task(self.pools.ports.prime(self.config.cluster_name))``),
applied from outside so the benchmark can measure it (``run.py --prime``) before it is
wired in: the priming list runs beside the first reconciles instead of before them.
"""

from __future__ import annotations

import asyncio
import sys

from vpc_cni.cli import main
from vpc_cni.controller.app import Controller

_lead = Controller.lead


async def primed_lead(self: Controller) -> None:
    priming = asyncio.create_task(self.pools.ports.prime(self.config.cluster_name))
    try:
        await _lead(self)
    finally:
        priming.cancel()


Controller.lead = primed_lead  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
