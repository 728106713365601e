"""The controller's settings: few knobs, named as operators think of them."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vpc_cni.kube.leader import LeaseTimings
from vpc_cni.kube.resources import Watermarks


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    rate: float = Field(default=10.0, gt=0, description="calls per second, on average")
    burst: int = Field(default=20, ge=1)


class CloudSettings(BaseModel):
    """Either a clouds.yaml entry (``cloud``, like every OpenStack tool; OS_CLOUD
    when unset) or, for keystone-less test clouds, explicit endpoints."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    cloud: str | None = None
    network_endpoint: str | None = Field(default=None, alias="networkEndpoint")
    compute_endpoint: str | None = Field(default=None, alias="computeEndpoint")


class ControllerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    cluster_name: str = Field(alias="clusterName", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    cloud: CloudSettings = CloudSettings()
    watermarks: Watermarks = Watermarks()
    # other subnets than the default: filled when the daemon asks (status.subnetDemand),
    # kept at these smaller marks while used, given back after this long unused
    on_demand_watermarks: Watermarks = Field(
        default=Watermarks(pre_allocate=1, min_allocate=0, max_above_watermark=2),
        alias="onDemandWatermarks",
    )
    on_demand_idle_seconds: float = Field(default=600.0, alias="onDemandIdleSeconds", ge=0)
    growth_window_seconds: float = Field(default=60.0, alias="growthWindowSeconds", gt=0)
    max_enis_per_node: int = Field(default=4, alias="maxEnisPerNode", ge=1)
    max_addresses_per_eni: int = Field(default=32, alias="maxAddressesPerEni", ge=1)
    route_table_base: int = Field(default=100, alias="routeTableBase", ge=1)
    network_rate: RateLimit = Field(default=RateLimit(), alias="networkRateLimit")
    compute_rate: RateLimit = Field(default=RateLimit(rate=2, burst=5), alias="computeRateLimit")
    resync_seconds: float = Field(default=30.0, alias="resyncSeconds", gt=0)
    gc_grace_seconds: float = Field(default=300.0, alias="gcGraceSeconds", ge=0)
    gc_interval_seconds: float = Field(default=60.0, alias="gcIntervalSeconds", gt=0)
    lease_seconds: int = Field(default=15, alias="leaseSeconds", ge=1)
    lease_renew_seconds: float = Field(default=10.0, alias="leaseRenewSeconds", gt=0)
    lease_retry_seconds: float = Field(default=2.0, alias="leaseRetrySeconds", gt=0)

    @model_validator(mode="after")
    def _lease_timings_consistent(self) -> ControllerConfig:
        self.lease_timings().validate()
        return self

    def lease_timings(self) -> LeaseTimings:
        """A standby takes over at most ``leaseSeconds`` after the leader stopped
        renewing; shorter leases fail over faster but cost more apiserver writes."""
        return LeaseTimings(self.lease_seconds, self.lease_renew_seconds, self.lease_retry_seconds)


class ConfigError(ValueError):
    """The configuration file is missing or wrong; the message says where."""


def load_config(path: Path) -> ControllerConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read controller config {path}: {exc}") from exc
    try:
        return ControllerConfig.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid controller config {path}: {problems}") from exc
