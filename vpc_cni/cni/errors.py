"""CNI error replies: the one exception type every protocol failure becomes.

The runtime shows ``msg`` to operators and matches on ``code``, so both are chosen
with care; a Python traceback must never reach stdout.
"""

from __future__ import annotations

import json
from enum import IntEnum


class ErrorCode(IntEnum):
    """Error codes of the CNI spec (1-99 reserved by it); vpc-cni defines none of its own here."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_NETWORK_CONFIG = 7
    TRY_AGAIN_LATER = 11
    PLUGIN_NOT_AVAILABLE = 50
    PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY = 51


class CniError(Exception):
    """A failure the runtime should see as CNI error JSON on stdout (exit code non-zero)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def __repr__(self) -> str:
        return f"CniError(code={self.code}, msg={self.msg!r}, details={self.details!r})"

    def to_json(self, cni_version: str) -> bytes:
        """The spec's error object; ``details`` is left out when empty, as libcni does."""
        body: dict[str, object] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            body["details"] = self.details
        return json.dumps(body).encode()
