"""The worker image as registry content: :class:`ImageStore` exports an image (by id) from a ``docker save`` stream
into content-addressed blobs on disk, and answers what the supervisor's read-only registry
(:mod:`cumulus.rpc.http_registry`) serves: a generated manifest and the blobs it names.

Layout (``<journal dir>/images``)::

    images/<image id hex>/manifest.json    Docker image manifest v2 schema 2 (its sha256 is the manifest digest)
    images/<image id hex>/blobs/<hex>      the image config (its sha256 is the image id) and the layers
    images/.tmp-<hex>-<random>/            an export in progress; renamed into place once complete and verified

The manifest's config is the saved image's config byte for byte, so an image pulled through the registry has the
very id the supervisor was given. Layers are the saved, uncompressed layer tars (``...rootfs.diff.tar``): their
digests are the config's diff ids, so every byte is checked against the id (the config names the diff ids, the id
is the config's sha256). Docker 20.10 pulls such a manifest (checked by tests/cluster/test_cluster_image_gate.py).

An export is made once per image id (later calls find it on disk), one at a time, in a worker thread that checks
for cancellation between chunks; it is bounded in bytes and time. A half-written export is never used: it lives in
a temporary directory until verified, and leftovers of an interrupted one are removed when the store opens. Only
the exports of the images served (one per Python version) are kept: an image upgrade removes the older one once
the new one is in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tarfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Collection, Iterator

import trio

from cumulus.errors import CumulusError

log = logging.getLogger(__name__)

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar"
MAX_EXPORT_BYTES = 256 << 30  # a `docker save` stream larger than this is refused
EXPORT_TIMEOUT = 3600.0  # seconds an export may take in all
MAX_SMALL_MEMBER = 64 << 20  # manifest.json and the config are read into memory; larger ones are refused
FAILURE_MEMORY = 30.0  # seconds a failed export is answered from memory (many workers wait for one export)
CHUNK = 1 << 20
_IMAGE_ID = re.compile(r"sha256:([0-9a-f]{64})")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

#: Opens the ``docker save`` stream of an image id (blocking; called in a worker thread): a context manager that
#: yields the stream's chunks and closes the stream on exit.
ImageSource = Callable[[str], AbstractContextManager[Iterator[bytes]]]


class ImageExportError(CumulusError):
    """The image could not be exported (not on the manager, unreadable, a digest that does not match)."""


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    path: Path


@dataclass(frozen=True)
class ImageExport:
    """A complete, verified export: the image id, its manifest (bytes and digest) and its blobs by digest."""

    image_id: str
    manifest: bytes
    manifest_digest: str
    blobs: dict[str, Blob]

    @property
    def tag(self) -> str:
        """The tag the registry also serves this manifest under: the image id's hex."""
        return self.image_id.split(":", 1)[1]


def check_image_id(image_id: str) -> str:
    """The hex of an image id ``sha256:<64 hex>``; :class:`ImageExportError` otherwise."""
    match = _IMAGE_ID.fullmatch(image_id or "")
    if not match:
        raise ImageExportError(f"not an image id (sha256:<64 hex>): {image_id!r}")
    return match.group(1)


class ImageStore:
    """Exports on disk under ``root`` (see the module docstring). Made by :func:`load_image_store`. It holds no
    process or connection: an export in progress belongs to its caller's task and stops with it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._exports: dict[str, ImageExport] = {}  # image id -> export; written in the Trio thread only
        self._lock = trio.Lock()
        self._failed: dict[str, tuple[float, str]] = {}  # image id -> (when, why) of the last failed export
        self._asked: dict[str, float] = {}  # client host -> when it last asked for a manifest (monotonic)

    # ---- reading (the registry) -------------------------------------------------------------------------------

    def manifest(self, reference: str) -> ImageExport | None:
        """The export whose manifest is ``reference`` (its digest, or its tag: the image id's hex)."""
        for export in self._exports.values():
            if reference in (export.manifest_digest, export.tag):
                return export
        return None

    def blob(self, digest: str) -> Blob | None:
        for export in self._exports.values():
            if digest in export.blobs:
                return export.blobs[digest]
        return None

    def exported(self, image_id: str) -> ImageExport | None:
        return self._exports.get(image_id)

    def note_manifest_request(self, host: str) -> None:
        """The registry saw ``host`` ask for a manifest (a pull began there); bounded to the latest hosts."""
        self._asked[host] = time.monotonic()
        if len(self._asked) > 4096:
            for old in sorted(self._asked, key=self._asked.__getitem__)[:1024]:
                del self._asked[old]

    def asked_since(self, host: str, since: float) -> bool:
        """Whether ``host`` asked the registry for a manifest at or after ``since`` (``time.monotonic()``)."""
        return self._asked.get(host, -1.0) >= since

    # ---- exporting -------------------------------------------------------------------------------------------

    def load_existing(self) -> None:
        """Find the complete exports on disk; remove what interrupted exports left."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        for entry in self.root.iterdir():
            if entry.name.startswith(".tmp-"):
                shutil.rmtree(entry, ignore_errors=True)
            elif re.fullmatch(r"[0-9a-f]{64}", entry.name) and (entry / "manifest.json").is_file():
                try:
                    self._exports[f"sha256:{entry.name}"] = _read_export(entry)
                except (OSError, ValueError, KeyError, TypeError) as error:
                    log.warning("image store: ignoring the unreadable export %s: %s", entry, error)

    async def export(self, image_id: str, source: ImageSource, keep: Collection[str] = ()) -> ImageExport:
        """The export of ``image_id``, made from ``source`` unless it exists; once made, exports of images neither
        ``image_id`` nor in ``keep`` (the other images served) leave the store and the disk. One export runs at a
        time; a caller that waited for a failed one gets its error (for :data:`FAILURE_MEMORY` seconds) instead of
        trying again.
        Raises :class:`ImageExportError`; cancellation stops the export (nothing of it is kept)."""
        hexid = check_image_id(image_id)
        if image_id in self._exports:
            return self._exports[image_id]
        async with self._lock:
            if image_id in self._exports:
                return self._exports[image_id]
            if image_id in self._failed and time.monotonic() - self._failed[image_id][0] < FAILURE_MEMORY:
                raise ImageExportError(self._failed[image_id][1])
            started = time.monotonic()
            try:
                export = await trio.to_thread.run_sync(self._export_blocking, image_id, hexid, source)
            except ImageExportError as error:
                self._failed[image_id] = (time.monotonic(), str(error))
                raise
            self._failed.pop(image_id, None)
            wanted = {image_id, *keep}
            self._exports = {i: e for i, e in self._exports.items() if i in wanted} | {image_id: export}
            total = sum(blob.size for blob in export.blobs.values())
            log.info("image store: exported %s (%d blobs, %.1f MiB) in %.1f s as %s", image_id, len(export.blobs),
                     total / (1 << 20), time.monotonic() - started, export.manifest_digest)
            await trio.to_thread.run_sync(self._remove_others, {i.removeprefix("sha256:") for i in wanted})
            return export

    def _remove_others(self, kept: set[str]) -> None:
        for entry in self.root.iterdir():
            if entry.name not in kept and re.fullmatch(r"[0-9a-f]{64}", entry.name):
                shutil.rmtree(entry, ignore_errors=True)

    def _export_blocking(self, image_id: str, hexid: str, source: ImageSource) -> ImageExport:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        final = self.root / hexid
        tmp = self.root / f".tmp-{hexid[:12]}-{secrets.token_hex(4)}"
        (tmp / "blobs").mkdir(parents=True)
        try:
            try:
                with source(image_id) as chunks:
                    members = _unpack(_ChunkReader(chunks, time.monotonic() + EXPORT_TIMEOUT), tmp)
            except ImageExportError:
                raise
            except (OSError, tarfile.TarError, ValueError) as error:
                raise ImageExportError(f"exporting {image_id}: {error}") from error
            except Exception as error:  # the source's own errors (e.g. the manager is unreachable)
                raise ImageExportError(f"exporting {image_id} from the Swarm manager: {error}") from error
            manifest = _assemble(image_id, members, tmp)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            return _read_export(final, expected=manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class _ChunkReader:
    """A file-like reader over the stream's chunks, for :mod:`tarfile`'s stream mode; checks cancellation, the
    size bound and the deadline before each chunk."""

    def __init__(self, chunks: Iterator[bytes], deadline: float) -> None:
        self._chunks = iter(chunks)
        self._chunk = b""
        self._offset = 0
        self._deadline = deadline
        self.total = 0

    def _next_chunk(self) -> bool:
        trio.from_thread.check_cancelled()
        if time.monotonic() > self._deadline:
            raise ImageExportError(f"the export took longer than {EXPORT_TIMEOUT:g} s")
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self.total += len(chunk)
        if self.total > MAX_EXPORT_BYTES:
            raise ImageExportError(f"the image is larger than {MAX_EXPORT_BYTES >> 30} GiB")
        self._chunk, self._offset = bytes(chunk), 0
        return True

    def read(self, size: int = -1) -> bytes:
        parts, wanted = [], size if size >= 0 else 1 << 62
        while wanted > 0:
            if self._offset >= len(self._chunk) and not self._next_chunk():
                break
            part = self._chunk[self._offset:self._offset + wanted]
            self._offset += len(part)
            wanted -= len(part)
            parts.append(part)
        return b"".join(parts)


@dataclass(frozen=True)
class _Member:
    path: Path | None  # where its bytes are (None: a link)
    digest: str
    size: int
    link: str = ""  # the member name it links to


def _unpack(reader: _ChunkReader, tmp: Path) -> dict[str, _Member]:
    """Write every regular file of the saved image's tar under ``tmp`` (by sequence number), hashing it on the way;
    note links by their target. Member names are never used as paths."""
    members: dict[str, _Member] = {}
    with tarfile.open(fileobj=reader, mode="r|", bufsize=CHUNK) as archive:  # type: ignore[call-overload]
        for number, info in enumerate(archive):
            name = str(PurePosixPath(info.name))
            if info.isfile():
                source = archive.extractfile(info)
                assert source is not None
                path = tmp / f"member-{number}"
                members[name] = _Member(path, *_copy_hashed(source, path))
            elif info.issym() or info.islnk():
                target = info.linkname if info.islnk() else str(PurePosixPath(name).parent / info.linkname)
                members[name] = _Member(None, "", 0, link=os.path.normpath(target))
    return members


def _copy_hashed(source: IO[bytes], path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "wb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return f"sha256:{digest.hexdigest()}", size


def _resolve(members: dict[str, _Member], name: str) -> _Member:
    for _ in range(8):
        member = members.get(os.path.normpath(name))
        if member is None:
            raise ImageExportError(f"the saved image lacks {name!r}")
        if not member.link:
            return member
        name = member.link
    raise ImageExportError(f"too many links at {name!r} in the saved image")


def _small(member: _Member) -> bytes:
    assert member.path is not None
    if member.size > MAX_SMALL_MEMBER:
        raise ImageExportError(f"a metadata file of the saved image is too large ({member.size} bytes)")
    return member.path.read_bytes()


def _assemble(image_id: str, members: dict[str, _Member], tmp: Path) -> bytes:
    """Check the saved image against its id, move the config and the layers to ``tmp/blobs``, write the manifest
    there; return the manifest. Raises :class:`ImageExportError` on any mismatch."""
    try:
        saved = json.loads(_small(_resolve(members, "manifest.json")))
        entry = next(e for e in saved if isinstance(e, dict) and _resolve(members, e["Config"]).digest == image_id)
    except StopIteration:
        raise ImageExportError(f"the saved image has no config whose digest is {image_id}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ImageExportError(f"the saved image's manifest.json is unreadable: {error}") from error
    config_member = _resolve(members, entry["Config"])
    try:
        diff_ids = json.loads(_small(config_member))["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as error:
        raise ImageExportError(f"the config of {image_id} names no layers (rootfs.diff_ids): {error}") from error
    layers = [_resolve(members, name) for name in entry.get("Layers") or []]
    if len(layers) != len(diff_ids):
        raise ImageExportError(f"{image_id}: the saved image has {len(layers)} layers, its config {len(diff_ids)}")
    for index, (layer, diff_id) in enumerate(zip(layers, diff_ids)):
        if layer.digest != diff_id:
            raise ImageExportError(f"{image_id}: layer {index} of the saved image is {layer.digest}, its config "
                                   f"says {diff_id} (a compressed or corrupted layer)")
    for member in [config_member, *layers]:
        assert member.path is not None
        target = tmp / "blobs" / member.digest.split(":", 1)[1]
        if not target.exists():
            os.replace(member.path, target)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "size": config_member.size, "digest": config_member.digest},
        "layers": [{"mediaType": LAYER_TYPE, "size": layer.size, "digest": layer.digest} for layer in layers],
    }
    data = json.dumps(manifest, indent=3).encode()
    (tmp / "manifest.json").write_bytes(data)
    for leftover in tmp.glob("member-*"):
        leftover.unlink()
    return data


def _read_export(directory: Path, expected: bytes | None = None) -> ImageExport:
    """The export in ``directory`` (complete by construction: only verified exports are renamed into place)."""
    data = (directory / "manifest.json").read_bytes()
    if expected is not None and data != expected:
        raise ImageExportError(f"the manifest in {directory} changed while it was written")
    manifest = json.loads(data)
    blobs = {}
    for descriptor in [manifest["config"], *manifest["layers"]]:
        digest = str(descriptor["digest"])
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"bad digest {digest!r}")
        path = directory / "blobs" / digest.split(":", 1)[1]
        size = path.stat().st_size
        if size != int(descriptor["size"]):
            raise ValueError(f"blob {digest} has {size} bytes, the manifest says {descriptor['size']}")
        blobs[digest] = Blob(digest, size, path)
    image_id = str(manifest["config"]["digest"])
    return ImageExport(image_id, data, f"sha256:{hashlib.sha256(data).hexdigest()}", blobs)


async def load_image_store(root: Path) -> ImageStore:
    """The store at ``root`` with the complete exports found there (leftovers of interrupted ones removed)."""
    store = ImageStore(root)
    await trio.to_thread.run_sync(store.load_existing)
    return store


def image_store_dir(journal_path: str) -> Path | None:
    """Where the exports of a supervisor with this journal live (``images/`` next to it); None for an in-memory
    journal (nothing on disk: no registry)."""
    if journal_path == ":memory:":
        return None
    return Path(journal_path).expanduser().resolve().parent / "images"


__all__ = ["Blob", "ImageExport", "ImageExportError", "ImageSource", "ImageStore", "check_image_id",
           "image_store_dir", "load_image_store"]
