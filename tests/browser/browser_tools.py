"""The browser tests' driver: headless Debian Chromium through Selenium, with the dashboard's contract
(/work/notes/dashboard.md: URLs, element ids, cookie, CSRF) spelled once here.

    b = Browser.start(base_url, home, profile_dir, artifacts_dir)
    b.sign_in(token)                       # /login, type the token, Sign in; waits for the signed-in header
    b.open("/cluster")                     # waits for main#page-cluster
    b.wait_for(lambda d: ..., "what")      # an explicit wait (re-evaluated every 0.25 s; stale elements retried)
    b.shot("cluster")                      # <artifacts>/01-cluster.png
    b.fetch("POST", "/jobs/x/cancel")      # fetch() from the page, with its cookie: {"status": ..., "body": ...}

No sleeps anywhere: every wait is a WebDriverWait on a condition, with generous timeouts (a 2-core machine runs
the cluster, the supervisor and the browser at once).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

try:
    from selenium import webdriver
    from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                            TimeoutException)
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # collection still works; the browser fixture skips (or fails under $CI) naming the package
    pass

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE_TIMEOUT = 60.0  # a page, a redirect or the signed-in header
JOB_TIMEOUT = 180.0  # a job submitted on the local cluster: placed, its partition and container up, finished
DESKTOP = (1280, 900)
PHONE = (390, 844)
SESSION_COOKIE = "cumulus_session"


class Browser:
    def __init__(self, driver: webdriver.Chrome, base: str, artifacts: Path) -> None:
        self.driver = driver
        self.base = base.rstrip("/")
        self.artifacts = artifacts
        self._shots = 0

    @classmethod
    def start(cls, base: str, home: Path, profile: Path, artifacts: Path) -> "Browser":
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
            options.add_argument(arg)
        # Chromium reads the NSS database (which trusts the local CA) from $HOME/.pki/nssdb; it inherits
        # chromedriver's environment. SE_OFFLINE: Selenium Manager never looks for (or downloads) a browser.
        env = {**os.environ, "HOME": str(home), "SE_OFFLINE": "true"}
        os.environ["SE_OFFLINE"] = "true"
        # No chromedriver log in the artifacts: it records every command's arguments, the typed tokens among them.
        service = Service(executable_path=CHROMEDRIVER, env=env, log_output=subprocess.DEVNULL)
        driver = webdriver.Chrome(service=service, options=options)
        driver.set_page_load_timeout(PAGE_TIMEOUT)
        driver.set_script_timeout(PAGE_TIMEOUT)
        browser = cls(driver, base, artifacts)
        browser.viewport(*DESKTOP)
        return browser

    def quit(self) -> None:
        self.driver.quit()

    # ------------------------------------------------------------------------------------------ artifacts
    def shot(self, name: str, at: str | None = None) -> Path:
        """A screenshot of the viewport: <artifacts>/NN-<name>.png; ``at``: the element (CSS) scrolled into view
        first (the page scrolls, not the element's own content)."""
        if at:
            self.driver.execute_script(
                "const e = document.querySelector(arguments[0]); if (e) e.scrollIntoView({block: 'center'});", at)
        self._shots += 1
        path = self.artifacts / f"{self._shots:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), f"no screenshot saved to {path}"
        return path

    def save_failure(self) -> None:
        try:
            (self.artifacts / "failure-page.html").write_text(self.driver.page_source)
            (self.artifacts / "failure-url.txt").write_text(self.driver.current_url + "\n")
            self.driver.save_screenshot(str(self.artifacts / "failure.png"))
        except Exception as error:  # noqa: BLE001 - the browser may be the thing that broke
            (self.artifacts / "failure-not-saved.txt").write_text(f"{type(error).__name__}: {error}\n")

    # ----------------------------------------------------------------------------------------- navigation
    def url(self, path: str) -> str:
        return self.base + path

    @property
    def path(self) -> str:
        """The current URL's path (and query)."""
        parts = urlsplit(self.driver.current_url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def open(self, path: str, page: str | None = None) -> None:
        """Load ``path``; with ``page``, wait for ``main#page-<page>``."""
        self.driver.get(self.url(path))
        if page:
            self.wait_for(lambda d: d.find_elements(By.CSS_SELECTOR, f"main#page-{page}"),
                          f"main#page-{page} at {path} (now at {self.path})")

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        """The page's viewport, emulated as a device of that size (a phone with ``mobile``: the page's
        ``<meta name="viewport">`` then decides the layout width, as on a real phone)."""
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    # -------------------------------------------------------------------------------------------- waiting
    def wait_for(self, condition: Callable[[webdriver.Chrome], Any], what: str,
                 timeout: float = PAGE_TIMEOUT) -> Any:
        """Wait until ``condition(driver)`` is truthy and return it. A condition that finds no element or a stale
        one (the cluster page replaces its content every 2 s) is retried."""
        wait = WebDriverWait(self.driver, timeout, poll_frequency=0.25,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        try:
            return wait.until(condition)
        except TimeoutException:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (at {self.path})") from None

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def click(self, css: str, what: str = "") -> None:
        """Click the element matching ``css``; found again if the page replaced it between finding and clicking
        (the job page re-renders its details when the job's state changes)."""
        self.wait_for(lambda d: self.find(css).click() or True, what or f"{css} to be clicked")

    def find_all(self, css: str) -> list:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str | None:
        """The trimmed textContent of the first element matching ``css`` (None if there is none), read in one
        script: an element that htmx replaces meanwhile cannot go stale midway."""
        return self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;", css)

    def texts(self, css: str) -> list[str]:
        """The texts of every element matching ``css``, read in one script (no element goes stale midway)."""
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent);", css)

    def attrs(self, css: str, *names: str) -> list[dict[str, str | None]]:
        """``names`` attributes of every element matching ``css``, read in one script."""
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".map(e => Object.fromEntries(arguments[1].map(n => [n, e.getAttribute(n)])));", css, list(names))

    # ------------------------------------------------------------------------------------------ signing in
    def submit_token(self, token: str) -> None:
        """Type ``token`` into the sign-in form of /login and press Sign in (no wait for the outcome)."""
        if not self.path.startswith("/login"):
            self.open("/login")
        self.wait_for(lambda d: d.find_elements(By.CSS_SELECTOR, "form#login input[name=token][type=password]"),
                      "the sign-in form: form#login with input[name=token][type=password]")
        field = self.find("form#login input[name=token]")
        field.clear()
        field.send_keys(token)
        self.find("form#login button#sign-in[type=submit]").click()

    def sign_in(self, token: str, name: str | None = None) -> str:
        """Sign in with ``token`` from /login (or the sign-in page the browser is on); returns span#whoami's text
        (the signed-in name), which must be ``name`` if given."""
        self.submit_token(token)
        self.wait_for(lambda d: not urlsplit(d.current_url).path.startswith("/login")
                      and d.find_elements(By.CSS_SELECTOR, "span#whoami"),
                      "the signed-in page (left /login, span#whoami in the header)")
        whoami = self.text("span#whoami")
        if name is not None:
            assert whoami == name, f"span#whoami says {whoami!r}, signed in as {name!r}"
        return whoami

    def header_identity(self) -> str:
        """The text around span#whoami (its parent): the name, and "(admin)" for an admin."""
        return self.driver.execute_script(
            "return document.getElementById('whoami').parentElement.textContent.trim();")

    def session_cookie(self) -> dict[str, Any] | None:
        return self.driver.get_cookie(SESSION_COOKIE)

    def csrf_token(self) -> str:
        return self.find("meta[name=csrf-token]").get_attribute("content") or ""

    # ------------------------------------------------------------------------------------------- requests
    def fetch(self, method: str, path: str, headers: dict[str, str] | None = None, body: str | None = None,
              read_body: bool = True) -> dict[str, Any]:
        """``fetch(path)`` from the current page (its origin and cookie, as the page's own script would):
        ``{"status", "redirected", "url", "body"}``; ``read_body=False`` for a stream (SSE) that never ends."""
        script = """
            const [method, path, headers, body, readBody, done] = arguments;
            const controller = new AbortController();
            fetch(path, {method, headers, body, credentials: 'same-origin', redirect: 'manual',
                         signal: controller.signal})
              .then(async r => {
                  const text = readBody ? await r.text() : '';
                  controller.abort();
                  done({status: r.status, redirected: r.redirected, type: r.type, url: r.url, body: text});
              })
              .catch(e => done({status: -1, error: String(e)}));
        """
        return self.driver.execute_async_script(script, method, path, headers or {}, body, read_body)

    # ----------------------------------------------------------------------------------------------- pages
    def horizontal_overflow(self) -> dict[str, int]:
        """The page's widths: ``scroll`` (document.documentElement.scrollWidth) and ``inner``
        (window.innerWidth); the page scrolls sideways when scroll > inner."""
        return self.driver.execute_script(
            "return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth,"
            " body: document.body.scrollWidth};")

    def job_state(self) -> str | None:
        return self.text("span#job-state")

    def log_lines(self) -> list[str]:
        return [line.rstrip("\n") for line in self.texts("pre#log span.log-line")]

    def share_bars(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every device on the cluster page: (worker, device index) -> used, total (floats) and the job ids
        linked from it, read in one script."""
        rows = self.driver.execute_script("""
            return Array.from(document.querySelectorAll('div.device')).map(d => {
                const bar = d.querySelector('div.share-bar');
                return {worker: d.dataset.worker, device: d.dataset.device,
                        used: bar && bar.getAttribute('data-used'), total: bar && bar.getAttribute('data-total'),
                        jobs: Array.from(d.querySelectorAll('a.job-link')).map(a => a.getAttribute('href'))};
            });""")
        out = {}
        for row in rows:
            assert row["used"] is not None and row["total"] is not None, f"device without a share-bar: {row}"
            out[(row["worker"], row["device"])] = {"used": float(row["used"]), "total": float(row["total"]),
                                                   "jobs": row["jobs"]}
        return out


def describe(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True, default=str)
