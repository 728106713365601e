"""`vpcctl daemon`: the node agent's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from vpc_cni.daemon.app import run_daemon
from vpc_cni.daemon.config import ConfigError, load_config
from vpc_cni.daemon.failpoints import ENV as FAILPOINT_ENV
from vpc_cni.daemon.failpoints import FailpointError, Failpoints
from vpc_cni.daemon.store import StoreError
from vpc_cni.datapath import DatapathError

DESCRIPTION = """\
Run the vpc-cni node daemon: it serves the vpc-cni CNI executable on a root-only unix
socket, allocates pod addresses from the node's pool (kept in sqlite under stateDir),
and builds each pod's datapath (veth, /32 routes, policy rules, proxy ARP) in the host
network namespace. It sets up the pool's ENIs and reconciles leftovers before serving.
"""

EPILOG = f"""\
configuration file (JSON or YAML; see docs/daemon.md):
  socket           unix socket the CNI executable connects to [/run/vpc-cni/cni.sock]
  stateDir         directory of the allocation store [/var/lib/vpc-cni]
  hostNetns        network namespace treated as the host; null = the daemon's own
  cooldownSeconds  how long a released address rests before reuse [30]
  reconcileSeconds how often allocations are checked against pods and netns [60]
  staticWaitSeconds  cluster mode: how long a pod's ADDs wait in all for its fixed
                   address (StaticIP, vpccni.io/ip) to reach this node [30]
  blockMetadata    reject pod traffic to the metadata address 169.254.169.254 [false]
  metricsPort      serve Prometheus metrics on this port [off]
  readyFile        a file that exists only while the daemon is ready [off]
  inspectSocket    read-only socket of `vpcctl node` [inspect.sock beside socket]
  eniSetup.repairSeconds  how often node, ENI and pod datapath are checked and
                   what is missing put back [5]
  eniSetup.markUnmanaged  write drop-ins telling NetworkManager/networkd to leave
                   the ENIs alone [null: only when hostNetns is null]
  eniSetup.networkManagerDir, eniSetup.networkdDir  where those drop-ins go, if the
                   directory exists [/etc/NetworkManager/conf.d, /etc/systemd/network]
  pool.source      file (pool.enis below) or nodeNetwork (this node's NodeNetwork)
  pool.nodeName    with nodeNetwork: the node (and NodeNetwork) name
  pool.kubeconfig  with nodeNetwork: kubeconfig [in-cluster service account]
  pool.enis        the file pool: ENIs (id, mac, primaryIp, mtu) and their subnets
                   (id, cidr, gateway, routeTable, addresses); re-read on change

testing only: {FAILPOINT_ENV}=POINT[:N] SIGKILLs the daemon at POINT on its N-th pass.
"""


def add_daemon_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "daemon",
        help="run the node daemon (CNI server, node IPAM, datapath)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", required=True, type=Path, metavar="FILE", help="daemon configuration file"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO: one line per CNI request)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config)
        failpoints = Failpoints.from_env()
        asyncio.run(run_daemon(config, args.config, failpoints))
    except (ConfigError, FailpointError, StoreError) as error:
        print(f"vpcctl daemon: {error}", file=sys.stderr)
        return 2
    except DatapathError as error:
        print(f"vpcctl daemon: node datapath setup failed: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"vpcctl daemon: {error}", file=sys.stderr)
        return 1
    return 0
