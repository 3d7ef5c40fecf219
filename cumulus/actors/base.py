"""Actors: a Trio task that owns a bounded mailbox and handles one message at a time.

An actor is a subclass of :class:`Actor`. It runs as one Trio task, started with :func:`run_actor` (normally by a
:class:`cumulus.supervisor.Supervisor`), and is reached only through its :class:`ActorRef`:

* ``await ref.call(msg)`` sends ``msg`` with a reply channel of its own and waits for the answer;
* ``await ref.cast(msg)`` sends ``msg`` and returns as soon as it is in the mailbox.

The promise: **no call ever hangs on a dead actor.** When an actor stops for any reason - its handler crashed, it
was cancelled, it stopped itself - every call it had not answered, every message still in its mailbox and every
later ``call``/``cast`` fails with :class:`~cumulus.errors.ActorDied`.

Errors: a handler that raises :class:`~cumulus.errors.RequestRejected` (or a subclass) answers the caller with it and
the actor keeps running. Any other exception is handed to the caller *and* crashes the actor; what happens next
is the supervisor's policy (restart or not).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import outcome
import trio

from cumulus.actors.ownership import ResourceOwner
from cumulus.errors import ActorDied, RequestRejected

log = logging.getLogger(__name__)

_NO_REPLY = object()


class _Reply:
    """One caller's answer slot: the actor answers (or closes) it once; the caller waits on it at most once.

    Lighter than a memory channel per call. A caller that is cancelled abandons the slot; an answer given after
    that is dropped, as nobody waits for it.
    """

    __slots__ = ("_task", "_done", "_answer")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._done = False
        self._answer: Any = _CLOSED

    def answer(self, value: Any) -> None:
        if self._done:
            return
        self._done, self._answer = True, value
        if self._task is not None:
            task, self._task = self._task, None
            trio.lowlevel.reschedule(task, outcome.Value(value))

    def close(self) -> None:
        """The actor stopped without answering: the caller gets ActorDied."""
        self.answer(_CLOSED)

    async def wait(self) -> Any:
        if self._done:
            await trio.lowlevel.checkpoint()
            return self._answer
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._task, self._done = None, True  # abandoned: a later answer is dropped
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


_CLOSED = object()


@dataclass(slots=True)
class _Envelope:
    message: Any
    reply: _Reply | None  # None for a cast


@dataclass(slots=True)
class _Failure:
    """A handler's exception, carried back to the caller through its reply channel."""

    error: BaseException


class _Life:
    """What every ref of one actor incarnation shares: whether it still runs and why it stopped."""

    __slots__ = ("alive", "reason", "stopped")

    def __init__(self) -> None:
        self.alive = True
        self.reason: BaseException | None = None
        self.stopped = trio.Event()


class ActorRef:
    """The address of one actor incarnation. Cheap to copy; safe to use from any task.

    A ref never outlives its actor silently: once the actor stops, ``call`` and ``cast`` raise ``ActorDied``.
    A restarted actor is a new incarnation with a new ref (ask its supervisor: ``supervisor.whereis(name)``).
    """

    __slots__ = ("name", "_mailbox", "_life")

    def __init__(self, name: str, mailbox: trio.MemorySendChannel, life: _Life) -> None:
        self.name = name
        self._mailbox = mailbox
        self._life = life

    def __repr__(self) -> str:
        return f"<ActorRef {self.name} {'alive' if self._life.alive else 'dead'}>"

    @property
    def alive(self) -> bool:
        return self._life.alive

    async def call(self, message: Any) -> Any:
        """Send ``message`` and return the handler's answer.

        Raises whatever the handler raised, or ``ActorDied`` if the actor stops before answering (or had already
        stopped). Waits while the mailbox is full (backpressure).

        Cancellation: if the caller is cancelled, the call is abandoned; a message already delivered may still be
        handled, and its answer is dropped.
        """
        return await (await self.ask(message))()

    async def ask(self, message: Any) -> Callable[[], Awaitable[Any]]:
        """:meth:`call` in two steps: return once ``message`` is in the mailbox, with the wait for its answer.

        Messages asked one after another from one task are handled in that order, while their answers are awaited
        at once (by other tasks). The wait (at most one) raises as :meth:`call` does. Cancellation: cancelled
        while delivering, nothing was sent; a wait that is cancelled abandons the answer.
        """
        reply = _Reply()
        await self._deliver(_Envelope(message, reply))

        async def answer() -> Any:
            value = await reply.wait()
            if value is _CLOSED:
                raise ActorDied(self.name, self._life.reason)
            if isinstance(value, _Failure):
                raise value.error
            return value

        return answer

    async def cast(self, message: Any) -> None:
        """Put ``message`` in the mailbox and return; no answer comes back.

        Raises ``ActorDied`` if the actor has stopped. Waits while the mailbox is full. A cast that is still in the
        mailbox when the actor stops is dropped. Cancellation: the message is either delivered or not sent at all.
        """
        await self._deliver(_Envelope(message, None))

    def cast_nowait(self, message: Any) -> None:
        """Like :meth:`cast` but never waits; raises ``trio.WouldBlock`` when the mailbox is full."""
        try:
            self._mailbox.send_nowait(_Envelope(message, None))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorDied(self.name, self._life.reason) from None

    async def wait_stopped(self) -> BaseException | None:
        """Wait until the actor has stopped; return the exception that ended it (``None`` for a normal stop)."""
        await self._life.stopped.wait()
        return self._life.reason

    async def _deliver(self, envelope: _Envelope) -> None:
        try:
            await self._mailbox.send(envelope)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorDied(self.name, self._life.reason) from None


class DeferredReply:
    """The answer to one call, given later by the actor that took it (OTP's ``noreply`` then
    ``gen_server:reply``): see :meth:`Actor.reply_later`. Answered at most once; once its actor has stopped, an
    answer is dropped (its caller already got ``ActorDied``)."""

    __slots__ = ("_reply", "_pending")

    def __init__(self, reply: _Reply, pending: set[DeferredReply]) -> None:
        self._reply, self._pending = reply, pending
        pending.add(self)

    def answer(self, value: Any) -> None:
        self._pending.discard(self)
        self._reply.answer(value)

    def fail(self, error: BaseException) -> None:
        """The caller's wait raises ``error``."""
        self.answer(_Failure(error))


class Actor:
    """Base class for actors. Override :meth:`handle`, and :meth:`on_start` to acquire what the actor owns.

    Inside an actor:

    * ``self.owner`` is its :class:`ResourceOwner`: ``await self.owner.own(cm)`` enters an async context manager
      that is released (shielded, time-bounded, failures recorded in ``self.owner.leaks``) when the actor stops,
      in reverse order of acquisition;
    * ``self.start_soon(fn, *args)`` runs a background task that lives no longer than the actor; if it raises,
      the actor crashes;
    * ``self.stop()`` ends the actor normally once the current message is handled;
    * ``self.reply_later()``, in a handler, answers the call being handled later (the actor goes on with its next
      message meanwhile).
    """

    mailbox_size: int = 64
    """Bounded: a full mailbox makes senders wait (backpressure)."""

    name: str = "actor"

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name
        self.owner = ResourceOwner(self.name)
        self.ref: ActorRef | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_scope: trio.CancelScope | None = None
        self._stopping = False
        self._handling = False
        self._pending_tasks: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] = []
        self._envelope: _Envelope | None = None  # the message being handled
        self._deferred: set[DeferredReply] = set()

    async def on_start(self) -> None:
        """Acquire owned resources (``await self.owner.own(...)``) and schedule background tasks
        (``self.start_soon``; they begin once on_start has returned). Runs before the actor is reported started;
        if it raises, the start fails and what was already owned is released."""

    async def handle(self, message: Any) -> Any:
        """Handle one message; the return value is the answer to a ``call`` (ignored for a ``cast``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement handle()")

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` as a task owned by this actor; it is cancelled when the actor stops (before the
        actor's owned resources are released). Called from on_start, the task begins once on_start returns.

        Resources a background task acquires must be released by that same task (``async with`` or its own
        :class:`ResourceOwner`): Trio scopes cannot be exited from another task.
        """
        if self._nursery is None:
            self._pending_tasks.append((fn, args))
        else:
            self._nursery.start_soon(fn, *args)

    def reply_later(self) -> DeferredReply:
        """In :meth:`handle`, for a ``call``: its answer is given later with the returned
        :class:`DeferredReply` (from any task of this actor), not by the handler's return value. If the actor
        stops first, the caller gets ``ActorDied``. Raises RuntimeError outside the handling of a call."""
        envelope = self._envelope
        if envelope is None or envelope.reply is None:
            raise RuntimeError("reply_later() is for the handler of a call")
        reply, envelope.reply = envelope.reply, None
        return DeferredReply(reply, self._deferred)

    def stop(self) -> None:
        """Stop this actor normally after the message being handled (at once if it is idle).

        Messages still in the mailbox are not handled; their callers get ``ActorDied``. Owned resources are then
        released. Safe to call from the actor's handler or from its background tasks, and more than once.
        """
        self._stopping = True
        if not self._handling and self._stop_scope is not None:
            self._stop_scope.cancel()


async def run_actor(actor: Actor, *, task_status: trio.TaskStatus[ActorRef] = trio.TASK_STATUS_IGNORED) -> None:
    """Run ``actor`` until it stops; report its :class:`ActorRef` through ``task_status`` once started.

    Returns normally when the actor stopped itself. Raises the handler's exception when it crashed.
    Cancellation: the actor stops, owned resources are released (each under a shielded, bounded scope), and
    ``Cancelled`` propagates. In every case every unanswered caller gets ``ActorDied``.
    """
    mailbox_send, mailbox_receive = trio.open_memory_channel[_Envelope](actor.mailbox_size)
    life = _Life()
    ref = ActorRef(actor.name, mailbox_send, life)
    actor.ref = ref
    current: list[_Envelope] = []
    try:
        async with actor.owner:
            try:
                # on_start runs at the owner's level, so resources it enters (which may hold cancel scopes and
                # nurseries of their own) are exited by the owner in proper LIFO order.
                await actor.on_start()
                async with trio.open_nursery() as nursery:
                    actor._nursery = nursery
                    for fn, args in actor._pending_tasks:
                        nursery.start_soon(fn, *args)
                    actor._pending_tasks.clear()
                    task_status.started(ref)
                    with trio.CancelScope() as stop_scope:
                        actor._stop_scope = stop_scope
                        await _serve(actor, mailbox_receive, current)
                    nursery.cancel_scope.cancel()
            except Exception as crash:
                # A crash, not a cancellation: remember why (for ActorDied) and re-raise it unwrapped from the
                # single-exception group that Trio's nursery put around it.
                crash = _unwrap(crash)
                life.reason = crash
                raise crash
            finally:
                # Callers learn at once, before the (bounded) release of what the actor owns.
                _retire(life, mailbox_receive, mailbox_send, current, actor._deferred)
                actor._nursery = None
    finally:
        life.stopped.set()


MESSAGES_PER_CHECKPOINT = 64  # a busy actor still lets others run (and notices cancellation) this often


async def _serve(actor: Actor, mailbox: trio.MemoryReceiveChannel, current: list[_Envelope]) -> None:
    # Messages already in the mailbox are taken without a trip through the scheduler each: a burst costs one
    # checkpoint per MESSAGES_PER_CHECKPOINT, not one per message.
    burst = 0
    while not actor._stopping:
        burst += 1
        if burst % MESSAGES_PER_CHECKPOINT == 0:
            await trio.lowlevel.checkpoint()  # before taking a message: a cancellation here loses none
        try:
            envelope = mailbox.receive_nowait()
        except trio.WouldBlock:
            envelope = await mailbox.receive()
            burst = 0
        current.append(envelope)
        actor._handling, actor._envelope = True, envelope
        try:
            answer = await actor.handle(envelope.message)
        except RequestRejected as rejection:
            answer = _Failure(rejection)
        except Exception as crash:
            _answer(envelope, _Failure(crash))
            current.clear()
            raise
        finally:
            actor._handling, actor._envelope = False, None
        _answer(envelope, answer)
        current.clear()


def _answer(envelope: _Envelope, answer: Any) -> None:
    if envelope.reply is not None:
        envelope.reply.answer(answer)  # dropped if the caller gave up (was cancelled)


def _retire(
    life: _Life,
    mailbox: trio.MemoryReceiveChannel,
    mailbox_send: trio.MemorySendChannel,
    current: list[_Envelope],
    deferred: set[DeferredReply],
) -> None:
    """Mark the actor dead and close every reply channel it will never answer, then the mailbox itself.

    Runs without a checkpoint, so no sender can slip a message in between the drain and the close: senders
    waiting on a full mailbox are handed over by ``receive_nowait`` and failed here; later ones see the close.
    """
    life.alive = False
    for later in list(deferred):
        later.answer(_CLOSED)
    for envelope in current:
        if envelope.reply is not None:
            envelope.reply.close()
    current.clear()
    while True:
        try:
            envelope = mailbox.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
        if envelope.reply is not None:
            envelope.reply.close()
    mailbox.close()
    mailbox_send.close()


def _unwrap(exc: BaseException) -> BaseException:
    """Reduce single-exception groups (from Trio's strict nurseries) to the exception inside."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


__all__ = ["Actor", "ActorRef", "DeferredReply", "run_actor"]
