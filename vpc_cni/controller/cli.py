"""`vpcctl controller`: the cluster-wide part, the only one holding cloud credentials."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient
from prometheus_client import start_http_server

from vpc_cni.controller.app import run as run_controller
from vpc_cni.controller.config import ConfigError, load_config
from vpc_cni.kube.custom import install_crds

DESCRIPTION = """\
Run the vpc-cni controller: it keeps every node's pool of VPC addresses between its
watermarks (creating and attaching ENIs through Neutron and Nova, adding and
releasing addresses in batches) and records each node's slice in its NodeNetwork.
Run two or more replicas; one leads through a coordination.k8s.io Lease.
"""

EPILOG = """\
configuration file (YAML or JSON; see docs/controller.md):
  clusterName          tags every port this cluster owns (required)
  cloud.cloud          clouds.yaml entry (default: OS_CLOUD)
  watermarks           preAllocate / minAllocate / maxAboveWatermark per node [8/0/8]
  maxEnisPerNode       [4]     maxAddressesPerEni [32]     routeTableBase [100]
  networkRateLimit     {rate, burst} for Neutron [10/s, 20]; computeRateLimit for Nova
  resyncSeconds        full pass over all nodes [30]
  gcIntervalSeconds    how often leak GC runs [60]; gcGraceSeconds: how long a leak
                       must look leaked before it is collected [300]
  leaseSeconds         leader Lease duration / leaseRenewSeconds / leaseRetrySeconds
                       [15 / 10 / 2]
"""


def add_controller_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = subparsers.add_parser(
        "controller",
        help="run the controller (ENIs, pools, fixed IPs, GC; leader-elected)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, type=Path, metavar="FILE")
    parser.add_argument(
        "--kubeconfig", type=Path, help="kubeconfig to use (default: in-cluster service account)"
    )
    parser.add_argument(
        "--lease-namespace", default="kube-system", help="namespace of the leader Lease"
    )
    parser.add_argument("--metrics-port", type=int, default=9470, help="0 disables metrics")
    parser.add_argument(
        "--install-crds", action="store_true", help="create or update the CRDs first"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    parser.set_defaults(func=run)


async def _main(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    if args.kubeconfig:
        await kube_config.load_kube_config(config_file=str(args.kubeconfig))
    else:
        kube_config.load_incluster_config()
    async with ApiClient() as kube:
        if args.install_crds:
            await install_crds(kube)
        await run_controller(config, kube, args.lease_namespace)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.metrics_port:
        start_http_server(args.metrics_port)
    try:
        asyncio.run(_main(args))
    except ConfigError as exc:
        print(f"vpcctl controller: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
