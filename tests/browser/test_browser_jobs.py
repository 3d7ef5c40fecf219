"""Jobs in a real browser, submitted through the SDK to the local cluster's supervisor:

* a job appears on the jobs page (filtered by its name) and links to its page, where its log lines stream into
  ``pre#log`` while it runs (without a reload, each line once), the log follows the end until the reader scrolls
  up, and its state reaches COMPLETED; a reload replays the whole log;
* a running job is cancelled from its page (a POST without the CSRF token is refused first; the confirmation is
  declined once, then accepted): the page says CANCELLED, the API agrees, and on the cluster page its share of the
  device is freed and its link gone."""

from __future__ import annotations

import uuid

from browser_tools import JOB_TIMEOUT, describe

BURST = 60  # lines printed at once: more than pre#log shows, so that it has to scroll
SLOW = 10  # then one line every PAUSE seconds
PAUSE = 1.5
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def talk_slowly(tag, burst, slow, pause):
    import time

    for i in range(burst):
        print(f"{tag} burst {i:03d}", flush=True)
    for i in range(slow):
        time.sleep(pause)
        print(f"{tag} slow {i:03d}", flush=True)
    return "done"


def sleeper(seconds):
    import time

    print("sleeping", seconds, flush=True)
    time.sleep(seconds)
    return seconds


def expected_lines(tag: str) -> list[str]:
    return [f"{tag} burst {i:03d}" for i in range(BURST)] + [f"{tag} slow {i:03d}" for i in range(SLOW)]


def ours(b, tag: str) -> list[str]:
    return [line for line in b.log_lines() if line.startswith(tag)]


def log_box(b) -> dict:
    return b.driver.execute_script(
        "const p = document.querySelector('pre#log');"
        "return {top: p.scrollTop, height: p.clientHeight, scroll: p.scrollHeight, follow: p.dataset.follow};")


def at_bottom(box: dict) -> bool:
    return box["top"] + box["height"] >= box["scroll"] - 4


def test_a_job_appears_its_log_streams_in_and_it_completes(browser, dashboard, admin_client):
    b = browser
    whoami = b.sign_in(dashboard.admin_token)
    tag = f"bl-{uuid.uuid4().hex[:8]}"
    name = f"browser-log-{tag}"
    ref = admin_client.submit_call(talk_slowly, (tag, BURST, SLOW, PAUSE), gpu=0.25, duration=300, name=name)
    job = ref.job_id
    try:
        # The jobs page, filtered by the job's name: its row, linking to its page.
        b.open(f"/jobs?name={name}", "jobs")
        row = f"table#jobs tr[data-job-id='{job}']"
        b.wait_for(lambda d: b.find_all(row), f"{row} on /jobs?name={name}")
        b.shot("jobs-page")
        cells = {c: b.text(f"{row} td.{c}") for c in ("state", "user", "name")}
        assert cells["name"] == name and cells["user"] == whoami, describe(cells)
        assert cells["state"] in ("QUEUED", "SCHEDULING", "CREATING_PARTITION", "RUNNING", "COMPLETED"), cells
        assert b.text("span#job-count") == "1", f"span#job-count {b.text('span#job-count')!r} for a unique name"
        b.click(f"{row} a.job-link[href='/jobs/{job}']")
        b.wait_for(lambda d: b.path == f"/jobs/{job}" and b.find_all("main#page-job"), f"the page of {job}")
        b.driver.execute_script("window.__notReloaded = true;")

        # Lines arrive while it runs: some are there while RUNNING, and more come without a reload.
        b.wait_for(lambda d: b.job_state() == "RUNNING" and ours(b, tag), "RUNNING with its first log lines",
                   JOB_TIMEOUT)
        first = len(ours(b, tag))
        b.shot("log-streaming", at="pre#log")
        assert first < BURST + SLOW, f"all {first} lines were there at once: nothing streamed ({b.job_state()})"
        b.wait_for(lambda d: len(ours(b, tag)) > first, f"more than {first} lines, while the page stays open", 60)

        # The log follows the end; scrolled up by the reader, it stops following (and stays where it was).
        box = log_box(b)
        assert box["scroll"] > box["height"], f"pre#log does not scroll on its own with {BURST}+ lines: {box}"
        assert box["follow"] == "true", f"pre#log data-follow {box['follow']!r} before the reader scrolled"
        # (the job prints for SLOW * PAUSE = 15 s: these checks take a second or two of it)
        seen = len(ours(b, tag))
        assert seen < BURST + SLOW - 2, f"the job printed its last lines before the follow checks ({seen})"
        b.wait_for(lambda d: len(ours(b, tag)) > seen, "a line to arrive while following", 60)
        box = log_box(b)
        assert at_bottom(box), f"pre#log did not follow a new line to the end: {box}"
        b.driver.execute_script("document.querySelector('pre#log').scrollTop = 0;")
        b.wait_for(lambda d: log_box(b)["follow"] == "false", "data-follow=false after scrolling up", 15)
        seen = len(ours(b, tag))
        assert seen < BURST + SLOW, f"the job printed its last line before the reader scrolled up ({seen})"
        b.wait_for(lambda d: len(ours(b, tag)) > seen, "a line to arrive after scrolling up", 60)
        box = log_box(b)
        assert box["top"] <= 4, f"pre#log scrolled away from where the reader was: {box}"
        b.shot("log-scrolled-up", at="pre#log")

        b.wait_for(lambda d: b.job_state() in TERMINAL, "a terminal state", JOB_TIMEOUT)
        assert b.job_state() == "COMPLETED", f"span#job-state {b.job_state()!r}; API: {admin_client.status(job)}"
        b.wait_for(lambda d: len(ours(b, tag)) >= BURST + SLOW, f"all {BURST + SLOW} lines", 30)
        assert ours(b, tag) == expected_lines(tag), f"the log (in order, each once):\n{describe(ours(b, tag))}"
        assert b.driver.execute_script("return window.__notReloaded === true;"), "the page was reloaded"
        b.driver.execute_script("document.querySelector('pre#log').scrollTop = 1e9;")
        b.shot("completed", at="pre#log")
        phases = set(b.driver.execute_script(  # in one script: the details re-render when the teardown lands
            "return [...document.querySelectorAll('ol#timeline li[data-phase]')].map(li => li.dataset.phase);"))
        assert {"queued", "running"} <= phases, f"ol#timeline phases {sorted(phases)}"
        assert b.find_all("dl#job-fields dd#gpu-seconds"), "no dd#gpu-seconds in dl#job-fields"

        # A reload replays the whole log from the start.
        b.driver.refresh()
        b.wait_for(lambda d: b.find_all("main#page-job") and len(ours(b, tag)) >= BURST + SLOW,
                   "the whole log replayed after a reload")
        assert ours(b, tag) == expected_lines(tag), describe(ours(b, tag))
        assert b.job_state() == "COMPLETED"
        assert admin_client.status(job).state == "COMPLETED"

        # Back on the jobs page, its row says COMPLETED.
        b.open(f"/jobs?name={name}", "jobs")
        b.wait_for(lambda d: b.text(f"{row} td.state") == "COMPLETED", f"{row} td.state COMPLETED")
        b.shot("jobs-page-completed")
    finally:
        if admin_client.status(job).state not in TERMINAL:
            admin_client.cancel(job)


def test_a_running_job_is_cancelled_from_its_page_and_its_share_freed(browser, dashboard, admin_client):
    b = browser
    b.sign_in(dashboard.admin_token)
    name = f"browser-cancel-{uuid.uuid4().hex[:8]}"
    ref = admin_client.submit_call(sleeper, (600,), gpu=0.25, duration=900, name=name)
    job = ref.job_id
    link = f"/jobs/{job}"
    try:
        b.open(link, "job")
        b.wait_for(lambda d: b.job_state() == "RUNNING", "span#job-state RUNNING", JOB_TIMEOUT)

        # On the cluster page: the job's link on a device, whose used share counts it.
        b.open("/cluster", "cluster")
        b.wait_for(lambda d: any(link in dev["jobs"] for dev in b.share_bars().values()),
                   f"a.job-link[href='{link}'] on a device of the cluster page (it refreshes itself)", JOB_TIMEOUT)
        b.shot("cluster-running")
        (device, running), = [(k, v) for k, v in b.share_bars().items() if link in v["jobs"]]
        assert running["used"] >= 0.25 - 1e-9, f"{device}: share-bar data-used {running['used']} with {job} on it"
        assert admin_client.status(job).state == "RUNNING", admin_client.status(job)

        b.open(link, "job")
        assert b.job_state() == "RUNNING", b.job_state()
        assert b.find_all("button#cancel"), "no button#cancel for the admin on a running job"

        # Without the CSRF token (or with a wrong one) the cancel POST is refused, and the job runs on.
        for headers in ({}, {"X-CSRF-Token": "not-the-token"}):
            answer = b.fetch("POST", f"{link}/cancel", headers)
            assert answer["status"] == 403, f"POST {link}/cancel with headers {headers}: {answer.get('status')}"
        assert admin_client.status(job).state == "RUNNING", "a POST without the CSRF token cancelled the job"

        # The confirmation, declined: nothing is sent (the page did not even navigate); accepted: the job is
        # cancelled.
        b.driver.execute_script("window.__declined = true;")
        b.click("button#cancel")
        alert = b.wait_for(lambda d: d.switch_to.alert, "the confirmation dialog")
        assert alert.text == f"Cancel job {job}?", f"the confirmation says {alert.text!r}"
        alert.dismiss()
        assert b.driver.execute_script("return window.__declined === true;"), "declining the confirmation sent it"
        assert b.job_state() == "RUNNING" and admin_client.status(job).state == "RUNNING"
        b.click("button#cancel")
        b.wait_for(lambda d: d.switch_to.alert, "the confirmation dialog").accept()
        b.wait_for(lambda d: b.job_state() == "CANCELLED", "span#job-state CANCELLED", JOB_TIMEOUT)
        b.shot("job-cancelled")
        info = admin_client.status(job)
        assert info.state == "CANCELLED", f"the page says CANCELLED, the API {info.state} ({info.reason})"
        assert not b.find_all("button#cancel") or not b.find("button#cancel").is_displayed(), \
            "button#cancel still shown on a cancelled job"

        # Its share is freed on the cluster page (which refreshes itself), and its link is gone.
        b.open("/cluster", "cluster")
        b.wait_for(lambda d: link not in b.share_bars()[device]["jobs"]
                   and abs(b.share_bars()[device]["used"] - (running["used"] - 0.25)) < 1e-6,
                   f"{device}: share-bar data-used back to {running['used'] - 0.25:g} and no link to {job}", 60)
        b.shot("cluster-freed")
        api = {(w.hostname, str(d.index)): d.used_share for w in admin_client.list_workers() for d in w.devices}
        shown = b.share_bars()
        assert abs(shown[device]["used"] - api[device]) < 1e-6, f"{device}: page {shown[device]}, API {api[device]}"
    finally:
        if admin_client.status(job).state not in TERMINAL:
            admin_client.cancel(job)
