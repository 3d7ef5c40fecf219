"""The worker image store (export of a saved image into verified, content-addressed blobs) and the supervisor's
read-only registry on the real HTTP port (hypercorn), with a made-up saved image (tests/fake_image.py). The pull by
a real dockerd is tests/cluster/test_cluster_image_gate.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import trio

from cumulus.config import SecuritySettings
from cumulus.metrics import Metrics
from cumulus.resources.image_store import (CONFIG_TYPE, LAYER_TYPE, MANIFEST_TYPE, ImageExportError, ImageStore,
                                           load_image_store)
from cumulus.rpc.http import serve_http
from tests.fake_image import FakeImage, fake_image
from tests.trio_thread import serving_in_thread


def source_of(image: FakeImage, calls: list[str] | None = None, chunk: int = 4096):
    @contextlib.contextmanager
    def source(image_id: str) -> Iterator[Iterator[bytes]]:
        if calls is not None:
            calls.append(image_id)
        if image_id != image.image_id:
            raise RuntimeError(f"no such image {image_id}")
        yield iter([image.saved[i:i + chunk] for i in range(0, len(image.saved), chunk)])
    return source


def export(store: ImageStore, image: FakeImage, calls: list[str] | None = None):
    return trio.run(store.export, image.image_id, source_of(image, calls))


def test_an_export_is_verified_content_addressed_and_keeps_the_image_id(tmp_path: Path):
    image = fake_image()
    store = ImageStore(tmp_path / "images")
    calls: list[str] = []
    done = export(store, image, calls)
    manifest = json.loads(done.manifest)
    assert manifest["mediaType"] == MANIFEST_TYPE and manifest["schemaVersion"] == 2
    assert manifest["config"] == {"mediaType": CONFIG_TYPE, "size": len(image.config), "digest": image.image_id}
    assert [layer["digest"] for layer in manifest["layers"]] == [
        f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in image.layers]
    assert {layer["mediaType"] for layer in manifest["layers"]} == {LAYER_TYPE}
    assert done.manifest_digest == f"sha256:{hashlib.sha256(done.manifest).hexdigest()}"
    for digest, blob in done.blobs.items():  # every blob's bytes hash to its name
        assert f"sha256:{hashlib.sha256(blob.path.read_bytes()).hexdigest()}" == digest
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [image.image_id.split(":")[1]]
    # made once: a second call, and a store opened again (a restarted supervisor), use what is on disk
    assert export(store, image, calls) is done and calls == [image.image_id]
    again = trio.run(load_image_store, tmp_path / "images")
    assert again.manifest(done.manifest_digest) == done and again.manifest(done.tag) == done


def test_a_layer_that_does_not_match_its_diff_id_is_refused_and_nothing_is_kept(tmp_path: Path):
    image = fake_image(corrupt_layer=1)
    store = ImageStore(tmp_path / "images")
    with pytest.raises(ImageExportError, match="layer 1 of the saved image"):
        export(store, image)
    assert list((tmp_path / "images").iterdir()) == [] and store.exported(image.image_id) is None
    with pytest.raises(ImageExportError, match="layer 1"):  # remembered for a while: many workers wait for it
        export(store, image)


def test_a_source_that_fails_or_an_unknown_image_is_an_export_error(tmp_path: Path):
    image = fake_image()
    store = ImageStore(tmp_path / "images")
    with pytest.raises(ImageExportError, match="no such image"):
        trio.run(store.export, "sha256:" + "0" * 64, source_of(image))
    with pytest.raises(ImageExportError, match="not an image id"):
        trio.run(store.export, "cumulus-worker:local", source_of(image))


def test_a_cancelled_export_leaves_nothing_and_leftovers_are_removed_on_open(tmp_path: Path):
    image = fake_image(layer_sizes=(2_000_000,))
    store = ImageStore(tmp_path / "images")

    @contextlib.contextmanager
    def slow(image_id: str) -> Iterator[Iterator[bytes]]:
        def chunks() -> Iterator[bytes]:
            for i in range(0, len(image.saved), 65536):
                __import__("time").sleep(0.01)
                yield image.saved[i:i + 65536]
        yield chunks()

    async def main() -> None:
        with trio.move_on_after(0.2) as scope:
            await store.export(image.image_id, slow)
        assert scope.cancelled_caught

    trio.run(main)
    assert list((tmp_path / "images").iterdir()) == []
    (tmp_path / "images" / ".tmp-abc-123").mkdir()
    (tmp_path / "images" / ".tmp-abc-123" / "member-0").write_bytes(b"half")
    trio.run(load_image_store, tmp_path / "images")
    assert list((tmp_path / "images").iterdir()) == []


def test_a_new_image_replaces_the_old_export(tmp_path: Path):
    old, new = fake_image(seed="old"), fake_image(seed="new")
    store = ImageStore(tmp_path / "images")
    first = export(store, old)
    second = export(store, new)
    assert store.manifest(first.manifest_digest) is None and store.manifest(second.manifest_digest) == second
    assert [p.name for p in (tmp_path / "images").iterdir()] == [new.image_id.split(":")[1]]


# ---- the registry on the HTTP port ----------------------------------------------------------------------------

@contextlib.contextmanager
def registry(store: ImageStore | None) -> Iterator[str]:
    async def serve(ready) -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(lambda task_status: serve_http(
                SimpleNamespace(image_store=store), Metrics(), "127.0.0.1:0",
                security=SecuritySettings(insecure=True), task_status=task_status))
            ready(url)

    with serving_in_thread(serve, name="registry") as url:
        yield url


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None, data: bytes | None = None):
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def error_code(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    image = fake_image()
    store = ImageStore(tmp_path_factory.mktemp("store") / "images")
    done = export(store, image)
    with registry(store) as url:
        yield SimpleNamespace(url=url + "/v2/cumulus/worker", base=url, image=image, export=done)


def test_the_api_version_check_answers_200(served):
    status, headers, body = request(served.base + "/v2/")
    assert status == 200 and headers["docker-distribution-api-version"] == "registry/2.0" and body == b"{}"


@pytest.mark.parametrize("reference", ["digest", "tag"])
def test_a_manifest_by_digest_or_tag(served, reference):
    ref = served.export.manifest_digest if reference == "digest" else served.export.tag
    status, headers, body = request(f"{served.url}/manifests/{ref}")
    assert status == 200 and body == served.export.manifest
    assert headers["content-type"] == MANIFEST_TYPE
    assert headers["docker-content-digest"] == served.export.manifest_digest
    status, headers, body = request(f"{served.url}/manifests/{ref}", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(served.export.manifest)


def test_blobs_stream_whole_or_by_range(served):
    config = request(f"{served.url}/blobs/{served.image.image_id}")
    assert config[0] == 200 and config[2] == served.image.config
    layer = served.image.layers[0]
    digest = f"sha256:{hashlib.sha256(layer).hexdigest()}"
    status, headers, body = request(f"{served.url}/blobs/{digest}")
    assert status == 200 and body == layer and headers["docker-content-digest"] == digest
    status, headers, body = request(f"{served.url}/blobs/{digest}", headers={"Range": "bytes=1000-"})
    assert status == 206 and body == layer[1000:] and headers["content-range"] == f"bytes 1000-{len(layer) - 1}/" \
                                                                                  f"{len(layer)}"
    status, headers, body = request(f"{served.url}/blobs/{digest}", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(layer)
    assert request(f"{served.url}/blobs/{digest}", headers={"Range": f"bytes={len(layer)}-"})[0] == 416


@pytest.mark.parametrize("path, code", [
    ("/blobs/sha256:" + "0" * 64, "BLOB_UNKNOWN"),  # a well-formed digest of nothing exported
    ("/blobs/sha256:abc", "BLOB_UNKNOWN"),
    ("/blobs/../../../etc/passwd", "NOT_FOUND"),
    ("/manifests/sha256:" + "1" * 64, "MANIFEST_UNKNOWN"),
    ("/manifests/latest", "MANIFEST_UNKNOWN"),
])
def test_what_was_not_exported_is_unknown(served, path, code):
    status, headers, body = request(served.url + path)
    assert status == 404 and error_code(body) == code


def test_other_repositories_and_endpoints_are_unknown(served):
    digest = served.export.manifest_digest
    assert error_code(request(f"{served.base}/v2/library/debian/manifests/{digest}")[2]) == "NAME_UNKNOWN"
    assert request(f"{served.base}/v2/_catalog")[0] == 404


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
def test_writes_are_refused(served, method):
    for path in ("/blobs/uploads/", f"/manifests/{served.export.tag}", f"/blobs/{served.image.image_id}"):
        status, headers, body = request(served.url + path, method, data=b"x" if method != "DELETE" else None)
        assert status == 405 and error_code(body) == "UNSUPPORTED" and headers["allow"] == "GET, HEAD"


def test_without_a_store_nothing_is_served_but_the_version_check():
    with registry(None) as url:
        assert request(url + "/v2/")[0] == 200
        status, _, body = request(url + "/v2/cumulus/worker/manifests/" + "a" * 64)
        assert status == 404 and error_code(body) == "MANIFEST_UNKNOWN"


def test_local_up_makes_the_nodes_dockerd_trust_the_registry_and_down_forgets_it(tmp_path: Path):
    from cumulus.local.registry_trust import local_registries, trust_local_registries, untrust_local_registries

    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nlocal CA\n-----END CERTIFICATE-----\n")
    certs = tmp_path / "certs.d"
    assert "10.213.0.1:50052" in local_registries()
    assert "10.213.0.1:50052" in trust_local_registries(ca, certs)
    for registry in local_registries():
        assert (certs / registry / "ca.crt").read_bytes() == ca.read_bytes()
        assert (certs / registry / "ca.crt").stat().st_mode & 0o777 == 0o644
    assert trust_local_registries(ca, certs) == ""  # unchanged: nothing written
    (certs / "10.213.0.1:50052" / "client.cert").write_text("the machine's own")
    untrust_local_registries(certs)
    assert [p.name for p in certs.rglob("*")] == ["10.213.0.1:50052", "client.cert"]
