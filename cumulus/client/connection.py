"""How a client reaches a supervisor: the client config file (like a kubeconfig) and the gRPC channel it makes.

The config is ``$CUMULUS_CONFIG``, else ``~/.config/cumulus/config.yaml``; ``cumulus local up`` writes it (mode
0600)::

    address: 127.0.0.1:50051
    ca: /var/lib/cumulus-local/tls/ca.pem        # trust this CA (default: the system's roots)
    token: cumulus_...                           # the bearer token sent with every call
    client_cert: ...                             # with client_key: for a supervisor that requires mutual TLS
    client_key: ...
    insecure: false                              # plaintext, no token: only for a supervisor run --insecure

``CUMULUS_ADDRESS``, ``CUMULUS_TOKEN`` and ``CUMULUS_INSECURE=1`` override the file; an explicit address (an
argument, ``--address``) overrides both. A missing file is no error: the defaults are TLS with the system's roots,
no token, and :func:`cumulus.config.default_address`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import grpc

from cumulus.errors import ConfigError

KEYS = ("address", "ca", "token", "client_cert", "client_key", "insecure")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ClientConfig:
    """Where the supervisor is and how to talk to it. ``repr`` never shows the token."""

    address: str
    token: str = ""
    ca: str = ""
    client_cert: str = ""
    client_key: str = ""
    insecure: bool = False
    source: str = ""
    """The file the settings came from (empty when none), for error messages."""

    def __repr__(self) -> str:
        return (f"ClientConfig(address={self.address!r}, token={'<set>' if self.token else '<none>'}, ca={self.ca!r}, "
                f"insecure={self.insecure}, source={self.source!r})")


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get("CUMULUS_CONFIG"):
        return Path(environ["CUMULUS_CONFIG"]).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / "cumulus" / "config.yaml"


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's settings ({} when it does not exist). Raises ConfigError for a file that cannot be used."""
    import yaml

    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ConfigError("client config", f"cannot read {path}: {error.strerror or error}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError("client config", f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError("client config", f"{path} must be a mapping of {', '.join(KEYS)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"client config {unknown[0]}", f"unknown key in {path}; allowed: {', '.join(KEYS)}")
    return {key: value for key, value in data.items() if value is not None}


def load_client_config(address: str | None = None, *, environ: Mapping[str, str] | None = None) -> ClientConfig:
    """The settings a client uses: the file, then the environment, then ``address`` when given."""
    from cumulus.config import default_address

    environ = os.environ if environ is None else environ
    path = config_path(environ)
    data = read_config_file(path)
    config = ClientConfig(
        address=str(data.get("address") or default_address(environ)),
        token=str(data.get("token") or ""), ca=str(data.get("ca") or ""),
        client_cert=str(data.get("client_cert") or ""), client_key=str(data.get("client_key") or ""),
        insecure=str(data.get("insecure", "")).lower() in _TRUE, source=str(path) if data else "")
    if environ.get("CUMULUS_ADDRESS"):
        config = replace(config, address=environ["CUMULUS_ADDRESS"])
    if environ.get("CUMULUS_TOKEN"):
        config = replace(config, token=environ["CUMULUS_TOKEN"].strip())
    if environ.get("CUMULUS_INSECURE"):
        config = replace(config, insecure=environ["CUMULUS_INSECURE"].strip().lower() in _TRUE)
    if address:
        config = replace(config, address=address)
    return config


def _read(key: str, path: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise ConfigError(f"client config {key}", f"cannot read {path}: {error.strerror or error}") from None


def open_channel(config: ClientConfig, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A blocking gRPC channel to ``config.address``: TLS (trusting ``config.ca``, presenting the client
    certificate when set) with the token on every call, or plaintext without a token when ``config.insecure``."""
    if config.insecure:
        return grpc.insecure_channel(config.address, options=list(options))
    tls = grpc.ssl_channel_credentials(
        root_certificates=_read("ca", config.ca) if config.ca else None,
        private_key=_read("client_key", config.client_key) if config.client_key else None,
        certificate_chain=_read("client_cert", config.client_cert) if config.client_cert else None)
    if config.token:
        tls = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(config.token))
    return grpc.secure_channel(config.address, tls, options=list(options))


def write_client_config(path: Path, settings: Mapping[str, Any], *, owner: tuple[int, int] | None = None) -> None:
    """Write a client config file (mode 0600; missing directories made 0700). ``owner`` (uid, gid): root writes it
    for that user (``local up`` under sudo): the file and every directory made are theirs, and no symbolic link
    on the way is followed (the user's home is theirs to arrange)."""
    import yaml

    made = []
    directory = path.parent
    while not os.path.lexists(directory):
        made.append(directory)
        directory = directory.parent
    for new in reversed(made):
        os.mkdir(new, 0o700)
        if owner is not None:
            os.lchown(new, *owner)
    if path.parent.is_symlink() or not path.parent.is_dir():
        raise ConfigError("client config", f"{path.parent} is not a directory (a symbolic link is not followed)")
    text = ("# Written by `cumulus local up`: how the cumulus CLI and SDK reach the local supervisor.\n"
            + yaml.safe_dump(dict(settings), sort_keys=False))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            if owner is not None:
                os.fchown(out.fileno(), *owner)
            out.write(text)
        os.replace(tmp, path)  # replaces a link named like the file, never what it points at
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["ClientConfig", "config_path", "load_client_config", "open_channel", "read_config_file",
           "write_client_config"]
