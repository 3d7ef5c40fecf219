"""``cumulus worker join-command|join-tokens|revoke-join-token``: join tokens from the client side (admin token).

``join-command`` prints only the line to run as root on the new host (stdout; a note with the token's id and
expiry goes to stderr), ``join-tokens`` lists the tokens (never their secrets), ``revoke-join-token ID`` revokes one.
Talks to the supervisor's WorkerService over gRPC only; standard library at import (the CLI's parser is built for
shell completion too).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_TTL, MAX_TTL = 60, 7 * 86400
_LABEL_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
STATE_NAMES = {1: "pending", 2: "registered", 3: "used", 4: "expired", 5: "revoked"}


@dataclass(frozen=True)
class JoinTokenStatus:
    """A join token as the supervisor lists it (never its secret)."""

    id: str
    state: str
    created_at: float | None
    expires_at: float | None
    created_by: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    hostname: str = ""
    ssh_address: str = ""
    node_id: str = ""

    @classmethod
    def from_pb(cls, msg: Any) -> JoinTokenStatus:
        def seconds(name: str) -> float | None:
            if not msg.HasField(name):
                return None
            stamp = getattr(msg, name)
            return float(stamp.seconds + stamp.nanos / 1e9)

        return cls(msg.id, STATE_NAMES.get(msg.state, "unknown"), seconds("created_at"), seconds("expires_at"),
                   msg.created_by, dict(msg.labels), msg.hostname, msg.ssh_address, msg.node_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_ttl(text: str) -> int:
    """``30m``, ``1h``, ``2d``, ``90s`` or plain seconds, within 1 minute .. 7 days."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text.lower())
    seconds = int(match[1]) * TTL_UNITS[match[2] or "s"] if match else -1
    if not MIN_TTL <= seconds <= MAX_TTL:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration of 1m..7d (e.g. 30m, 1h, 2d, or seconds)")
    return seconds


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (keys: a-z, 0-9, '.', '_', '-')."""
    labels: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.fullmatch(key.strip()):
            raise argparse.ArgumentTypeError(f"{item!r}: write KEY=VALUE, KEY of a-z, 0-9, '.', '_', '-'")
        labels[key.strip()] = value.strip()
    return labels


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's ``cumulus worker`` subcommands to ``sub``."""
    from cumulus.client.cli_flags import global_flags

    line = sub.add_parser("join-command", help="print the line that joins a new host (run it there as root)",
                          parents=[global_flags()],
                          description="Make a join token for one host and print the line to run as root on it.")
    line.add_argument("--ttl", type=parse_ttl, default=3600, metavar="DURATION",
                      help="how long the line may be used: 30m, 1h, 2d or seconds (1m..7d; default 1h)")
    line.add_argument("--labels", type=parse_labels, default={}, metavar="K=V,...",
                      help="labels for the new worker (node labels cumulus.label.K=V)")
    line.set_defaults(func=_run(_join_command))
    tokens = sub.add_parser("join-tokens", help="list join tokens (used, expired and revoked ones too)",
                            parents=[global_flags()])
    tokens.set_defaults(func=_run(_join_tokens))
    revoke = sub.add_parser("revoke-join-token", help="revoke a join token: its line no longer joins",
                            parents=[global_flags()])
    revoke.add_argument("id", metavar="ID", help="the token's id, as join-tokens lists it")
    revoke.set_defaults(func=_run(_revoke))


def _run(fn: Any) -> Any:
    from cumulus.client.cli import _command

    def command(args: argparse.Namespace) -> int:
        args.command = f"worker {args.worker_command}"
        return int(fn(args))

    return _command(command)


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    """One WorkerService call with the client config's channel; errors as the SDK raises them."""
    import grpc

    from cumulus.client.connection import load_client_config, open_channel
    from cumulus.rpc.generated.v1 import workers_pb2_grpc
    from cumulus.rpc.status import error_from_rpc

    config = load_client_config(args.address)
    with open_channel(config) as channel:
        try:
            return getattr(workers_pb2_grpc.WorkerServiceStub(channel), method)(request, timeout=30)
        except grpc.RpcError as error:
            raise error_from_rpc(error, config.address) from None


def _join_command(args: argparse.Namespace) -> int:
    from cumulus.client import cli_output as out
    from cumulus.rpc.generated.v1 import workers_pb2 as wpb

    reply = _call(args, "CreateJoinToken", wpb.CreateJoinTokenRequest(ttl_seconds=args.ttl, labels=args.labels))
    info = JoinTokenStatus.from_pb(reply.info)
    if args.output == "json":
        print(out.dumps({**info.to_dict(), "token": reply.token, "command": reply.command,
                         "script_url": reply.script_url, "tls_public_key_pin": reply.tls_public_key_pin}))
        return 0
    print(reply.command)
    print(f"join token {info.id}: run the line above as root on the new host; it joins one host, until "
          f"{out.when(info.expires_at)} (in {out.span(args.ttl)}). Revoke it: cumulus worker revoke-join-token "
          f"{info.id}", file=sys.stderr)
    return 0


def _join_tokens(args: argparse.Namespace) -> int:
    from cumulus.client import cli_output as out
    from cumulus.rpc.generated.v1 import workers_pb2 as wpb

    tokens = [JoinTokenStatus.from_pb(t) for t in _call(args, "ListJoinTokens", wpb.ListJoinTokensRequest()).tokens]
    if args.output == "json":
        print(out.dumps([t.to_dict() for t in tokens]))
        return 0
    rows = [[t.id, t.state, out.when(t.created_at), out.when(t.expires_at),
             f"{t.hostname} ({t.ssh_address})" if t.hostname else "-", t.node_id or "-",
             ",".join(f"{k}={v}" for k, v in sorted(t.labels.items())) or "-"] for t in tokens]
    print(out.table(["ID", "STATE", "CREATED", "EXPIRES", "HOST", "NODE", "LABELS"], rows) if rows
          else "no join tokens")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from cumulus.client import cli_output as out
    from cumulus.rpc.generated.v1 import workers_pb2 as wpb

    info = JoinTokenStatus.from_pb(_call(args, "RevokeJoinToken", wpb.RevokeJoinTokenRequest(id=args.id)))
    if args.output == "json":
        print(out.dumps(info.to_dict()))
    elif info.state == "revoked":
        print(f"join token {info.id} revoked")
    else:
        print(f"join token {info.id} is {info.state}: nothing to revoke (a used token's host has joined; "
              f"`cumulus worker remove` takes a worker out)")
    return 0
