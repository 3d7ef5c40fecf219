"""The supervisor's read-only image registry: the Docker Registry HTTP API v2, as far as a pull needs it, on the
HTTP port (``/v2/``), serving the worker image the supervisor exported (:mod:`cumulus.resources.image_store`).

* ``GET /v2/``: 200 (the API version check every client makes first).
* ``GET|HEAD /v2/cumulus/worker/manifests/<digest or tag>``: the generated manifest (Docker schema 2); the tag is
  the image id's hex.
* ``GET|HEAD /v2/cumulus/worker/blobs/<digest>``: the config or a layer, streamed, with ``Range`` support.
* Anything else: 404 with the registry's error JSON; a write (push, delete): 405 (``UNSUPPORTED``).

Nothing here asks for a token: a pull needs none, because the worker image holds nothing secret (it is built from
public packages and the worker scripts of this repository). The port's TLS still proves to the worker's dockerd
that it talks to the supervisor (it trusts the supervisor's CA in ``/etc/docker/certs.d/<registry>/ca.crt``).
Only images the supervisor exported itself are served; nothing can be pushed.
"""

from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable

import trio

from cumulus.resources.image_store import MANIFEST_TYPE, ImageStore

REPOSITORY = "cumulus/worker"
API_VERSION = (b"docker-distribution-api-version", b"registry/2.0")
CHUNK = 1 << 20
_ROUTE = re.compile(r"/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<reference>[^/]+)")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")

Send = Callable[[dict[str, Any]], Awaitable[None]]


def is_registry_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


async def serve_registry(store: ImageStore | None, scope: dict[str, Any], send: Send) -> None:
    """Answer one request under ``/v2`` (see the module docstring). ``store`` None: nothing is exported (every
    manifest and blob is unknown)."""
    method, path = scope["method"], scope["path"]
    if method not in ("GET", "HEAD"):
        await _error(send, method, 405, "UNSUPPORTED",
                     "this registry is read-only: only pulls (GET, HEAD) are served", extra=[(b"allow", b"GET, HEAD")])
        return
    if path in ("/v2", "/v2/"):
        await _respond(send, method, 200, b"{}", b"application/json")
        return
    route = _ROUTE.fullmatch(path)
    if route is None:
        await _error(send, method, 404, "NOT_FOUND", f"no such registry endpoint: {path}")
        return
    if route["name"] != REPOSITORY:
        await _error(send, method, 404, "NAME_UNKNOWN",
                     f"repository name not known to registry: only {REPOSITORY} is served",
                     detail={"name": route["name"]})
        return
    reference = route["reference"]
    if route["kind"] == "manifests":
        export = store.manifest(reference) if store is not None else None
        if export is None:
            await _error(send, method, 404, "MANIFEST_UNKNOWN", "manifest unknown",
                         detail={"reference": reference})
            return
        client = scope.get("client")
        if client and store is not None:
            store.note_manifest_request(str(client[0]))
        await _respond(send, method, 200, export.manifest, MANIFEST_TYPE.encode(),
                       extra=[(b"docker-content-digest", export.manifest_digest.encode())])
        return
    blob = store.blob(reference) if store is not None and _DIGEST.fullmatch(reference) else None
    if blob is None:
        await _error(send, method, 404, "BLOB_UNKNOWN", "blob unknown to registry", detail={"digest": reference})
        return
    await _send_file(send, method, blob.path, blob.size, reference, _header(scope, b"range"))


async def _send_file(send: Send, method: str, path: Any, size: int, digest: str, range_header: str) -> None:
    start, end, status = 0, size - 1, 200
    match = _RANGE.fullmatch(range_header.strip()) if range_header else None
    if match:
        start = int(match[1])
        end = min(int(match[2]), size - 1) if match[2] else size - 1
        if start > end or start >= size:
            await _error(send, method, 416, "BLOB_UNKNOWN",
                         f"range {range_header} is outside the blob ({size} bytes)",
                         extra=[(b"content-range", f"bytes */{size}".encode())])
            return
        status = 206
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(end - start + 1).encode()),
               (b"docker-content-digest", digest.encode()), (b"accept-ranges", b"bytes"),
               (b"etag", f'"{digest}"'.encode()), API_VERSION]
    if status == 206:
        headers.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if method == "HEAD":
        await send({"type": "http.response.body", "body": b""})
        return
    left = end - start + 1
    async with await trio.open_file(path, "rb") as blob_file:
        await blob_file.seek(start)
        while left > 0:
            chunk = await blob_file.read(min(CHUNK, left))
            if not chunk:  # the file shrank: end the response short, the client's digest check refuses it
                break
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
    if left > 0:
        await send({"type": "http.response.body", "body": b""})


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


async def _respond(send: Send, method: str, status: int, body: bytes, content_type: bytes, *,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), API_VERSION,
               *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


async def _error(send: Send, method: str, status: int, code: str, message: str, *,
                 detail: dict[str, str] | None = None, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": detail or {}}]}).encode()
    await _respond(send, method, status, body, b"application/json", extra=extra)


__all__ = ["REPOSITORY", "is_registry_path", "serve_registry"]
