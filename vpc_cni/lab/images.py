"""Container images made on this machine from Debian's busybox-static.

The lab and the runtime tests must not pull from a registry, so the one image
they need is assembled here: a busybox root filesystem, either as a plain
tarball (what ``podman import`` takes) or as an OCI image layout archive (what
``ctr image import`` takes, e.g. for containerd's sandbox "pause" image).
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
# A pause process that still exits at once on TERM (PID 1 has no default handlers).
PAUSE_COMMAND = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


class ImageBuildError(RuntimeError):
    """busybox is missing or unusable, so no image can be made."""


def _applets(busybox: Path) -> list[str]:
    try:
        out = subprocess.run(
            [str(busybox), "--list"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageBuildError(f"cannot list applets of {busybox}: {exc}") from exc
    return sorted(set(out.split()) - {"busybox"})


def _add(tar: tarfile.TarFile, name: str, kind: bytes, data: bytes = b"", **attrs: object) -> None:
    """Adds one entry owned by root with a fixed mtime, so the same input gives the same digest."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind in (tarfile.DIRTYPE, tarfile.SYMTYPE) else 0o644
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def rootfs_tar_bytes(busybox: Path = BUSYBOX) -> bytes:
    """A root filesystem with busybox at /bin/busybox and one symlink per applet."""
    applets = _applets(busybox)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "run", "var", "root"):
            _add(tar, d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        _add(tar, "bin/busybox", tarfile.REGTYPE, busybox.read_bytes(), mode=0o755)
        for applet in applets:
            _add(tar, f"bin/{applet}", tarfile.SYMTYPE, linkname="busybox")
        _add(tar, "etc/passwd", tarfile.REGTYPE, b"root:x:0:0:root:/root:/bin/sh\n")
        _add(tar, "etc/group", tarfile.REGTYPE, b"root:x:0:\n")
    return buf.getvalue()


def write_rootfs_tar(dest: Path, busybox: Path = BUSYBOX) -> Path:
    """Writes the busybox root filesystem tarball (input for ``podman import``)."""
    dest.write_bytes(rootfs_tar_bytes(busybox))
    return dest


def _blob(tar: tarfile.TarFile, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    _add(tar, f"blobs/sha256/{digest}", tarfile.REGTYPE, data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def write_oci_archive(
    dest: Path,
    name: str,
    command: list[str] | None = None,
    busybox: Path = BUSYBOX,
) -> Path:
    """Writes an OCI image layout tarball holding one image called ``name`` (repo:tag).

    ``ctr image import`` keeps the full name from the ``io.containerd.image.name``
    annotation, so no --base-name is needed. ``command`` defaults to a pause loop.
    """
    if ":" not in name.rsplit("/", 1)[-1]:
        raise ImageBuildError(f"image name {name!r} needs a tag (repo:tag)")
    layer = rootfs_tar_bytes(busybox)
    arch = GOARCH.get(platform.machine(), platform.machine())
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": command or PAUSE_COMMAND, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "blobs", tarfile.DIRTYPE)
        _add(tar, "blobs/sha256", tarfile.DIRTYPE)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _blob(tar, json.dumps(config).encode(), OCI_CONFIG),
            "layers": [_blob(tar, layer, OCI_LAYER)],
        }
        entry = _blob(tar, json.dumps(manifest).encode(), OCI_MANIFEST)
        entry["annotations"] = {
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
        }
        entry["platform"] = {"architecture": arch, "os": "linux"}
        index = {"schemaVersion": 2, "manifests": [entry]}
        _add(tar, "index.json", tarfile.REGTYPE, json.dumps(index).encode())
        _add(tar, "oci-layout", tarfile.REGTYPE, b'{"imageLayoutVersion": "1.0.0"}')
    dest.write_bytes(buf.getvalue())
    return dest
