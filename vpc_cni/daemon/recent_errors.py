"""The last CNI errors the daemon answered, kept in memory for `vpcctl node errors`.

An operator looking at a pod stuck in ContainerCreating wants the daemon's side of the
story without grepping logs on the node: which verb failed for which pod, with which
code and message. A bounded ring is enough; the log keeps the full history.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from pydantic.alias_generators import to_camel

DEFAULT_SIZE = 100


@dataclass(frozen=True)
class RecordedError:
    """One failed request as the caller saw it (code, msg, details) and whose it was."""

    time: float
    verb: str
    pod: str | None
    container_id: str | None
    ifname: str | None
    code: int
    msg: str
    details: str

    def wire(self) -> dict[str, Any]:
        return {to_camel(k): v for k, v in asdict(self).items()}


class RecentErrors:
    """A ring of the newest `size` errors, oldest first."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._ring: deque[RecordedError] = deque(maxlen=size)

    def record(
        self,
        verb: str,
        code: int,
        msg: str,
        details: str = "",
        *,
        pod: str | None = None,
        container_id: str | None = None,
        ifname: str | None = None,
    ) -> None:
        self._ring.append(
            RecordedError(time.time(), verb, pod, container_id, ifname, code, msg, details)
        )

    def entries(self) -> list[RecordedError]:
        return list(self._ring)
