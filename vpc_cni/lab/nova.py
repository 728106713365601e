"""The Nova stand-in: just enough of the compute API for the controller's ENI work.

"Servers" are node namespaces registered with it. It serves, in real Nova's JSON
shapes (so openstacksdk's ``find_server``, ``server_interfaces``,
``create_server_interface`` and ``delete_server_interface`` work with
``compute_endpoint_override`` set to :attr:`NovaStandIn.url`):

- ``GET /v2.1/servers[/detail]?name=REGEX``, ``GET /v2.1/servers/{id}``
- ``GET|POST /v2.1/servers/{id}/os-interface``,
  ``GET|DELETE /v2.1/servers/{id}/os-interface/{port_id}``

Attaching does what Nova and its virt driver do: bind the Neutron port to the server
(device_id, ``compute:nova``, binding:host_id = the server's name) and hot-plug a NIC
with the port's MAC into the node, linked to the fabric; detaching reverses both.
Only attach by ``port_id`` is supported: vpc-cni creates its ports itself.

The HTTP side is a small asyncio server, one request per connection; Neutron and
fabric calls are blocking and run in worker threads, one attach or detach at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import openstack.exceptions
from openstack.connection import Connection
from openstack.network.v2.port import Port

from vpc_cni.datapath.netns import run_in_netns
from vpc_cni.datapath.rtnl import rtnl
from vpc_cni.lab.fabric_sync import FabricSync

log = logging.getLogger(__name__)

API_VERSION = "v2.1"
MAX_MICROVERSION = "2.96"
DEVICE_OWNER = "compute:nova"
_MAX_BODY = 1 << 20
# Nova's error body keys, by status.
_FAULTS = {
    HTTPStatus.BAD_REQUEST: "badRequest",
    HTTPStatus.NOT_FOUND: "itemNotFound",
    HTTPStatus.METHOD_NOT_ALLOWED: "badMethod",
    HTTPStatus.CONFLICT: "conflictingRequest",
    HTTPStatus.INTERNAL_SERVER_ERROR: "computeFault",
}


class NovaError(Exception):
    """A request the stand-in refuses; becomes a Nova-style error response."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Server:
    """One node VM: a network namespace, and the ports plugged into it."""

    id: str
    name: str
    netns: str
    ports: set[str] = field(default_factory=set)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": "ACTIVE",
            "OS-EXT-SRV-ATTR:host": self.name,
            "OS-EXT-SRV-ATTR:hypervisor_hostname": self.name,
            "OS-EXT-STS:vm_state": "active",
            "metadata": {},
            "links": [],
        }


def _attachment(port: Port) -> dict[str, Any]:
    return {
        "port_id": port.id,
        "net_id": port.network_id,
        "mac_addr": port.mac_address,
        "port_state": port.status,
        "fixed_ips": [
            {"subnet_id": e["subnet_id"], "ip_address": e["ip_address"]} for e in port.fixed_ips
        ],
        "tag": None,
    }


def _free_ifname() -> str:
    """The next ethN the node does not have yet, as a guest kernel would name a new NIC."""
    with rtnl() as ipr:
        taken = {link.get("ifname") for link in ipr.link("dump")}
    index = 0
    while f"eth{index}" in taken:
        index += 1
    return f"eth{index}"


class NovaStandIn:
    """The compute API stand-in; :meth:`start` it, :meth:`stop` it."""

    def __init__(self, neutron: Connection, fabric: FabricSync) -> None:
        self.neutron = neutron
        self.fabric = fabric
        self.servers: dict[str, Server] = {}
        self.url = ""
        self._lock = asyncio.Lock()
        self._server: asyncio.Server | None = None

    def register_server(self, name: str, netns: str, server_id: str | None = None) -> Server:
        """Makes a node namespace known as a server; returns it (with its id)."""
        if any(s.name == name for s in self.servers.values()):
            raise ValueError(f"a server named {name!r} is already registered")
        server = Server(server_id or str(uuid.uuid4()), name, netns)
        self.servers[server.id] = server
        return server

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listens on ``host:port`` (0: a free port); returns the compute endpoint URL."""
        self._server = await asyncio.start_server(self._serve, host, port)
        bound = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{host}:{bound}/{API_VERSION}"
        return self.url

    async def stop(self) -> None:
        """Stops listening; attached ports stay plugged (the caller tears the fabric down)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # -- HTTP ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._respond(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        except ValueError as err:
            status, body = self._fault(NovaError(HTTPStatus.BAD_REQUEST, f"bad request: {err}"))
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            f"OpenStack-API-Version: compute {MAX_MICROVERSION}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the client went away; nothing to tell it
        finally:
            writer.close()

    async def _respond(
        self, reader: asyncio.StreamReader
    ) -> tuple[HTTPStatus, dict[str, Any] | None]:
        request_line = (await reader.readline()).decode("latin-1").split()
        if len(request_line) != 3:
            raise ValueError("malformed HTTP request line")
        method, target, _ = request_line
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if not 0 <= length <= _MAX_BODY:
            raise ValueError(f"Content-Length {length} is outside 0..{_MAX_BODY}")
        raw = await reader.readexactly(length) if length else b""
        url = urlsplit(target)
        try:
            return await self._route(method, url.path, parse_qs(url.query), raw)
        except NovaError as err:
            return self._fault(err)
        except Exception as err:
            log.exception("nova stand-in: %s %s failed", method, target)
            return self._fault(NovaError(HTTPStatus.INTERNAL_SERVER_ERROR, str(err)))

    @staticmethod
    def _fault(err: NovaError) -> tuple[HTTPStatus, dict[str, Any]]:
        key = _FAULTS.get(err.status, "computeFault")
        return err.status, {key: {"code": err.status.value, "message": err.message}}

    async def _route(
        self, method: str, path: str, query: dict[str, list[str]], raw: bytes
    ) -> tuple[HTTPStatus, dict[str, Any] | None]:
        parts = [p for p in path.split("/") if p]
        if not parts:
            return HTTPStatus.OK, {"versions": [self._version()]}
        if parts[0] != API_VERSION:
            raise NovaError(HTTPStatus.NOT_FOUND, f"no such API version: {parts[0]}")
        parts = parts[1:]
        match (method, parts):
            case ("GET", []):
                return HTTPStatus.OK, {"version": self._version()}
            case ("GET", ["servers"] | ["servers", "detail"]):
                return HTTPStatus.OK, {"servers": self._find(query.get("name", [""])[0])}
            case ("GET", ["servers", server_id]):
                return HTTPStatus.OK, {"server": self._server_by_id(server_id).view()}
            case ("GET", ["servers", server_id, "os-interface"]):
                ports = await self._attached_ports(self._server_by_id(server_id))
                return HTTPStatus.OK, {"interfaceAttachments": [_attachment(p) for p in ports]}
            case ("GET", ["servers", server_id, "os-interface", port_id]):
                ports = await self._attached_ports(self._server_by_id(server_id))
                found = [p for p in ports if p.id == port_id]
                if not found:
                    raise NovaError(HTTPStatus.NOT_FOUND, f"port {port_id} is not attached")
                return HTTPStatus.OK, {"interfaceAttachment": _attachment(found[0])}
            case ("POST", ["servers", server_id, "os-interface"]):
                port = await self._attach(self._server_by_id(server_id), _port_id_of(raw))
                return HTTPStatus.OK, {"interfaceAttachment": _attachment(port)}
            case ("DELETE", ["servers", server_id, "os-interface", port_id]):
                await self._detach(self._server_by_id(server_id), port_id)
                return HTTPStatus.ACCEPTED, None
        if parts and parts[0] == "servers":
            raise NovaError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} /{'/'.join(parts)}")
        raise NovaError(HTTPStatus.NOT_FOUND, f"no such resource: /{'/'.join(parts)}")

    def _version(self) -> dict[str, Any]:
        return {
            "id": API_VERSION,
            "status": "CURRENT",
            "version": MAX_MICROVERSION,
            "min_version": "2.1",
            "links": [{"rel": "self", "href": self.url + "/"}],
        }

    # -- servers --------------------------------------------------------------------

    def _find(self, name_pattern: str) -> list[dict[str, Any]]:
        """Nova matches ``name`` as a regular expression, anywhere in the name."""
        try:
            pattern = re.compile(name_pattern)
        except re.error as err:
            raise NovaError(HTTPStatus.BAD_REQUEST, f"invalid name filter: {err}") from None
        return [s.view() for s in self.servers.values() if pattern.search(s.name)]

    def _server_by_id(self, server_id: str) -> Server:
        try:
            return self.servers[server_id]
        except KeyError:
            raise NovaError(
                HTTPStatus.NOT_FOUND, f"Instance {server_id} could not be found."
            ) from None

    # -- interfaces -----------------------------------------------------------------

    async def _attached_ports(self, server: Server) -> list[Port]:
        """The server's ports as Neutron has them now; ports deleted meanwhile drop out.

        Under the attach lock, so an attach in flight is never mistaken for a deletion.
        """
        async with self._lock:
            ports = await asyncio.to_thread(
                lambda: list(self.neutron.network.ports(device_id=server.id))
            )
            present = [p for p in ports if p.id in server.ports]
            for gone in server.ports - {p.id for p in present}:
                server.ports.discard(gone)
                await asyncio.to_thread(self.fabric.unplug, gone)
            return present

    async def _attach(self, server: Server, port_id: str) -> Port:
        async with self._lock:
            port = await asyncio.to_thread(self._neutron_port, port_id)
            if port.device_id or port.device_owner:
                raise NovaError(
                    HTTPStatus.CONFLICT,
                    f"Port {port_id} is still in use (device_id {port.device_id!r}, "
                    f"device_owner {port.device_owner!r}).",
                )
            bound = await asyncio.to_thread(
                self._bind, port_id, server.id, DEVICE_OWNER, server.name
            )
            try:
                ifname = await asyncio.to_thread(run_in_netns, server.netns, _free_ifname)
                await asyncio.to_thread(self.fabric.plug, bound, server.netns, ifname)
            except Exception:
                await asyncio.to_thread(self._bind, port_id, "", "", "")
                raise
            server.ports.add(port_id)
            log.info("attached port %s to %s as %s", port_id, server.name, ifname)
            return bound

    async def _detach(self, server: Server, port_id: str) -> None:
        async with self._lock:
            if port_id not in server.ports:
                raise NovaError(
                    HTTPStatus.NOT_FOUND,
                    f"Port {port_id} is not attached to instance {server.id}.",
                )
            await asyncio.to_thread(self.fabric.unplug, port_id)
            server.ports.discard(port_id)
            try:
                await asyncio.to_thread(self._bind, port_id, "", "", "")
            except NovaError:
                pass  # the port was deleted meanwhile: nothing left to unbind
            log.info("detached port %s from %s", port_id, server.name)

    def _neutron_port(self, port_id: str) -> Port:
        try:
            return self.neutron.network.get_port(port_id)
        except openstack.exceptions.NotFoundException:
            raise NovaError(
                HTTPStatus.NOT_FOUND, f"Port id {port_id} could not be found."
            ) from None

    def _bind(self, port_id: str, device_id: str, device_owner: str, host: str) -> Port:
        try:
            return self.neutron.network.update_port(
                port_id, device_id=device_id, device_owner=device_owner, binding_host_id=host
            )
        except openstack.exceptions.NotFoundException:
            raise NovaError(
                HTTPStatus.NOT_FOUND, f"Port id {port_id} could not be found."
            ) from None


def _port_id_of(raw: bytes) -> str:
    """The port to attach from an ``interfaceAttachment`` body; anything else is a 400."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as err:
        raise NovaError(HTTPStatus.BAD_REQUEST, f"malformed request body: {err}") from None
    attachment = body.get("interfaceAttachment") if isinstance(body, dict) else None
    if not isinstance(attachment, dict):
        raise NovaError(HTTPStatus.BAD_REQUEST, "body must be {'interfaceAttachment': {...}}")
    port_id = attachment.get("port_id")
    if not isinstance(port_id, str) or not port_id:
        raise NovaError(
            HTTPStatus.BAD_REQUEST,
            "interfaceAttachment.port_id is required: the stand-in attaches existing ports only",
        )
    return port_id
