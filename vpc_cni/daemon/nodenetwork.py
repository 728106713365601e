"""The cluster pool source: the node's pool is what its NodeNetwork spec lists.

The controller owns the spec; this only follows it, through an informer restricted
to the one object (fieldSelector metadata.name=NODE), so a node never lists the
whole cluster's NodeNetworks. Addresses in spec.release stay in the pool for the
pods holding them but are withheld from new ADDs: that is the daemon's half of the
release handshake (the status reporter confirms them once free).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration
from pydantic import ValidationError

from vpc_cni.daemon.config import (
    ConfigError,
    EniConfig,
    PoolConfig,
    SubnetConfig,
    describe_validation_error,
)
from vpc_cni.daemon.pool import PoolSnapshot
from vpc_cni.kube.custom import CustomObjects
from vpc_cni.kube.resources import GROUP, VERSION, Eni, NodeNetworkSpec
from vpc_cni.kube.watch import Informer

log = logging.getLogger(__name__)


class SpecError(Exception):
    """A NodeNetwork spec that cannot be turned into a pool; names the field."""


async def kube_client(kubeconfig: Path | None) -> ApiClient:
    """A client from `kubeconfig`, or the pod's service account when None; a file that
    cannot be used is a configuration error (exit 2, one line), not a traceback."""
    try:
        if kubeconfig is not None:
            return await kube_config.new_client_from_config(config_file=str(kubeconfig))
        configuration = Configuration()
        kube_config.load_incluster_config(client_configuration=configuration)
    except (kube_config.ConfigException, OSError, yaml.YAMLError) as error:
        where = kubeconfig or "in-cluster service account"
        raise ConfigError(f"pool.kubeconfig {where}: {error}") from None
    return ApiClient(configuration=configuration)


def _eni_config(eni: Eni) -> EniConfig:
    return EniConfig(
        id=eni.port_id,
        mac=eni.mac,
        primary_ip=eni.primary_ip,
        mtu=eni.mtu,
        subnets=[
            SubnetConfig(
                id=subnet.subnet_id,
                cidr=subnet.cidr,
                gateway=subnet.gateway,
                route_table=subnet.route_table,
                addresses=list(subnet.addresses),
            )
            for subnet in eni.subnets
        ],
    )


def snapshot_from_spec(spec: dict[str, Any]) -> PoolSnapshot:
    """Converts the resource model to the daemon's pool model, with the same checks a
    file pool gets (addresses inside their subnet, no duplicates, sane tables)."""
    try:
        parsed = NodeNetworkSpec.model_validate(spec)
        pool = PoolConfig(enis=[_eni_config(eni) for eni in parsed.enis])
    except ValidationError as error:
        raise SpecError(describe_validation_error(error)) from None
    static = frozenset((eni.port_id, a) for eni in parsed.enis for a in eni.static_addresses)
    return PoolSnapshot(pool, withheld=frozenset(parsed.release), static=static)


class NodeNetworkPoolSource:
    """Follows one NodeNetwork; `run` must be running for snapshots to change.

    Until the first list the pool is empty; `synced` is set after it, whether or not
    the object exists yet (a node whose NodeNetwork the controller has not created
    simply has no addresses). A spec that does not validate is logged and the
    previous pool kept, because dropping the pool would fail every ADD.
    """

    def __init__(self, client: ApiClient, node_name: str) -> None:
        self.node_name = node_name
        self.objects = CustomObjects(client, "NodeNetwork")
        self.informer = Informer(
            functools.partial(
                self.objects.api.list_cluster_custom_object, GROUP, VERSION, self.objects.plural
            ),
            self._on_event,
            field_selector=f"metadata.name={node_name}",
        )
        self._snapshot = PoolSnapshot(PoolConfig())
        self._changed = asyncio.Event()

    @property
    def synced(self) -> asyncio.Event:
        return self.informer.synced

    def snapshot(self) -> PoolSnapshot:
        return self._snapshot

    async def run(self) -> None:
        await self.informer.run()

    async def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            log.warning("NodeNetwork %s deleted: no new addresses until it returns", self.node_name)
            self._replace(PoolSnapshot(PoolConfig()))
            return
        try:
            snapshot = snapshot_from_spec(obj.get("spec") or {})
        except SpecError as error:
            log.error("NodeNetwork %s spec ignored, keeping the pool: %s", self.node_name, error)
            return
        self._replace(snapshot)

    def _replace(self, snapshot: PoolSnapshot) -> None:
        # Our own status patches come back as MODIFIED events with the same spec.
        if snapshot == self._snapshot:
            return
        self._snapshot = snapshot
        log.info(
            "pool from NodeNetwork %s: %d ENIs, %d addresses available, %d withheld, %d static",
            self.node_name,
            len(snapshot.enis),
            len(snapshot.addresses()),
            len(snapshot.withheld),
            len(snapshot.static),
        )
        for eni_id, address in sorted(snapshot.static):
            if snapshot.static_entry(address) is None:
                log.error("static address %s on ENI %s is in none of its subnets", address, eni_id)
        self._changed.set()

    async def changes(self) -> AsyncIterator[PoolSnapshot]:
        """Yields the newest snapshot after each change; bursts collapse into one."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            yield self._snapshot
