"""Telling the node's own network managers to leave vpc-cni's ENIs alone.

A hot-plugged NIC is fair game for whatever manages the host's networking: NetworkManager
runs DHCP on any new Ethernet device by default, systemd-networkd on any device a
`.network` file matches (cloud images often match all). Either would add the port's
address with a connected route in main, or a second default route, and take the NIC
from under the datapath. So the daemon writes, per ENI, a drop-in naming the NIC by
MAC in each of those managers' configuration directories that exists on the host,
and removes it when the ENI leaves. NetworkManager picks such a drop-in up when it
reloads its configuration and networkd when it reloads its files; until the next
reload the guard's check reports what they may have added (docs/daemon.md,
"ENI lifecycle"). A host without either (ifupdown, as on this machine) needs nothing:
ifupdown only configures the interfaces its files name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vpc_cni.daemon.config import EniSetupConfig

log = logging.getLogger(__name__)

_HEADER = "# Written by the vpc-cni daemon: this NIC is a vpc-cni ENI; do not configure it.\n"


def _stem(mac: str) -> str:
    return "vpc-cni-" + mac.lower().replace(":", "")


class UnmanagedMarks:
    """Writes and removes the per-ENI drop-ins; `enabled` False makes both no-ops."""

    def __init__(self, settings: EniSetupConfig, enabled: bool) -> None:
        self.enabled = enabled
        self.networkmanager = settings.network_manager_dir
        self.networkd = settings.networkd_dir

    def _files(self, mac: str) -> list[tuple[Path, str]]:
        mac = mac.lower()
        found = []
        if self.networkmanager is not None:
            body = f"[keyfile]\nunmanaged-devices+=mac:{mac}\n"
            found.append((self.networkmanager / f"{_stem(mac)}.conf", body))
        if self.networkd is not None:
            # networkd applies the first matching file in lexical order: come early.
            body = f"[Match]\nMACAddress={mac}\n\n[Link]\nUnmanaged=yes\n"
            found.append((self.networkd / f"05-{_stem(mac)}.network", body))
        return found

    def mark(self, mac: str) -> None:
        """Write the drop-ins for this MAC where their directory exists; idempotent."""
        if not self.enabled:
            return
        for path, body in self._files(mac):
            if not path.parent.is_dir():
                continue
            text = _HEADER + body
            try:
                if path.exists() and path.read_text() == text:
                    continue
                partial = path.with_name(f".{path.name}.tmp")
                partial.write_text(text)
                os.replace(partial, path)
            except OSError as error:
                log.error("cannot mark ENI %s unmanaged in %s: %s", mac, path, error.strerror)
                continue
            log.info("ENI %s marked unmanaged in %s", mac, path)

    def unmark(self, mac: str) -> None:
        """Remove the drop-ins for this MAC; missing ones are fine."""
        if not self.enabled:
            return
        for path, _body in self._files(mac):
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                log.error("cannot remove %s: %s", path, error.strerror)
