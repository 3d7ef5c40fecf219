"""The dashboard's sign-in, sessions and request protections, on the real supervisor (in-memory fakes) and its
real HTTP port (hypercorn, TLS): a token signs in and sets a HttpOnly, Secure, SameSite=Strict cookie; a wrong token
is a 401; a revoked token ends its sessions; every POST needs the session's CSRF token and a same-origin browser;
the security headers are on every answer; tokens never appear in a URL or the log; plain HTTP drops Secure and
says so in the log."""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest

from cumulus.identity import Caller
from cumulus.jobs import JobState
from tests.dashboard_helpers import dashboard, parse
from tests.test_job_lifecycle import spec

ALICE = Caller("alice")


def cookie_header(reply) -> str:
    [header] = [v for k, v in reply.headers.multi_items() if k == "set-cookie"]
    return header


async def test_a_token_signs_in_with_a_strict_httponly_secure_cookie():
    async with dashboard() as d, d.client() as client:
        form = parse((await client.get("/login")).text)
        login = form.by_id("login")
        assert (login.attrs["method"], login.attrs["action"]) == ("post", "/login")
        assert login.find_all("input", name="token", type="password")
        assert form.by_id("sign-in").attrs["type"] == "submit"
        reply = await client.post("/login", data={"token": d.tokens["alice"], "next": "/jobs?state=RUNNING"},
                                  headers={"origin": d.url})
        assert reply.status_code == 303 and reply.headers["location"] == "/jobs?state=RUNNING"
        flags = [part.strip().lower() for part in cookie_header(reply).split(";")]
        assert flags[0].startswith("cumulus_session=") and len(flags[0]) > 40
        assert {"httponly", "secure", "samesite=strict", "path=/"} <= set(flags)
        assert d.tokens["alice"] not in cookie_header(reply)  # the cookie names a session, never the token
        page = parse((await client.get("/cluster")).text)
        assert page.by_id("whoami").text == "alice" and not page.find_all(id="admin-badge")
        assert page.find_all("meta", name="csrf-token")[0].attrs["content"]
        assert page.by_id("page-cluster")


async def test_an_admin_is_shown_as_one_and_next_never_leaves_the_site():
    async with dashboard() as d, d.client() as client:
        for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"):
            reply = await client.post("/login", data={"token": d.tokens["admin"], "next": target})
            assert reply.status_code == 303 and reply.headers["location"] == "/", target
        page = parse((await client.get("/cluster")).text)
        assert page.by_id("whoami").text == "admin" and page.by_id("admin-badge").text == "(admin)"


async def test_a_wrong_token_is_refused_with_the_login_page_again(caplog):
    caplog.set_level(logging.DEBUG)
    async with dashboard() as d, d.client() as client:
        for token in ("cumulus_" + "x" * 43, "", d.tokens["alice"] + "x"):
            reply = await client.post("/login", data={"token": token})
            assert reply.status_code == 401 and "set-cookie" not in reply.headers
            error = parse(reply.text).by_id("login-error")
            assert "not a valid token" in error.text and "error" in error.attrs["class"].split()
        assert (await client.get("/jobs")).status_code == 303
        await d.signed_in("alice")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "sign-in refused" in logged and "alice signed in" in logged
    assert not any(token in logged for token in d.tokens.values())


async def test_without_a_session_pages_go_to_sign_in_and_fragments_are_401():
    async with dashboard() as d, d.client() as client:
        for path in ("/", "/cluster", "/jobs?state=QUEUED", "/usage", "/jobs/unit-000000000000"):
            reply = await client.get(path)
            if path == "/":
                assert reply.headers["location"] == "/cluster"
                continue
            assert reply.status_code == 303 and reply.headers["location"] == "/login?next=" + quote(path, safe="")
        for path in ("/cluster/fragment", "/jobs/unit-000000000000/events", "/jobs/unit-000000000000/fragment"):
            assert (await client.get(path)).status_code == 401, path
        assert (await client.get("/cluster", headers={"hx-request": "true"})).status_code == 401
        client.cookies.set("cumulus_session", "made-up")
        assert (await client.get("/cluster")).status_code == 303
        assert (await client.get("/static/style.css")).status_code == 200  # no session needed


async def test_a_revoked_token_ends_its_sessions_at_once():
    async with dashboard() as d:
        client = await d.signed_in("alice")
        assert (await client.get("/jobs")).status_code == 200
        await d.api.revoke_token("alice")
        assert (await client.get("/jobs")).status_code == 303
        assert (await client.get("/cluster/fragment")).status_code == 401
        await client.aclose()


async def test_sign_out_ends_the_session_and_needs_the_csrf_token():
    async with dashboard() as d:
        client = await d.signed_in("alice")
        page = parse((await client.get("/jobs")).text)
        csrf = page.by_id("logout").find_all("input", name="csrf")[0].attrs["value"]
        cookie = client.cookies["cumulus_session"]
        assert (await client.post("/logout", data={})).status_code == 403
        reply = await client.post("/logout", data={"csrf": csrf})
        assert reply.status_code == 303 and reply.headers["location"] == "/login"
        client.cookies.set("cumulus_session", cookie)  # the old cookie, replayed: its session is gone
        assert (await client.get("/jobs")).status_code == 303
        await client.aclose()


async def test_every_post_needs_the_csrf_token_and_the_same_origin():
    async with dashboard() as d:
        record = await d.api.submit(spec(runtime=60), caller=ALICE)
        alice = await d.signed_in("alice")
        csrf = parse((await alice.get(f"/jobs/{record.job_id}")).text).find_all("meta", name="csrf-token")[0]
        token = csrf.attrs["content"]
        wrong = token[:-1] + ("1" if token.endswith("0") else "0")  # one digit off
        cancel = f"/jobs/{record.job_id}/cancel"
        for data, headers in (({}, {}), ({"csrf": "0" * 64}, {}), ({}, {"x-csrf-token": wrong}),
                              ({"csrf": token}, {"origin": "https://evil.example"}),
                              ({"csrf": token}, {"referer": "https://evil.example/page"}),
                              ({"csrf": token}, {"origin": "null"})):
            reply = await alice.post(cancel, data=data, headers=headers)
            assert reply.status_code == 403, (data, headers)
            assert "CSRF" in parse(reply.text).by_id("error").text
        bob = await d.signed_in("bob")  # another session's token is no good either
        bob_token = parse((await bob.get("/jobs")).text).find_all("meta", name="csrf-token")[0].attrs["content"]
        assert bob_token != token
        assert (await alice.post(cancel, data={"csrf": bob_token})).status_code == 403
        assert not record.state.terminal
        # A page elsewhere cannot sign this browser in (login CSRF): a cross-site POST to /login is refused.
        async with d.client() as browser:
            reply = await browser.post("/login", data={"token": d.tokens["bob"]},
                                       headers={"origin": "https://evil.example"})
        assert reply.status_code == 403 and "set-cookie" not in reply.headers
        reply = await alice.post(cancel, data={"csrf": token}, headers={"origin": d.url})
        assert reply.status_code == 303 and record.state is JobState.CANCELLED
        for client in (alice, bob):
            await client.aclose()


async def test_security_headers_are_on_every_answer():
    async with dashboard() as d:
        client = await d.signed_in("alice")
        for path in ("/login", "/cluster", "/jobs", "/usage", "/cluster/fragment", "/static/htmx.min.js", "/nope"):
            reply = await client.get(path)
            headers = reply.headers
            csp = headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "same-origin"
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["cache-control"] == ("no-cache" if path.startswith("/static/") else "no-store"), path
        html = (await client.get("/jobs")).text
        assert "<script>" not in html and " on" + "click=" not in html and "style=" not in html
        await client.aclose()


async def test_unknown_paths_are_404_and_the_ports_own_paths_still_answer():
    async with dashboard() as d, d.client() as client:
        reply = await client.get("/nothing-here")
        assert reply.status_code == 404 and "/metrics" in reply.text
        assert (await client.get("/healthz")).text == "ok\n"
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.post("/metrics")).status_code == 405
        assert (await client.get("/static/htmx.min.js")).text.startswith("/*! htmx 2")


@pytest.mark.parametrize("insecure", [True, False])
async def test_plain_http_drops_secure_from_the_cookie_and_says_so(caplog, insecure):
    caplog.set_level(logging.WARNING)
    async with dashboard(insecure=insecure) as d, d.client() as client:
        assert d.url.startswith("http://" if insecure else "https://")
        reply = await client.post("/login", data={"token": d.tokens["alice"]})
        flags = {part.strip().lower() for part in cookie_header(reply).split(";")}
        assert ("secure" in flags) is not insecure and {"httponly", "samesite=strict"} <= flags
        assert (await client.get("/jobs")).status_code == 200
    warned = [r for r in caplog.records if "dashboard" in r.getMessage() and "not Secure" in r.getMessage()]
    assert bool(warned) is insecure
