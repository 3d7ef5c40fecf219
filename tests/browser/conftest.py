"""Browser tests of the dashboard (issue 16) on the real local cluster, in Debian's headless Chromium driven by
Selenium. Every test here is marked ``cluster`` (as tests/cluster's are) and uses its session fixture ``cluster``
(the running local cluster, brought up if needed); run them as root with:

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/browser

They talk to the supervisor `cumulus local up` started (its HTTP port, where the dashboard is, and its gRPC port,
where the SDK submits the jobs the pages show), with the admin token and CA that `local up` made.

Nothing is downloaded: Chromium and chromedriver are Debian's (``apt-get install chromium chromium-driver
libnss3-tools``), named by path, and ``SE_OFFLINE=true`` keeps Selenium Manager from looking for others. Chromium
trusts the local CA through an NSS database (``certutil``) in a temporary ``$HOME``, as a user's browser would once
the CA is imported, so TLS is verified for real (no ``--ignore-certificate-errors``). Without those packages or
the ``selenium`` module the tests skip on a developer's machine and fail where ``$CI`` is set.

Each test writes screenshots (and, when it fails, the page's source and a last screenshot) to
``$CUMULUS_TEST_ARTIFACTS/browser/<test>/`` (default: ``.artifacts/browser/<test>/`` in the repository).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from browser_tools import CHROMEDRIVER, CHROMIUM
from tests.cluster.conftest import cluster  # noqa: F401  (the session fixture: the running local cluster)

BROWSER_DIR = Path(__file__).resolve().parent
REPO = BROWSER_DIR.parents[1]
PACKAGES = "apt-get install -y chromium chromium-driver libnss3-tools; .venv/bin/pip install selenium"


def pytest_collection_modifyitems(config, items):  # noqa: ARG001 - pytest's hook signature
    for item in items:
        if BROWSER_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):  # noqa: ARG001 - pytest's hook signature
    report = yield
    setattr(item, f"report_{report.when}", report)  # the browser fixture saves the page when the test failed
    return report


def missing(what: str) -> None:
    message = f"{what} is missing (CI installs it: {PACKAGES})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def artifacts_root() -> Path:
    base = os.environ.get("CUMULUS_TEST_ARTIFACTS")
    return (Path(base) if base else REPO / ".artifacts") / "browser"


@pytest.fixture
def artifacts(request) -> Path:
    """This test's artifacts directory, emptied first (a rerun does not mix its screenshots with an older run's)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path = artifacts_root() / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def browser_home(dashboard, tmp_path_factory) -> Path:
    """A ``$HOME`` for Chromium whose NSS database trusts the local cluster's CA (and nothing else of ours)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            missing(path)
    certutil = shutil.which("certutil")
    if certutil is None:
        missing("certutil (libnss3-tools)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("the selenium module")
    home = tmp_path_factory.mktemp("chromium-home")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run([certutil, "-N", "--empty-password", "-d", f"sql:{nssdb}"], check=True, capture_output=True)
    subprocess.run([certutil, "-A", "-n", "cumulus-local-ca", "-t", "C,,", "-i", dashboard.ca,
                    "-d", f"sql:{nssdb}"], check=True, capture_output=True)
    return home


@pytest.fixture(scope="session")
def dashboard(cluster):  # noqa: F811 - the imported session fixture
    """Where the local cluster's supervisor is: ``base`` (the dashboard's https URL), ``admin_token`` and the gRPC
    ``admin_config`` (its address, admin token and CA) for the SDK."""
    from cumulus.client.connection import ClientConfig
    from cumulus.local import deployed as local_deployed
    from cumulus.local import supervisor as local_supervisor

    info = local_supervisor.read_info() or {}
    http = local_deployed.local_deployment().http_listen if info.get("mode") == "deployed" \
        else local_supervisor.HTTP_ADDRESS
    creds = local_supervisor.credentials()
    address = info.get("address", local_supervisor.ADDRESS)
    return Dashboard(base=f"https://{http}", admin_token=creds.admin_token, ca=str(creds.ca),
                     admin_config=ClientConfig(address, token=creds.admin_token, ca=str(creds.ca)))


@dataclass(frozen=True)
class Dashboard:
    base: str
    admin_token: str = field(repr=False)  # never in a failure's traceback (CI logs)
    ca: str
    admin_config: Any


@pytest.fixture
def admin_client(dashboard):
    from cumulus.client.client import CumulusClient

    client = CumulusClient(config=dashboard.admin_config, log_to_driver=False)
    yield client
    client.close()


@pytest.fixture
def users(dashboard, admin_client):
    """``users(prefix)`` -> (name, token, client): a new non-admin token (``cumulus token create`` through the
    admin client) and an SDK client that uses it; every token made is revoked at the end."""
    from cumulus.client.client import CumulusClient
    from cumulus.client.connection import ClientConfig

    made = []

    def make(prefix: str):
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        _, secret = admin_client.create_token(name)
        client = CumulusClient(config=ClientConfig(dashboard.admin_config.address, token=secret, ca=dashboard.ca),
                               log_to_driver=False)
        made.append((name, client))
        return name, secret, client

    yield make
    for name, client in made:
        client.close()
        admin_client.revoke_token(name)


@pytest.fixture
def browser(request, dashboard, browser_home, artifacts, tmp_path):
    """A fresh headless Chromium (own profile, no cookies) at 1280x900 on the dashboard; see browser_tools.Browser.
    On a failure the page's source and a screenshot are saved; the browser is closed at the end."""
    from browser_tools import Browser

    b = Browser.start(dashboard.base, browser_home, tmp_path / "profile", artifacts)
    try:
        yield b
    finally:
        failed = any(getattr(getattr(request.node, f"report_{when}", None), "failed", False)
                     for when in ("setup", "call"))
        try:
            if failed:
                b.save_failure()
        finally:
            b.quit()
