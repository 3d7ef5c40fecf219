"""Users are kept to their own jobs in the browser: another user's job URL (and an unknown one) is the not-found
page, the jobs list leaves it out, its event stream and its cancel are refused; its owner, signing in from that
same URL, lands on it and may cancel it. Both users are non-admin tokens made through the admin client, as
`cumulus token create NAME` does."""

from __future__ import annotations

import uuid

from browser_tools import JOB_TIMEOUT

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def sleeper(seconds):
    import time

    print("sleeping", seconds, flush=True)
    time.sleep(seconds)
    return seconds


def test_another_users_job_url_is_refused_and_its_owner_sees_it(browser, dashboard, admin_client, users):
    b = browser
    alice, alice_token, alice_client = users("alice")
    bob, bob_token, _ = users("bob")
    name = f"browser-private-{uuid.uuid4().hex[:8]}"
    job = alice_client.submit_call(sleeper, (600,), gpu=0.1, duration=900, name=name).job_id
    link = f"/jobs/{job}"
    try:
        b.sign_in(bob_token, bob)
        assert "(admin)" not in b.header_identity(), f"the header says {b.header_identity()!r} for a non-admin"

        b.open(link)
        b.wait_for(lambda d: b.find_all("p#not-found"), f"p#not-found at alice's {link} signed in as bob")
        b.shot("not-yours")
        text = b.text("p#not-found")
        assert text == f"no job {job} (or it is not yours)", f"p#not-found says {text!r}"
        assert not b.find_all("main#page-job") and not b.find_all("pre#log"), "alice's job page shown to bob"
        assert name not in b.driver.page_source, "the refusal shows alice's job's name"
        assert b.fetch("GET", link)["status"] == 404

        unknown = f"/jobs/{uuid.uuid4().hex}"
        b.open(unknown)
        b.wait_for(lambda d: b.find_all("p#not-found"), f"p#not-found at the unknown {unknown}")
        assert b.fetch("GET", unknown)["status"] == 404

        # Nor in bob's jobs list (even asked for by name), nor its stream, nor its cancel with bob's CSRF token.
        b.open(f"/jobs?name={name}", "jobs")
        assert not b.find_all(f"table#jobs tr[data-job-id='{job}']"), "alice's job listed for bob"
        events = b.fetch("GET", f"{link}/events", {"Accept": "text/event-stream"}, read_body=False)
        assert events["status"] in (403, 404), f"GET {link}/events as bob: {events}"
        cancel = b.fetch("POST", f"{link}/cancel", {"X-CSRF-Token": b.csrf_token()})
        assert cancel["status"] in (403, 404), f"POST {link}/cancel as bob with his CSRF token: {cancel['status']}"
        assert alice_client.status(job).state not in TERMINAL, alice_client.status(job)

        # Alice, signing in from that same URL, lands on her job, with its Cancel button.
        b.driver.delete_all_cookies()
        b.open(link)
        b.wait_for(lambda d: b.path.startswith("/login"), f"{link} to send a signed-out browser to /login")
        assert b.path.startswith("/login?next="), b.path
        b.sign_in(alice_token, alice)
        b.wait_for(lambda d: b.path == link and b.find_all("main#page-job"), f"{link} after alice signed in")
        b.wait_for(lambda d: b.job_state() in ("QUEUED", "SCHEDULING", "CREATING_PARTITION", "RUNNING"),
                   "span#job-state of a live job", JOB_TIMEOUT)
        assert b.find_all("button#cancel"), "no button#cancel for the job's owner"
        b.shot("owner")
        b.open(f"/jobs?name={name}", "jobs")
        assert b.find_all(f"table#jobs tr[data-job-id='{job}']"), "alice's own job not in her jobs list"
    finally:
        if admin_client.status(job).state not in TERMINAL:
            admin_client.cancel(job)
