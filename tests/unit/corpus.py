"""Loads the malformed-input corpus (tests/corpus/malformed/*.jsonl).

Shared by the unit tests of ``vpc_cni.cni`` and by the daemon's tests, which send the
same cases through the real executable, so each case is plain data: the CNI_*
environment, the stdin bytes and the CNI error code the reply must carry.

A case line holds ``name``, ``env``, ``expect_code``, optionally ``expect_msg`` (a
substring the error message must contain, usually the field's name) and exactly one of:

- ``stdin``: the text, sent as UTF-8;
- ``stdin_b64``: raw bytes, for input that is not UTF-8;
- ``stdin_repeat``: ``{"head", "fill", "times", "tail"}``, for the huge and deeply
  nested inputs that would bloat the repository if stored.

Environment values that must not be valid UTF-8 are stored with Python's
surrogateescape convention (``"\\udcff"`` is the byte 0xff); ``Case.env_bytes`` gives
the bytes a process environment would carry.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS_DIR = Path(__file__).resolve().parent.parent / "corpus" / "malformed"
_STDIN_KEYS = ("stdin", "stdin_b64", "stdin_repeat")


@dataclass(frozen=True)
class Case:
    """One malformed invocation and the CNI error code it must produce."""

    name: str
    env: dict[str, str]
    stdin: bytes
    expect_code: int
    expect_msg: str | None

    def env_bytes(self) -> dict[bytes, bytes]:
        """The environment as a process would receive it (invalid UTF-8 restored)."""
        return {
            key.encode("utf-8", "surrogateescape"): value.encode("utf-8", "surrogateescape")
            for key, value in self.env.items()
        }


def _stdin(entry: dict[str, Any], where: str) -> bytes:
    present = [key for key in _STDIN_KEYS if key in entry]
    if len(present) != 1:
        raise ValueError(f"{where}: needs exactly one of {', '.join(_STDIN_KEYS)}")
    if "stdin" in entry:
        return str(entry["stdin"]).encode()
    if "stdin_b64" in entry:
        return base64.b64decode(entry["stdin_b64"], validate=True)
    repeat = entry["stdin_repeat"]
    text = repeat.get("head", "") + repeat["fill"] * int(repeat["times"]) + repeat.get("tail", "")
    return text.encode()


def _case(entry: dict[str, Any], where: str) -> Case:
    return Case(
        name=entry["name"],
        env=dict(entry["env"]),
        stdin=_stdin(entry, where),
        expect_code=int(entry["expect_code"]),
        expect_msg=entry.get("expect_msg"),
    )


def load_malformed(directory: Path = CORPUS_DIR) -> list[Case]:
    """Every case of every ``*.jsonl`` file, in file then line order."""
    cases: list[Case] = []
    for path in sorted(directory.glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                cases.append(_case(json.loads(line), f"{path.name}:{number}"))
    return cases
