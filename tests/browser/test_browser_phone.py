"""The dashboard on a phone-width screen (390x844, emulated as a mobile device: the page's viewport meta decides
its layout width, as on a phone): the cluster, jobs and job pages do not scroll sideways, even with a job whose
log has a long unbroken line (tables and the log scroll inside their own boxes). Screenshots of each, and of the
same pages at 1280x900, are saved for a person to look at."""

from __future__ import annotations

import uuid

from browser_tools import DESKTOP, JOB_TIMEOUT, PHONE, describe

LONG = 400  # characters of one unbroken log line


def long_line(tag, width):
    print(f"{tag} " + "x" * width, flush=True)
    print(f"{tag} " + " ".join(["word"] * (width // 5)), flush=True)
    return width


def assert_fits(b, what: str) -> None:
    widths = b.horizontal_overflow()
    assert widths["inner"] <= PHONE[0] + 10, \
        f"{what}: the layout viewport is {widths['inner']} px wide on a {PHONE[0]} px phone (a phone zooms out " \
        f"to fit content wider than the screen; or the page has no viewport meta): {describe(widths)}"
    assert widths["scroll"] <= widths["inner"], f"{what} scrolls sideways at {PHONE[0]} px: {describe(widths)}"


def test_the_pages_fit_a_phone_width_screen(browser, dashboard, admin_client):
    b = browser
    b.sign_in(dashboard.admin_token)
    tag = f"bp-{uuid.uuid4().hex[:8]}"
    name = f"browser-phone-{tag}"
    job = admin_client.submit_call(long_line, (tag, LONG), gpu=0.25, duration=300, name=name).job_id
    link = f"/jobs/{job}"
    b.open(link, "job")
    b.wait_for(lambda d: b.job_state() == "COMPLETED" and len([t for t in b.log_lines() if t.startswith(tag)]) == 2,
               f"{job} COMPLETED with its 2 log lines", JOB_TIMEOUT)
    pages = (("cluster", "/cluster"), ("jobs", f"/jobs?name={name}"), ("job", link))
    for page, path in pages:
        b.open(path, page)
        b.shot(f"{page}-{DESKTOP[0]}")
        if page == "job":
            b.shot(f"{page}-{DESKTOP[0]}-log", at="pre#log")

    b.viewport(*PHONE, mobile=True)
    for page, path in pages:
        b.open(path, page)
        if page == "jobs":
            b.wait_for(lambda d: b.find_all(f"table#jobs tr[data-job-id='{job}']"), f"{job}'s row")
        if page == "job":
            b.wait_for(lambda d: len(b.log_lines()) >= 2, "the replayed log")
        assert_fits(b, path)
        b.shot(f"{page}-{PHONE[0]}")
        if page == "job":
            b.shot(f"{page}-{PHONE[0]}-log", at="pre#log")
            assert_fits(b, f"{path} scrolled to its log")
