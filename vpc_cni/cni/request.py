"""One CNI invocation (environment + stdin) checked and turned into a ``CniRequest``.

The checks run in nearly the order of libcni's skel, so a broken call gets the error
the reference plugins would report: command and environment (attachment names
included) first, then stdin, the config's version, CNI_ARGS and the config itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Literal, cast

from pydantic import Field, StrictStr, TypeAdapter, ValidationError

from vpc_cni.cni.cni_args import parse_cni_args
from vpc_cni.cni.config import NetConf, load_netconf
from vpc_cni.cni.decode import decode_config
from vpc_cni.cni.errors import CniError, ErrorCode
from vpc_cni.cni.fields import rule
from vpc_cni.cni.model import CniModel
from vpc_cni.cni.names import container_id_problem, ifname_problem, path_problem
from vpc_cni.cni.validation import config_error
from vpc_cni.cni.versions import SUPPORTED_VERSIONS, require_command_allowed, require_supported

Command = Literal["ADD", "DEL", "CHECK", "GC", "STATUS"]

# Environment each verb needs (CNI_PATH is left out: vpc-cni never runs other plugins).
_REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
}

# libcni also sends the list under the name an earlier draft of the spec used.
_ATTACHMENT_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")

DEFAULT_ERROR_VERSION = "1.0.0"


@dataclass(frozen=True)
class PodRef:
    """The Kubernetes pod a container belongs to, from CNI_ARGS."""

    namespace: str
    name: str
    uid: str | None


@dataclass(frozen=True)
class Attachment:
    """One (container, interface) the runtime still uses, from GC's valid-attachments."""

    container_id: str
    ifname: str


@dataclass(frozen=True)
class CniRequest:
    """A checked CNI call; the daemon acts on this and never on raw env or stdin."""

    command: Command
    cni_version: str
    network: str
    container_id: str
    netns: str
    ifname: str
    pod: PodRef | None
    cni_args: Mapping[str, str]
    config: NetConf
    ipam_only: bool
    valid_attachments: tuple[Attachment, ...] | None


def _env_error(msg: str, details: str = "") -> CniError:
    return CniError(ErrorCode.INVALID_ENVIRONMENT, msg, details)


def _env(env: Mapping[str, str], name: str) -> str:
    """The daemon decodes env bytes with surrogateescape; invalid UTF-8 stops here."""
    value = env.get(name, "")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise _env_error(f"invalid {name}: not valid UTF-8 ({value[:40]!r})") from None
    return value


def _command(env: Mapping[str, str]) -> Command:
    command = _env(env, "CNI_COMMAND")
    if not command:
        raise _env_error("required environment variable CNI_COMMAND is missing")
    if command == "VERSION":
        raise _env_error("VERSION is answered by the vpc-cni executable, not the daemon")
    if command not in _REQUIRED_ENV:
        raise _env_error(
            f"invalid CNI_COMMAND: unknown command {command[:40]!r}",
            f"expected one of {', '.join(_REQUIRED_ENV)}",
        )
    return cast(Command, command)


def _check_env(env: Mapping[str, str], command: Command) -> None:
    missing = [name for name in _REQUIRED_ENV[command] if not _env(env, name)]
    if missing:
        raise _env_error(f"required environment variables missing: {', '.join(missing)}")


def _check_version(data: dict[str, Any], command: Command) -> str:
    if data.get("cniVersion") is None:
        raise CniError(
            ErrorCode.INCOMPATIBLE_VERSION,
            "incompatible CNI version: cniVersion is missing",
            "the spec reads a missing cniVersion as 0.1.0, which vpc-cni does not support",
        )
    version = data["cniVersion"]
    if not isinstance(version, str):
        raise CniError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            f"invalid network config: cniVersion: must be a string, got {type(version).__name__}",
        )
    require_supported(version)
    require_command_allowed(command, version)
    return version


def _refuse_bad(name: str, value: str, problem: str | None) -> None:
    if problem:
        raise _env_error(f"invalid {name} {value[:40]!r}: {problem}")


def _attachment_names(env: Mapping[str, str], command: Command) -> tuple[str, str, str]:
    """Container id, netns and ifname; GC and STATUS concern no single attachment."""
    if command in {"GC", "STATUS"}:
        return "", "", ""
    container_id = _env(env, "CNI_CONTAINERID")
    ifname = _env(env, "CNI_IFNAME")
    netns = _env(env, "CNI_NETNS")
    _refuse_bad("CNI_CONTAINERID", container_id, container_id_problem(container_id))
    _refuse_bad("CNI_IFNAME", ifname, ifname_problem(ifname))
    if netns:
        _refuse_bad("CNI_NETNS", netns, path_problem(netns))
    return container_id, netns, ifname


def _pod(args: Mapping[str, str]) -> PodRef | None:
    """Only a full identity counts: podman sends a name without a namespace."""
    namespace = args.get("K8S_POD_NAMESPACE", "")
    name = args.get("K8S_POD_NAME", "")
    if not namespace or not name:
        return None
    return PodRef(namespace=namespace, name=name, uid=args.get("K8S_POD_UID") or None)


class _AttachmentEntry(CniModel):
    container_id: Annotated[StrictStr, rule(container_id_problem)] = Field(alias="containerID")
    ifname: Annotated[StrictStr, rule(ifname_problem)]


_ATTACHMENTS = TypeAdapter(list[_AttachmentEntry])


def _valid_attachments(data: dict[str, Any]) -> tuple[Attachment, ...]:
    """Refuses a GC without the list: read as empty, it would free every address. An
    explicit null is different: that is how libcni writes an empty list."""
    key = next((key for key in _ATTACHMENT_KEYS if key in data), None)
    if key is None:
        raise CniError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            f"invalid network config: {_ATTACHMENT_KEYS[0]}: field required for GC",
        )
    if data[key] is None:
        # libcni passes a Go nil slice, which marshals as null, when nothing is valid.
        return ()
    try:
        entries = _ATTACHMENTS.validate_python(data[key])
    except ValidationError as exc:
        raise config_error(exc, root=key) from None
    return tuple(Attachment(entry.container_id, entry.ifname) for entry in entries)


def parse_request(env: Mapping[str, str], stdin: bytes) -> CniRequest:
    """Checks one invocation completely; any failure is a CniError, never another exception."""
    command = _command(env)
    _check_env(env, command)
    container_id, netns, ifname = _attachment_names(env, command)
    data = decode_config(stdin)
    version = _check_version(data, command)
    args = parse_cni_args(_env(env, "CNI_ARGS"))
    config, ipam_only = load_netconf(data)
    if command == "CHECK" and config.prev_result is None:
        raise CniError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            "invalid network config: prevResult: required for CHECK",
        )
    return CniRequest(
        command=command,
        cni_version=version,
        network=config.name,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        pod=_pod(args),
        cni_args=MappingProxyType(dict(args)),
        config=config,
        ipam_only=ipam_only,
        valid_attachments=_valid_attachments(data) if command == "GC" else None,
    )


def error_version(stdin: bytes) -> str:
    """The cniVersion to answer an error in: the config's own if it is usable."""
    try:
        version = decode_config(stdin).get("cniVersion")
    except CniError:
        return DEFAULT_ERROR_VERSION
    return version if version in SUPPORTED_VERSIONS else DEFAULT_ERROR_VERSION
