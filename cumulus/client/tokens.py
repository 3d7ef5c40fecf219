"""Token administration from the client side: :class:`TokenStatus` (a token as the supervisor lists it: never its
secret) and the ``cumulus token create|list|revoke|rotate`` commands. Every call needs an admin token."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import Any

from cumulus.rpc.generated.v1 import cumulus_pb2 as pb


@dataclass(frozen=True)
class TokenStatus:
    name: str
    admin: bool
    max_running: int = 0
    max_queued: int = 0
    max_gpu: float = 0.0
    rate: float = 0.0
    created_at: float | None = None
    revoked: bool = False

    @classmethod
    def from_pb(cls, msg: pb.Token) -> TokenStatus:
        created = msg.created_at.seconds + msg.created_at.nanos / 1e9 if msg.HasField("created_at") else None
        return cls(msg.name, msg.admin, msg.max_running, msg.max_queued, msg.max_gpu, msg.rate, created,
                   msg.revoked)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cumulus token create|list|revoke|rotate``."""
    from cumulus.client.cli_flags import global_flags

    token = commands.add_parser("token", help="create, list, revoke and rotate tokens (needs an admin token)",
                                parents=[global_flags()])
    actions = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make a token and print it (shown only this once)",
                                parents=[global_flags()])
    create.add_argument("name", metavar="NAME", help="the user or service the token is for (a-z, 0-9, . _ -)")
    create.add_argument("--admin", action="store_true", help="may administer tokens and see every job")
    create.add_argument("--max-running", type=_count, default=0, metavar="N", help="jobs running at once")
    create.add_argument("--max-queued", type=_count, default=0, metavar="N", help="jobs waiting at once")
    create.add_argument("--max-gpu", type=_amount, default=0.0, metavar="X",
                        help="total GPU share in use at once (2 = two whole devices)")
    create.add_argument("--rate", type=_amount, default=0.0, metavar="R", help="submissions per second")
    create.set_defaults(func=_run(_create))
    listing = actions.add_parser("list", help="list tokens (never their secrets)", parents=[global_flags()])
    listing.set_defaults(func=_run(_list))
    revoke = actions.add_parser("revoke", help="revoke a token: its calls fail from now on", parents=[global_flags()])
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(func=_run(_revoke))
    rotate = actions.add_parser("rotate", help="give a token a new secret and print it (shown only this once); "
                                "the old one fails from now on; the name, its jobs and limits stay",
                                parents=[global_flags()])
    rotate.add_argument("name", metavar="NAME")
    rotate.set_defaults(func=_run(_rotate))


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0 (0 = no limit)")
    return value


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0 (0 = no limit)")
    return value


def _run(fn: Any) -> Any:
    from cumulus.client.cli import _command

    def command(args: argparse.Namespace) -> int:
        args.command = f"token {args.token_command}"
        return int(fn(args))

    return _command(command)


def _client(args: argparse.Namespace) -> Any:
    from cumulus.client.client import CumulusClient

    return CumulusClient(args.address, log_to_driver=False)


def _create(args: argparse.Namespace) -> int:
    from cumulus.client import cli_output as out

    info, secret = _client(args).create_token(args.name, admin=args.admin, max_running=args.max_running,
                                              max_queued=args.max_queued, max_gpu=args.max_gpu, rate=args.rate)
    if args.output == "json":
        print(out.dumps({**info.to_dict(), "token": secret}))
    else:
        print(secret)
        print(f"token {info.name!r} created{' (admin)' if info.admin else ''}: it is shown only this once; give it "
              f"to its user as CUMULUS_TOKEN or `token:` in ~/.config/cumulus/config.yaml", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from cumulus.client import cli_output as out

    tokens = _client(args).list_tokens()
    if args.output == "json":
        print(out.dumps([t.to_dict() for t in tokens]))
        return 0
    rows = [[t.name, "yes" if t.admin else "", "revoked" if t.revoked else "active", _limit(t.max_running),
             _limit(t.max_queued), _limit(t.max_gpu), _limit(t.rate), out.when_and_age(t.created_at)]
            for t in tokens]
    print(out.table(["NAME", "ADMIN", "STATE", "MAX RUNNING", "MAX QUEUED", "MAX GPU", "RATE/S", "CREATED"], rows)
          if rows else "no tokens")
    return 0


def _limit(value: float) -> str:
    return f"{value:g}" if value else "-"


def _revoke(args: argparse.Namespace) -> int:
    info = _client(args).revoke_token(args.name)
    print(f"token {info.name!r} revoked")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from cumulus.client import cli_output as out

    info, secret = _client(args).rotate_token(args.name)
    if args.output == "json":  # as `create` prints it
        print(out.dumps({**info.to_dict(), "token": secret}))
    else:
        print(secret)
        print(f"token {info.name!r} rotated{' (admin)' if info.admin else ''}: the old secret fails from now on; the "
              f"new one is shown only this once; give it to its user as CUMULUS_TOKEN or `token:` in "
              f"~/.config/cumulus/config.yaml", file=sys.stderr)
    return 0
