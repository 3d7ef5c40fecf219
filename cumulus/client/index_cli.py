"""``cumulus index login|list|logout``: the caller's credentials for the private package indexes the cluster
allows (``jobs.package_indexes``), stored by the supervisor per user, sealed, and used only to install the
requirements of the user's jobs that name the index (``index_url=``, ``--index-url``).

The password (or token) is read from stdin (``--password-stdin``) or prompted for without echo: never from the
command line, where other users of the machine and the shell history would see it. Talks to the supervisor's
PackageIndexService over gRPC only; standard library at import (the CLI's parser is built for shell completion too).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import Any, TextIO


@dataclass(frozen=True)
class IndexLogin:
    """Stored credentials as the supervisor lists them (never their secret)."""

    index_url: str
    owner: str
    created_at: float | None
    updated_at: float | None

    @classmethod
    def from_pb(cls, msg: Any) -> IndexLogin:
        def seconds(name: str) -> float | None:
            stamp = getattr(msg, name)
            return float(stamp.seconds + stamp.nanos / 1e9) if msg.HasField(name) else None

        return cls(msg.index_url, msg.owner, seconds("created_at"), seconds("updated_at"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cumulus index login|list|logout``."""
    from cumulus.client.cli_flags import global_flags

    index = commands.add_parser("index", help="store your credentials for the cluster's private package indexes",
                                parents=[global_flags()])
    actions = index.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    login = actions.add_parser(
        "login", parents=[global_flags()], help="store (or replace) your username and password for an index",
        description="Store your credentials for URL, one of the indexes the cluster allows (`cumulus index list`). "
                    "Jobs you submit with --index-url URL install their requirements with them; they never reach "
                    "the job itself.")
    login.add_argument("url", metavar="URL", help="the index's simple-API URL, e.g. https://pypi.example.com/simple/")
    login.add_argument("--username", "-u", metavar="USER", help="prompted for when not given")
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password (or token) from stdin, e.g. `echo $TOKEN | cumulus index login URL "
                            "-u USER --password-stdin`; otherwise it is prompted for without echo")
    login.set_defaults(func=_run(_login))
    listing = actions.add_parser("list", parents=[global_flags()],
                                 help="the indexes the cluster allows and those you stored credentials for")
    listing.add_argument("--all", action="store_true", dest="all_users", help="every user's (needs an admin token)")
    listing.set_defaults(func=_run(_list))
    logout = actions.add_parser("logout", parents=[global_flags()], help="forget your credentials for an index")
    logout.add_argument("url", metavar="URL")
    logout.set_defaults(func=_run(_logout))


def _run(fn: Any) -> Any:
    from cumulus.client.cli import _command

    def command(args: argparse.Namespace) -> int:
        args.command = f"index {args.index_command}"
        return int(fn(args))

    return _command(command)


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    """One PackageIndexService call with the client config's channel; errors as the SDK raises them."""
    import grpc

    from cumulus.client.connection import load_client_config, open_channel
    from cumulus.rpc.generated.v1 import indexes_pb2_grpc
    from cumulus.rpc.status import error_from_rpc

    config = load_client_config(args.address)
    with open_channel(config) as channel:
        try:
            return getattr(indexes_pb2_grpc.PackageIndexServiceStub(channel), method)(request, timeout=30)
        except grpc.RpcError as error:
            raise error_from_rpc(error, config.address) from None


def read_secret(args: argparse.Namespace, stdin: TextIO | None = None) -> tuple[str, str]:
    """The username (the flag, else prompted) and the password (stdin with ``--password-stdin``, else prompted
    without echo). UsageError when one cannot be had: no terminal to prompt on."""
    import getpass

    from cumulus.client.cli_flags import UsageError

    stdin = stdin or sys.stdin
    interactive = stdin.isatty()
    username = args.username
    if username is None:
        if args.password_stdin or not interactive:
            raise UsageError("give --username USER (stdin is not a terminal to prompt on)")
        username = input("Username: ")
    if args.password_stdin:
        password = stdin.read()
        password = password[:-1] if password.endswith("\n") else password
        password = password[:-1] if password.endswith("\r") else password
    elif interactive:
        password = getpass.getpass("Password (or token): ")
    else:
        raise UsageError("stdin is not a terminal: pass the password on stdin with --password-stdin "
                         "(never on the command line)")
    if not password:
        raise UsageError("the password is empty")
    return username.strip(), password


def _login(args: argparse.Namespace) -> int:
    from cumulus.client import cli_output as out
    from cumulus.jobformat.sources import check_index_url
    from cumulus.rpc.generated.v1 import indexes_pb2 as ipb

    url = check_index_url(args.url)  # a URL with credentials in it is refused before anything is sent
    username, password = read_secret(args)
    reply = _call(args, "StoreIndexCredentials",
                  ipb.StoreIndexCredentialsRequest(index_url=url, username=username, password=password))
    info = IndexLogin.from_pb(reply.info)
    if args.output == "json":
        print(out.dumps({**info.to_dict(), "replaced": reply.replaced}))
    else:
        print(f"credentials for {info.index_url} {'replaced' if reply.replaced else 'stored'} (user "
              f"{info.owner or '(local admin)'}); jobs you submit with --index-url {info.index_url} install from it")
    return 0


def _list(args: argparse.Namespace) -> int:
    from cumulus.client import cli_output as out
    from cumulus.rpc.generated.v1 import indexes_pb2 as ipb

    reply = _call(args, "ListIndexCredentials", ipb.ListIndexCredentialsRequest(all_users=args.all_users))
    logins = [IndexLogin.from_pb(c) for c in reply.credentials]
    allowed = list(reply.allowed_indexes)
    if args.output == "json":
        print(out.dumps({"allowed_indexes": allowed, "credentials": [i.to_dict() for i in logins]}))
        return 0
    mine = {i.index_url: i for i in logins}
    rows = [[url, out.when_and_age(mine[url].updated_at) if url in mine else "-"] for url in allowed]
    print(out.table(["INDEX", "YOUR CREDENTIALS STORED"], rows) if rows
          else "this cluster allows no package index but its default (jobs.package_indexes is empty)")
    gone = [i for i in logins if i.index_url not in allowed or args.all_users]
    if gone:
        print()
        print(out.table(["USER", "INDEX", "STORED"], [[i.owner or "-", i.index_url + ("" if i.index_url in allowed
                                                       else " (no longer allowed)"), out.when_and_age(i.updated_at)]
                                                      for i in gone]))
    return 0


def _logout(args: argparse.Namespace) -> int:
    from cumulus.client import cli_output as out
    from cumulus.rpc.generated.v1 import indexes_pb2 as ipb

    info = IndexLogin.from_pb(_call(args, "DeleteIndexCredentials",
                                    ipb.DeleteIndexCredentialsRequest(index_url=args.url)).info)
    if args.output == "json":
        print(out.dumps(info.to_dict()))
    else:
        print(f"credentials for {info.index_url} deleted")
    return 0
