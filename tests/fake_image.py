"""A small, made-up image in the shape of Docker 20.10's ``docker save`` tar, for unit tests of the image store and
the registry: per layer ``<v1 id>/layer.tar`` (a duplicate layer as a symlink to the first copy, as Docker writes
it), ``<config hex>.json``, ``manifest.json`` and ``repositories``. ``image_id`` is the config's sha256, as Docker's."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass


def _layer(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass(frozen=True)
class FakeImage:
    image_id: str
    saved: bytes  # the `docker save` tar
    config: bytes
    layers: tuple[bytes, ...]


def fake_image(*, layer_sizes: tuple[int, ...] = (300_000, 2_000), duplicate_first: bool = True,
               corrupt_layer: int | None = None, seed: str = "a") -> FakeImage:
    """A saved image with layers of about ``layer_sizes`` bytes (plus, with ``duplicate_first``, the first layer
    again, saved as a symlink). ``corrupt_layer``: that layer's saved bytes differ from its diff id."""
    layers = [_layer({f"file{i}": (hashlib.sha256(f"{seed}{i}".encode()).digest() * (size // 32 + 1))[:size]})
              for i, size in enumerate(layer_sizes)]
    if duplicate_first:
        layers.append(layers[0])
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["true"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        layer_paths, first_dir = [], {}
        for index, layer in enumerate(layers):
            v1 = hashlib.sha256(f"v1-{seed}-{index}".encode()).hexdigest()
            dir_info = tarfile.TarInfo(v1)
            dir_info.type = tarfile.DIRTYPE
            tar.addfile(dir_info)
            add(f"{v1}/VERSION", b"1.0")
            add(f"{v1}/json", b"{}")
            if layer in first_dir:
                link = tarfile.TarInfo(f"{v1}/layer.tar")
                link.type, link.linkname = tarfile.SYMTYPE, f"../{first_dir[layer]}/layer.tar"
                tar.addfile(link)
            else:
                first_dir[layer] = v1
                saved = layer if index != corrupt_layer else layer[:-1] + bytes([layer[-1] ^ 1])
                add(f"{v1}/layer.tar", saved)
            layer_paths.append(f"{v1}/layer.tar")
        add(f"{config_hex}.json", config)
        add("manifest.json", json.dumps([{"Config": f"{config_hex}.json", "RepoTags": ["fake:latest"],
                                          "Layers": layer_paths}]).encode())
        add("repositories", b"{}")
    return FakeImage(f"sha256:{config_hex}", out.getvalue(), config, tuple(layers))
