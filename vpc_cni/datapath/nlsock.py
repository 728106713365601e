"""A small synchronous rtnetlink socket for the per-pod hot path.

pyroute2 0.9 runs every request through a private asyncio loop and decodes every
attribute of every reply: about 0.5-3 ms a request here, which made the netlink part of
one pod ADD cost ~60 ms. The pod path only needs a dozen fixed message shapes and a
few attributes of the replies, so it builds them with ``struct`` and reads only what it
uses (tens of microseconds a request). Setup, teardown and CHECK, which run rarely and
read much more of the kernel's state, stay on pyroute2.

A socket serves the namespace it was opened in, whatever thread later uses it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import count

from vpc_cni.datapath.model import DatapathError

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_ATTR = struct.Struct("=HH")  # rtattr: length, type
_ERROR = struct.Struct("=i")
_SOL_NETLINK = 270
_NETLINK_GET_STRICT_CHK = 12  # lets a dump request filter (e.g. one route table) in the kernel
_RECV_BYTES = 1 << 16

# Errors that mean "it is already gone" when removing something.
GONE = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL})


class NetlinkFailure(OSError):
    """The kernel refused a request; ``errno``/``strerror`` say why."""


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to the 4-byte boundary the kernel expects."""
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def attrs(data: bytes | memoryview, offset: int = 0) -> dict[int, bytes]:
    """Attribute type -> payload of a flat attribute list (nesting flags masked off)."""
    found: dict[int, bytes] = {}
    view = memoryview(data)
    while offset + _ATTR.size <= len(view):
        length, kind = _ATTR.unpack_from(view, offset)
        if length < _ATTR.size:
            break
        found[kind & 0x3FFF] = bytes(view[offset + _ATTR.size : offset + length])
        offset += (length + 3) & ~3
    return found


@dataclass(frozen=True)
class Request:
    """One message to send: what it does (for errors), its type, flags and body."""

    what: str
    kind: int
    flags: int
    body: bytes


class Rtnl:
    """One NETLINK_ROUTE socket in the namespace of the thread that opened it.

    ``namespace`` identifies that namespace (its inode) for caches kept per namespace.
    """

    def __init__(self) -> None:
        self.namespace = os.stat("/proc/thread-self/ns/net").st_ino
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            self._sock.bind((0, 0))
            self._sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        except OSError:
            self._sock.close()
            raise
        self._seq = count(1)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _frame(self, request: Request) -> tuple[int, bytes]:
        seq = next(self._seq)
        flags = NLM_F_REQUEST | request.flags
        header = _HEADER.pack(_HEADER.size + len(request.body), request.kind, flags, seq, 0)
        return seq, header + request.body

    def _messages(self) -> Iterator[tuple[int, int, memoryview]]:
        """(type, sequence, payload) of every message the kernel sends, as they come."""
        while True:
            data = memoryview(self._sock.recv(_RECV_BYTES))
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, seq, _port = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    break
                yield kind, seq, data[offset + _HEADER.size : offset + length]
                offset += (length + 3) & ~3

    def batch(self, requests: Sequence[Request]) -> list[NetlinkFailure | None]:
        """Send all requests in one write and wait for every acknowledgement.

        The kernel handles them in order and carries on after a failure, so the result
        holds each request's failure (None for success) instead of raising."""
        framed = [self._frame(r) for r in requests]
        pending = {seq: i for i, (seq, _) in enumerate(framed)}
        outcome: list[NetlinkFailure | None] = [None] * len(requests)
        self._sock.sendall(b"".join(message for _, message in framed))
        for kind, seq, payload in self._messages():
            if kind == NLMSG_ERROR and seq in pending:
                code = -_ERROR.unpack_from(payload)[0]
                index = pending.pop(seq)
                if code:
                    outcome[index] = NetlinkFailure(code, os.strerror(code))
                if not pending:
                    return outcome
        raise AssertionError("unreachable: the message stream does not end")

    def call(self, *requests: Request) -> None:
        """Requests that must all succeed, in one write; the first failure names what
        was being done (the later ones depend on it)."""
        for request, failure in zip(requests, self.batch(requests), strict=True):
            if failure is not None:
                raise DatapathError(f"{request.what}: {failure.strerror}")

    def call_quietly(self, request: Request) -> bool:
        """A removal that may find nothing to remove; True if something was removed."""
        failure = self.batch([request])[0]
        if failure is None:
            return True
        if failure.errno in GONE:
            return False
        raise DatapathError(f"{request.what}: {failure.strerror}")

    def fetch(self, kind: int, body: bytes, *, dump: bool) -> list[memoryview]:
        """Payloads of the kernel's answer to a get (one object) or a dump (many).

        A failed get raises NetlinkFailure so callers can tell "not there" apart."""
        seq, message = self._frame(Request("", kind, NLM_F_DUMP if dump else NLM_F_ACK, body))
        self._sock.sendall(message)
        found: list[memoryview] = []
        for reply_kind, reply_seq, payload in self._messages():
            if reply_seq != seq:
                continue
            if reply_kind == NLMSG_DONE:
                return found
            if reply_kind == NLMSG_ERROR:
                code = -_ERROR.unpack_from(payload)[0]
                if code:
                    raise NetlinkFailure(code, os.strerror(code))
                return found  # the acknowledgement that ends a get
            found.append(payload)
        raise AssertionError("unreachable: the message stream does not end")
