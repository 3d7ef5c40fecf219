"""cumulus.worker_labels (what a joining host tells the supervisor, checked; the node labels made of it) against
worker_image/inventory.py: the same labels for the worker JSON of every recorded inventory (tests/data) and for
generated ones, including through `inventory.py labels` run as a program; and clear refusals of bad input."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cumulus import worker_labels as wl
from cumulus.errors import InvalidRequest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKxOzsSqnbh1v5Tqp2xhPlgSVzScTcSgr4oFxjb9mmrx"


def _inventory():
    spec = importlib.util.spec_from_file_location("cumulus_worker_inventory_labels",
                                                  ROOT / "worker_image" / "inventory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


inventory = _inventory()

RECORDED = {
    "a100x8": lambda: inventory.parse_nvidia_smi_csv((DATA / "nvidia-smi-a100x8.txt").read_text()),
    "header-units": lambda: inventory.parse_nvidia_smi_csv((DATA / "nvidia-smi-mixed-header-units.txt").read_text()),
    "na-fields": lambda: inventory.parse_nvidia_smi_csv((DATA / "nvidia-smi-na-fields.txt").read_text()),
    "nvidia-smi-L": lambda: inventory.parse_nvidia_smi_list((DATA / "nvidia-smi-L.txt").read_text()),
    "pocl-cpu": lambda: inventory.parse_clinfo_raw((DATA / "clinfo-raw-pocl.txt").read_text()),
    "no-devices": lambda: [],
}


def worker_doc(devices, **extra):
    return inventory.build_worker_json(devices=devices, hostname="gpu-7", ssh_address="10.213.0.7:22",
                                       ssh_user="cumulus", host_key=ED25519, swarm_node_id="abc123", extra=extra)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_inventories_give_the_same_labels_as_inventory_py(name, tmp_path):
    doc = worker_doc(RECORDED[name]())
    text = json.dumps(doc, indent=2, sort_keys=True)
    checked = wl.parse_worker_json(text)
    assert wl.node_labels(checked) == inventory.node_labels(doc) == doc["labels"]
    path = tmp_path / "worker.json"
    path.write_text(text)
    printed = subprocess.run([sys.executable, str(ROOT / "worker_image" / "inventory.py"), "labels", str(path)],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    assert json.loads(printed) == wl.node_labels(checked)


_device = st.fixed_dictionaries({
    "name": st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_categories=("Cs", "Zl", "Zp")),
                    min_size=1, max_size=40).filter(str.isprintable),
    "kind": st.sampled_from(wl.DEVICE_KINDS),
    "memory_bytes": st.none() | st.integers(0, 1 << 50),
    "uuid": st.none() | st.from_regex(r"GPU-[0-9a-f]{8}", fullmatch=True),
    "source": st.sampled_from(["nvidia-smi", "opencl"]),
})


@settings(max_examples=60, deadline=None)
@given(st.lists(_device, max_size=12), st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True),
                                                      st.text(max_size=20).filter(str.isprintable), max_size=4))
def test_generated_inventories_agree_and_join_labels_add_what_the_supervisor_vouches_for(devices, token_labels):
    devices = [{**d, "index": i, "is_gpu": d["kind"] == "gpu"} for i, d in enumerate(devices)]
    doc = worker_doc(devices)
    checked = wl.parse_worker_json(json.dumps(doc))
    assert wl.node_labels(checked) == inventory.node_labels(doc)
    labels = wl.join_labels(checked, ssh_address="10.213.0.9:22", ssh_user="cu", host_key=ED25519,
                            joined_at="2026-12-03 08:00:00 UTC", token_labels=token_labels)
    assert labels["cumulus.ssh"] == "10.213.0.9:22" and labels["cumulus.ssh_user"] == "cu"  # registered, not the doc's
    assert labels[wl.HOST_KEY_LABEL] == ED25519 and labels[wl.JOINED_AT_LABEL].startswith("2026-")
    assert {k[len(wl.LABEL_PREFIX):]: v for k, v in labels.items() if k.startswith(wl.LABEL_PREFIX)} == token_labels
    assert labels["cumulus.devices"] == inventory.node_labels(doc)["cumulus.devices"]


def _broken(change):
    doc = worker_doc(RECORDED["header-units"]())
    change(doc)
    return json.dumps(doc)


@pytest.mark.parametrize("text, says", [
    ("not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    (_broken(lambda d: d.update(schema=2)), "schema"),
    (_broken(lambda d: d.pop("hostname")), "worker_json.hostname"),
    (_broken(lambda d: d["inventory"].pop("devices")), "inventory.devices must be a list"),
    (_broken(lambda d: d["inventory"]["devices"][1].update(index="1")), "devices[1].index must be int"),
    (_broken(lambda d: d["inventory"]["devices"][0].update(is_gpu="yes")), "devices[0].is_gpu must be bool"),
    (_broken(lambda d: d["inventory"]["devices"][0].update(index=True)), "devices[0].index must be int"),
    (_broken(lambda d: d["inventory"]["devices"][0].update(kind="tpu")), "devices[0].kind 'tpu' is not one of"),
    (_broken(lambda d: d["inventory"]["devices"][0].pop("source")), "devices[0].source must be str"),
    (_broken(lambda d: d["inventory"]["devices"][0].update(memory_bytes=-1)), "memory_bytes is out of range"),
    (_broken(lambda d: d["inventory"]["devices"][1].update(index=0)), "duplicate indexes"),
    (_broken(lambda d: d["inventory"].update(gpu_count=5)), "gpu_count is 5, but 2"),
    ("{" + " " * wl.MAX_WORKER_JSON_BYTES + "}", "larger than 1 MiB"),
])
def test_a_bad_worker_json_is_refused_naming_the_field(text, says):
    with pytest.raises(InvalidRequest, match="worker_json") as refused:
        wl.parse_worker_json(text)
    assert says in str(refused.value)


def test_host_keys_are_parsed_and_made_canonical():
    assert wl.check_host_key(ED25519 + " root@gpu-7\n") == ED25519
    for bad in ("", "ssh-ed25519", "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "ssh-ed25519 AAAA!!", "ssh-ed25519 AAAAC3Nz",
                "ssh-rsa " + ED25519.split()[1]):
        with pytest.raises(InvalidRequest, match="host_key"):
            wl.check_host_key(bad)


@pytest.mark.parametrize("address, ok", [
    ("10.213.0.7:22", True), ("[fd00::7]:2222", True), ("gpu-7.example.org:22", True),
    ("10.213.0.7", False), ("10.213.0.7:0", False), ("10.213.0.7:70000", False), ("[gpu]:22", False),
    ("-x:22", False), ("a b:22", False), ("", False),
])
def test_ssh_addresses(address, ok):
    if ok:
        assert wl.check_ssh_address(address) == address
    else:
        with pytest.raises(InvalidRequest, match="ssh_address"):
            wl.check_ssh_address(address)


def test_hostnames_and_token_labels():
    assert wl.check_hostname("gpu-7.example") == "gpu-7.example"
    for bad in ("", "-gpu", "gpu_7", "a" * 64, "gpu 7"):
        with pytest.raises(InvalidRequest, match="hostname"):
            wl.check_hostname(bad)
    assert wl.check_token_labels({"rack": "r1", "team.a": "ml"}) == {"rack": "r1", "team.a": "ml"}
    with pytest.raises(InvalidRequest, match="label key 'Rack'"):
        wl.check_token_labels({"Rack": "r1"})
    with pytest.raises(InvalidRequest, match="printable"):
        wl.check_token_labels({"rack": "r1\n"})
    with pytest.raises(InvalidRequest, match="at most 32"):
        wl.check_token_labels({f"k{i}": "v" for i in range(33)})
