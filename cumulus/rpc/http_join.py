"""The join endpoints of the supervisor's HTTP port: what a new host fetches and posts while it joins
(``docs/operations.md``, "Join a worker"; the line that fetches them: :mod:`cumulus.join_line`).

* ``GET /join/worker.sh``: the join script, ``worker_image/join.sh``.
* ``GET /join/worker-files.tar.gz``: the worker files the script runs (:data:`WORKER_FILES`, at the archive's top
  level), built once and kept.
* ``POST /v1/join/register`` and ``POST /v1/join/complete``: RegisterWorker and CompleteJoin with protobuf JSON
  bodies and ``Authorization: Bearer <join token>``, through the very functions the gRPC methods call
  (:mod:`cumulus.rpc.join_servicer`). An error is its HTTP status and ``{"code": "<gRPC status name>",
  "message": "<what to fix>"}``.

The worker files come from ``cluster.worker_files``, else the ``worker_image/`` directory next to the ``cumulus``
package (a checkout of the repository). The scripts are public: no token is needed to fetch them; the line pins the
port's public key, so the host knows they come from this supervisor.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc
import trio
from google.protobuf import json_format

import cumulus
from cumulus.errors import CumulusError, InvalidRequest
from cumulus.join_line import COMPLETE_PATH, FILES_PATH, REGISTER_PATH, SCRIPT_PATH
from cumulus.rpc.generated.v1 import workers_pb2 as wpb
from cumulus.rpc.join_servicer import bearer_token, complete_join, join_status, register_worker
from cumulus.worker_labels import MAX_WORKER_JSON_BYTES

log = logging.getLogger(__name__)

JOIN_SCRIPT = "join.sh"
WORKER_FILES = ("setup-worker.sh", "inventory.py", "cumulus-partition-holder", "cumulus-chronos-available",
                "cumulus-job-network")
MAX_BODY_BYTES = 2 * MAX_WORKER_JSON_BYTES  # the worker JSON travels as a JSON string: escaped, it grows
BODY_TIMEOUT_SECONDS = 30.0
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
}
JSON = b"application/json"

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def is_join_path(path: str) -> bool:
    return path in (SCRIPT_PATH, FILES_PATH, REGISTER_PATH, COMPLETE_PATH)


def worker_files_dir(settings: Any) -> Path:
    """``cluster.worker_files``, else ``worker_image/`` next to the ``cumulus`` package."""
    configured = settings.cluster.worker_files
    if configured:
        return Path(configured).expanduser()
    return Path(cumulus.__file__).resolve().parent.parent / "worker_image"


@functools.lru_cache(maxsize=4)
def files_archive(directory: str) -> bytes:
    """A tar.gz of :data:`WORKER_FILES` of ``directory`` (modes kept, owned by root); FileNotFoundError names a
    missing one."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for name in WORKER_FILES:
            path = Path(directory) / name
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with path.open("rb") as data:
                tar.addfile(info, data)
    return buffer.getvalue()


async def serve_join(api: Any, scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answer one request to a join path (:func:`is_join_path`)."""
    path, method = scope["path"], scope["method"]
    if path in (SCRIPT_PATH, FILES_PATH):
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"use GET\n", extra=[(b"allow", b"GET, HEAD")])
            return
        await _serve_file(api, path, send)
        return
    if method != "POST":
        await _error(send, grpc.StatusCode.INVALID_ARGUMENT, f"{path} takes POST with a JSON body", status=405,
                     extra=[(b"allow", b"POST")])
        return
    try:
        body = await _read_body(scope, receive)
        token = bearer_token(_header(scope, b"authorization"))
        if path == REGISTER_PATH:
            answer: Any = await register_worker(api, token, _parse(body, wpb.RegisterWorkerRequest()))
        else:
            answer = await complete_join(api, token, _parse(body, wpb.CompleteJoinRequest()))
    except _BodyTooLarge:
        await _error(send, grpc.StatusCode.INVALID_ARGUMENT, f"the body is larger than {MAX_BODY_BYTES} bytes",
                     status=413)
    except CumulusError as error:
        await _error(send, join_status(error), str(error))
    except Exception as error:  # a bug: 500, keep serving
        log.exception("%s failed", path)
        await _error(send, grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")
    else:
        await _respond(send, 200, json_format.MessageToJson(answer).encode(), content_type=JSON)


async def _serve_file(api: Any, path: str, send: Send) -> None:
    directory = worker_files_dir(api.settings)
    try:
        if path == SCRIPT_PATH:
            data = await trio.Path(directory / JOIN_SCRIPT).read_bytes()
        else:
            data = await trio.to_thread.run_sync(files_archive, str(directory))
    except OSError as error:
        log.error("cannot serve %s: %s", path, error)
        await _respond(send, 503, f"this supervisor cannot serve {path}: {error.strerror or error} (the worker files "
                                  f"are read from {directory}: set cluster.worker_files)\n".encode())
        return
    kind = b"text/x-shellscript; charset=utf-8" if path == SCRIPT_PATH else b"application/gzip"
    await _respond(send, 200, data, content_type=kind)


class _BodyTooLarge(Exception):
    pass


async def _read_body(scope: dict[str, Any], receive: Receive) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _BodyTooLarge
    chunks, size = [], 0
    with trio.fail_after(BODY_TIMEOUT_SECONDS):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body"):
                break
    return b"".join(chunks)


def _parse(body: bytes, message: Any) -> Any:
    try:
        return json_format.Parse(body.decode("utf-8"), message)
    except (json_format.ParseError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"the body is not a {type(message).__name__} in protobuf JSON: {error}") from None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    values = [value for key, value in scope.get("headers", ()) if key.lower() == name]
    return values[0].decode("latin-1") if len(values) == 1 else None


async def _error(send: Send, code: grpc.StatusCode, message: str, *, status: int | None = None,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"code": code.name, "message": message}).encode()
    await _respond(send, status or HTTP_STATUS.get(code, 500), body, content_type=JSON, extra=extra)


async def _respond(send: Send, status: int, body: bytes, *, content_type: bytes = b"text/plain; charset=utf-8",
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["MAX_BODY_BYTES", "WORKER_FILES", "files_archive", "is_join_path", "serve_join", "worker_files_dir"]
