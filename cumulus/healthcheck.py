"""The supervisor container's liveness probe (the supervisor image's HEALTHCHECK):
``python3 -m cumulus.healthcheck [SETTINGS_FILE]`` (default ``/etc/cumulus/supervisor.yaml``).

It reads the supervisor's settings and asks ``/healthz`` on its HTTP port (``server.http_listen``). With no HTTP
port, or one that wants client certificates (``security.client_ca``: the probe has none), it checks that the gRPC
port accepts a TCP connection instead. Exit status 0: alive; 1: not, with the reason on stderr; 2: the settings
cannot be read.

Liveness only: the probe sends nothing secret and reads only "ok", so it does not verify the server's certificate
(it talks to the port of its own container, by an address the certificate need not name). A wildcard listen
address is probed on loopback. No proxy from the environment is ever used.
"""

from __future__ import annotations

import socket
import ssl
import sys
import urllib.error
import urllib.request

from cumulus.config import Settings, load_settings, parse_host_port
from cumulus.errors import ConfigError

DEFAULT_SETTINGS = "/etc/cumulus/supervisor.yaml"
TIMEOUT_SECONDS = 4.0
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _probe_host(host: str) -> str:
    return _WILDCARDS.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check(settings: Settings, timeout: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    """``(alive, what was seen)`` for the supervisor that ``settings`` describe."""
    if settings.server.http_listen and not settings.security.client_ca:
        host, port = parse_host_port(settings.server.http_listen, key="server.http_listen", allow_any_port=True)
        insecure = settings.security.insecure
        url = f"{'http' if insecure else 'https'}://{_url_host(_probe_host(host))}:{port}/healthz"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=context))
        try:
            with opener.open(url, timeout=timeout) as response:
                body = response.read(64)
                return response.status == 200, f"{url}: {response.status} {body.decode(errors='replace').strip()}"
        except urllib.error.HTTPError as error:
            return False, f"{url}: HTTP {error.code}"
        except (OSError, urllib.error.URLError) as error:
            return False, f"{url}: {getattr(error, 'reason', error)}"
    host, port = parse_host_port(settings.grpc.listen, key="grpc.listen", allow_any_port=True)
    target = (_probe_host(host), port)
    try:
        with socket.create_connection(target, timeout=timeout):
            return True, f"gRPC port {_url_host(target[0])}:{port} accepts connections"
    except OSError as error:
        return False, f"gRPC port {_url_host(target[0])}:{port}: {error.strerror or error}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else DEFAULT_SETTINGS
    try:
        settings = load_settings(path)
    except ConfigError as error:
        print(f"cumulus healthcheck: {path}: {error}", file=sys.stderr)
        return 2
    alive, seen = check(settings)
    print(seen, file=sys.stdout if alive else sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
