"""The options of a job as the SDK takes them (``@remote(...)``, ``.options(...)``, ``CumulusClient.submit_call``):
their names (:class:`RemoteOptions`, :data:`OPTION_NAMES`) and :func:`normalize_options`, which checks them early
so that a typo or a bad value fails at the call site, not on the supervisor.

Every problem with an option raises :class:`~cumulus.errors.InvalidRequest`, and only that: an unknown name, two
options that disagree, a value of the wrong type or out of range. It is the exception the same mistake raises when
the supervisor finds it (``INVALID_ARGUMENT``), so one ``except InvalidRequest`` (or ``except CumulusError``)
catches a bad request wherever it was found, and the CLI reports it as a refused request. The rules of the job
format (gpu share, requirements, env) are :mod:`cumulus.jobformat.request`'s, the supervisor's own.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

from cumulus.client.runtime_env import as_path, as_paths, as_py_modules
from cumulus.errors import InvalidRequest
from cumulus.jobformat import check_env, check_gpu_share, check_requirements
from cumulus.jobformat.request import check_secret_env
from cumulus.jobformat.sources import check_index_url, parse_image_reference

DEFAULT_GPU = 0.5  # the supervisor's JobSpec default
OPTION_NAMES = frozenset({
    "gpu", "gpu_memory", "duration", "requirements", "env", "retries", "retry_exceptions", "timeout", "name",
    "priority", "max_queue_seconds", "idempotency_key", "log_to_driver", "address", "project_root",
    "memory", "cpus", "network", "secret_env", "py_modules", "working_dir", "files", "image", "index_url",
    "resume_on_timeout", "max_restarts",
})
CLASS_ONLY = frozenset({"max_restarts"})
"""Options of ``@remote`` on a class only (a class instance is made again after it died, up to this often)."""
FUNCTION_ONLY = frozenset({"retries", "retry_exceptions", "resume_on_timeout"})
"""Options of ``@remote`` on a function only: an instance is not re-run from the start, it is restarted."""
NETWORKS = ("internet", "none")
MIN_MEMORY_MIB = 16  # the supervisor's floor too (containers.memory_mb); its ceiling is its own setting
MAX_CPUS = 4096.0  # a sanity bound; the supervisor's containers.max_cpus is the real one
_MEMORY = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(MiB|GiB|TiB)\s*", re.IGNORECASE)
_UNIT = {"mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


class RemoteOptions(TypedDict, total=False):
    """The options of ``@remote(...)``, ``.options(...)`` and :meth:`CumulusClient.submit_call` (None: the default).

    See :class:`cumulus.client.remote.RemoteFunction` for what each one means.
    """

    gpu: float | None
    gpu_memory: float | None
    duration: int | None
    requirements: str | Iterable[str] | None
    env: dict[str, str] | None
    retries: int | None
    retry_exceptions: bool | None
    resume_on_timeout: bool | None
    timeout: float | None
    name: str | None
    priority: int | None
    max_queue_seconds: int | None
    idempotency_key: str | None
    log_to_driver: bool | None
    address: str | None
    project_root: str | os.PathLike[str] | None
    memory: int | str | None
    cpus: float | None
    network: str | None
    secret_env: dict[str, str] | None
    py_modules: Sequence[types.ModuleType | str | os.PathLike[str]] | None
    working_dir: str | os.PathLike[str] | None
    files: Sequence[str | os.PathLike[str]] | None
    image: str | None
    index_url: str | None
    max_restarts: int | None


def normalize_options(options: Mapping[str, Any], *, for_class: bool = False) -> dict[str, Any]:
    """The options checked and in canonical form (``None`` values dropped, ``gpu_memory`` folded into ``gpu``,
    ``requirements`` a tuple of stripped strings, ``duration`` an int, ``memory`` in bytes (given in MiB as an
    int, or as a string like ``"512MiB"`` / ``"8GiB"``), ``cpus`` a float, ``network`` ``internet`` or ``none``,
    ``secret_env`` checked like ``env`` and against it: no name in both, see
    :func:`~cumulus.jobformat.request.check_secret_env`; ``py_modules`` a tuple of modules and str, ``files`` a
    tuple of str, ``working_dir`` a str: their shapes only, the paths are looked at when the call is packed, see
    :mod:`cumulus.client.runtime_env`; ``image`` a normalised image reference and ``index_url`` a normalised URL,
    see :mod:`cumulus.jobformat.sources`: the supervisor says which registries and indexes it allows).
    ``for_class``: the options of ``@remote`` on a class, whose instance is one long job serving method calls:
    ``max_restarts`` (an int >= 0) is allowed there only, and ``retries``, ``retry_exceptions`` and
    ``resume_on_timeout`` are refused there (a restarted instance is made anew, not its calls re-run).

    Raises :class:`~cumulus.errors.InvalidRequest` naming the option, the value given and what is allowed (never a
    value of ``secret_env``: its messages name the variable only).
    """
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        guesses = sorted({g for name in unknown for g in difflib.get_close_matches(name, OPTION_NAMES, n=1)})
        hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
        raise InvalidRequest(f"unknown option(s) {', '.join(unknown)}{hint}; "
                             f"allowed: {', '.join(sorted(OPTION_NAMES))}")
    opts = dict(options)
    alias = opts.pop("gpu_memory", None)
    if alias is not None:
        if opts.get("gpu") is not None and opts["gpu"] != alias:
            raise InvalidRequest(f"gpu={opts['gpu']!r} and gpu_memory={alias!r} disagree; gpu_memory is an alias "
                                 f"of gpu, give one of them")
        opts["gpu"] = alias
    opts = {k: v for k, v in opts.items() if v is not None}
    if "gpu" in opts:
        opts["gpu"] = check_gpu_share(opts["gpu"])
    if "duration" in opts:
        opts["duration"] = _whole_seconds(opts["duration"])
    if "requirements" in opts:
        reqs = opts["requirements"]
        if isinstance(reqs, str):
            reqs = [reqs]
        if not isinstance(reqs, Iterable):
            raise InvalidRequest(f"requirements={reqs!r}: give a list of PEP 508 requirements such as "
                                 f"['numpy>=1.26']")
        opts["requirements"] = tuple(check_requirements(reqs))
    if "env" in opts:
        if not isinstance(opts["env"], dict):
            raise InvalidRequest(f"env must be a dict of str to str, got {type(opts['env']).__name__}")
        opts["env"] = check_env(opts["env"])
    if "secret_env" in opts:
        if not isinstance(opts["secret_env"], dict):
            raise InvalidRequest(f"secret_env must be a dict of str to str, got {type(opts['secret_env']).__name__}")
        opts["secret_env"] = check_secret_env(opts["secret_env"], opts.get("env") or {})
    _check_kind(opts, for_class)
    for key in ("retries", "priority", "max_queue_seconds", "max_restarts"):
        value = opts.get(key)
        if key in opts and (isinstance(value, bool) or not isinstance(value, int)
                            or (value < 0 and key != "priority")):
            kind = "an" if key == "priority" else "a non-negative"
            raise InvalidRequest(f"{key}={value!r} must be {kind} integer")
    for key in ("retry_exceptions", "resume_on_timeout", "log_to_driver"):
        if key in opts and not isinstance(opts[key], bool):
            raise InvalidRequest(f"{key}={opts[key]!r} must be True or False")
    if "timeout" in opts:
        t = opts["timeout"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t) or t < 0:
            raise InvalidRequest(f"timeout={t!r} must be seconds >= 0 (or None to wait forever)")
    for key in ("name", "idempotency_key", "address"):
        if key in opts and not isinstance(opts[key], str):
            raise InvalidRequest(f"{key}={opts[key]!r} must be a string")
    if "project_root" in opts and not isinstance(opts["project_root"], (str, os.PathLike)):
        raise InvalidRequest(f"project_root={opts['project_root']!r} must be a path (str or os.PathLike)")
    if opts.get("image") is not None:  # the shape here; the supervisor says which registries it allows
        opts["image"] = str(parse_image_reference(opts["image"]))
    if opts.get("index_url") is not None:
        opts["index_url"] = check_index_url(opts["index_url"])
    if "py_modules" in opts:
        opts["py_modules"] = as_py_modules(opts["py_modules"])
    if "files" in opts:
        opts["files"] = as_paths(opts["files"], "files")
    if "working_dir" in opts:
        opts["working_dir"] = as_path(opts["working_dir"], "working_dir")
    if "memory" in opts:
        opts["memory"] = memory_bytes(opts["memory"])
    if "cpus" in opts:
        opts["cpus"] = check_cpus(opts["cpus"])
    if "network" in opts and opts["network"] not in NETWORKS:
        raise InvalidRequest(f"network={opts['network']!r}: give 'internet' (filtered egress: no private, "
                             f"link-local or cluster addresses) or 'none' (no network at all)")
    return opts


def _check_kind(opts: Mapping[str, Any], for_class: bool) -> None:
    """The options that only a class, or only a function, takes (given as None they were dropped already)."""
    if for_class:
        wrong = sorted(FUNCTION_ONLY & set(opts))
        if wrong:
            raise InvalidRequest(f"{', '.join(wrong)}: not for a class: its instance is one job that serves calls, "
                                 f"not a call to re-run; use max_restarts=N to make it again (up to N times) after "
                                 f"it died")
        return
    wrong = sorted(CLASS_ONLY & set(opts))
    if wrong:
        raise InvalidRequest(f"{', '.join(wrong)}: only for @remote on a class (how often its instance is made "
                             f"again after it died); a function job takes retries=N instead")


def memory_bytes(memory: Any) -> int:
    """The container memory limit in bytes from ``memory``: MiB as an int (``4096``) or a string with a binary
    unit (``"512MiB"``, ``"8GiB"``, ``"1.5TiB"``). At least 16 MiB; the supervisor applies its own maximum.
    Raises :class:`InvalidRequest` saying how to write it."""
    how = "give MiB as an int (e.g. 4096) or a string like '512MiB' or '8GiB'"
    if isinstance(memory, bool):
        raise InvalidRequest(f"memory={memory!r}: {how}")
    if isinstance(memory, int):
        size = memory << 20
    elif isinstance(memory, str) and (m := _MEMORY.fullmatch(memory)):
        size = int(float(m.group(1)) * _UNIT[m.group(2).lower()])
    else:
        raise InvalidRequest(f"memory={memory!r}: {how}")
    if size < MIN_MEMORY_MIB << 20:
        raise InvalidRequest(f"memory={memory!r} is below the minimum of {MIN_MEMORY_MIB} MiB")
    return size


def check_cpus(cpus: Any) -> float:
    """``cpus`` (cores, fractions allowed) as a float within 0.01..4096; the supervisor applies its own maximum."""
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not math.isfinite(cpus) or not (
            0.01 <= cpus <= MAX_CPUS):
        raise InvalidRequest(f"cpus={cpus!r}: give the CPU cores the job may use, a number within 0.01..{MAX_CPUS:g}"
                             f" (e.g. 2 or 0.5)")
    return float(cpus)


def _whole_seconds(d: Any) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0 or (
            isinstance(d, float) and not d.is_integer()):
        raise InvalidRequest(f"duration={d!r}: give whole seconds >= 1 (0 or None for the default)")
    return int(d)
