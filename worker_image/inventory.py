#!/usr/bin/env python3
"""Device inventory of a Cumulus worker host.

Run by ``setup-worker.sh`` (with the worker's Chronos venv python) to write the worker JSON that the manager turns
into Swarm node labels. The parsers are pure functions so that they can be unit-tested on recorded output
(``tests/test_inventory.py``); this module has no dependency outside the standard library (Chronos is imported only
when the OpenCL fallback is used).

Device record (one per device a job can be placed on)::

    {"index": 0, "name": "NVIDIA A100-SXM4-80GB", "kind": "gpu", "is_gpu": true,
     "memory_bytes": 85899345920, "uuid": "GPU-...", "source": "nvidia-smi"}

``index`` is the device index given to Chronos (``Partitioner.create(index, ...)``).

Subcommands::

    inventory.py detect [--ssh-address H:P] [--ssh-user U] [--host-key-file F] [--hostname N]
                        [--swarm-node-id ID] [--output PATH]
    inventory.py labels WORKER_JSON        # prints the node labels as JSON
    inventory.py label-command WORKER_JSON  # prints the `docker node update` command that applies them
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from typing import Any

SCHEMA_VERSION = 1
MIB = 1024 * 1024

# The query setup-worker.sh runs; the parser also accepts the same columns with a header line and/or units.
NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=index,name,memory.total,uuid", "--format=csv,noheader,nounits"]


class InventoryError(ValueError):
    """Output that cannot be parsed into a device list."""


def _parse_memory_mib(value: str) -> int | None:
    """'81920', '81920 MiB', '[N/A]' -> bytes or None."""
    v = value.strip()
    if not v or v.startswith("[") or v.upper() in {"N/A", "NOT SUPPORTED"}:
        return None
    parts = v.split()
    number = parts[0]
    unit = parts[1].lower() if len(parts) > 1 else "mib"
    try:
        amount = float(number)
    except ValueError as exc:
        raise InventoryError(f"bad memory value {value!r}") from exc
    scale = {"mib": MIB, "gib": 1024 * MIB, "kib": 1024, "b": 1, "mb": 1000 * 1000, "gb": 1000**3}.get(unit)
    if scale is None:
        raise InventoryError(f"unknown memory unit in {value!r}")
    return int(amount * scale)


def parse_nvidia_smi_csv(text: str) -> list[dict[str, Any]]:
    """Parse ``nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv[,noheader][,nounits]``.

    Returns one device record per GPU line, sorted by index. Blank lines are skipped; a header line
    (``index, name, memory.total [MiB], uuid``) is recognised and skipped. Raises InventoryError on anything else.
    """
    devices: list[dict[str, Any]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        if fields and fields[0].lower() == "index":
            continue  # header
        if len(fields) < 4:
            raise InventoryError(f"line {lineno}: expected 4 fields, got {len(fields)}: {raw!r}")
        # A GPU name never contains a comma in practice, but be robust: index first, uuid and memory last.
        index_s, memory_s, uuid = fields[0], fields[-2], fields[-1]
        name = ",".join(fields[1:-2]).strip()
        try:
            index = int(index_s)
        except ValueError as exc:
            raise InventoryError(f"line {lineno}: bad index {index_s!r}") from exc
        uuid_v = uuid if uuid and not uuid.startswith("[") else None
        devices.append(
            {
                "index": index,
                "name": name,
                "kind": "gpu",
                "is_gpu": True,
                "memory_bytes": _parse_memory_mib(memory_s),
                "uuid": uuid_v,
                "source": "nvidia-smi",
            }
        )
    devices.sort(key=lambda d: d["index"])
    indexes = [d["index"] for d in devices]
    if len(set(indexes)) != len(indexes):
        raise InventoryError(f"duplicate GPU indexes: {indexes}")
    return devices


def parse_nvidia_smi_list(text: str) -> list[dict[str, Any]]:
    """Parse ``nvidia-smi -L`` (``GPU 0: NAME (UUID: GPU-...)``); memory is unknown (None). MIG lines are skipped."""
    import re

    devices = []
    pattern = re.compile(r"^GPU\s+(\d+):\s+(.*?)\s+\(UUID:\s*([^)]+)\)\s*$")
    for raw in text.splitlines():
        m = pattern.match(raw.strip())
        if m:
            devices.append(
                {
                    "index": int(m.group(1)),
                    "name": m.group(2),
                    "kind": "gpu",
                    "is_gpu": True,
                    "memory_bytes": None,
                    "uuid": m.group(3).strip(),
                    "source": "nvidia-smi",
                }
            )
    return devices


_OPENCL_KINDS = {"CPU": "cpu", "GPU": "gpu", "ACCELERATOR": "accelerator", "CUSTOM": "custom"}


def parse_clinfo_raw(text: str) -> list[dict[str, Any]]:
    """Parse ``clinfo --raw`` into OpenCL device records (all platforms, in platform/device order).

    The index is the running device number, which is the order in which Chronos enumerates devices.
    OpenCL devices are marked non-GPU unless their type is GPU.
    """
    import re

    devices: list[dict[str, Any]] = []
    current: dict[tuple[int, int], dict[str, Any]] = {}
    pattern = re.compile(r"^\[([^/\]]+)/(\d+)\]\s+(CL_DEVICE_\w+)\s+(.*)$")
    platform_ids: dict[str, int] = {}
    for raw in text.splitlines():
        m = pattern.match(raw.strip())
        if not m:
            continue
        plat, dev, key, value = m.group(1), int(m.group(2)), m.group(3), m.group(4).strip()
        pid = platform_ids.setdefault(plat, len(platform_ids))
        rec = current.setdefault((pid, dev), {})
        if key == "CL_DEVICE_NAME":
            rec["name"] = value
        elif key == "CL_DEVICE_TYPE":
            kind = "other"
            for token, k in _OPENCL_KINDS.items():
                if token in value.upper():
                    kind = k
                    break
            rec["kind"] = kind
        elif key == "CL_DEVICE_GLOBAL_MEM_SIZE":
            try:
                rec["memory_bytes"] = int(value.split()[0])
            except ValueError:
                rec["memory_bytes"] = None
    for i, key in enumerate(sorted(current)):
        rec = current[key]
        kind = rec.get("kind", "other")
        devices.append(
            {
                "index": i,
                "name": rec.get("name", f"opencl-{i}"),
                "kind": kind,
                "is_gpu": kind == "gpu",
                "memory_bytes": rec.get("memory_bytes"),
                "uuid": None,
                "source": "opencl",
            }
        )
    return devices


def devices_from_chronos() -> list[dict[str, Any]]:
    """OpenCL devices as Chronos sees them (needs real, non-stub Chronos)."""
    import chronos  # noqa: F401  (import error is the caller's signal)

    if chronos.is_stub_mode():
        raise InventoryError("Chronos is in stub mode (native library not loaded)")
    devices: list[dict[str, Any]] = []
    clinfo = shutil.which("clinfo")
    if clinfo:
        out = subprocess.run([clinfo, "--raw"], capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            devices = parse_clinfo_raw(out.stdout)
    if not devices:
        # No clinfo: probe Chronos device by device (get_available raises on an invalid index).
        p = chronos.Partitioner()
        for i in range(64):
            try:
                p.get_available(i)
            except Exception:
                break
            devices.append(
                {"index": i, "name": f"opencl-{i}", "kind": "other", "is_gpu": False,
                 "memory_bytes": None, "uuid": None, "source": "opencl"}
            )
    return devices


def detect_devices() -> list[dict[str, Any]]:
    """nvidia-smi where present (GPUs), else the OpenCL devices Chronos sees."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            devices = parse_nvidia_smi_csv(out.stdout)
            if devices:
                return devices
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and parse_nvidia_smi_list(out.stdout):
            return parse_nvidia_smi_list(out.stdout)
    return devices_from_chronos()


def node_labels(worker: dict[str, Any]) -> dict[str, str]:
    """Swarm node labels for a worker JSON (what the manager applies with ``docker node update --label-add``)."""
    devices = worker.get("inventory", {}).get("devices", [])
    compact = [
        {k: d.get(k) for k in ("index", "name", "kind", "is_gpu", "memory_bytes", "uuid")} for d in devices
    ]
    return {
        "cumulus.worker": "true",
        "cumulus.ssh": worker["ssh_address"],
        "cumulus.ssh_user": worker.get("ssh_user", "cumulus"),
        "cumulus.devices": json.dumps(compact, separators=(",", ":"), sort_keys=True),
        "cumulus.device_count": str(len(devices)),
        "cumulus.gpu_count": str(sum(1 for d in devices if d.get("is_gpu"))),
    }


def label_command(worker: dict[str, Any], node: str | None = None) -> list[str]:
    cmd = ["docker", "node", "update"]
    for k, v in node_labels(worker).items():
        cmd += ["--label-add", f"{k}={v}"]
    cmd.append(node or worker.get("swarm_node_id") or worker["hostname"])
    return cmd


def build_worker_json(
    *,
    devices: list[dict[str, Any]],
    hostname: str,
    ssh_address: str,
    ssh_user: str = "cumulus",
    host_key: str | None = None,
    swarm_node_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "hostname": hostname,
        "ssh_address": ssh_address,
        "ssh_user": ssh_user,
        "host_key": host_key,
        "swarm_node_id": swarm_node_id,
        "inventory": {
            "devices": devices,
            "gpu_count": sum(1 for d in devices if d.get("is_gpu")),
        },
        "holder": "/opt/cumulus/bin/cumulus-partition-holder",
        "chronos_available": "/opt/cumulus/bin/cumulus-chronos-available",
        "jobs_dir": "/var/lib/cumulus/jobs",
    }
    if extra:
        doc.update(extra)
    doc["labels"] = node_labels(doc)
    return doc


def _read_host_key(path: str | None) -> str | None:
    if not path:
        return None
    with open(path) as f:
        parts = f.read().split()
    return " ".join(parts[:2]) if len(parts) >= 2 else None


def _write_atomic(path: str, text: str) -> bool:
    """Write only if the content differs (idempotence). Returns True when written."""
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="inventory.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("detect")
    d.add_argument("--ssh-address", default=None)
    d.add_argument("--ssh-user", default="cumulus")
    d.add_argument("--host-key-file", default="/etc/ssh/ssh_host_ed25519_key.pub")
    d.add_argument("--hostname", default=None)
    d.add_argument("--swarm-node-id", default=None)
    d.add_argument("--docker-host", default=None)
    d.add_argument("--output", default=None, help="write here (only if changed); default stdout")
    lab = sub.add_parser("labels")
    lab.add_argument("worker_json")
    lc = sub.add_parser("label-command")
    lc.add_argument("worker_json")
    lc.add_argument("--node", default=None)
    args = ap.parse_args(argv)

    if args.cmd == "labels":
        with open(args.worker_json) as f:
            print(json.dumps(node_labels(json.load(f)), indent=2, sort_keys=True))
        return 0
    if args.cmd == "label-command":
        with open(args.worker_json) as f:
            print(shlex.join(label_command(json.load(f), args.node)))
        return 0

    hostname = args.hostname or socket.gethostname()
    ssh_address = args.ssh_address or f"{hostname}:22"
    extra: dict[str, Any] = {}
    if args.docker_host:
        extra["docker_host"] = args.docker_host
    try:
        import chronos

        extra["chronos"] = {"version": getattr(chronos, "__version__", None), "stub_mode": chronos.is_stub_mode()}
    except Exception as exc:  # noqa: BLE001
        extra["chronos"] = {"error": str(exc)}
    doc = build_worker_json(
        devices=detect_devices(),
        hostname=hostname,
        ssh_address=ssh_address,
        ssh_user=args.ssh_user,
        host_key=_read_host_key(args.host_key_file),
        swarm_node_id=args.swarm_node_id,
        extra=extra,
    )
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if args.output:
        changed = _write_atomic(args.output, text)
        print(f"{'wrote' if changed else 'unchanged'} {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
