"""One framed request in, one reply out: parsing, dispatch, errors, log line, metrics.

This is the last place an exception can be caught before the executable prints our
reply, so every failure becomes CNI error JSON here: a CniError as it is, anything
else as code 999 with the exception text (the traceback goes to the daemon's log).
Every error is also kept in `recent_errors`, which `vpcctl node errors` shows.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from vpc_cni.cni.errors import CniError
from vpc_cni.cni.request import CniRequest, error_version, parse_request
from vpc_cni.cni.result import encode_result
from vpc_cni.daemon import metrics
from vpc_cni.daemon.commands import NodeCommands, Outcome
from vpc_cni.daemon.recent_errors import RecentErrors
from vpc_cni.daemon.server import RawRequest, Reply
from vpc_cni.daemon.timings import Timings

log = logging.getLogger(__name__)

CODE_INTERNAL = 999

Verb = Callable[[CniRequest, Timings], Awaitable[Outcome]]


def _describe(request: CniRequest | None, raw: RawRequest, outcome: Outcome | None) -> str:
    """The who/what of the log line: container, interface, pod and address when known."""
    if request is None:
        return f"container={raw.env.get('CNI_CONTAINERID', '-')[:64]} pid={raw.peer_pid}"
    parts = [f"network={request.network}"]
    if request.container_id:
        parts.append(f"container={request.container_id} ifname={request.ifname}")
    allocation = outcome.allocation if outcome else None
    # DEL often comes without CNI_ARGS; the store remembers whose address it was.
    pod = _pod(request, outcome)
    if pod:
        parts.append(f"pod={pod}")
    if allocation:
        parts.append(f"address={allocation.address}")
    if request.ipam_only:
        parts.append("ipam-only")
    return " ".join(parts)


def _pod(request: CniRequest | None, outcome: Outcome | None) -> str | None:
    """`namespace/name` from CNI_ARGS, else from the allocation the verb found."""
    if request is not None and request.pod:
        return f"{request.pod.namespace}/{request.pod.name}"
    owner = outcome.allocation.owner if outcome and outcome.allocation else None
    return f"{owner.namespace}/{owner.name}" if owner and owner.name else None


def _reply_version(request: CniRequest | None, raw: RawRequest) -> str:
    """Errors answer in the request's cniVersion, or the best guess when it did not parse."""
    return request.cni_version if request else error_version(raw.stdin)


class RequestHandler:
    """Turns raw requests into replies using the node's verbs."""

    def __init__(self, commands: NodeCommands) -> None:
        self.recent_errors = RecentErrors()
        self._verbs: dict[str, Verb] = {
            "ADD": commands.add,
            "DEL": commands.delete,
            "CHECK": commands.check,
            "GC": commands.gc,
            "STATUS": commands.status,
        }

    async def __call__(self, raw: RawRequest) -> Reply:
        timings = Timings()
        command = raw.env.get("CNI_COMMAND", "")
        if command not in self._verbs:
            command = "invalid"  # bounded metric labels, whatever a caller sends
        request: CniRequest | None = None
        outcome: Outcome | None = None
        try:
            request = parse_request(raw.env, raw.stdin)
            outcome = await self._verbs[request.command](request, timings)
            out = encode_result(outcome.result, request.cni_version) if outcome.result else b""
            reply: Reply = (0, out)
            log.info("%s ok %s %s", command, _describe(request, raw, outcome), timings.describe())
        except CniError as error:
            reply = (1, error.to_json(_reply_version(request, raw)))
            self._failed(command, error, request, raw, outcome, timings)
        except Exception as error:
            log.exception("%s crashed: %s", command, _describe(request, raw, outcome))
            internal = CniError(CODE_INTERNAL, "internal error", f"{type(error).__name__}: {error}")
            reply = (1, internal.to_json(_reply_version(request, raw)))
            self._failed(command, internal, request, raw, outcome, timings)
        metrics.REQUEST_SECONDS.labels(command).observe(timings.total())
        return reply

    def _failed(
        self,
        command: str,
        error: CniError,
        request: CniRequest | None,
        raw: RawRequest,
        outcome: Outcome | None,
        timings: Timings,
    ) -> None:
        metrics.REQUEST_ERRORS.labels(command, str(error.code)).inc()
        if request is not None:
            container_id, ifname = request.container_id, request.ifname
        else:  # unparsed: bounded copies of whatever a broken caller sent
            container_id = raw.env.get("CNI_CONTAINERID", "")[:64]
            ifname = raw.env.get("CNI_IFNAME", "")[:16]
        self.recent_errors.record(
            command,
            error.code,
            error.msg,
            error.details,
            pod=_pod(request, outcome),
            container_id=container_id,
            ifname=ifname,
        )
        log.warning(
            "%s failed code=%d %s: %s %s",
            command,
            error.code,
            _describe(request, raw, outcome),
            error,
            timings.describe(),
        )
