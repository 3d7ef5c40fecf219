"""The worker images, one per Python minor version the local cluster serves (:data:`SUITES`: Debian bookworm's
3.11 and trixie's 3.13), built offline: debootstrap base (cached) -> docker import -> docker build -> every node."""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from cumulus.local import children, state
from cumulus.local.util import LocalClusterError, binary, kill_pids, remove_tree, unmount_under

MIRROR = os.environ.get("CUMULUS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITES = {"3.11": "bookworm", "3.13": "trixie"}
"""Python minor version -> the Debian suite whose python3 it is: the worker images the local cluster builds."""
SUITE = SUITES["3.11"]  # the suite of the default worker image, and of the supervisor's image
BASE_PACKAGES = "python3,python3-cloudpickle,python3-msgpack"
# Pickles by value need the client's minor version and the client's exact cloudpickle, so the runner's dependencies
# come as wheels of the versions installed here (the client side), downloaded on the host for each image's Python
# (PyPI is reachable from the host only) and installed offline by the Dockerfile. The pip wheel bootstraps pip in
# the image (the debootstrap base has none), which the runner needs for job requirements.
IMAGE_PYTHON = "3.11"
RUNNER_DISTS = ("cloudpickle", "msgpack", "pip")


def image_tag(python: str) -> str:
    """The local tag of the worker image of Python ``python`` (the 3.11 one keeps :data:`state.IMAGE_TAG`)."""
    return state.IMAGE_TAG if python == IMAGE_PYTHON else f"{state.IMAGE_TAG}-py{python}"


def base_tag(suite: str = SUITE) -> str:
    return f"cumulus-base:{suite}"


def docker() -> str:
    """The docker client, looked up when used: docker.io's 20.10 client (it matches the 20.10 daemon and has the
    classic builder, no buildx needed) once the packages step has installed it, else any client on PATH."""
    return binary("docker", prefer=("/usr/bin/docker",))

_STRIP = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt",
          "var/lib/apt/lists"]


def base_tarball(suite: str = SUITE) -> Path:
    return state.CACHE_DIR / f"base-{suite}.tar"


def rootfs_dir(suite: str = SUITE) -> Path:
    return state.CACHE_DIR / f"rootfs-{suite}"


def release_rootfs() -> str:
    """Stop whatever still works in the unfinished base rootfses (an interrupted debootstrap's chrooted processes)
    and unmount what it mounted there (its /proc, /sys, ...). Call when no debootstrap of this run is running."""
    pids, unmounted = [], 0
    for suite in SUITES.values():
        rootfs = rootfs_dir(suite)
        found = children.processes_rooted_under(rootfs)
        kill_pids(found, signal.SIGKILL, wait=5)
        pids += found
        unmounted += unmount_under(rootfs)
    return f"{len(pids)} process(es) stopped, {unmounted} mount(s) released" if pids or unmounted else ""


def ensure_base_tarballs(on_line: Callable[[str], None] | None = None) -> str:
    """:func:`ensure_base_tarball` of every suite in :data:`SUITES`, one after the other."""
    return ", ".join(f"{suite} {ensure_base_tarball(on_line, suite)}" for suite in SUITES.values())


def ensure_base_tarball(on_line: Callable[[str], None] | None = None, suite: str = SUITE) -> str:
    """debootstrap a minimal Debian ``suite`` with python3 once; cached as a tarball under the cache dir.

    Recovers from an interrupted earlier run: its leftover processes and mounts in the rootfs are released
    before the rootfs is deleted (a delete never crosses a mount point). ``on_line`` gets debootstrap's output.
    """
    tar = base_tarball(suite)
    if tar.exists():
        return "cached"
    state.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    rootfs = rootfs_dir(suite)
    done_marker = state.CACHE_DIR / f"rootfs-{suite}.complete"
    recovered = release_rootfs()
    if not (done_marker.exists() and (rootfs / "usr/bin/python3").exists()):
        done_marker.unlink(missing_ok=True)
        remove_tree(rootfs)
        children.run([binary("debootstrap"), "--variant=minbase", f"--include={BASE_PACKAGES}", suite, str(rootfs),
                      MIRROR], timeout=1800, on_line=on_line)
        release_rootfs()
        done_marker.touch()
    for rel in _STRIP:
        p = rootfs / rel
        if p.is_dir():
            for child in p.iterdir():
                if child.is_dir() and not child.is_symlink():
                    remove_tree(child)
                else:
                    child.unlink(missing_ok=True)
    tmp = tar.with_suffix(".tmp")
    children.run(["tar", "--numeric-owner", "--one-file-system", "-C", str(rootfs), "-cf", str(tmp), "."],
                 timeout=600)
    os.replace(tmp, tar)
    remove_tree(rootfs)
    done_marker.unlink(missing_ok=True)
    return "debootstrapped" + (f" (after an interrupted run: {recovered})" if recovered else "")


def runner_versions() -> dict[str, str]:
    """The versions the image must carry: those of this (client-side) interpreter."""
    return {name: importlib.metadata.version(name) for name in RUNNER_DISTS}


def wheels_dir(versions: dict[str, str] | None = None, python: str = IMAGE_PYTHON) -> Path:
    versions = versions or runner_versions()
    key = "_".join(f"{k}-{v}" for k, v in sorted(versions.items()))
    return state.CACHE_DIR / f"wheels-py{python}-{key}"


def ensure_wheels(python: str = IMAGE_PYTHON) -> tuple[Path, str]:
    """Download (once; cached under the cache dir) the wheels of cloudpickle, msgpack and pip for the image of
    Python ``python``."""
    versions = runner_versions()
    d = wheels_dir(versions, python)
    marker = d / ".complete"
    if marker.exists():
        return d, "cached"
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "--no-deps",
           "--only-binary", ":all:", "--python-version", python, "--implementation", "cp",
           "-d", str(tmp)] + [f"{k}=={v}" for k, v in sorted(versions.items())]
    proc = children.run(cmd, timeout=600, check=False)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LocalClusterError(
            "cannot download the worker image's Python wheels (" + ", ".join(f"{k}=={v}" for k, v in
                                                                              versions.items())
            + f") from PyPI: {proc.stdout.strip()[-800:]}\n"
              f"The image needs the client's exact cloudpickle; put the wheels in {d} (with an empty .complete "
              f"file) on an offline machine.")
    got = sorted(p.name for p in tmp.glob("*.whl"))
    for name in RUNNER_DISTS:
        if not any(g.lower().startswith(name + "-") for g in got):
            shutil.rmtree(tmp, ignore_errors=True)
            raise LocalClusterError(f"pip download produced no {name} wheel (got {got})")
    (tmp / ".complete").touch()
    shutil.rmtree(d, ignore_errors=True)
    os.replace(tmp, d)
    for old in state.CACHE_DIR.glob(f"wheels-py{python}-*"):
        if old != d and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return d, "downloaded"


def build_args(python: str = IMAGE_PYTHON) -> dict[str, str]:
    v = runner_versions()
    return {"BASE": base_tag(SUITES[python]), "PYTHON_MINOR": python, "CLOUDPICKLE_VERSION": v["cloudpickle"],
            "MSGPACK_VERSION": v["msgpack"]}


def context_hash(python: str = IMAGE_PYTHON) -> str:
    """Hash of everything the image is made from: base tarball identity, build args, Dockerfile, image/ tree and
    the wheels. Stored as the image label ``cumulus.context``; `up` rebuilds only when it changes."""
    h = hashlib.sha256()
    tar = base_tarball(SUITES[python])
    st = tar.stat()
    h.update(f"{st.st_size}:{int(st.st_mtime)}".encode())
    for k, v in sorted(build_args(python).items()):
        h.update(f"arg {k}={v}\0".encode())
    root = state.worker_image_dir()
    for rel in ["Dockerfile"]:
        p = root / rel
        if p.exists():
            h.update(rel.encode() + b"\0" + p.read_bytes())
    for p in sorted((root / "image").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    for p in sorted(wheels_dir(python=python).glob("*.whl")):
        h.update(b"wheels/" + p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def stage_context(dest: Path, python: str = IMAGE_PYTHON) -> Path:
    """The build context: Dockerfile + image/ (as the repo's .dockerignore allows) + wheels/."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    root = state.worker_image_dir()
    shutil.copy2(root / "Dockerfile", dest / "Dockerfile")
    shutil.copytree(root / "image", dest / "image", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(wheels_dir(python=python), dest / "wheels", ignore=shutil.ignore_patterns(".complete"))
    return dest


def image_label(sock: Path, ref: str, label: str) -> str | None:
    proc = subprocess.run([docker(), "-H", f"unix://{sock}", "image", "inspect", "--format",
                           f'{{{{index .Config.Labels "{label}"}}}}', ref], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def saved_image(chash: str) -> Path:
    return state.CACHE_DIR / f"worker-image-{chash}.tar"


def image_id(sock: Path, ref: str) -> str | None:
    proc = subprocess.run([docker(), "-H", f"unix://{sock}", "image", "inspect", "--format", "{{.Id}}", ref],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def build_on(manager: state.Node, chash: str, on_line: Callable[[str], None] | None = None,
             python: str = IMAGE_PYTHON) -> str:
    """Import the base and build the worker image of Python ``python`` on the manager's dockerd (no network).
    Returns the image id."""
    sock = manager.docker_socket
    suite = SUITES[python]
    if not image_id(sock, base_tag(suite)):
        children.run([docker(), "-H", manager.docker_url, "import", str(base_tarball(suite)), base_tag(suite)],
                     timeout=600)
    env = {"DOCKER_BUILDKIT": "0"}
    ctx = stage_context(state.CACHE_DIR / f"build-context-py{python}", python)
    cmd = [docker(), "-H", manager.docker_url, "build", "--network", "none", "--label",
           f"cumulus.context={chash}", "-t", image_tag(python)]
    for k, v in build_args(python).items():
        cmd += ["--build-arg", f"{k}={v}"]
    try:
        children.run(cmd + [str(ctx)], env=env, timeout=900, on_line=on_line)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    iid = image_id(sock, image_tag(python))
    if not iid:
        raise LocalClusterError(f"worker image build (Python {python}) produced no image")
    return iid


def load_into(node: state.Node, tar: Path) -> None:
    with open(tar, "rb") as f:
        proc = children.run([docker(), "-H", node.docker_url, "load", "-q"], stdin=f, timeout=900, check=False)
    if proc.returncode != 0:
        raise LocalClusterError(f"docker load on {node.name} failed: {proc.stdout.strip()}")


def ensure_images(nodes: list[state.Node], wanted: dict[str, str],
                  on_line: Callable[[str], None] | None = None) -> tuple[dict[str, str], str]:
    """Make the worker image of every Python version of :data:`SUITES` present on every node. Returns (image id
    by Python version, note). ``wanted``: the ids the cluster description names (kept when still current)."""
    ids, notes = {}, []
    for python in SUITES:
        ids[python], note = ensure_image(nodes, wanted.get(python), on_line, python)
        notes.append(f"Python {python}: {note}")
    return ids, "; ".join(notes)


def ensure_image(nodes: list[state.Node], wanted_id: str | None,
                 on_line: Callable[[str], None] | None = None, python: str = IMAGE_PYTHON) -> tuple[str, str]:
    """Make the worker image of Python ``python`` present on every node. Returns (image id, note). ``on_line``:
    build progress."""
    manager = nodes[0]
    tag = image_tag(python)
    ensure_base_tarball(on_line, SUITES[python])  # normally already done by the caller, in the background
    _, wheels_note = ensure_wheels(python)
    chash = context_hash(python)
    # Fast path: every node already has the image the cluster description names, built from these inputs.
    if (wanted_id and image_label(manager.docker_socket, wanted_id, "cumulus.context") == chash
            and all(image_id(n.docker_socket, wanted_id) for n in nodes)):
        return wanted_id, "present on all nodes"
    note = f"wheels {wheels_note}; image {chash}"
    tar = saved_image(chash)
    if not tar.exists():
        build_on(manager, chash, on_line, python)
        tmp = tar.with_suffix(".tmp")
        children.run([docker(), "-H", manager.docker_url, "save", "-o", str(tmp), tag], timeout=900)
        os.replace(tmp, tar)
        current = {saved_image(context_hash(v)) for v in SUITES if wheels_dir(python=v).exists()
                   and base_tarball(SUITES[v]).exists()}
        for old in state.CACHE_DIR.glob("worker-image-*.tar"):
            if old != tar and old not in current:
                old.unlink(missing_ok=True)
        note += ", built"
    else:
        note += ", cached build"
    targets = [n for n in nodes if not (image_id(n.docker_socket, tag)
                                        and image_id(n.docker_socket, tag) == _tar_id(tar))]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(targets))) as ex:
        list(ex.map(lambda n: load_into(n, tar), targets))
    iid = image_id(manager.docker_socket, tag)
    for n in nodes:
        got = image_id(n.docker_socket, tag)
        if got != iid:
            raise LocalClusterError(f"image id mismatch on {n.name}: {got} != {iid}")
    if wanted_id and wanted_id != iid:  # the replaced image; kept where a container still uses it
        for n in nodes:
            subprocess.run([docker(), "-H", n.docker_url, "image", "rm", wanted_id], capture_output=True)
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
