"""The ``cumulus`` command.

Each subcommand lives in the module that owns its subject; this module only builds the parser and dispatches.
Exit status: 0 on success, 1 when the command ran and reports a failure, 2 on bad usage (argparse's convention).
Global flags (``--address``, ``-v``, ``-o json``) go before or after the command (:mod:`cumulus.client.cli_flags`).
Building the parser imports only the standard library and the CLI modules, so that ``cumulus --help``, shell
completion and the job commands work on a client-only install; the server's modules load only when
``cumulus supervisor`` / ``cumulus local`` run, and a missing one is reported as such (:func:`require_server`).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

from cumulus._version import __version__

# Modules only the server needs (the [server] extra); the client needs none of them.
SERVER_MODULES = ("trio", "trio_asyncio", "docker", "asyncssh", "yaml")
SERVER_INSTALL_HINT = "pip install 'cumulus[server]'"
COMPLETION_SHELLS = ("bash", "zsh", "tcsh")


def build_parser() -> argparse.ArgumentParser:
    from cumulus.client import cli as client_cli
    from cumulus.client import index_cli
    from cumulus.client import tokens as token_cli
    from cumulus.client import usage as usage_cli
    from cumulus.client import worker_cli
    from cumulus.client.cli_flags import global_flags
    from cumulus.local import cli as local_cli
    from cumulus import journal_cli

    parser = argparse.ArgumentParser(
        prog="cumulus", parents=[global_flags()],
        description="Run Python functions on fractional GPUs of a Docker Swarm.",
        epilog="Global options go before or after the command (`cumulus --address H:P jobs` = `cumulus jobs "
               "--address H:P`); given in both places, the one after the command wins.",
    )
    parser.add_argument("--version", action="version", version=f"cumulus {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    _register_supervisor(commands)
    journal_cli.register(commands)
    client_cli.register(commands)
    token_cli.register(commands)
    index_cli.register(commands)
    usage_cli.register(commands)
    worker_cli.register(commands)
    local_cli.register(commands)
    _register_completion(commands)
    return parser


def _register_supervisor(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cumulus.client.cli import FILE_COMPLETION
    from cumulus.client.cli_flags import global_flags

    sup = commands.add_parser("supervisor", help="run the Cumulus supervisor (gRPC server and actor tree)",
                              parents=[global_flags(address=False, output=False)])
    config = sup.add_argument("--config", metavar="FILE", help="YAML settings file (see config.yaml.example)")
    config.complete = FILE_COMPLETION  # type: ignore[attr-defined]
    sup.add_argument("--listen", metavar="HOST:PORT", help="address to serve gRPC on (default 127.0.0.1:50051)")
    sup.add_argument("--http-listen", metavar="HOST:PORT", help="address of the HTTP port: /metrics, /healthz, "
                     "/readyz (default 127.0.0.1:50052; '' for none); server.http_listen")
    for flag, key, what in (("--tls-cert", "tls_cert", "the server's certificate chain (PEM)"),
                            ("--tls-key", "tls_key", "the server's private key (PEM)"),
                            ("--client-ca", "client_ca", "require client certificates signed by this CA (mTLS)"),
                            ("--admin-token-file", "admin_token_file", "make the token in FILE the admin token")):
        sup.add_argument(flag, dest=key, metavar="FILE", help=f"{what}; security.{key}").complete = (  # type: ignore
            FILE_COMPLETION)
    sup.add_argument("--insecure", action="store_true", help="serve plaintext gRPC and accept calls without a "
                     "token: anyone who reaches the port can run code on the cluster. Development only; logged "
                     "loudly")
    sup.set_defaults(func=_run_supervisor)


def _register_completion(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cumulus.client.cli_flags import global_flags

    comp = commands.add_parser(
        "completion", help="print a shell completion script (bash, zsh, tcsh)",
        parents=[global_flags(address=False, output=False)],
        description="Print a completion script for SHELL. Bash: `source <(cumulus completion bash)` (or save it "
                    "under ~/.local/share/bash-completion/completions/cumulus). Zsh: `cumulus completion zsh > "
                    "\"${fpath[1]}/_cumulus\"`. Tcsh: `cumulus completion tcsh > ~/.cumulus.tcsh`, then "
                    "`source ~/.cumulus.tcsh` in ~/.tcshrc.")
    comp.add_argument("shell", choices=COMPLETION_SHELLS, metavar="SHELL", help=" | ".join(COMPLETION_SHELLS))
    comp.set_defaults(func=_completion)


def missing_server_modules() -> list[str]:
    """The server-only modules that are not installed (empty on a full install)."""
    missing = []
    for name in SERVER_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_server(command: str) -> bool:
    """True if the server's dependencies are installed; else say how to install them (on stderr)."""
    missing = missing_server_modules()
    if missing:
        print(f"cumulus {command}: needs the server install (missing: {', '.join(missing)}); run "
              f"`{SERVER_INSTALL_HINT}` (the client commands work without it)", file=sys.stderr)
    return not missing


def _run_supervisor(args: argparse.Namespace) -> int:
    if not require_server("supervisor"):
        return 1
    try:
        from cumulus.config import load_settings
        from cumulus.errors import ConfigError
        from cumulus.process import run_supervisor_process
        from cumulus.rpc.server import server_credentials
    except ModuleNotFoundError as error:
        print(f"cumulus supervisor: needs the server install (cannot import {error.name}); run "
              f"`{SERVER_INSTALL_HINT}`", file=sys.stderr)
        return 1

    overrides: dict[str, object] = {"grpc.listen": args.listen} if args.listen else {}
    if args.http_listen is not None:
        overrides["server.http_listen"] = args.http_listen
    for key in ("tls_cert", "tls_key", "client_ca", "admin_token_file"):
        if getattr(args, key):
            overrides[f"security.{key}"] = getattr(args, key)
    if args.insecure:
        overrides["security.insecure"] = True
    try:
        settings = load_settings(args.config, overrides=overrides)
        server_credentials(settings.security)  # no certificate and not --insecure: say so before starting
    except ConfigError as error:
        print(f"cumulus supervisor: invalid settings: {error}", file=sys.stderr)
        return 2
    return run_supervisor_process(settings)


def _completion(args: argparse.Namespace) -> int:
    try:
        import shtab
    except ImportError:
        print("cumulus completion: needs the shtab package: `pip install shtab`", file=sys.stderr)
        return 1
    from cumulus.client.cli import JOB_STATES

    words = " ".join(JOB_STATES)
    preamble = {  # --state's completion: the state names
        "bash": f'_cumulus_job_states() {{\n  compgen -W "{words}" -- "${{1^^}}"\n}}\n',
        "zsh": "",
    }
    parser = build_parser()
    for action in _all_actions(parser):
        if "--state" in action.option_strings:
            action.complete = {"bash": "_cumulus_job_states", "zsh": f"({words})",  # type: ignore[attr-defined]
                               "tcsh": f"({words})"}
    print(shtab.complete(parser, shell=args.shell, preamble=preamble.get(args.shell, "")))
    return 0


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                actions += _all_actions(sub)
    return actions


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that ``args`` ran, for its usage line in an error."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if getattr(args, action.dest, None) == name:
                    return _command_parser(sub, args)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cumulus.client.cli_flags import apply_defaults

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = ""
        if getattr(args, "requirements", None):
            hint = ("; --requirements takes one requirement each: --requirements numpy --requirements torch")
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    apply_defaults(args)
    logging.basicConfig(
        level={0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
