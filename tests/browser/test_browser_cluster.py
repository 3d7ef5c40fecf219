"""The cluster page in a real browser shows what the API says: every worker of the local cluster (cw1, cw2) with
its state, address and availability, and each of its devices with its kind (honest here: "CPU (not a GPU)", since
the local cluster runs on PoCL's CPU device), model, memory and share bar; the queue's length."""

from __future__ import annotations

import re

from browser_tools import describe

UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def shown_memory(text: str) -> float | None:
    """Bytes of a memory size as a page shows it ("4.7 GiB", "5 GB"), None if it shows none."""
    found = re.search(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B)\b", text)
    return float(found.group(1)) * UNITS[found.group(2)] if found and found.group(2) in UNITS else None


def test_the_cluster_page_shows_every_worker_and_its_devices_as_the_api_does(browser, dashboard, admin_client,
                                                                             cluster):
    b = browser
    b.sign_in(dashboard.admin_token)
    b.open("/cluster", "cluster")
    api = {w.hostname: w for w in admin_client.list_workers()}
    expected = sorted(n["hostname"] for n in cluster["nodes"] if n["role"] == "worker")
    assert sorted(api) == expected, f"the API lists {sorted(api)}, the cluster has {expected}"
    b.wait_for(lambda d: all(b.find_all(f"table#workers tr[data-worker='{h}']") for h in expected),
               f"a row in table#workers for each of {expected}")
    b.shot("cluster")

    rows = b.driver.execute_script("""
        return Array.from(document.querySelectorAll('table#workers tr[data-worker]')).map(r => {
            const cell = c => { const e = r.querySelector('td.' + c); return e ? e.textContent.trim() : null; };
            return {worker: r.dataset.worker, state: cell('state'), address: cell('address'), labels: cell('labels'),
                    last_probe: cell('last-probe'), availability: cell('availability')};
        });""")
    shown = {r["worker"]: r for r in rows}
    assert sorted(shown) == expected, f"table#workers rows {sorted(shown)} (expected exactly {expected})"
    for hostname in expected:
        row, worker = shown[hostname], api[hostname]
        assert None not in row.values(), f"{hostname}: a cell is missing: {describe(row)}"
        assert worker.state.lower() in row["state"].lower(), f"{hostname}: state {row['state']!r}, API {worker.state!r}"
        assert worker.ssh_address.split(":")[0].split("@")[-1] in row["address"], \
            f"{hostname}: address {row['address']!r}, API {worker.ssh_address!r}"
        assert worker.availability in row["availability"], \
            f"{hostname}: availability {row['availability']!r}, API {worker.availability!r}"
        assert row["last_probe"], f"{hostname}: empty td.last-probe"

    devices = b.driver.execute_script("""
        return Array.from(document.querySelectorAll('div.device')).map(d => {
            const text = c => { const e = d.querySelector(c); return e ? e.textContent.trim() : null; };
            return {worker: d.dataset.worker, device: d.dataset.device, kind: text('.device-kind'),
                    model: text('.device-model'), memory: text('.device-memory')};
        });""")
    by_key = {(d["worker"], d["device"]): d for d in devices}
    wanted = {(h, str(dev.index)): dev for h in expected for dev in api[h].devices}
    assert wanted, "the API lists no device on the local cluster's workers"
    assert set(by_key) == set(wanted), f"div.device (worker, index) {sorted(by_key)}, API {sorted(wanted)}"
    bars = b.share_bars()
    for key, dev in wanted.items():
        shown_dev = by_key[key]
        kind = "GPU" if dev.is_gpu else "CPU (not a GPU)"
        assert shown_dev["kind"] == kind, f"{key}: .device-kind {shown_dev['kind']!r}, expected {kind!r}"
        assert shown_dev["model"] and dev.name in shown_dev["model"], \
            f"{key}: .device-model {shown_dev['model']!r}, API {dev.name!r}"
        memory = shown_memory(shown_dev["memory"] or "")
        assert memory is not None and abs(memory - dev.memory_bytes) <= 0.1 * dev.memory_bytes, \
            f"{key}: .device-memory {shown_dev['memory']!r}, API {dev.memory_bytes} bytes"
        bar = bars[key]
        assert bar["total"] == 1.0 and 0.0 <= bar["used"] <= 1.0, f"{key}: share-bar {bar}"

    queue_length = b.text("span#queue-length")
    assert queue_length is not None and queue_length.isdigit(), f"span#queue-length says {queue_length!r}"
    assert b.find_all("table#queue-head"), "no table#queue-head"
    overflow = b.horizontal_overflow()
    assert overflow["scroll"] <= overflow["inner"], f"the cluster page scrolls sideways at 1280 px: {overflow}"
