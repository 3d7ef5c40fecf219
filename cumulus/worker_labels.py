"""What a joining host tells the supervisor about itself, checked, and the Swarm node labels made of it.

A host that joins with a join token sends its SSH host key (:func:`check_host_key`), its name and SSH address
(:func:`check_hostname`, :func:`check_ssh_address`) and, once in the Swarm, its worker JSON: the document
``worker_image/inventory.py detect`` writes (:func:`parse_worker_json` checks it). :func:`node_labels` computes the
labels exactly as ``inventory.py labels`` does (``tests/test_worker_labels.py`` holds the two to each other; this
module imports nothing of ``worker_image``), and :func:`join_labels` adds what the supervisor itself vouches for:
the pinned host key, when the host joined, and the join token's labels (``cumulus.label.<key>``).

Every refusal is an :class:`~cumulus.errors.InvalidRequest` whose message names the field and says what is allowed.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Mapping

from cumulus.errors import InvalidRequest

SCHEMA_VERSION = 1  # worker_image/inventory.py SCHEMA_VERSION
MAX_WORKER_JSON_BYTES = 1 << 20
MAX_DEVICES = 256
MAX_LABELS = 32
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
DEVICE_KINDS = ("gpu", "cpu", "accelerator", "custom", "other")
LABEL_PREFIX = "cumulus.label."
HOST_KEY_LABEL = "cumulus.host_key"
JOINED_AT_LABEL = "cumulus.joined_at"

_LABEL_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                       r"[A-Za-z0-9])?)*")
_SSH_ADDRESS = re.compile(r"(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def check_hostname(value: str) -> str:
    if not _HOSTNAME.fullmatch(value or ""):
        raise InvalidRequest(f"hostname {value[:80]!r} is not a host name (letters, digits, '-' and '.', at most "
                             f"253 characters)")
    return value


def check_ssh_address(value: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT``) the supervisor reaches the host's sshd at."""
    match = _SSH_ADDRESS.fullmatch(value or "")
    if match is None or not 1 <= int(match["port"]) <= 65535 or (
            not match["host"].startswith("[") and not _is_ip(match["host"]) and not _HOSTNAME.fullmatch(match["host"])):
        raise InvalidRequest(f"ssh_address {value[:80]!r} is not HOST:PORT (e.g. 10.0.0.7:22; [fd00::7]:22)")
    if match["host"].startswith("[") and not _is_ip(match["host"].strip("[]")):
        raise InvalidRequest(f"ssh_address {value[:80]!r}: {match['host']} is not an IPv6 address")
    return value


def ssh_host(address: str) -> str:
    """The host part of a checked SSH address (brackets of an IPv6 address removed)."""
    return address.rpartition(":")[0].strip("[]")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def check_host_key(value: str) -> str:
    """An OpenSSH public host key line (``ssh-ed25519 AAAA... [comment]``) made canonical: ``TYPE BASE64``, the
    comment dropped. The key must parse (asyncssh reads it the way the supervisor's SSH client will)."""
    import asyncssh

    parts = (value or "").split()
    if len(parts) < 2 or parts[0] not in HOST_KEY_TYPES or not _BASE64.fullmatch(parts[1]) or len(parts[1]) > 4096:
        raise InvalidRequest(f"host_key {value[:60]!r} is not an SSH public host key: send the first two fields of "
                             f"/etc/ssh/ssh_host_ed25519_key.pub ({', '.join(HOST_KEY_TYPES)})")
    canonical = f"{parts[0]} {parts[1]}"
    try:
        key = asyncssh.import_public_key(canonical)
    except (asyncssh.KeyImportError, ValueError) as error:
        raise InvalidRequest(f"host_key {canonical[:60]!r}... does not parse as an SSH public key: {error}") from None
    if key.get_algorithm() != parts[0]:
        raise InvalidRequest(f"host_key says {parts[0]} but holds a {key.get_algorithm()} key")
    return canonical


def check_token_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A join token's labels: at most 32, keys 1-63 of a-z, 0-9, '.', '_', '-', values printable, at most 256."""
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(f"{len(labels)} labels; at most {MAX_LABELS}")
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidRequest(f"label key {key[:70]!r} is not allowed; use 1-63 of a-z, 0-9, '.', '_', '-', "
                                 f"starting with a letter or digit")
        if len(value) > 256 or not value.isprintable():
            raise InvalidRequest(f"label {key}: the value must be printable and at most 256 characters")
    return dict(labels)


def parse_worker_json(text: str) -> dict[str, Any]:
    """The worker JSON document (``inventory.py detect``), checked: an object with ``schema`` 1, ``hostname``,
    ``ssh_address`` and ``inventory`` (``devices``: index, name, kind, is_gpu, memory_bytes, uuid, source each;
    ``gpu_count``: how many are GPUs)."""
    if len(text.encode()) > MAX_WORKER_JSON_BYTES:
        raise InvalidRequest(f"worker_json is larger than {MAX_WORKER_JSON_BYTES >> 20} MiB")
    try:
        doc = json.loads(text)
    except ValueError as error:
        raise InvalidRequest(f"worker_json is not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("worker_json must be a JSON object (what `inventory.py detect` writes)")
    if doc.get("schema") != SCHEMA_VERSION:
        raise InvalidRequest(f"worker_json schema is {doc.get('schema')!r}; this supervisor reads schema "
                             f"{SCHEMA_VERSION} (worker_image/inventory.py of the same version)")
    for key in ("hostname", "ssh_address"):
        if not isinstance(doc.get(key), str):
            raise InvalidRequest(f"worker_json.{key} must be a string")
    if not isinstance(doc.get("ssh_user", ""), str):
        raise InvalidRequest("worker_json.ssh_user must be a string")
    inventory = doc.get("inventory")
    if not isinstance(inventory, dict) or not isinstance(inventory.get("devices"), list):
        raise InvalidRequest("worker_json.inventory.devices must be a list of devices")
    devices = inventory["devices"]
    if len(devices) > MAX_DEVICES:
        raise InvalidRequest(f"worker_json lists {len(devices)} devices; at most {MAX_DEVICES}")
    for position, device in enumerate(devices):
        _check_device(position, device)
    indexes = [d["index"] for d in devices]
    if len(set(indexes)) != len(indexes):
        raise InvalidRequest(f"worker_json.inventory.devices: duplicate indexes {sorted(indexes)}")
    gpus = sum(1 for d in devices if d["is_gpu"])
    if inventory.get("gpu_count") != gpus:
        raise InvalidRequest(f"worker_json.inventory.gpu_count is {inventory.get('gpu_count')!r}, but {gpus} of "
                             f"its devices are GPUs")
    return doc


def _check_device(position: int, device: Any) -> None:
    where = f"worker_json.inventory.devices[{position}]"
    if not isinstance(device, dict):
        raise InvalidRequest(f"{where} must be an object")

    def field(name: str, kinds: tuple[type, ...], optional: bool = False) -> Any:
        value = device.get(name)
        if value is None and optional and name in device:
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise InvalidRequest(f"{where}.{name} must be {' or '.join(k.__name__ for k in kinds)}"
                                 f"{' or null' if optional else ''}, not {value!r:.40}")
        return value

    if not 0 <= field("index", (int,)) < 1024:
        raise InvalidRequest(f"{where}.index must be 0..1023")
    name = field("name", (str,))
    if not 0 < len(name) <= 256 or not name.isprintable():
        raise InvalidRequest(f"{where}.name must be printable, 1-256 characters")
    if field("kind", (str,)) not in DEVICE_KINDS:
        raise InvalidRequest(f"{where}.kind {device['kind']!r:.40} is not one of {', '.join(DEVICE_KINDS)}")
    field("is_gpu", (bool,))
    memory = field("memory_bytes", (int,), optional=True)
    if memory is not None and not 0 <= memory < 1 << 60:
        raise InvalidRequest(f"{where}.memory_bytes is out of range")
    uuid = field("uuid", (str,), optional=True)
    if uuid is not None and (len(uuid) > 128 or not uuid.isprintable()):
        raise InvalidRequest(f"{where}.uuid must be printable, at most 128 characters")
    if not 0 < len(field("source", (str,))) <= 64:
        raise InvalidRequest(f"{where}.source must be 1-64 characters")


def node_labels(worker: Mapping[str, Any]) -> dict[str, str]:
    """The node labels of a worker JSON, exactly as ``inventory.py labels`` gives them."""
    devices = worker.get("inventory", {}).get("devices", [])
    compact = [{k: d.get(k) for k in ("index", "name", "kind", "is_gpu", "memory_bytes", "uuid")} for d in devices]
    return {
        "cumulus.worker": "true",
        "cumulus.ssh": worker["ssh_address"],
        "cumulus.ssh_user": worker.get("ssh_user", "cumulus"),
        "cumulus.devices": json.dumps(compact, separators=(",", ":"), sort_keys=True),
        "cumulus.device_count": str(len(devices)),
        "cumulus.gpu_count": str(sum(1 for d in devices if d.get("is_gpu"))),
    }


def join_labels(worker: Mapping[str, Any], *, ssh_address: str, ssh_user: str, host_key: str, joined_at: str,
                token_labels: Mapping[str, str]) -> dict[str, str]:
    """Every label a joined node gets. The SSH address, user and host key are the ones the supervisor registered
    (not the document's own: the document comes from the host, the registration from the token's holder)."""
    vouched = {**worker, "ssh_address": ssh_address, "ssh_user": ssh_user}
    return {**node_labels(vouched), HOST_KEY_LABEL: host_key, JOINED_AT_LABEL: joined_at,
            **{LABEL_PREFIX + key: value for key, value in token_labels.items()}}


__all__ = ["HOST_KEY_LABEL", "JOINED_AT_LABEL", "LABEL_PREFIX", "MAX_WORKER_JSON_BYTES", "check_host_key",
           "check_hostname", "check_ssh_address", "check_token_labels", "join_labels", "node_labels",
           "parse_worker_json", "ssh_host"]
