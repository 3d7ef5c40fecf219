"""Signing in to the dashboard in a real browser: the admin token opens it (an HttpOnly, Secure, SameSite=Strict
session cookie; the header names the admin) and signing out closes it; a wrong token is refused with the error
element and no cookie, and the pages stay closed."""

from __future__ import annotations

import pytest

from browser_tools import SESSION_COOKIE

PAGES = ("/cluster", "/jobs", "/usage")


def assert_signed_out(b) -> None:
    """Every page sends the browser to the sign-in page (with ``next``), and there is no session cookie."""
    assert b.session_cookie() is None, b.session_cookie()
    for path in PAGES:
        b.open(path)
        b.wait_for(lambda d: b.path.startswith("/login"), f"{path} to send a signed-out browser to /login")
        assert b.path.startswith("/login?next="), f"{path} redirected to {b.path} (expected /login?next=...)"
        assert b.find_all("form#login"), f"no form#login at {b.path}"


def test_the_admin_token_signs_in_with_a_strict_cookie_and_signing_out_ends_the_session(browser, dashboard):
    b = browser
    b.open("/")
    b.wait_for(lambda d: b.path.startswith("/login"), "/ to send a signed-out browser to /login")
    b.shot("login-page")
    b.sign_in(dashboard.admin_token)
    identity = b.header_identity()
    assert "(admin)" in identity, f"the header says {identity!r} around span#whoami: no (admin) for the admin"
    b.wait_for(lambda d: b.path == "/cluster" and b.find_all("main#page-cluster"), "/ -> /cluster after sign-in")
    b.shot("signed-in")

    cookie = b.session_cookie()
    assert cookie is not None, f"no {SESSION_COOKIE} cookie after signing in: {b.driver.get_cookies()}"
    flags = {k: cookie.get(k) for k in ("httpOnly", "secure", "sameSite", "path")}
    assert flags == {"httpOnly": True, "secure": True, "sameSite": "Strict", "path": "/"}, flags
    # (booleans first: a failure's message must not print the admin token into a CI log)
    in_cookie, in_page = dashboard.admin_token in cookie["value"], dashboard.admin_token in b.driver.page_source
    assert not in_cookie, "the session cookie holds the token itself"
    assert not in_page, "the page shows the admin token"
    for path, page in (("/jobs", "jobs"), ("/usage", "usage")):
        b.open(path, page)  # the session opens every page

    # Sign out: the header's form (POST /logout with the CSRF token) ends the session.
    forms = [f for f in b.find_all("form") if (f.get_attribute("action") or "").endswith("/logout")]
    assert forms, "no sign-out form (POST /logout) on the page"
    forms[0].find_element("css selector", "[type=submit]").click()
    b.wait_for(lambda d: b.path.startswith("/login"), "signing out to land on /login")
    b.shot("signed-out")
    assert_signed_out(b)


@pytest.mark.parametrize("kind", ["made-up", "admin-token-plus-a-character", "empty"])
def test_a_wrong_token_is_refused_with_the_error_element_and_no_session(browser, dashboard, kind):
    b = browser
    token = {"made-up": "cumulus_" + "x" * 43, "admin-token-plus-a-character": dashboard.admin_token + "A",
             "empty": ""}[kind]
    b.open("/login")
    b.submit_token(token)
    if kind == "empty" and b.driver.execute_script(
            "return document.querySelector('form#login input[name=token]').required"):
        # The browser itself refuses to send an empty required field: nothing was submitted.
        assert b.path.startswith("/login") and not b.find_all("p#login-error")
    else:
        b.wait_for(lambda d: b.find_all("p.error#login-error"), "p.error#login-error after a wrong token")
        error = b.text("p#login-error")
        assert "not a valid token" in error, f"p#login-error says {error!r}"
        assert b.path.startswith("/login"), b.path
        assert not b.find_all("span#whoami"), "a refused sign-in shows a signed-in header"
        echoed = bool(token) and token in b.driver.page_source
        assert not echoed, "the refused token is echoed back in the page"
    b.shot("refused")
    if kind == "made-up":  # the answer itself is a 401 (the form's hidden fields, such as a CSRF token, sent too)
        fields = b.driver.execute_script(
            "const f = new FormData(document.querySelector('form#login')); f.set('token', arguments[0]);"
            "return new URLSearchParams(f).toString();", token)
        answer = b.fetch("POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"}, fields)
        assert answer["status"] == 401, {k: answer.get(k) for k in ("status", "url", "error")}
        assert "not a valid token" in answer["body"]
    assert_signed_out(b)
