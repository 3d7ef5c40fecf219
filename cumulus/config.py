"""Typed, validated settings: defaults < YAML file < environment variables < command-line flags.

A settings file looks like ``config.yaml.example``. Every key can also come from the environment as
``CUMULUS_<SECTION>_<KEY>`` in upper case (``CUMULUS_GRPC_LISTEN=0.0.0.0:50051``, ``CUMULUS_JOBS_MAX_DURATION=600``).
Unknown keys, wrong types and out-of-range values raise :class:`~cumulus.errors.ConfigError`, whose message names
the key (``grpc.listen``) and says what is allowed.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cumulus.config_values import apply_environment, apply_mapping, check_range, read_yaml, set_dotted
from cumulus.errors import ConfigError
from cumulus.jobformat.limits import MAX_PACKAGE_MB
from cumulus.jobformat.sources import index_url_problem, registry_problem

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_HTTP_ADDRESS = "127.0.0.1:50052"
LOCAL_CLUSTER_DESCRIPTION = "/var/lib/cumulus-local/cluster.json"
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})$")


@dataclass
class GrpcSettings:
    listen: str = DEFAULT_ADDRESS
    """HOST:PORT the supervisor serves on. Plain gRPC; keep it on loopback or a private network."""
    max_message_mb: int = 64
    """Largest request (code package included) the server accepts."""
    max_concurrent_rpcs: int = 512
    """RPCs served at once (streams included); beyond that a call is refused with RESOURCE_EXHAUSTED."""

    def validate(self) -> None:
        parse_host_port(self.listen, key="grpc.listen", allow_any_port=True)
        check_range("grpc.max_message_mb", self.max_message_mb, 1, 1024)
        check_range("grpc.max_concurrent_rpcs", self.max_concurrent_rpcs, 1, 100_000)


@dataclass
class ServerSettings:
    http_listen: str = DEFAULT_HTTP_ADDRESS
    """HOST:PORT of the supervisor's HTTP port (``/metrics``, ``/healthz``, ``/readyz``, the web dashboard at ``/``);
    TLS with the gRPC port's certificate unless insecure. Empty: no HTTP port. Loopback by default: Prometheus
    scrapes it from this machine or through a proxy."""
    http_advertise: str = ""
    """HOST:PORT at which new hosts reach the HTTP port (``cumulus worker join-command`` puts it in the join line);
    not loopback. Empty: no joining."""

    def validate(self) -> None:
        if self.http_listen:
            parse_host_port(self.http_listen, key="server.http_listen", allow_any_port=True)
        if self.http_advertise:
            parse_host_port(self.http_advertise, key="server.http_advertise")


@dataclass
class MetricsSettings:
    enabled: bool = True
    """Count and time what the supervisor does (Prometheus metrics on ``/metrics``). Off: nothing is counted."""


@dataclass
class UsageSettings:
    prices: dict[str, float] = field(default_factory=dict)
    """Price of one device-hour by device model, as ``cumulus workers`` names it (``{"NVIDIA H200": 3.5}``;
    from the environment ``MODEL=PRICE,MODEL=PRICE``). ``cumulus usage`` turns device time into money with it."""
    currency: str = "USD"

    def validate(self) -> None:
        for model, price in self.prices.items():
            if not model:
                raise ConfigError("usage.prices", "a device model name is empty")
            check_range(f"usage.prices[{model!r}]", price, 0, 1e9)


@dataclass
class SecuritySettings:
    tls_cert: str = ""
    """The server's certificate chain (PEM). With ``tls_key`` the supervisor serves TLS; required unless insecure."""
    tls_key: str = ""
    tls_ca: str = ""
    """The CA (PEM) that signed ``tls_cert``: joining hosts get it, for dockerd to trust the image registry."""
    client_ca: str = ""
    """A CA (PEM): when set, clients must also present a certificate it signed (mutual TLS)."""
    insecure: bool = False
    """Serve plaintext gRPC and accept calls without a token. For development on loopback only; logged loudly."""
    admin_token_file: str = ""
    """A file holding a bearer token that is made (or kept) the admin token named ``admin`` at start."""
    secret_key_file: str = ""
    """Key that encrypts secret env values in the journal (made, mode 0600, next to the journal when empty)."""

    def validate(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("security.tls_cert", "give both security.tls_cert and security.tls_key, or neither")


@dataclass
class ContainerSettings:
    """The defaults and bounds of every job container (hardened: non-root, no capabilities, read-only root)."""

    user: str = ""
    """uid:gid the job runs as; empty = the worker's SSH user (never root: 0 is refused)."""
    memory_mb: int = 4096
    """Memory limit of a job that asks for none."""
    max_memory_mb: int = 262144
    cpus: float = 2.0
    """CPU limit (cores) of a job that asks for none."""
    max_cpus: float = 256.0
    pids_limit: int = 4096
    tmpfs_mb: int = 1024
    """Size of the writable tmpfs at /tmp and HOME."""
    network: str = "internet"
    """Default network of a job: ``internet`` (egress filtered: no private, link-local or cluster addresses) or
    ``none``."""

    def validate(self) -> None:
        if self.user and not re.fullmatch(r"[1-9][0-9]{0,9}(:[0-9]{1,10})?", self.user):
            raise ConfigError("containers.user", f"{self.user!r}: give uid or uid:gid, uid not 0, or leave empty")
        check_range("containers.max_memory_mb", self.max_memory_mb, 16, 1 << 24)
        check_range("containers.memory_mb", self.memory_mb, 16, self.max_memory_mb)
        check_range("containers.max_cpus", self.max_cpus, 0.01, 4096)
        check_range("containers.cpus", self.cpus, 0.01, self.max_cpus)
        check_range("containers.pids_limit", self.pids_limit, 16, 1 << 22)
        check_range("containers.tmpfs_mb", self.tmpfs_mb, 1, 1 << 20)
        if self.network not in ("internet", "none"):
            raise ConfigError("containers.network", f"{self.network!r} is not one of internet, none")


@dataclass
class ClusterSettings:
    description: str = ""
    """A cluster description written by `cumulus local up` (fills in the settings below that are left empty)."""
    docker_host: str = ""
    """The Swarm manager's Docker API, e.g. unix:///var/run/docker.sock."""
    image: str = ""
    """The worker image, by id (sha256:...) or digest; a plain tag makes every task try a registry pull. Alone, it
    serves jobs of Python 3.11 (the Debian bookworm image); with ``images``, it is the one infrastructure tasks use
    (empty: the newest of ``images``)."""
    images: dict[str, str] = field(default_factory=dict)
    """Worker images by the Python minor version they run (``{"3.11": "sha256:...", "3.13": "sha256:..."}``; from
    the environment ``3.11=sha256:...,3.13=sha256:...``). A job runs on the image of its client's Python minor; a
    client of any other version is refused at submit (FAILED_PRECONDITION naming these versions)."""
    ssh_user: str = "cumulus"
    ssh_key: str = ""
    known_hosts: str = ""
    """Pinned host keys of workers set up by hand (joined ones carry theirs: the ``cumulus.host_key`` label)."""
    ssh_connect_timeout: float = 10.0
    holder: str = "/opt/cumulus/bin/cumulus-partition-holder"
    jobs_dir: str = "/var/lib/cumulus/jobs"
    allow_non_gpu_devices: bool = False
    """Let jobs run on devices that are not GPUs (the CPU OpenCL device of a machine without GPU)."""
    poll_interval: float = 0.2
    """How often the Swarm task list is polled, in seconds (0.05..5)."""
    worker_files: str = ""
    """The worker_image/ directory served to joining hosts; empty: the one next to the cumulus package."""

    def validate(self) -> None:
        check_range("cluster.ssh_connect_timeout", self.ssh_connect_timeout, 0.1, 600)
        check_range("cluster.poll_interval", self.poll_interval, 0.05, 5)
        for key, image in [("cluster.image", self.image)] + [(f"cluster.images[{v!r}]", i)
                                                                 for v, i in self.images.items()]:
            if image and not image.startswith("sha256:") and "@sha256:" not in image:
                raise ConfigError(key, f"{image!r} is a tag; give the image id (sha256:...) or a digest")
        for version in self.images:
            if not re.fullmatch(r"3\.\d{1,2}", version):
                raise ConfigError("cluster.images", f"{version!r} is not a Python minor version; write 3.11, 3.13, ...")

    def worker_images(self) -> dict[str, str]:
        """The images jobs run on, by Python minor version (``images``, else ``image`` as Python 3.11's)."""
        if self.images:
            return dict(self.images)
        return {IMAGE_PYTHON_DEFAULT: self.image} if self.image else {}

    def default_image(self) -> str:
        """The image infrastructure tasks run (pulls): ``image``, else the newest of ``images``."""
        if self.image or not self.images:
            return self.image
        return self.images[max(self.images, key=python_minor_key)]

    def image_for(self, python: str) -> str:
        """The worker image for jobs of Python minor ``python`` (a job journaled before versions were kept has
        none: the default image)."""
        return self.worker_images().get(python) or self.default_image()


IMAGE_PYTHON_DEFAULT = "3.11"
"""The Python minor of a worker image given as ``cluster.image`` alone (the local cluster's bookworm image)."""


def python_minor_key(version: str) -> tuple[int, ...]:
    """``"3.13"`` -> ``(3, 13)``: Python versions in numeric order."""
    return tuple(int(part) for part in version.split(".") if part.isdigit())


@dataclass
class JobSettings:
    max_package_mb: int = MAX_PACKAGE_MB
    default_duration: int = 3600
    max_duration: int = 86400
    release_timeout: float = 30.0
    """Upper bound for releasing one resource (partition, service, files) during teardown."""
    stop_grace: float = 1.0
    """Seconds a job gets between SIGTERM and SIGKILL when it is stopped."""
    result_retention: int = 86400
    """How long results of finished jobs are kept, in seconds."""
    default_retries: int = 2
    """Retries after an infrastructure failure (node lost, partition failed, container rejected) when a job
    asks for none; user exceptions are retried only when the job says retry_exceptions."""
    max_queue: int = 1000
    """Jobs that may wait for capacity at once; beyond that a submission is refused (RESOURCE_EXHAUSTED)."""
    max_jobs_per_device: int = 16
    """Jobs that may share one device at once, however small their shares."""
    image_registries: list[str] = field(default_factory=list)
    """Registries user images (``image=``) may come from, as hosts (``registry.example.com``, ``10.0.0.5:5000``,
    ``docker.io`` for Docker Hub). Empty: jobs run on the worker images only."""
    package_indexes: list[str] = field(default_factory=list)
    """Package indexes a job may install its requirements from (``index_url=``), as their simple-API URLs
    (``https://pypi.example.com/simple/``); credentials are not written here but stored per user
    (``cumulus index login``)."""
    max_checkpoint_mb: int = 256
    """The largest checkpoint a job may save (``cumulus.checkpoint.save`` refuses a bigger one)."""
    checkpoint_retention: int = 3
    """Checkpoints kept per job in the supervisor's store (the newest); a job's are removed when it ends."""
    pause_grace: float = 60.0
    """Seconds a job asked to pause (``cumulus pause``) has to return before it is stopped, PAUSED at its last
    checkpoint (a pause request may give its own)."""
    warm_per_device: int = 1  # warm services per device of each worker: started containers, one job each (0: off)

    def validate(self) -> None:
        check_range("jobs.max_package_mb", self.max_package_mb, 1, 2048)
        check_range("jobs.max_duration", self.max_duration, 1, 86400)
        check_range("jobs.default_duration", self.default_duration, 1, self.max_duration)
        check_range("jobs.release_timeout", self.release_timeout, 1, 600)
        check_range("jobs.stop_grace", self.stop_grace, 0, 60)
        check_range("jobs.result_retention", self.result_retention, 0, 365 * 86400)
        check_range("jobs.max_queue", self.max_queue, 0, 1_000_000)
        check_range("jobs.default_retries", self.default_retries, 0, 100)
        check_range("jobs.max_jobs_per_device", self.max_jobs_per_device, 1, 100)
        check_range("jobs.max_checkpoint_mb", self.max_checkpoint_mb, 1, 16384)
        check_range("jobs.checkpoint_retention", self.checkpoint_retention, 1, 1000)
        check_range("jobs.pause_grace", self.pause_grace, 0, 86400)
        check_range("jobs.warm_per_device", self.warm_per_device, 0, 8)
        for index, registry in enumerate(self.image_registries):
            problem = registry_problem(registry)
            if problem:
                raise ConfigError(f"jobs.image_registries[{index}]", problem)
        for index, url in enumerate(self.package_indexes):
            problem = index_url_problem(url)
            if problem:
                raise ConfigError(f"jobs.package_indexes[{index}]", problem)


@dataclass
class LeaseSettings:
    renew_interval: float = 5.0
    """Seconds between renewals of every partition lease on a worker (one SSH command per worker)."""
    ttl: float = 30.0
    """A partition whose lease was not renewed for this long is released by its holder, and the job's container
    stops itself: the dead-man switch. A job survives a supervisor restart shorter than this. 0 disables leases
    (partitions then die with the supervisor's SSH sessions)."""

    def validate(self) -> None:
        check_range("lease.renew_interval", self.renew_interval, 0.2, 600)
        if self.ttl:
            check_range("lease.ttl", self.ttl, 2 * self.renew_interval, 86400)


@dataclass
class JournalSettings:
    path: str = "~/.local/state/cumulus/journal.sqlite3"


@dataclass
class LoggingSettings:
    level: str = "INFO"
    format: str = "text"
    """``text`` (one human line per record) or ``json`` (one object per line: time, level, logger, message, and
    job_id, attempt, worker, user, trace_id where known)."""

    def validate(self) -> None:
        allowed = ("DEBUG", "INFO", "WARNING", "ERROR")
        if self.level.upper() not in allowed:
            raise ConfigError("logging.level", f"{self.level!r} is not one of {', '.join(allowed)}")
        self.level = self.level.upper()
        if self.format not in ("text", "json"):
            raise ConfigError("logging.format", f"{self.format!r} is not one of text, json")


@dataclass
class Settings:
    supervisor_id: str = ""
    """Label put on everything this supervisor creates; orphans are found by it. Generated when empty."""
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    containers: ContainerSettings = field(default_factory=ContainerSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    journal: JournalSettings = field(default_factory=JournalSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    usage: UsageSettings = field(default_factory=UsageSettings)

    def validate(self) -> Settings:
        if not self.supervisor_id:
            self.supervisor_id = f"sup-{uuid.uuid4().hex[:8]}"
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", self.supervisor_id):
            raise ConfigError("supervisor_id", f"{self.supervisor_id!r}: use 1-63 of a-z, 0-9 and '-'")
        for section in (self.grpc, self.server, self.security, self.containers, self.cluster, self.jobs,
                        self.lease, self.logging, self.usage):
            section.validate()
        return self


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build validated settings from defaults, the YAML file at ``path``, ``environ`` and ``overrides``.

    ``overrides`` uses dotted keys (``{"grpc.listen": "127.0.0.1:50555"}``), as command-line flags do.
    Raises ConfigError for anything invalid, FileNotFoundError-free: a missing file is a ConfigError too.
    """
    environ = os.environ if environ is None else environ
    settings = Settings()
    if path is not None:
        apply_mapping(settings, read_yaml(Path(path)), prefix="")
    apply_environment(settings, environ)
    for dotted, value in (overrides or {}).items():
        set_dotted(settings, dotted, value)
    return settings.validate()


def apply_cluster_description(settings: Settings) -> Settings:
    """Fill empty ``cluster.*`` settings from the description file named by ``cluster.description``.

    Raises ConfigError if the file is missing or malformed. Settings given explicitly are kept.
    """
    import json

    path = settings.cluster.description
    if not path and not settings.cluster.docker_host and Path(LOCAL_CLUSTER_DESCRIPTION).exists():
        path = settings.cluster.description = LOCAL_CLUSTER_DESCRIPTION  # the local cluster, if one is up
    if not path:
        return settings
    try:
        described = json.loads(Path(path).expanduser().read_text())
    except OSError as error:
        raise ConfigError("cluster.description", f"cannot read {path}: {error.strerror or error}"
                          " (is the cluster up? `cumulus local up`)") from None
    except ValueError as error:
        raise ConfigError("cluster.description", f"{path} is not JSON: {error}") from None
    cluster = settings.cluster
    cluster.docker_host = cluster.docker_host or f"unix://{described.get('manager_socket', '')}"
    if not cluster.image and not cluster.images:  # an image given in the settings is the operator's choice
        cluster.images = dict(described.get("images", {}))
    cluster.image = cluster.image or described.get("image_id", "")
    cluster.ssh_user = described.get("ssh_user", cluster.ssh_user) if cluster.ssh_user == "cumulus" else cluster.ssh_user
    cluster.ssh_key = cluster.ssh_key or described.get("ssh_key", "")
    cluster.known_hosts = cluster.known_hosts or described.get("known_hosts", "")
    cluster.holder = described.get("holder", cluster.holder)
    cluster.jobs_dir = described.get("jobs_dir", cluster.jobs_dir)
    cluster.validate()
    return settings


def parse_host_port(text: str, *, key: str = "address", allow_any_port: bool = False) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:50051`` for IPv6); ConfigError with the key name when malformed.

    ``allow_any_port``: port 0 is accepted (a server listening on any free port)."""
    match = _HOST_PORT.match(text.strip())
    low = 0 if allow_any_port else 1
    if not match or not low <= int(match["port"]) < 65536:
        raise ConfigError(key, f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:50051, port 1..65535)")
    return match["host"].strip("[]"), int(match["port"])


def default_address(environ: Mapping[str, str] | None = None) -> str:
    """Where clients find the supervisor: ``CUMULUS_ADDRESS``, else the local cluster's, else 127.0.0.1:50051."""
    environ = os.environ if environ is None else environ
    if environ.get("CUMULUS_ADDRESS"):
        return environ["CUMULUS_ADDRESS"]
    local = Path(environ.get("CUMULUS_LOCAL_STATE", "/var/lib/cumulus-local")) / "supervisor.json"
    try:
        import json

        return str(json.loads(local.read_text())["address"])
    except (OSError, ValueError, KeyError):
        return DEFAULT_ADDRESS


# ---- internals ----------------------------------------------------------------------------------------------------
