"""Nova operations: which VM a node is, and plugging ENIs into it (`os-interface`)."""

from __future__ import annotations

from dataclasses import dataclass

from openstack.connection import Connection

from vpc_cni.cloud.caller import CloudCaller
from vpc_cni.cloud.errors import CloudError, Kind


@dataclass(frozen=True)
class Server:
    id: str
    name: str


class Servers:
    """Nova servers and their interfaces through one rate-limited, retrying caller."""

    def __init__(self, conn: Connection, call: CloudCaller) -> None:
        self.conn = conn
        self.call = call

    async def get(self, server_id: str) -> Server:
        found = await self.call("get_server", lambda: self.conn.compute.get_server(server_id))
        return Server(found.id, found.name)

    async def find_by_name(self, name: str) -> Server:
        """For nodes whose providerID is empty: the VM must be the only one with that
        exact name, or we would attach ENIs to a stranger."""
        found = await self.call(
            "list_servers", lambda: list(self.conn.compute.servers(name=f"^{name}$"))
        )
        exact = [s for s in found if s.name == name]
        if len(exact) != 1:
            raise CloudError(
                "find_server",
                Kind.NOT_FOUND,
                f"{len(exact)} servers are named {name!r}; set the node's providerID",
            )
        return Server(exact[0].id, exact[0].name)

    async def attached_ports(self, server_id: str) -> list[str]:
        interfaces = await self.call(
            "list_interfaces", lambda: list(self.conn.compute.server_interfaces(server_id))
        )
        return [i.port_id for i in interfaces]

    async def attach(self, server_id: str, port_id: str) -> None:
        await self.call(
            "attach_interface",
            lambda: self.conn.compute.create_server_interface(server_id, port_id=port_id),
        )

    async def detach(self, server_id: str, port_id: str) -> None:
        await self.call(
            "detach_interface",
            lambda: self.conn.compute.delete_server_interface(
                port_id, server=server_id, ignore_missing=True
            ),
        )
