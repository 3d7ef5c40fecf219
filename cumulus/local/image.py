"""The worker image, built offline: debootstrap base (cached) -> docker import -> docker build -> every node."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from cumulus.local import state
from cumulus.local.util import LocalClusterError, run

MIRROR = os.environ.get("CUMULUS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-cloudpickle,python3-msgpack"
# The 20.10 client of docker.io matches the 20.10 daemon and has the classic builder (no buildx needed).
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
_STRIP = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt",
          "var/lib/apt/lists"]


def base_tarball() -> Path:
    return state.CACHE_DIR / f"base-{SUITE}.tar"


def ensure_base_tarball() -> str:
    """debootstrap a minimal Debian with python3 once; cached as a tarball under the cache dir."""
    tar = base_tarball()
    if tar.exists():
        return "cached"
    state.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    rootfs = state.CACHE_DIR / f"rootfs-{SUITE}"
    done_marker = state.CACHE_DIR / f"rootfs-{SUITE}.complete"
    if not (done_marker.exists() and (rootfs / "usr/bin/python3").exists()):
        shutil.rmtree(rootfs, ignore_errors=True)
        run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(rootfs), MIRROR],
            timeout=1800)
        done_marker.touch()
    for rel in _STRIP:
        p = rootfs / rel
        if p.is_dir():
            for child in p.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
    tmp = tar.with_suffix(".tmp")
    run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tmp), "."], timeout=600)
    os.replace(tmp, tar)
    shutil.rmtree(rootfs, ignore_errors=True)
    done_marker.unlink(missing_ok=True)
    return "debootstrapped"


def context_hash() -> str:
    """Hash of everything the image is made from (base tarball identity + Dockerfile + image/ tree)."""
    h = hashlib.sha256()
    tar = base_tarball()
    st = tar.stat()
    h.update(f"{st.st_size}:{int(st.st_mtime)}".encode())
    root = state.worker_image_dir()
    for rel in ["Dockerfile", ".dockerignore"]:
        p = root / rel
        if p.exists():
            h.update(rel.encode() + b"\0" + p.read_bytes())
    for p in sorted((root / "image").rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def saved_image(chash: str) -> Path:
    return state.CACHE_DIR / f"worker-image-{chash}.tar"


def image_id(sock: Path, ref: str) -> str | None:
    proc = subprocess.run([DOCKER, "-H", f"unix://{sock}", "image", "inspect", "--format", "{{.Id}}", ref],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def build_on(manager: state.Node) -> str:
    """Import the base and build the worker image on the manager's dockerd (no network). Returns the image id."""
    sock = manager.docker_socket
    if not image_id(sock, state.BASE_TAG):
        run([DOCKER, "-H", manager.docker_url, "import", str(base_tarball()), state.BASE_TAG], timeout=600)
    env = {"DOCKER_BUILDKIT": "0"}
    run([DOCKER, "-H", manager.docker_url, "build", "-q", "--network", "none", "--build-arg",
         f"BASE={state.BASE_TAG}", "-t", state.IMAGE_TAG, str(state.worker_image_dir())], env=env, timeout=900)
    iid = image_id(sock, state.IMAGE_TAG)
    if not iid:
        raise LocalClusterError("worker image build produced no image")
    return iid


def load_into(node: state.Node, tar: Path) -> None:
    with open(tar, "rb") as f:
        proc = subprocess.run([DOCKER, "-H", node.docker_url, "load", "-q"], stdin=f, capture_output=True,
                              text=True, timeout=900)
    if proc.returncode != 0:
        raise LocalClusterError(f"docker load on {node.name} failed: {proc.stderr.strip()}")


def ensure_image(nodes: list[state.Node], wanted_id: str | None) -> tuple[str, str]:
    """Make the worker image present on every node. Returns (image id, note)."""
    manager = nodes[0]
    # Fast path: every node already has the image the cluster description names.
    if wanted_id and all(image_id(n.docker_socket, wanted_id) for n in nodes):
        return wanted_id, "present on all nodes"
    ensure_base_tarball()  # normally already done by the caller, in the background
    note = "image"
    chash = context_hash()
    tar = saved_image(chash)
    if not tar.exists():
        iid = build_on(manager)
        tmp = tar.with_suffix(".tmp")
        run([DOCKER, "-H", manager.docker_url, "save", "-o", str(tmp), state.IMAGE_TAG], timeout=900)
        os.replace(tmp, tar)
        for old in state.CACHE_DIR.glob("worker-image-*.tar"):
            if old != tar:
                old.unlink(missing_ok=True)
        note += ", built"
    else:
        note += ", cached build"
    targets = [n for n in nodes if not (image_id(n.docker_socket, state.IMAGE_TAG)
                                        and image_id(n.docker_socket, state.IMAGE_TAG) == _tar_id(tar))]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(targets))) as ex:
        list(ex.map(lambda n: load_into(n, tar), targets))
    iid = image_id(manager.docker_socket, state.IMAGE_TAG)
    for n in nodes:
        got = image_id(n.docker_socket, state.IMAGE_TAG)
        if got != iid:
            raise LocalClusterError(f"image id mismatch on {n.name}: {got} != {iid}")
    return iid, f"{note}, loaded into {len(targets)} node(s)"


def _tar_id(tar: Path) -> str | None:
    """The image id inside a `docker save` tarball (sha256 of its config)."""
    import json
    import tarfile

    try:
        with tarfile.open(tar) as t:
            manifest = json.load(t.extractfile("manifest.json"))
        cfg = manifest[0]["Config"]
        return "sha256:" + cfg.split("/")[-1].replace(".json", "")
    except Exception:  # noqa: BLE001
        return None
