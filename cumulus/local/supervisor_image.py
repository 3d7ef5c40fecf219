"""The supervisor image on the local cluster's manager, built offline and cached by content hash.

``supervisor_image/build.sh`` does the build (the same script real clusters use), here with the worker image's
debootstrap base (``cumulus-base:bookworm``, imported from the cached tarball), ``--network none`` and wheels made
on this machine: the dependencies of ``cumulus[server]`` and pip once per ``pyproject.toml`` (cached under the
cache dir; pip's own index settings apply), the cumulus wheel at each build. The image is tagged
``cumulus-supervisor:local`` on cw0's dockerd and labelled ``cumulus.context=<hash>``, the hash of everything it is
made from (the base tarball, Dockerfile, build script, the package sources, worker_image/, the dependency wheels);
``docker save`` of it is kept as ``supervisor-image-<hash>.tar`` so that a cluster made again loads it instead of
building it. Nothing is rebuilt while the hash is the same.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from cumulus.local import children, image, state
from cumulus.local.util import LocalClusterError

IMAGE_TAG = "cumulus-supervisor:local"
CONTEXT_LABEL = "cumulus.context"
_SKIPPED_SUFFIXES = (".pyc", ".pyo")  # everything else of the package is in the wheel (templates, static files)


def repo_dir() -> Path:
    return state.worker_image_dir().parent


def _source_files() -> list[Path]:
    """What the cumulus wheel is made from."""
    root = repo_dir()
    files = [root / "pyproject.toml", root / "README.md"]
    files += sorted(p for p in (root / "cumulus").rglob("*")
                    if p.is_file() and p.suffix not in _SKIPPED_SUFFIXES and "__pycache__" not in p.parts)
    return files


def _stage_sources(dest: Path) -> Path:
    """A copy of the package sources to build the wheel from (setuptools writes build/ next to its sources)."""
    root = repo_dir()
    for path in _source_files():
        target = dest / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return dest


def dependency_wheels() -> tuple[Path, str]:
    """The wheels of cumulus[server]'s dependencies and pip, made once per pyproject.toml (cached)."""
    key = hashlib.sha256((repo_dir() / "pyproject.toml").read_bytes()).hexdigest()[:16]
    d = state.CACHE_DIR / f"supervisor-wheels-{key}"
    if (d / ".complete").exists():
        return d, "cached"
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="cumulus-src-") as src:
        _stage_sources(Path(src))
        proc = children.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input", "-q",
                             "--wheel-dir", str(tmp), f"{src}[server]", "pip"], timeout=900, check=False)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LocalClusterError(f"cannot make the supervisor image's wheels with pip: {proc.stdout.strip()[-1500:]}")
    for own in tmp.glob("cumulus-*.whl"):
        own.unlink()
    (tmp / ".complete").touch()
    shutil.rmtree(d, ignore_errors=True)
    os.replace(tmp, d)
    for old in state.CACHE_DIR.glob("supervisor-wheels-*"):
        if old != d and old.is_dir() and not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)
    return d, "made"


def context_hash(wheels: Path) -> str:
    h = hashlib.sha256()
    st = image.base_tarball().stat()
    h.update(f"base {st.st_size}:{int(st.st_mtime)}\0".encode())
    root = repo_dir()
    for path in [root / "supervisor_image" / "Dockerfile", root / "supervisor_image" / "build.sh",
                 *_source_files()]:
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    for path in sorted((root / "worker_image").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    for whl in sorted(wheels.glob("*.whl")):
        h.update(b"wheel " + whl.name.encode() + b"\0")
    return h.hexdigest()[:16]


def saved_image(chash: str) -> Path:
    return state.CACHE_DIR / f"supervisor-image-{chash}.tar"


def _ensure_base(manager: state.Node) -> None:
    image.ensure_base_tarball()
    if not image.image_id(manager.docker_socket, state.BASE_TAG):
        children.run([image.docker(), "-H", manager.docker_url, "import", str(image.base_tarball()), state.BASE_TAG],
                     timeout=600)


def _build(manager: state.Node, wheels: Path, chash: str, on_line: Callable[[str], None] | None) -> None:
    _ensure_base(manager)
    tar = saved_image(chash)
    with tempfile.TemporaryDirectory(prefix="cumulus-supervisor-wheels-") as tmp:
        context_wheels = Path(tmp) / "wheels"
        shutil.copytree(wheels, context_wheels, ignore=shutil.ignore_patterns(".complete"))
        with tempfile.TemporaryDirectory(prefix="cumulus-src-") as src:
            _stage_sources(Path(src))
            proc = children.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input",
                                 "-q", "--no-deps", "--wheel-dir", str(context_wheels), src], timeout=600,
                                check=False)
        if proc.returncode != 0:
            raise LocalClusterError(f"cannot build the cumulus wheel: {proc.stdout.strip()[-1500:]}")
        script = repo_dir() / "supervisor_image" / "build.sh"
        proc = children.run(["bash", str(script), "--tag", IMAGE_TAG, "--base", state.BASE_TAG, "--network", "none",
                             "--wheels", str(context_wheels), "--docker-host", manager.docker_url,
                             "--label", f"{CONTEXT_LABEL}={chash}", "--save", str(tar)],
                            timeout=1200, check=False, on_line=on_line)
    if proc.returncode != 0:
        raise LocalClusterError(f"supervisor image build failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}")


def ensure_supervisor_image(manager: state.Node | None = None,
                            on_line: Callable[[str], None] | None = None) -> tuple[str, str]:
    """Make ``cumulus-supervisor:local`` current on the manager's dockerd. Returns (image id, note)."""
    manager = manager or state.Node(0)
    wheels, wheels_note = dependency_wheels()
    chash = context_hash(wheels)
    present = image.image_id(manager.docker_socket, IMAGE_TAG)
    if present and image.image_label(manager.docker_socket, IMAGE_TAG, CONTEXT_LABEL) == chash:
        return present, f"image {chash} present"
    tar = saved_image(chash)
    if tar.exists():
        image.load_into(manager, tar)
        note = f"image {chash} loaded from the cache"
    else:
        _build(manager, wheels, chash, on_line)
        note = f"wheels {wheels_note}; image {chash} built"
        for old in state.CACHE_DIR.glob("supervisor-image-*.tar"):
            if old != tar:
                old.unlink(missing_ok=True)
    iid = image.image_id(manager.docker_socket, IMAGE_TAG)
    if not iid or image.image_label(manager.docker_socket, IMAGE_TAG, CONTEXT_LABEL) != chash:
        raise LocalClusterError(f"{IMAGE_TAG} on {manager.name} is not the image just made ({chash})")
    if present and present != iid:  # the replaced build; kept while a container (a running service) uses it
        subprocess.run([image.docker(), "-H", manager.docker_url, "image", "rm", present], capture_output=True)
    return iid, note
