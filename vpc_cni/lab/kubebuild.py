"""Build the lab's Kubernetes binaries from Debian's ``kubernetes`` source package.

Debian's source package is the full upstream tree (with ``vendor/``); the lab compiles
the binaries it needs from it once per machine with Debian's own Go and caches them
by source version. Two things make that build work on Go >= 1.18: the vendored
reflect2 1.0.1 crashes the apiserver on first CRD create, so it is replaced with
Debian's packaged reflect2 (1.0.2); and the tree predates modules for its build
scripts, so it is built in GOPATH mode.

Layout under ``kubernetes_cache()``::

    apt/                private apt lists and cache (system apt untouched)
    <version>/src       unpacked, patched tree (renamed into place when complete;
                        removed with its Go cache once all binaries are built)
    <version>/.go/src/k8s.io/kubernetes -> ../../../src
    <version>/bin       finished binaries (renamed into place when all are built)
    <version>/build-<binary>.log
    current -> <version>

Every step builds into a temporary name and renames on success, so an interrupted
run leaves nothing that a later run would mistake for finished work.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vpc_cni.lab.aptsource import AptSourceError, PrivateApt, system_entries
from vpc_cni.lab.paths import kubernetes_cache

PACKAGE = "kubernetes"
BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
)
REFLECT2_SYSTEM = Path("/usr/share/gocode/src/github.com/modern-go/reflect2")
REFLECT2_VENDORED = Path("vendor/github.com/modern-go/reflect2")
# Tool -> Debian package that provides it, for a clear message on a bare machine.
REQUIRED_TOOLS = {
    "go": "golang-go",
    "make": "make",
    "rsync": "rsync",
    "jq": "jq",
    "apt-get": "apt",
    "dpkg-source": "dpkg-dev",
}
HEARTBEAT_SECONDS = 30.0

Log = Callable[[str], None]


class KubeBuildError(RuntimeError):
    """The Kubernetes binaries could not be fetched or built."""


def cached_bin_dir() -> Path | None:
    """The finished binaries of the last successful build, if any (no network needed)."""
    bin_dir = kubernetes_cache() / "current" / "bin"
    if all((bin_dir / name).is_file() for name in BINARIES):
        return bin_dir.resolve()
    return None


def ensure_built(refresh: bool = False, log: Log = print) -> Path:
    """Return the directory holding all binaries, building them first if needed.

    Without ``refresh`` a finished build is reused without asking the archive; with it
    the archive's current source version is looked up and built if new.
    """
    if not refresh and (found := cached_bin_dir()):
        return found
    root = kubernetes_cache()
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / ".lock", log):
        if not refresh and (found := cached_bin_dir()):
            return found  # another process finished it while we waited
        _check_tools()
        apt = PrivateApt(root / "apt", system_entries())
        try:
            log("build-kubernetes: reading the source index")
            apt.update()
            version = apt.candidate_version(PACKAGE)
            version_dir = root / version
            _remove_leftovers(version_dir)
            if not (version_dir / "bin").is_dir():
                src = _unpacked_source(apt, version, version_dir, log)
                _build_all(src, version_dir, log)
        except AptSourceError as err:
            raise KubeBuildError(str(err)) from err
        _point_current(root, version)
    return (root / version / "bin").resolve()


@contextmanager
def _exclusive(lock_path: Path, log: Log) -> Iterator[None]:
    """Serialise builds: parallel fixtures would otherwise compile the tree twice."""
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("build-kubernetes: another build is running, waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _remove_leftovers(version_dir: Path) -> None:
    """Drop staging dirs of interrupted runs (we hold the lock: none is in use)."""
    if version_dir.is_dir():
        for path in version_dir.glob("*.tmp-*"):
            shutil.rmtree(path, ignore_errors=True)


def _check_tools() -> None:
    missing = [pkg for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)]
    if missing:
        raise KubeBuildError(f"missing build tools; install Debian packages: {' '.join(missing)}")
    if not REFLECT2_SYSTEM.is_dir():
        raise KubeBuildError(
            f"{REFLECT2_SYSTEM} not found; install golang-github-modern-go-reflect2-dev"
        )


def _unpacked_source(apt: PrivateApt, version: str, version_dir: Path, log: Log) -> Path:
    """The patched source tree of ``version``, fetched and unpacked once."""
    src = version_dir / "src"
    if src.is_dir():
        return src
    staging = version_dir / f"fetch.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    log(f"build-kubernetes: fetching source package {PACKAGE} {version}")
    tree = apt.fetch(PACKAGE, version, staging)
    replace_reflect2(tree)
    tree.rename(src)
    shutil.rmtree(staging)
    return src


def replace_reflect2(tree: Path) -> None:
    """Swap the vendored reflect2 for Debian's: 1.0.1 breaks on Go >= 1.18."""
    vendored = tree / REFLECT2_VENDORED
    if not vendored.is_dir():
        raise KubeBuildError(f"{REFLECT2_VENDORED} not found in the source tree")
    shutil.rmtree(vendored)
    vendored.mkdir()
    for path in REFLECT2_SYSTEM.iterdir():
        if path.suffix in (".go", ".s"):
            shutil.copy2(path, vendored / path.name)


def _build_env(gopath: Path) -> dict[str, str]:
    """Environment for ``make``: GOPATH mode, as Debian's own package build does.

    The build scripts then keep their Go cache under ``_output/`` of the tree, and no
    version variables are needed: the Debian tree is a ``git archive`` export whose
    ``hack/lib/version.sh`` already carries the release tag and commit.
    """
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C",
        "GOPATH": str(gopath),
        "GO111MODULE": "off",
    }


def _build_all(src: Path, version_dir: Path, log: Log) -> None:
    gopath = version_dir / ".go"
    link = gopath / "src" / "k8s.io" / "kubernetes"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(Path("../../..") / "src")
    env = _build_env(gopath)
    staging = version_dir / f"bin.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    started = time.monotonic()
    for name in BINARIES:
        _build_one(name, link, env, version_dir / f"build-{name}.log", log)
        shutil.copy2(src / "_output" / "local" / "bin" / "linux" / "amd64" / name, staging / name)
    staging.rename(version_dir / "bin")
    log(f"build-kubernetes: all binaries built in {_clock(time.monotonic() - started)}")
    # The tree and its Go cache (~3.6 GB) are only needed to build; the binaries stay.
    shutil.rmtree(gopath)
    shutil.rmtree(src)


def _build_one(name: str, tree: Path, env: dict[str, str], log_path: Path, log: Log) -> None:
    """Run ``make WHAT=cmd/<name>`` from the GOPATH link, reporting elapsed time."""
    log(f"build-kubernetes: building {name} (log: {log_path})")
    started = time.monotonic()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            ["make", f"WHAT=cmd/{name}"], cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            while True:
                try:
                    proc.wait(timeout=HEARTBEAT_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    log(f"build-kubernetes:   {name}: {_clock(time.monotonic() - started)}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise KubeBuildError(f"building {name} failed (exit {proc.returncode}):\n{tail}")
    log(f"build-kubernetes: {name} done in {_clock(time.monotonic() - started)}")


def _point_current(root: Path, version: str) -> None:
    """Atomically repoint ``current`` at ``version``."""
    tmp = root / f"current.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version)
    tmp.rename(root / "current")


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build-kubernetes",
        description="Build (once) and cache Kubernetes binaries from Debian's source package.",
    )
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="ask the archive for the current source version and build it if new",
    )
    args = parser.parse_args(argv)
    try:
        bin_dir = ensure_built(refresh=args.refresh, log=lambda m: print(m, flush=True))
    except (KubeBuildError, OSError) as err:
        print(f"build-kubernetes: error: {err}", file=sys.stderr)
        return 1
    print(bin_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
