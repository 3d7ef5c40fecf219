"""The actor runtime: actors with bounded mailboxes, refs with call/cast, and owned resources."""

from cumulus.actors.base import Actor, ActorRef, run_actor
from cumulus.actors.ownership import Leak, ResourceOwner
from cumulus.errors import ActorDied

__all__ = ["Actor", "ActorDied", "ActorRef", "Leak", "ResourceOwner", "run_actor"]
