"""The rules for the fields of a job request that the SDK and the supervisor share: the gpu share, the
requirements and the job's environment.

The SDK checks a request with these functions before it sends it (so a mistake fails at the call site), the
supervisor checks it again on arrival with the same functions and the same messages. Each raises
:class:`~cumulus.errors.InvalidRequest` saying what was given and what is allowed.

One rule each, everywhere:

* **requirements**: a list of PEP 508 requirements, one per item. An empty (or blank) item is refused
  ("empty requirement; remove it") wherever it comes from (``@remote(requirements=...)``, ``build_package``, the
  manifest, the ``requirements`` field of a submission): it is the caller's mistake, never silently dropped.
  Items are stripped of surrounding whitespace.
* **env**: names ``[A-Za-z_][A-Za-z0-9_]*`` (the whole name: ``FOO\n`` is refused); the ``CUMULUS_`` prefix is
  reserved in any case (``cumulus_x`` too: it would shadow Cumulus's own variables on a case-insensitive lookup, and
  is confusing on the others); names read by the loader, the Python interpreter, pip or the container runtime
  (``LD_*``, ``PYTHON*``, ``PIP_*``, ``UV_*``, ``NVIDIA_*``, ``PATH``, ...: :func:`env_name_problem`) are refused,
  because they would change what the trusted steps of a job's container (runner, requirements install) do; at most
  1 MiB in all.
* **gpu**: a share 0.01 <= g <= 1 of one device (smaller shares would over-subscribe a device), or whole devices.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from cumulus.errors import InvalidRequest
from cumulus.redaction import redact_credentials
from cumulus.jobformat.limits import (ENV_NAME_PATTERN, MAX_ENV_TOTAL_BYTES, MAX_ENV_VALUE_LEN, MAX_ENV_VARS,
                                      MAX_REQUIREMENT_LEN, MAX_REQUIREMENTS, MAX_WHOLE_GPUS, MIN_GPU_SHARE, MiB,
                                      RESERVED_ENV_PREFIX)

from cumulus.jobformat.limits import MAX_SECRET_ENV_BYTES

_ENV_NAME = re.compile(ENV_NAME_PATTERN)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_EXAMPLE = "a PEP 508 requirement such as 'numpy>=1.26', 'requests[socks]==2.32.*' or 'pkg @ https://host/pkg.whl'"
_URL_SCHEMES = ("https", "http", "git+https")  # what a worker can fetch; file: names the client's disk


def check_gpu_share(gpu: float) -> float:
    """Return ``gpu`` if it is a valid request: a share 0.01 <= g <= 1 of one device, or a whole number 1..8.

    Raises InvalidRequest saying what is allowed otherwise (a positive share below 0.01: that it is too small).
    """
    allowed = (f"a share of one device 0 < gpu <= 1, at least {MIN_GPU_SHARE:g} (e.g. 0.25, 0.5), or a whole "
               f"number of devices 1..{MAX_WHOLE_GPUS}")
    if isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or not math.isfinite(gpu):
        raise InvalidRequest(f"gpu={gpu!r} is not a number; use {allowed}")
    if MIN_GPU_SHARE <= gpu <= 1 or (float(gpu).is_integer() and 1 <= gpu <= MAX_WHOLE_GPUS):
        return float(gpu)
    if 0 < gpu < MIN_GPU_SHARE:
        raise InvalidRequest(f"gpu={gpu!r} is below the smallest share of a device, {MIN_GPU_SHARE:g}; use {allowed}")
    raise InvalidRequest(f"gpu={gpu!r} is not allowed; use {allowed}")


def check_requirements(requirements: Iterable[Any], *, where: str = "requirements") -> list[str]:
    """The requirements, each stripped, if every one is a single PEP 508 requirement (``numpy>=1.26``,
    ``torch[cuda]==2.3.*; python_version>='3.10'``, ``pkg @ https://host/pkg.whl``).

    Refused: a string instead of a list, more than 200 items, empty items, items over 500 characters, line breaks,
    pip options (``-e``, ``--index-url``, ``-r``), bare URLs or paths, ``file:`` URLs (they name the client's disk).
    ``where`` starts each message (``requirements``, ``cumulus-job.json: requirements``); a message quotes the
    requirement with the credentials of its URLs hidden.
    """
    try:
        return _check_requirements(requirements, where)
    except InvalidRequest as error:
        raise InvalidRequest(redact_credentials(str(error))) from None


def _check_requirements(requirements: Iterable[Any], where: str) -> list[str]:
    if isinstance(requirements, (str, bytes)):
        raise InvalidRequest(f"{where}: give a list of requirements (one per item), not the string "
                             f"{requirements[:60]!r}")
    items = list(requirements)
    if len(items) > MAX_REQUIREMENTS:
        raise InvalidRequest(f"{where}: {len(items)} requirements; at most {MAX_REQUIREMENTS} are allowed")
    return [check_requirement(item, where=where) for item in items]


def check_requirement(item: Any, *, where: str = "requirements") -> str:
    """One requirement of :func:`check_requirements`, stripped."""
    if not isinstance(item, str):
        raise InvalidRequest(f"{where}: requirement {item!r} is not a string; give {_EXAMPLE}")
    text = item.strip()
    if not text:
        raise InvalidRequest(f"{where}: empty requirement {item!r}; remove it (each item is one requirement)")
    if len(text) > MAX_REQUIREMENT_LEN:
        raise InvalidRequest(f"{where}: requirement {text[:40]!r}... is longer than {MAX_REQUIREMENT_LEN} "
                             f"characters")
    if any(c in text for c in "\r\n\0"):
        raise InvalidRequest(f"{where}: requirement {text[:60]!r} contains a line break or NUL; "
                             f"give one requirement per item")
    if text.startswith("-"):
        raise InvalidRequest(f"{where}: {text!r} is a pip option; options are not allowed, give {_EXAMPLE}")
    if _URL.match(text) or text.startswith((".", "/", "~")):
        raise InvalidRequest(f"{where}: {text!r} is a URL or a path, not a requirement; give {_EXAMPLE} "
                             f"(a package that only exists as a URL: 'name @ https://...')")
    url = _parse(text, where)
    if url:
        scheme = url.split(":", 1)[0].lower()
        if scheme not in _URL_SCHEMES:
            raise InvalidRequest(f"{where}: {text!r} points at {scheme}: which a worker cannot reach; "
                                 f"publish the package or use an https:// URL")
    return text


def _parse(text: str, where: str) -> str | None:
    """Parse ``text`` as PEP 508; its URL (``name @ URL``) or None."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - packaging is a dependency of cumulus; keep a strict fallback
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?\s*"
                            r"((~=|==|!=|<=|>=|<|>|===)\s*[A-Za-z0-9.*+!_-]+\s*,?\s*)*", text):
            raise InvalidRequest(f"{where}: {text!r} is not a valid requirement; give {_EXAMPLE}") from None
        return None
    try:
        url: str | None = Requirement(text).url
    except InvalidRequirement as error:
        first = str(error).splitlines()[0]
        raise InvalidRequest(f"{where}: {text!r} is not a valid requirement ({first}); give {_EXAMPLE}") from None
    return url


def check_env(env: Mapping[Any, Any], *, where: str = "env") -> dict[str, str]:
    """A copy of ``env`` if it is a valid job environment: at most 256 variables and 1 MiB (names and values),
    names ``[A-Za-z_][A-Za-z0-9_]*`` (the whole name) that :func:`env_name_problem` accepts, values strings of at
    most 32 KiB without NUL bytes."""
    if not isinstance(env, Mapping):
        raise InvalidRequest(f"{where} must be a dict of str to str, got {type(env).__name__}")
    if len(env) > MAX_ENV_VARS:
        raise InvalidRequest(f"{where} has {len(env)} variables; at most {MAX_ENV_VARS} are allowed")
    out: dict[str, str] = {}
    total = 0
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise InvalidRequest(f"{where} name {key!r} is not a valid variable name: use letters, digits and '_', "
                                 f"not starting with a digit ({ENV_NAME_PATTERN})")
        problem = env_name_problem(key)
        if problem:
            raise InvalidRequest(f"{where} name {key!r}: {problem}")
        if not isinstance(value, str):
            raise InvalidRequest(f"{where} value of {key!r} must be a string, got {type(value).__name__}")
        if "\0" in value:
            raise InvalidRequest(f"{where} value of {key!r} contains a NUL byte")
        if len(value) > MAX_ENV_VALUE_LEN:
            raise InvalidRequest(f"{where} value of {key!r} is {len(value)} characters; at most "
                                 f"{MAX_ENV_VALUE_LEN}")
        total += len(key.encode()) + 1 + len(value.encode("utf-8", "surrogatepass"))
        out[key] = value
    if total > MAX_ENV_TOTAL_BYTES:
        raise InvalidRequest(f"{where} is {total} bytes in all (names and values); at most {MAX_ENV_TOTAL_BYTES} "
                             f"({MAX_ENV_TOTAL_BYTES // MiB} MiB) are allowed: pass big data in the call's arguments "
                             f"or download it in the job")
    return out


# Read by programs that run before (or around) the job's own code in its container; a job that set them could
# change what those trusted steps do: which code the runner's interpreter loads, where pip takes packages from
# (into a cache shared by the node's jobs), which GPUs the container runtime exposes.
_LOADER = ("read by the dynamic loader (it would load code into every process of the job's container); set it in "
           "the job's code for the subprocesses it starts")
_PYTHON = ("read by the Python interpreter that runs Cumulus's runner (PYTHONPATH, PYTHONSTARTUP, PYTHONHOME change "
           "what code it runs); put modules in the package (they are importable) or set it in the job's code for "
           "the subprocesses it starts")
_INSTALLER = ("read by the installer of the job's requirements (PIP_INDEX_URL would change where packages come "
              "from); give a package from elsewhere as a requirement 'name @ https://...'")
_REFUSED_ENV_PREFIXES = (
    ("LD_", _LOADER),
    ("PYTHON", _PYTHON),
    ("PIP_", _INSTALLER),
    ("UV_", _INSTALLER),
    ("NVIDIA_", "read by the NVIDIA container runtime, which decides which GPUs the job's container sees; the job "
                "gets the devices its gpu= share names"),
)
_REFUSED_ENV_NAMES = {
    "PATH": ("it decides which programs (the runner's interpreter, pip) the job's container starts; set "
             "os.environ['PATH'] in the job's code if it needs another"),
    "GCONV_PATH": _LOADER, "GLIBC_TUNABLES": _LOADER, "LOCPATH": _LOADER, "NLSPATH": _LOADER, "MALLOC_TRACE": _LOADER,
}
# PYTHON* variables that load no code, change no path and leave the output encoding alone (the supervisor reads the
# runner's log lines): jobs commonly set them.
_HARMLESS_PYTHON_ENV = frozenset({"PYTHONUNBUFFERED", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE",
                                  "PYTHONFAULTHANDLER", "PYTHONUTF8"})


def env_name_problem(name: str) -> str | None:
    """Why ``name`` may not be set in a job's env, saying what to do instead (``None`` when it may): Cumulus's own
    ``CUMULUS_`` prefix (in any case), or a variable read by the loader (``LD_*``, ``GCONV_PATH``, ...), the
    Python interpreter (``PYTHON*``, except a few harmless ones such as ``PYTHONUNBUFFERED``), the installer
    (``PIP_*``, ``UV_*``), the container runtime (``NVIDIA_*``), or ``PATH``. Names are case-sensitive there, as
    the programs that read them are; the reserved prefix is not."""
    if is_reserved_env_name(name):
        return f"the {RESERVED_ENV_PREFIX} prefix (in any case) is reserved for Cumulus; rename it"
    why = _REFUSED_ENV_NAMES.get(name)
    if why is None and name not in _HARMLESS_PYTHON_ENV:
        why = next((text for prefix, text in _REFUSED_ENV_PREFIXES if name.startswith(prefix)), None)
    if why is None:
        return None
    return "not allowed in a job's env: " + (why if why.startswith("it ") else f"it is {why}")


def is_reserved_env_name(name: str) -> bool:
    """Whether ``name`` is Cumulus's own (``CUMULUS_...`` in any case). The runner has a copy of this rule."""
    return name.upper().startswith(RESERVED_ENV_PREFIX)


def check_secret_env(secret_env: Mapping[Any, Any], env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``secret_env`` if it is valid beside the (checked) ``env``: the rules of :func:`check_env`
    (messages start with ``secret_env``), no name in both, the two within the env limits together (what the job's
    process gets is one environment), and at most 500 KiB as JSON (a Docker Swarm secret carries it to the worker).
    No message ever quotes a value: only names, counts and sizes."""
    secret = check_env(secret_env, where="secret_env")
    both = sorted(set(secret) & set(env))
    if both:
        raise InvalidRequest(f"{', '.join(both)} given in both env and secret_env; give each variable once "
                             f"(secret_env for values that must not be stored in clear nor logged)")
    if secret:
        check_env({**env, **secret}, where="env and secret_env together")
        size = len(json.dumps(secret, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        if size > MAX_SECRET_ENV_BYTES:
            raise InvalidRequest(f"secret_env is {size} bytes as JSON; at most {MAX_SECRET_ENV_BYTES} "
                                 f"({MAX_SECRET_ENV_BYTES // 1024} KiB) are allowed: keep big secrets (key files) "
                                 f"elsewhere and give the job a token to fetch them")
    return secret
