"""The ``cumulus submit`` command's flags (:func:`add_submit_flags`) and how they become the call and its options
(:func:`submit_request`): ``FILE.py:FUNC`` loaded like ``python FILE``, ``--arg``/``--kwarg`` as JSON, ``--env``,
the secret env (flags and files), the container's limits, and the runtime env (``--py-module``, ``--working-dir``,
``--files``: the SDK's ``py_modules``, ``working_dir`` and ``files``). The command itself (submitting, following
the job, printing its result) is :mod:`cumulus.client.cli`'s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Callable

from cumulus.client.cli_flags import DIRECTORY_COMPLETION, FILE_COMPLETION, UsageError


def add_submit_flags(sub: argparse.ArgumentParser) -> None:
    """The arguments of ``cumulus submit`` (the global flags come from the parser's parents)."""
    sub.add_argument("target", metavar="FILE.py:FUNC").complete = FILE_COMPLETION  # type: ignore[attr-defined]
    sub.add_argument("--gpu", type=float, default=None, help="share of one device (0 < G <= 1) or whole devices "
                     "1..8 (default: the function's @remote option, else 0.5)")
    sub.add_argument("--duration", type=int, default=None, metavar="SECONDS", help="time limit of the job")
    sub.add_argument("--requirements", action="append", default=[], metavar="REQ",
                     help="a PEP 508 requirement to install; repeat for more: --requirements numpy --requirements "
                     "'torch>=2'")
    sub.add_argument("--arg", action="append", default=[], metavar="JSON", help="a positional argument (JSON); "
                     "repeat for more")
    sub.add_argument("--kwarg", action="append", default=[], metavar="NAME=JSON", help="a keyword argument")
    sub.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment for the job")
    sub.add_argument("--secret-env", action="append", default=[], metavar="NAME=VALUE",
                     help="environment for the job whose value is never stored in clear nor logged (a value given "
                     "here is visible in the process list: prefer --secret-env-file)")
    secret_file = sub.add_argument("--secret-env-file", action="append", default=[], metavar="PATH",
                                   help="secret environment from a file of NAME=VALUE lines (blank lines and # "
                                   "comments ignored; values taken as they are, no quotes removed)")
    secret_file.complete = FILE_COMPLETION  # type: ignore[attr-defined]
    sub.add_argument("--name", default=None, help="a name for humans")
    sub.add_argument("--memory", default=None, metavar="SIZE", help="memory limit of the job's container: MiB "
                     "(4096) or with a unit (512MiB, 8GiB); default: the supervisor's containers.memory_mb")
    sub.add_argument("--cpus", type=float, default=None, help="CPU cores the job may use (e.g. 2 or 0.5); "
                     "default: the supervisor's containers.cpus")
    sub.add_argument("--network", choices=("internet", "none"), default=None, help="internet: filtered egress "
                     "(no private, link-local or cluster addresses); none: no network at all; default: the "
                     "supervisor's containers.network")
    sub.add_argument("--py-module", action="append", default=[], dest="py_modules", metavar="MODULE",
                     help="ship a module with the job, importable under its name: a module name (helpers, pkg.sub) "
                     "or the path of a .py file or package directory; repeat for more. Modules the function "
                     "uses that are not installed are shipped without it").complete = (  # type: ignore[attr-defined]
        FILE_COMPLETION)
    sub.add_argument("--working-dir", default=None, metavar="DIR", help="a directory whose contents become the "
                     "job's working directory (its modules importable, its files at the same relative paths)"
                     ).complete = DIRECTORY_COMPLETION  # type: ignore[attr-defined]
    sub.add_argument("--files", action="append", default=[], metavar="PATH", help="a file or directory "
                     "(recursive) to ship into the job's working directory, at its path relative to the current "
                     "directory (or under its own name when outside it); repeat for more"
                     ).complete = FILE_COMPLETION  # type: ignore[attr-defined]
    sub.add_argument("--image", default=None, metavar="REF", help="run in this image (REGISTRY/NAME:TAG, from a "
                     "registry the cluster allows) instead of the worker image: it needs a python3 of this "
                     "client's version, nothing of Cumulus")
    sub.add_argument("--index-url", default=None, metavar="URL", help="install --requirements from this package "
                     "index (one the cluster allows; credentials: `cumulus index login URL`)")
    sub.add_argument("--resume-on-timeout", action="store_true", default=None,
                     help="at --duration, stop the job and run it again from its last checkpoint instead of failing")
    sub.add_argument("--detach", action="store_true", help="print the job id (-o json: {\"job_id\": ...}) and "
                     "return at once")


def submit_request(args: argparse.Namespace) -> tuple[Callable[..., Any], list[Any], dict[str, Any], dict[str, Any]]:
    """The function, its positional and keyword arguments and the options that ``args`` ask for (UsageError for
    a wrong command line; the options are checked by the SDK when submitting)."""
    func = load_function(args.target)
    call_args = [_json_value(a, "--arg") for a in args.arg]
    call_kwargs = {k: _json_value(v, "--kwarg") for k, v in _pairs(args.kwarg, "--kwarg")}
    options: dict[str, Any] = {"log_to_driver": False}
    if args.gpu is not None:
        options["gpu"] = args.gpu
    if args.duration is not None:
        options["duration"] = args.duration
    if args.requirements:
        options["requirements"] = args.requirements
    if args.env:
        options["env"] = dict(_pairs(args.env, "--env"))
    secret_env = _secret_env(args.secret_env, args.secret_env_file)
    if secret_env:
        options["secret_env"] = secret_env
    if args.name:
        options["name"] = args.name
    if args.memory is not None:  # MiB as digits, else a size string: the SDK checks both
        options["memory"] = int(args.memory) if args.memory.strip().isdigit() else args.memory
    for option in ("cpus", "network", "working_dir", "image", "index_url", "resume_on_timeout"):
        if getattr(args, option) is not None:
            options[option] = getattr(args, option)
    for option in ("py_modules", "files"):  # given, they replace the function's @remote option
        if getattr(args, option):
            options[option] = getattr(args, option)
    return func, call_args, call_kwargs, options


def load_function(target: str) -> Callable[..., Any]:
    """Import FILE.py and return FUNC from it (the file's directory goes first on sys.path, like ``python FILE``)."""
    path_text, sep, func_name = target.rpartition(":")
    if not sep or not path_text or not func_name:
        raise UsageError(f"{target!r}: give FILE.py:FUNC (e.g. examples/hello.py:add)")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"{path}: no such file (give FILE.py:FUNC)")
    module_name = path.stem if path.stem.isidentifier() else "cumulus_job_module"
    sys.path.insert(0, str(path.resolve().parent))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: not a Python file (give FILE.py:FUNC)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # importable by name while it is pickled (by value)
    spec.loader.exec_module(module)
    func: Any = module
    for part in func_name.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise UsageError(f"{path} has no {func_name!r}")
    if not callable(func):
        raise UsageError(f"{path}:{func_name} is not callable")
    return func  # type: ignore[no-any-return]


def _json_value(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise UsageError(f"{what} {text!r} is not JSON ({error}); quote strings: {what} '\"text\"'") from None


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{what} {item!r}: use NAME=VALUE")
        out.append((name, value))
    return out


def _secret_env(items: list[str], paths: list[str]) -> dict[str, str]:
    """``--secret-env`` pairs and ``--secret-env-file`` lines; usage errors name the flag, file and line, never
    what was given (it may be a secret)."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError("--secret-env: use NAME=VALUE (the argument given has no NAME= part)")
        pairs[name] = value
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"--secret-env-file {path}: cannot read it ({type(error).__name__}: "
                             f"{getattr(error, 'strerror', None) or 'not UTF-8'})") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, value = line.partition("=")
            if not sep or not name.strip():
                raise UsageError(f"--secret-env-file {path}: line {number} is not NAME=VALUE")
            pairs[name.strip()] = value
    return pairs
