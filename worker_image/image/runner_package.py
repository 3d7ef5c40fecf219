"""The runner's half of the job format: /opt/cumulus/runner_package.py in the worker image, next to runner.py.

Standalone like the runner (the stdlib only; nothing from ``cumulus``): a copy of the names, the limits, the
member-name rule and the reserved env prefix of ``cumulus.jobformat`` (tests/test_jobformat_runner_copy.py checks
that the copies agree: change both together), the extraction of a package, which checks every member again,
where the job's working directory (the files area) is, and the job's env (the manifest's, and its secret env).
"""

from __future__ import annotations

import json
import os
import stat
import string
import zipfile

# ---- a copy of the job format's names and limits (cumulus/jobformat/limits.py)
FORMAT = 1
FILES_FORMAT = 2  # a manifest whose package has a files area
MANIFEST_FORMATS = (FORMAT, FILES_FORMAT)
MANIFEST = "cumulus-job.json"
CALL = "call.pkl"
FILES = "files/"  # the files area: the job's working directory
PACKAGE_NAME = "package.zip"
RESULT_NAME = "result.msgpack"
MiB = 1024 * 1024
MAX_PACKAGE_MB = 50  # the default limit; CUMULUS_MAX_PACKAGE_BYTES overrides it (the supervisor's jobs.max_package_mb)
UNCOMPRESSED_FACTOR = 8
MAX_MEMBERS = 10_000
MAX_MANIFEST_BYTES = 1 * MiB
RESERVED_ENV_PREFIX = "CUMULUS_"  # in any case
# ---- end of the copy

MAX_PACKAGE_BYTES = int(os.environ.get("CUMULUS_MAX_PACKAGE_BYTES", str(MAX_PACKAGE_MB * MiB)))
MAX_UNCOMPRESSED = UNCOMPRESSED_FACTOR * MAX_PACKAGE_BYTES


class InfraFailure(Exception):
    """A failure of the job's packaging or environment, not of the job's code."""

    def __init__(self, exc_type: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.message = message
        self.detail = detail


def member_problem(name: str) -> str | None:
    """Why an archive member name is unsafe (None when it is fine): a copy of
    cumulus.jobformat.check_member_name, same rule and same words (tests/test_jobformat_runner_copy.py)."""
    if not name or "\0" in name:
        return "empty name or NUL byte"
    if "\\" in name:
        return "backslash in the name; use '/' as the separator"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0] in string.ascii_letters):
        return "absolute path; entries must be relative paths"
    parts = name.rstrip("/").split("/")
    if any(p == ".." for p in parts):
        return "'..' path component; entries must stay inside the package"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' path component"
    return None


def job_env(env: object) -> dict:
    """The manifest's ``env`` as applied to the job: string pairs, without Cumulus's own names (the
    ``CUMULUS_`` prefix in any case, as cumulus.jobformat.is_reserved_env_name)."""
    if not isinstance(env, dict):
        return {}
    return {k: v for k, v in env.items()
            if isinstance(k, str) and isinstance(v, str) and not k.upper().startswith(RESERVED_ENV_PREFIX)}


def extract(package: str, dest: str) -> dict:
    """Extract the package into dest (regular files only, every path checked); returns the manifest."""
    try:
        size = os.path.getsize(package)
    except OSError as exc:
        raise InfraFailure("cumulus.InvalidPackage", f"cannot read the job package {package}: {exc}") from None
    if size > MAX_PACKAGE_BYTES:
        raise InfraFailure("cumulus.InvalidPackage", f"job package is {size} bytes, over {MAX_PACKAGE_BYTES}")
    try:
        zf = zipfile.ZipFile(package)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InfraFailure("cumulus.InvalidPackage", f"job package is not a valid zip archive: {exc}") from None
    if len(infos) > MAX_MEMBERS:
        raise InfraFailure("cumulus.InvalidPackage", f"job package has {len(infos)} entries (max {MAX_MEMBERS})")
    root = os.path.realpath(dest)
    total = 0
    seen = set()
    with zf:
        for info in infos:
            name = info.filename
            problem = member_problem(name)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if not problem and kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                problem = "symbolic link or special file"
            if not problem and info.flag_bits & 0x1:
                problem = "encrypted"
            if not problem and info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                problem = f"compression method {info.compress_type} (only stored and deflate)"
            if not problem and name.rstrip("/") in seen:
                problem = "duplicate entry"
            if problem:
                raise InfraFailure("cumulus.InvalidPackage", f"job package entry {name!r}: {problem}")
            seen.add(name.rstrip("/"))
            target = os.path.realpath(os.path.join(root, *name.rstrip("/").split("/")))
            if target != root and not target.startswith(root + os.sep):
                raise InfraFailure("cumulus.InvalidPackage", f"job package entry {name!r} leaves the work dir")
            if name.endswith("/") or kind == stat.S_IFDIR:
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            written = 0
            try:
                with zf.open(info) as src, open(target, "xb") as out:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        written += len(chunk)
                        total += len(chunk)
                        if written > info.file_size or total > MAX_UNCOMPRESSED:
                            raise InfraFailure("cumulus.InvalidPackage",
                                               f"job package entry {name!r} inflates beyond its declared size "
                                               f"or the {MAX_UNCOMPRESSED}-byte limit (zip bomb?)")
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise InfraFailure("cumulus.InvalidPackage", f"job package entry {name!r}: {exc}") from None
            os.chmod(target, 0o644)
    try:
        with open(os.path.join(root, MANIFEST), "rb") as f:
            manifest = json.loads(f.read(MAX_MANIFEST_BYTES + 1).decode("utf-8"))
    except FileNotFoundError:
        raise InfraFailure("cumulus.InvalidPackage", f"job package has no {MANIFEST}") from None
    except ValueError as exc:
        raise InfraFailure("cumulus.InvalidPackage", f"{MANIFEST} is not valid JSON: {exc}") from None
    got = manifest.get("format") if isinstance(manifest, dict) else "?"
    if isinstance(got, bool) or got not in MANIFEST_FORMATS:
        raise InfraFailure("cumulus.InvalidPackage",
                           f"{MANIFEST}: unsupported format {got!r} (this runner understands formats "
                           f"{', '.join(map(str, MANIFEST_FORMATS))})")
    if not os.path.isfile(os.path.join(root, CALL)):
        raise InfraFailure("cumulus.InvalidPackage", f"job package has no {CALL}")
    return manifest


def files_area(work: str) -> str:
    """The job's working directory: the files area extracted in ``work`` (made empty when the package has none)."""
    path = os.path.join(work, FILES.rstrip("/"))
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        raise InfraFailure("cumulus.InvalidPackage", f"job package entry {FILES.rstrip('/')!r} is not a directory "
                                                     f"(the name is the files area's)")
    os.makedirs(path, exist_ok=True)
    return path


SECRET_ENV_FILE = "/run/secrets/cumulus-secret-env"  # cumulus.resources.swarm_spec.SECRET_ENV_FILE, as Swarm mounts it


def read_secret_env() -> dict:
    """The job's secret env: the JSON object Swarm put in ``$CUMULUS_SECRET_ENV_FILE`` (default
    /run/secrets/cumulus-secret-env; none there: ``{}``), filtered like the manifest's env. Never printed: a file
    that cannot be read or decoded is an InfraFailure that names the file only, not what is in it."""
    path = os.environ.get("CUMULUS_SECRET_ENV_FILE") or SECRET_ENV_FILE
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InfraFailure("cumulus.SecretEnvUnreadable", f"cannot read the job's secret env {path}: "
                                                          f"{exc.strerror or type(exc).__name__}") from None
    try:
        values = json.loads(data.decode("utf-8", "surrogatepass"))
    except ValueError:
        values = None
    if not isinstance(values, dict):
        raise InfraFailure("cumulus.SecretEnvUnreadable", f"the job's secret env {path} is not a JSON object "
                                                          f"(contents not shown)")
    return job_env(values)
