"""The dashboard's pages against the contract (/work/notes/dashboard.md), on the real supervisor (in-memory fakes)
and its real HTTP port: the cluster (workers, devices with an honest kind, share bars with their jobs, the queue),
the jobs (a user's own only, filters, paging over many jobs), a job (fields, timeline, teardown, 404 for another
user's), Cancel by its owner, usage numbers equal to ``api.usage``, and escaping of what users write."""

from __future__ import annotations

import time

import trio

from cumulus.identity import Caller
from cumulus.jobs import JobState
from tests.dashboard_helpers import dashboard, parse, wait_until
from tests.test_job_lifecycle import spec

ALICE, BOB, ROOT = Caller("alice"), Caller("bob"), Caller("admin", admin=True)
PHASES = ["queued", "placed", "partition", "upload", "service", "running", "teardown"]


def job_ids(html: str) -> list[str]:
    return [row.attrs["data-job-id"] for row in parse(html).by_id("jobs").find_all("tr", data_job_id=None)]


async def test_the_cluster_page_shows_workers_devices_shares_and_the_queue():
    async with dashboard(workers=2, **{"jobs.max_queue": 10}) as d:
        running = await d.api.submit(spec(gpu=1, runtime=60, name="big"), caller=ALICE)
        other = await d.api.submit(spec(gpu=1, runtime=60), caller=BOB)
        await wait_until(lambda: running.state is JobState.RUNNING and other.state is JobState.RUNNING)
        waiting = await d.api.submit(spec(gpu=1, runtime=60), caller=ALICE)
        await wait_until(lambda: waiting.queue_position > 0)
        alice = await d.signed_in("alice")
        page = parse((await alice.get("/cluster")).text)
        assert page.by_id("page-cluster")
        rows = page.by_id("workers").find_all("tr", data_worker=None)
        assert [r.attrs["data-worker"] for r in rows] == ["fw1", "fw2"]
        for row in rows:
            assert row.find_all("td", class_="state")[0].text == "ready"
            assert row.find_all("td", class_="address")[0].text == "(admins only)"  # ListWorkers hides it too
            assert row.find_all("td", class_="last-probe")[0].text == "ok"
            assert row.find_all("td", class_="availability")[0].text == "active"
        devices = page.find_all("div", class_="device")
        assert {(e.attrs["data-worker"], e.attrs["data-device"]) for e in devices} == {("fw1", "0"), ("fw2", "0")}
        mine = running.placement.worker
        for device in devices:
            assert device.find_all(class_="device-kind")[0].text == "GPU"
            assert device.find_all(class_="device-model")[0].text == "Fake GPU 0"
            assert device.find_all(class_="device-memory")[0].text == "16 GiB"
            bar = device.find_all("div", class_="share-bar")[0]
            assert (float(bar.attrs["data-used"]), float(bar.attrs["data-total"])) == (1.0, 1.0)
            links = [a.attrs["href"] for a in device.find_all("a", class_="job-link")]
            # alice sees her job on its device; bob's is an anonymous share
            assert links == ([f"/jobs/{running.job_id}"] if device.attrs["data-worker"] == mine else [])
        assert page.by_id("queue-length").text == "1"
        assert [r.attrs["data-job-id"] for r in page.by_id("queue-head").find_all("tr", data_job_id=None)] == [
            waiting.job_id]
        live = page.by_id("cluster-live")
        assert live.attrs["hx-get"] == "/cluster/fragment" and live.attrs["hx-trigger"] == "every 2s"
        admin = await d.signed_in("admin")
        fragment = parse((await admin.get("/cluster/fragment")).text)
        assert fragment.find_all("td", class_="address")[0].text.startswith("10.213.0.")
        assert len(fragment.find_all("a", class_="job-link")) == 3  # both running jobs and the queued one
        await d.api.cancel(running.job_id, caller=ALICE)
        await wait_until(lambda: waiting.state is JobState.RUNNING)  # the freed device went to the queued job
        fragment = parse((await alice.get("/cluster/fragment")).text)
        links = [a.attrs["href"] for a in fragment.find_all("a", class_="job-link")]
        assert links == [f"/jobs/{waiting.job_id}"] and fragment.by_id("queue-length").text == "0"
        await d.api.cancel(waiting.job_id, caller=ALICE)
        fragment = parse((await alice.get("/cluster/fragment")).text)
        freed = fragment.find_all("div", class_="device", data_worker=waiting.placement.worker)[0]
        assert float(freed.find_all(class_="share-bar")[0].attrs["data-used"]) == 0.0
        assert freed.find_all("a", class_="job-link") == []
        for client in (alice, admin):
            await client.aclose()


async def test_a_device_that_is_not_a_gpu_says_so():
    async with dashboard(gpu=False, **{"cluster.allow_non_gpu_devices": True}) as d:
        client = await d.signed_in("alice")
        page = parse((await client.get("/cluster")).text)
        kinds = {e.text for e in page.find_all(class_="device-kind")}
        assert kinds == {"CPU (not a GPU)"}
        await client.aclose()


async def test_a_user_sees_only_their_own_jobs_and_an_admin_all():
    async with dashboard() as d:
        a = await d.api.submit(spec(runtime=0.1, name="alices"), caller=ALICE)
        b = await d.api.submit(spec(runtime=0.1, name="bobs"), caller=BOB)
        alice, bob, admin = [await d.signed_in(u) for u in ("alice", "bob", "admin")]
        assert job_ids((await alice.get("/jobs")).text) == [a.job_id]
        assert job_ids((await alice.get("/jobs?user=bob")).text) == [a.job_id]  # the user filter is for admins
        assert job_ids((await bob.get("/jobs")).text) == [b.job_id]
        assert sorted(job_ids((await admin.get("/jobs")).text)) == sorted([a.job_id, b.job_id])
        assert job_ids((await admin.get("/jobs?user=bob")).text) == [b.job_id]
        assert parse((await alice.get("/jobs")).text).by_id("job-filters").find_all(name="user") == []
        # Another user's job, and an unknown id: the same 404, on the page, its fragment, its stream and Cancel.
        for path in (f"/jobs/{b.job_id}", "/jobs/unit-000000000000"):
            reply = await alice.get(path)
            assert reply.status_code == 404
            assert parse(reply.text).by_id("not-found").text == f"no job {path[6:]} (or it is not yours)"
            assert (await alice.get(path + "/fragment")).status_code == 404
            assert (await alice.get(path + "/events")).status_code == 404
        csrf = parse((await alice.get("/jobs")).text).find_all("meta", name="csrf-token")[0].attrs["content"]
        assert (await alice.post(f"/jobs/{b.job_id}/cancel", data={"csrf": csrf})).status_code == 404
        assert b.state is not JobState.CANCELLED
        assert (await bob.get(f"/jobs/{b.job_id}")).status_code == 200
        assert (await admin.get(f"/jobs/{a.job_id}")).status_code == 200
        for client in (alice, bob, admin):
            await client.aclose()


async def test_jobs_are_paged_newest_first_and_filtered():
    async with dashboard(**{"jobs.max_queue": 200}) as d:
        records = []
        for i in range(120):
            records.append(await d.api.submit(spec(gpu=0.01, runtime=0.05, name=f"sweep-{i % 3}"),
                                              caller=ALICE if i % 4 else BOB))
        await wait_until(lambda: all(r.torn_down.is_set() for r in records), timeout=120)
        mine = [r for i, r in enumerate(records) if i % 4]
        alice = await d.signed_in("alice")
        newest_first = [r.job_id for r in sorted(mine, key=lambda r: (r.submitted_at, r.job_id), reverse=True)]
        seen: list[str] = []
        url = "/jobs?per_page=25"
        while url:
            page = parse((await alice.get(url)).text)
            assert page.by_id("job-count").text == str(len(mine))
            seen += [r.attrs["data-job-id"] for r in page.by_id("jobs").find_all("tr", data_job_id=None)]
            assert bool(page.find_all(id="prev-page")) is (len(seen) > 25)
            nexts = page.find_all("a", id="next-page")
            url = nexts[0].attrs["href"] if nexts else ""
        assert seen == newest_first  # every job once, newest first, over 4 pages
        page = parse((await alice.get("/jobs?per_page=25&page=2&name=sweep-1")).text)
        named = [r for r in mine if r.spec.name == "sweep-1"]
        assert page.by_id("job-count").text == str(len(named))
        assert "name=sweep-1" in page.by_id("prev-page").attrs["href"]  # paging keeps the filters
        rows = page.by_id("jobs").find_all("tr", data_job_id=None)
        assert all(r.find_all("td", class_="name")[0].text == "sweep-1" for r in rows) and rows
        worker = mine[0].placement.worker
        page = parse((await alice.get(f"/jobs?worker={worker}&per_page=500")).text)
        assert int(page.by_id("job-count").text) == sum(r.placement.worker == worker for r in mine)
        for row in page.by_id("jobs").find_all("tr", data_job_id=None):
            assert row.find_all("td", class_="worker")[0].text == worker
            assert row.find_all("td", class_="state")[0].text == "COMPLETED"
            assert row.find_all("td", class_="user")[0].text == "alice"
            assert row.find_all("a", class_="job-link")[0].attrs["href"] == f"/jobs/{row.attrs['data-job-id']}"
        assert parse((await alice.get("/jobs?state=RUNNING")).text).by_id("job-count").text == "0"
        assert parse((await alice.get("/jobs?state=completed")).text).by_id("job-count").text == str(len(mine))
        page = parse((await alice.get("/jobs?page=99&per_page=50")).text)  # past the end: the last page
        assert len(page.by_id("jobs").find_all("tr", data_job_id=None)) == len(mine) - 50
        await alice.aclose()


async def test_the_job_page_shows_its_life_and_its_owner_can_cancel_it():
    async with dashboard() as d:
        done = await d.api.submit(spec(runtime=0.2), caller=ALICE)
        await wait_until(done.torn_down.is_set)
        alice = await d.signed_in("alice")
        page = parse((await alice.get(f"/jobs/{done.job_id}")).text)
        assert page.by_id("page-job") and page.by_id("job-state").text == "COMPLETED"
        assert [li.attrs["data-phase"] for li in page.by_id("timeline").find_all("li")] == PHASES
        assert all("done" in li.attrs["class"].split() for li in page.by_id("timeline").find_all("li"))
        timeline_times = [li.find_all("time") for li in page.by_id("timeline").find_all("li")]
        assert all(timeline_times)  # every phase of a completed job has its time (service: its history event)
        fields = page.by_id("job-fields")
        assert fields.find_all(id="placement")[0].text.startswith(done.placement.worker + " device 0, share 0.5")
        assert fields.find_all(id="attempts")[0].text == "1 of at most 1"
        report = await d.api.usage(done.submitted_at, "job", caller=ALICE)
        assert float(page.by_id("gpu-seconds").attrs["data-value"]) == report.rows[0].gpu_seconds > 0
        assert "Clean" in page.by_id("teardown-report").text
        assert page.find_all(id="cancel") == []  # nothing to cancel once it ended
        assert page.by_id("log").attrs["data-follow"] == "true"
        assert page.by_id("page-job").attrs["data-events"] == f"/jobs/{done.job_id}/events"
        running = await d.api.submit(spec(runtime=60), caller=ALICE)
        await wait_until(lambda: running.state is JobState.RUNNING)
        page = parse((await alice.get(f"/jobs/{running.job_id}")).text)
        assert page.by_id("job-state").text == "RUNNING" and page.by_id("cancel").attrs["type"] == "submit"
        await trio.sleep(0.3)
        assert float(parse((await alice.get(f"/jobs/{running.job_id}/fragment")).text).by_id(
            "gpu-seconds").attrs["data-value"]) > 0  # the running attempt counts as it goes
        form = page.by_id("cancel-form")
        assert form.attrs["action"] == f"/jobs/{running.job_id}/cancel"
        reply = await alice.post(form.attrs["action"], data={"csrf": form.find_all(name="csrf")[0].attrs["value"]})
        assert reply.status_code == 303 and reply.headers["location"] == f"/jobs/{running.job_id}"
        assert running.state is JobState.CANCELLED and running.torn_down.is_set()
        page = parse((await alice.get(reply.headers["location"])).text)
        assert page.by_id("job-state").text == "CANCELLED" and page.find_all(id="cancel") == []
        assert page.by_id("failure-reason").text != "—"
        await alice.aclose()


async def test_usage_numbers_are_those_of_the_api():
    async with dashboard() as d:
        jobs = [await d.api.submit(spec(runtime=0.3 * (i + 1)), caller=ALICE if i % 2 else BOB) for i in range(4)]
        await wait_until(lambda: all(r.torn_down.is_set() for r in jobs))
        report = await d.api.usage(None, "user", caller=ROOT)
        admin, alice = await d.signed_in("admin"), await d.signed_in("alice")
        page = parse((await admin.get("/usage")).text)
        rows = {r.attrs["data-user"]: r for r in page.by_id("usage").find_all("tr", data_user=None)}
        assert set(rows) == {"alice", "bob"} == {row.key for row in report.rows}
        for row in report.rows:
            shown = rows[row.key]
            assert float(shown.attrs["data-gpu-seconds"]) == row.gpu_seconds > 0
            assert shown.find_all(class_="gpu-hours")[0].text == f"{row.gpu_seconds / 3600:.4f}"
            assert shown.find_all(class_="jobs")[0].text == str(row.jobs) == "2"
        chart = page.by_id("usage-chart")
        assert chart.tag == "svg"
        bars = chart.find_all("rect", class_="bar")
        today = time.strftime("%Y-%m-%d", time.gmtime())
        assert {b.attrs["data-day"] for b in bars} == {today}  # every attempt ended today
        for row in report.rows:
            [bar] = [b for b in bars if b.attrs["data-user"] == row.key]
            assert abs(float(bar.attrs["data-hours"]) - row.gpu_seconds / 3600) < 1e-9
        mine = parse((await alice.get("/usage")).text)
        assert [r.attrs["data-user"] for r in mine.by_id("usage").find_all("tr", data_user=None)] == ["alice"]
        for client in (admin, alice):
            await client.aclose()


async def test_what_users_write_is_escaped():
    async with dashboard() as d:
        name = '<script>alert("x")</script><img src=x onerror=alert(1)>'
        record = await d.api.submit(spec(runtime=0.1, name=name), caller=ALICE)
        await wait_until(record.torn_down.is_set)
        alice = await d.signed_in("alice")
        for path in ("/jobs", f"/jobs/{record.job_id}", f"/jobs?name={name}"):
            html = (await alice.get(path)).text
            assert "<script>alert" not in html and "<img src=x" not in html, path
            assert "&lt;script&gt;alert(" in html, path
        page = parse((await alice.get("/jobs")).text)
        assert page.by_id("jobs").find_all("td", class_="name")[0].text == name  # shown as the text it is
        await alice.aclose()


async def test_the_job_page_pauses_and_resumes_its_job():
    async with dashboard() as d:
        running = await d.api.submit(spec(env={"FAKE_STEPS": "600"}), caller=ALICE)  # a loop that can pause
        await wait_until(lambda: running.state is JobState.RUNNING)
        alice = await d.signed_in("alice")
        page = parse((await alice.get(f"/jobs/{running.job_id}")).text)
        assert page.find_all(id="resume") == []
        form = page.by_id("pause-form")
        assert form.attrs["action"] == f"/jobs/{running.job_id}/pause"
        csrf = form.find_all(name="csrf")[0].attrs["value"]
        reply = await alice.post(form.attrs["action"], data={"csrf": csrf})
        assert reply.status_code == 303 and reply.headers["location"] == f"/jobs/{running.job_id}"
        await wait_until(lambda: running.state is JobState.PAUSED)  # at its next step
        page = parse((await alice.get(reply.headers["location"])).text)
        assert page.by_id("job-state").text == "PAUSED" and page.find_all(id="pause") == []
        assert page.by_id("cancel").attrs["type"] == "submit"  # a paused job can still be cancelled
        form = page.by_id("resume-form")
        reply = await alice.post(form.attrs["action"], data={"csrf": csrf})
        assert reply.status_code == 303
        assert running.state is not JobState.PAUSED
        # without the CSRF token nothing happens
        assert (await alice.post(f"/jobs/{running.job_id}/pause", data={})).status_code == 403
        assert running.state is not JobState.PAUSED
        await d.api.cancel(running.job_id, caller=ALICE)
        await alice.aclose()


async def test_a_class_instance_shows_its_calls_on_the_jobs_and_job_pages():
    from cumulus.calls import CallKey, MethodCall

    async with dashboard() as d:
        record = await d.api.submit(spec(runtime=600, instance=True, max_restarts=2), caller=ALICE)
        for i, method in enumerate(["predict"] * 3 + ["fail"]):
            waiter = await d.api.send_call(MethodCall(record.job_id, method, b"x", CallKey(1, i)), caller=ALICE)
            await waiter()
        alice = await d.signed_in("alice")
        row = parse((await alice.get("/jobs")).text).by_id("jobs").find_all("tr", data_job_id=record.job_id)[0]
        assert "instance · 4 calls" in row.text
        fields = parse((await alice.get(f"/jobs/{record.job_id}")).text).by_id("job-fields")
        assert fields.find_all(id="kind")[0].text.startswith("class instance (max_restarts 2)")
        assert fields.find_all(id="attempts")[0].text == "1 of at most 3"
        calls = fields.find_all(id="calls")[0]
        assert (calls.attrs["data-calls"], calls.attrs["data-failed"]) == ("4", "1")
        rows = {tr.attrs["data-method"]: [td.text for td in tr.find_all("td")]
                for tr in calls.find_all("tr", data_method=None)}
        assert [rows["predict"][1], rows["fail"][1], rows["fail"][2]] == ["3", "1", "1"]
        await d.api.cancel(record.job_id)
        await alice.aclose()
