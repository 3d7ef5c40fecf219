"""Unit tests of the worker inventory parser (worker_image/inventory.py); no cluster needed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


def _load():
    spec = importlib.util.spec_from_file_location("cumulus_worker_inventory", ROOT / "worker_image" / "inventory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


inventory = _load()


def test_a100x8_noheader_nounits():
    devs = inventory.parse_nvidia_smi_csv((DATA / "nvidia-smi-a100x8.txt").read_text())
    assert [d["index"] for d in devs] == list(range(8))
    d0 = devs[0]
    assert d0 == {
        "index": 0, "name": "NVIDIA A100-SXM4-80GB", "kind": "gpu", "is_gpu": True,
        "memory_bytes": 81920 * 1024 * 1024, "uuid": "GPU-4f8a2b1c-3d5e-7f90-a1b2-c3d4e5f60718",
        "source": "nvidia-smi",
    }
    assert len({d["uuid"] for d in devs}) == 8


def test_header_and_units_are_accepted():
    devs = inventory.parse_nvidia_smi_csv((DATA / "nvidia-smi-mixed-header-units.txt").read_text())
    assert [(d["name"], d["memory_bytes"]) for d in devs] == [
        ("NVIDIA GeForce RTX 4090", 24564 * 2**20), ("Tesla T4", 15360 * 2**20)]


def test_not_available_fields_become_none():
    devs = inventory.parse_nvidia_smi_csv((DATA / "nvidia-smi-na-fields.txt").read_text())
    assert devs[1]["memory_bytes"] is None and devs[1]["uuid"] is None
    assert devs[0]["memory_bytes"] == 81559 * 2**20


def test_unsorted_input_is_sorted_and_duplicates_rejected():
    text = "1, B, 10, GPU-b\n0, A, 20, GPU-a\n"
    assert [d["name"] for d in inventory.parse_nvidia_smi_csv(text)] == ["A", "B"]
    with pytest.raises(inventory.InventoryError):
        inventory.parse_nvidia_smi_csv("0, A, 1, GPU-a\n0, B, 1, GPU-b\n")


@pytest.mark.parametrize("bad", ["garbage", "x, A, 1, GPU-a", "0, A, lots, GPU-a", "0, A, 5 PiB, GPU-a"])
def test_malformed_output_raises(bad):
    with pytest.raises(inventory.InventoryError):
        inventory.parse_nvidia_smi_csv(bad)


def test_empty_output_means_no_gpus():
    assert inventory.parse_nvidia_smi_csv("\n\n") == []


def test_nvidia_smi_list_skips_mig_lines():
    devs = inventory.parse_nvidia_smi_list((DATA / "nvidia-smi-L.txt").read_text())
    assert [(d["index"], d["uuid"]) for d in devs] == [
        (0, "GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"), (1, "GPU-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f90a")]
    assert all(d["memory_bytes"] is None and d["is_gpu"] for d in devs)


def test_clinfo_pocl_cpu_device_is_not_a_gpu():
    devs = inventory.parse_clinfo_raw((DATA / "clinfo-raw-pocl.txt").read_text())
    assert len(devs) == 1
    d = devs[0]
    assert d["index"] == 0 and d["kind"] == "cpu" and d["is_gpu"] is False and d["source"] == "opencl"
    assert d["memory_bytes"] and d["memory_bytes"] > 0 and d["uuid"] is None


def test_worker_json_and_labels():
    devs = inventory.parse_nvidia_smi_csv((DATA / "nvidia-smi-mixed-header-units.txt").read_text())
    doc = inventory.build_worker_json(devices=devs, hostname="gpu1", ssh_address="10.0.0.7:22",
                                      host_key="ssh-ed25519 AAAA", swarm_node_id="abc")
    assert doc["inventory"]["gpu_count"] == 2
    labels = doc["labels"]
    assert labels["cumulus.worker"] == "true"
    assert labels["cumulus.ssh"] == "10.0.0.7:22"
    assert labels["cumulus.gpu_count"] == "2"
    assert json.loads(labels["cumulus.devices"])[1]["name"] == "Tesla T4"
    cmd = inventory.label_command(doc)
    assert cmd[:3] == ["docker", "node", "update"] and cmd[-1] == "abc"
    assert "cumulus.gpu_count=2" in cmd


def test_cpu_only_worker_has_zero_gpus():
    devs = inventory.parse_clinfo_raw((DATA / "clinfo-raw-pocl.txt").read_text())
    doc = inventory.build_worker_json(devices=devs, hostname="cw1", ssh_address="10.213.0.11:22")
    assert doc["labels"]["cumulus.gpu_count"] == "0"
    assert doc["labels"]["cumulus.device_count"] == "1"
