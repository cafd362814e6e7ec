"""The transactional outbox: rows written with the change that made them, delivered by a loop with retries.

Delivery keeps each chat's order: a chat's next row waits until the one before it is sent, or dead for a
reason of its own (refused for good). Passing failures never use up a count of attempts: they are retried
for a long time (OUTBOX_RETRY_HOURS), and a row that still fails then holds its chat back until re-driven.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Connection, CursorResult, Engine, Integer, and_, bindparam, func, or_, select, update
from sqlmodel import Session, col

from bot.batching import Signal
from bot.messages import Attachment, Button, DeskEvent, OutboundMessage
from bot.store import ChannelIdentity, OutboxItem, session_scope, table_of
from bot.store.clock import utcnow
from bot.store.models import OUTBOX_WAITING, literal_in

log = logging.getLogger(__name__)

PENDING, HELD, SENT, DEAD = "pending", "held", "sent", "dead"
assert OUTBOX_WAITING == (PENDING, HELD, DEAD)  # the partial index ix_outbox_waiting holds these rows
# Reported by a channel after it took the message (a WhatsApp status "failed"): a dead letter too.
FAILED = "failed"
DEAD_LETTERS = (DEAD, FAILED)
STATUSES = (PENDING, HELD, SENT, "delivered", "read", DEAD, FAILED)
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 300.0
SEND_LEASE_SECONDS = 60.0
RUN_ROWS = 8  # a chat's rows leased and sent together, one after the other (the replies to one message)


class DeliveryError(Exception):
    """Base of what a sender raises when a message did not go out."""


class RetryLater(DeliveryError):
    """A passing failure (5xx, timeout, 429): try again, after `after` seconds when the channel said so."""

    def __init__(self, message: str, after: float | None = None, *, scope: str = "chat") -> None:
        super().__init__(message)
        self.after = after
        # "chat": only this chat waits `after` seconds; "channel": the service said the whole bot must wait.
        self.scope = scope


class Hold(DeliveryError):
    """The channel may not deliver now (a closed 24-hour window, a used-up quota): the row waits, without
    using an attempt, until the adapter calls `release_held` because the customer wrote again."""


class PermanentFailure(DeliveryError):
    """The channel refused the message for good (most 4xx): dead-letter it, keep the error."""


class Unreachable(PermanentFailure):
    """The customer blocked us or left: dead-letter and mark the identity unreachable."""


@dataclass(frozen=True, kw_only=True)
class Delivered:
    external_id: str | None = None


class Sender(Protocol):
    """What a channel adapter offers the outbox: it delivers a message to a customer."""

    async def send(self, message: OutboundMessage) -> Delivered: ...


class DeskSender(Protocol):
    """What an external desk (Slack) offers the outbox: it shows a case's event to the engineers."""

    async def send_event(self, event: DeskEvent) -> Delivered: ...


AnySender = Sender | DeskSender


def to_payload(message: OutboundMessage) -> dict[str, Any]:
    return {
        "text": message.text,
        "buttons": [asdict(b) for b in message.buttons],
        "attachments": [asdict(a) for a in message.attachments],
        "reply_to": message.reply_to,
        "language": message.language,
        "case_ref": message.case_ref,
        "author": message.author,
    }


def from_payload(channel: str, chat_id: str, payload: Mapping[str, Any]) -> OutboundMessage:
    return OutboundMessage(
        channel=channel,
        chat_id=chat_id,
        text=payload.get("text", ""),
        buttons=tuple(Button(**b) for b in payload.get("buttons", ())),
        attachments=tuple(Attachment(**a) for a in payload.get("attachments", ())),
        reply_to=payload.get("reply_to"),
        language=payload.get("language"),
        case_ref=payload.get("case_ref"),
        author=payload.get("author") or "bot",
    )


def enqueue(session: Session, message: OutboundMessage, **extra: Any) -> OutboxItem:
    """Add a message to the outbox in the caller's transaction."""
    item = OutboxItem(
        channel=message.channel, chat_id=message.chat_id, payload={**to_payload(message), **extra}
    )
    session.add(item)
    return item


def enqueue_event(session: Session, event: DeskEvent) -> OutboxItem:
    """Add an event for an external desk (Slack) in the caller's transaction; a case's events keep their order."""
    item = OutboxItem(
        channel=event.desk, chat_id=event.case_ref, payload={"event": event.kind, "detail": event.detail}
    )
    session.add(item)
    return item


def event_from_payload(channel: str, chat_id: str, payload: Mapping[str, Any]) -> DeskEvent:
    detail = payload.get("detail")
    if not isinstance(detail, dict):  # written before events had their own type: the detail was flat
        detail = {k: v for k, v in payload.items() if k not in ("event", "case_id")}
    return DeskEvent(desk=channel, kind=str(payload.get("event")), case_ref=chat_id, detail=dict(detail))


@dataclass(frozen=True, kw_only=True)
class Due:
    """A leased outbox row: what sending it needs."""

    id: int
    channel: str
    chat_id: str
    payload: dict[str, Any]


async def deliver(sender: AnySender, item: Due) -> Delivered:
    """Hand one row to its channel: a desk event to a desk, a message to a customer's channel."""
    if "event" in item.payload:
        if not hasattr(sender, "send_event"):
            raise PermanentFailure(f"{item.channel} takes no desk events")
        return await cast(DeskSender, sender).send_event(
            event_from_payload(item.channel, item.chat_id, item.payload)
        )
    if not hasattr(sender, "send"):
        raise PermanentFailure(f"{item.channel} delivers no messages")
    return await cast(Sender, sender).send(from_payload(item.channel, item.chat_id, item.payload))


def release_held(session: Session, channel: str, chat_id: str) -> int:
    """The customer wrote again: their held messages may go out now, in order. Returns how many."""
    released = session.execute(
        update(OutboxItem)
        .where(
            col(OutboxItem.channel) == channel,
            col(OutboxItem.chat_id) == chat_id,
            col(OutboxItem.status) == HELD,
        )
        .values(status=PENDING, next_attempt_at=utcnow())
    )
    return int(cast(CursorResult[Any], released).rowcount)


def backoff(attempts: int, cap: float = BACKOFF_MAX_SECONDS) -> float:
    return float(min(cap, BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1)))


def default_owner() -> str:
    """A lease owner for a deliverer not given one (tests, the console): this host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


@dataclass(frozen=True)
class Limits:
    """A channel's published sending limits, within which the deliverer paces its sends (per process)."""

    per_second: float | None = None  # the whole bot (account) on this channel
    per_chat_per_second: float | None = None  # one chat
    chat_burst: int = 1  # sends to one chat allowed back to back before its pace applies


class Pacer:
    """When the next send of a channel may go: its limits per chat and per bot, and pauses it asked for.

    Counted when a send really starts (not when it was planned), so a busy event loop that runs late never
    lets a bunch of sends out together.
    """

    def __init__(self, limits: Limits | None) -> None:
        self.limits = limits
        self.paused_until = 0.0  # time.monotonic(); a 429 meant for the whole bot sets it
        self._chats: dict[str, tuple[float, float]] = {}  # chat -> (tokens left, at)
        self._bot: deque[float] = deque()  # the bot's recent sends (time.monotonic()), at most a window's

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def paused_for(self) -> float:
        return max(0.0, self.paused_until - time.monotonic())

    async def turn(self, chat_id: str) -> bool:
        """Wait for the chat's next turn and take it; False (at once) when the bot is paused for long."""
        while True:
            pause = self.paused_for()
            if pause > 1.0:
                return False
            wait = max(pause, self._wait(chat_id, time.monotonic()))
            if wait <= 0:
                self._take(chat_id, time.monotonic())
                return True
            await asyncio.sleep(wait)

    def _tokens(self, chat_id: str, now: float) -> float:
        assert self.limits is not None and self.limits.per_chat_per_second
        burst = float(max(1, self.limits.chat_burst))
        tokens, at = self._chats.get(chat_id, (burst, now))
        return min(burst, tokens + max(0.0, now - at) * self.limits.per_chat_per_second)

    def _wait(self, chat_id: str, now: float) -> float:
        limits = self.limits
        if limits is None:
            return 0.0
        wait = 0.0
        if limits.per_chat_per_second:
            tokens = self._tokens(chat_id, now)
            if tokens < 1.0:
                wait = (1.0 - tokens) / limits.per_chat_per_second
        if limits.per_second:
            wait = max(wait, self._bot_wait(now))
        return wait

    def _bot_window(self) -> tuple[int, float]:
        """The bot's limit as a sliding window: at most `count` sends in any `seconds` (30 in any second
        at 30/s). A window, not a spacing of 1/per_second: a send the event loop wakes late does not push
        back the ones after it, so the average stays at the limit; and a backlog's first `count` sends go at
        once, as the limit allows, instead of waiting their turns."""
        assert self.limits is not None and self.limits.per_second
        count = max(1, int(self.limits.per_second))
        return count, count / self.limits.per_second

    def _bot_wait(self, now: float) -> float:
        count, seconds = self._bot_window()
        while self._bot and self._bot[0] <= now - seconds:
            self._bot.popleft()
        return 0.0 if len(self._bot) < count else self._bot[0] + seconds - now

    def _take(self, chat_id: str, now: float) -> None:
        limits = self.limits
        if limits is None:
            return
        if limits.per_chat_per_second:
            self._chats[chat_id] = (self._tokens(chat_id, now) - 1.0, now)
            if len(self._chats) > 10_000:  # forget chats whose bucket is full again
                burst = max(1, limits.chat_burst)
                self._chats = {c: v for c, v in self._chats.items() if self._tokens(c, now) < burst}
        if limits.per_second:
            self._bot.append(now)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What became of one leased row; recorded with the others of its round in one transaction."""

    item_id: int
    kind: str  # sent | dead | unreachable | hold | retry | error | released
    error: str | None = None
    after: float | None = None
    external_id: str | None = None


# A sent row, recorded with the others of its round in one statement (an executemany).
_OUTBOX = table_of(OutboxItem)
_RECORD_SENT = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("row"), _OUTBOX.c.status == PENDING)
    .values(
        status=SENT,
        external_id=bindparam("external"),
        sent_at=bindparam("now"),
        failing_since=None,
        last_error=None,
        lease_owner=None,
        attempts=_OUTBOX.c.attempts + 1,
    )
)


def _lease_statements() -> tuple[Any, Any, Any, Any, Any]:
    """The lease's statements, built once with bound parameters (building them on every look, as their
    expressions and subqueries are, was half of a lease's CPU): the due heads (without and with the rows this
    deliverer holds left out), the rows behind them, the lease and the giving back of strays."""
    o = _OUTBOX.c
    # The oldest waiting row of each chat is its head; only heads may go, which keeps chat order.
    # A held head, or a dead letter that gave up on a passing failure, holds its chat back.
    waiting = and_(
        literal_in(o.status, OUTBOX_WAITING),  # in ix_outbox_waiting only
        or_(o.status != DEAD, o.holds_chat),
    )
    heads = (
        select(func.min(o.id).label("id"))
        .where(waiting, o.channel.in_(bindparam("channels", expanding=True)))
        .group_by(o.channel, o.chat_id)
        .subquery()
    )
    due = select(o.id).where(
        o.id.in_(select(heads.c.id)), o.status == PENDING, o.next_attempt_at <= bindparam("now")
    )
    columns = (o.id, o.channel, o.chat_id, o.payload)

    def firsts(query: Any) -> Any:
        limited = query.order_by(o.id).limit(bindparam("limit", type_=Integer)).scalar_subquery()
        return select(*columns).where(o.id.in_(limited)).order_by(o.id)

    behind = (
        select(*columns, o.status, o.next_attempt_at, o.holds_chat)
        .where(
            o.channel.in_(bindparam("channels", expanding=True)),
            o.chat_id.in_(bindparam("chats", expanding=True)),
            o.id > bindparam("after"),
            o.status.in_((PENDING, HELD, DEAD)),
        )
        .order_by(o.id)
    )
    # Checks the WHERE again on each row, so that a row another worker took meanwhile (PostgreSQL) is left.
    lease = (
        update(_OUTBOX)
        .where(
            o.id.in_(bindparam("ids", expanding=True)),
            o.status == PENDING,
            o.next_attempt_at <= bindparam("now"),
        )
        .values(
            next_attempt_at=bindparam("until", type_=o.next_attempt_at.type),
            lease_owner=bindparam("owner", type_=o.lease_owner.type),
        )
        .returning(o.id)
    )
    give_back = (
        update(_OUTBOX)
        .where(o.id.in_(bindparam("ids", expanding=True)))
        .values(next_attempt_at=bindparam("now", type_=o.next_attempt_at.type), lease_owner=None)
    )
    # Two forms, not one NOT IN that may be empty: SQLite plans an empty expanding IN as a subquery of its own.
    held_out = due.where(o.id.not_in(bindparam("leased", expanding=True)))
    return firsts(due), firsts(held_out), behind, lease, give_back


_DUE, _DUE_HELD_OUT, _BEHIND, _LEASE, _GIVE_BACK = _lease_statements()


TICK_SECONDS = 0.05  # how often the running deliverer looks at finished sends and the wake signal
STOP_GRACE_SECONDS = 5.0  # sends under way when stopping are given this long to finish


# The start of a held row's reason when the channel's set-up (a revoked token, a missing IP whitelist entry), not
# the customer, holds it: such rows go out again once the set-up works, whoever writes.
CONFIG_HOLD = "configuration: "


def release_config_holds(session: Session, channel: str) -> int:
    """The channel's set-up works again: every row it held for that goes back to the queue. Returns how many."""
    released = session.execute(
        update(OutboxItem)
        .where(
            col(OutboxItem.channel) == channel,
            col(OutboxItem.status) == HELD,
            col(OutboxItem.last_error).startswith(CONFIG_HOLD),
        )
        .values(status=PENDING, next_attempt_at=utcnow())
    )
    return int(cast(CursorResult[Any], released).rowcount)


class Deliverer:
    """Sends due outbox rows through the senders of the configured channels.

    A round leases the due head of every chat in one transaction (the lease names its owner, so that a
    restarted server takes back its own unfinished sends at once), sends them concurrently, paced within
    each channel's limits, and records the outcomes together in one transaction. Passing failures (5xx,
    429, timeouts) are retried for `retry_for` with capped backoff; a row that still fails becomes a dead
    letter that holds its chat's later rows back, so that `outbox retry` sends them in order.
    """

    def __init__(
        self,
        db: Engine,
        senders: Mapping[str, AnySender],
        *,
        max_attempts: int = 8,
        retry_for: timedelta = timedelta(hours=72),
        backoff_max: float = BACKOFF_MAX_SECONDS,
        owner: str | None = None,
        lease_seconds: float = SEND_LEASE_SECONDS,
        batch: int = 100,
        run_rows: int = RUN_ROWS,
    ) -> None:
        self.db = db
        self.senders = dict(senders)
        self.max_attempts = max_attempts
        self.retry_for = retry_for
        self.backoff_max = backoff_max
        self.owner = (owner or default_owner())[:128]
        self.lease_seconds = lease_seconds
        self.batch = batch
        self.run_rows = run_rows
        self.pacers = {name: Pacer(getattr(sender, "limits", None)) for name, sender in self.senders.items()}
        self._leased: set[int] = set()  # rows leased by this deliverer whose outcome is not recorded yet
        self._sending: set[int] = set()  # rows whose send call is under way

    # --- the loop ---------------------------------------------------------------------------------------

    async def run(
        self, stop: asyncio.Event, *, poll_seconds: float = 0.5, wake: threading.Event | None = None
    ) -> None:
        """Deliver until `stop` is set; woken early by `wake` when new rows were written."""
        wake = wake or threading.Event()
        poke = asyncio.Event()  # set with `wake` when it is a Signal: new rows end the wait at once
        if isinstance(wake, Signal):
            wake.subscribe(poke)
        try:
            recovered = await asyncio.to_thread(self.recover_leases)
            if recovered:
                log.info("outbox: took back %s unfinished send(s) of this worker", recovered)
        except Exception:
            log.exception("outbox: could not take back unfinished sends")
        tasks: set[asyncio.Task[list[Outcome]]] = set()
        unrecorded: list[Outcome] = []
        look = True
        last_look = 0.0
        while not stop.is_set():
            poke.clear()  # a set() after this ends the wait below at once; its wake flag is seen next round
            if look or wake.is_set() or time.monotonic() - last_look >= poll_seconds:
                wake.clear()
                look, last_look = False, time.monotonic()
                room = self.batch - len(tasks)
                try:
                    leased = await asyncio.to_thread(self._lease_due, room) if room > 0 else []
                except Exception as error:
                    log.warning("outbox: could not lease due rows: %s", _error_text(error))
                    leased = []
                tasks.update(asyncio.create_task(self._attempt_run(run)) for run in leased)
            # Until a send finishes, new rows are signalled, or the tick (pacing, the poll) comes.
            poked = asyncio.create_task(poke.wait())
            done, _ = await asyncio.wait(
                {*tasks, poked}, timeout=TICK_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            poked.cancel()
            for task in tasks & done:
                tasks.discard(task)
                unrecorded.extend(task.result())
            if unrecorded:
                try:
                    await asyncio.to_thread(self._record, unrecorded)
                except Exception as error:  # the database is away: keep the outcomes, record them later
                    log.warning(
                        "outbox: could not record %s outcome(s): %s", len(unrecorded), _error_text(error)
                    )
                    await asyncio.sleep(min(1.0, poll_seconds))
                else:
                    unrecorded = []
                    look = True  # the chats just served may have their next row due
        if isinstance(wake, Signal):
            wake.unsubscribe(poke)
        await self._stop(tasks, unrecorded)

    async def _stop(self, tasks: set[asyncio.Task[list[Outcome]]], unrecorded: list[Outcome]) -> None:
        """Sends under way may finish (a cancelled one might have gone out: it would be sent twice);
        sends still waiting their turn give their rows back at once."""
        if tasks:
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while any(not t.done() for t in tasks) and time.monotonic() < deadline:
                for task in tasks:
                    if not task.done() and not self._is_sending(task):
                        task.cancel()
                await asyncio.wait(tasks, timeout=TICK_SECONDS)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    unrecorded.extend(await task)
        released = [
            Outcome(item_id=i, kind="released") for i in self._leased - {o.item_id for o in unrecorded}
        ]
        with contextlib.suppress(Exception):  # what cannot be written now is taken back at the next start
            await asyncio.to_thread(self._record, unrecorded + released)

    def _is_sending(self, task: asyncio.Task[list[Outcome]]) -> bool:
        return getattr(task, "item_id", None) in self._sending

    async def deliver_due(self, limit: int = 100) -> int:
        """One round, start to end: lease due heads, send them, record. Returns how many were attempted."""
        leased = await asyncio.to_thread(self._lease_due, limit)
        if not leased:
            return 0
        outcomes = [o for run in await asyncio.gather(*(self._attempt_run(r) for r in leased)) for o in run]
        await asyncio.to_thread(self._record, outcomes)
        return sum(1 for o in outcomes if o.kind != "released")

    # --- leases -----------------------------------------------------------------------------------------

    def recover_leases(self) -> int:
        """Leases this worker held when it stopped (killed mid-send) end now, not when they run out.

        SQLite serves one process, so every lease in it is a former life's; on PostgreSQL only rows
        leased under this worker's own name (WORKER_ID) are taken back, others' leases run out as usual.
        """
        now = utcnow()
        with session_scope(self.db) as session:
            query = update(OutboxItem).where(
                col(OutboxItem.status) == PENDING,
                col(OutboxItem.lease_owner).is_not(None),
                col(OutboxItem.next_attempt_at) > now,
            )
            if session.get_bind().dialect.name != "sqlite":
                query = query.where(col(OutboxItem.lease_owner) == self.owner)
            result = session.execute(query.values(next_attempt_at=now, lease_owner=None))
            return int(cast(CursorResult[Any], result).rowcount)

    def _lease_due(self, limit: int) -> list[list[Due]]:
        """Lease the due head row of up to `limit` chats, each with the due rows right behind it (up to
        RUN_ROWS a chat: its run, sent in order by one task), in one transaction."""
        channels = [name for name, pacer in self.pacers.items() if pacer.paused_for() <= 0]
        if not channels or limit <= 0:
            return []
        now = utcnow()
        # Found by reads (on SQLite they do not wait for the one write lock, and a look that finds nothing,
        # the usual case once a round's runs went out, writes nothing); leased by one write that checks the
        # WHERE again on each row, so that a row another worker took meanwhile (PostgreSQL) is left to it.
        found = {"channels": channels, "now": now, "limit": limit}
        with self.db.connect() as connection:
            firsts = [
                Due(id=r.id, channel=r.channel, chat_id=r.chat_id, payload=r.payload)
                for r in connection.execute(
                    _DUE_HELD_OUT if self._leased else _DUE,
                    {**found, "leased": list(self._leased)} if self._leased else found,
                )
            ]
            if not firsts:
                return []
            runs = self._runs(connection, firsts, now) if self.run_rows > 1 else [[h] for h in firsts]
        with session_scope(self.db) as session:
            until = now + timedelta(seconds=self.lease_seconds)
            ids = [d.id for run in runs for d in run]
            leased = set(
                session.connection()
                .execute(_LEASE, {"ids": ids, "now": now, "until": until, "owner": self.owner})
                .scalars()
            )
            # A run ends before its first row that was not leased; rows leased after such a gap go back.
            kept: list[list[Due]] = []
            stray: list[int] = []
            for run in runs:
                cut = next((n for n, d in enumerate(run) if d.id not in leased), len(run))
                if cut:
                    kept.append(run[:cut])
                stray.extend(d.id for d in run[cut:] if d.id in leased)
            if stray:
                session.connection().execute(_GIVE_BACK, {"ids": stray, "now": now})
        self._leased.update(row.id for run in kept for row in run)
        return kept

    def _runs(self, connection: Connection, heads: list[Due], now: datetime) -> list[list[Due]]:
        """Each head's run: the rows right behind it in its chat that are due now, until the first that is
        not (held, dead, waiting for a retry), at most `run_rows` in all. A run goes out in order, one row
        after the other, without a lease and a record between them (the replies to one message)."""
        chats = {(h.channel, h.chat_id): [h] for h in heads}
        behind = connection.execute(
            _BEHIND,
            {
                "channels": sorted({h.channel for h in heads}),
                "chats": sorted({h.chat_id for h in heads}),
                "after": min(h.id for h in heads),
            },
        )
        closed: set[tuple[str, str]] = set()  # chats whose run has ended
        for row in behind:
            key = (row.channel, row.chat_id)
            run = chats.get(key)
            if run is None or key in closed or row.id <= run[0].id:
                continue
            if row.status == DEAD and not row.holds_chat:
                continue  # dead for a reason of its own: it holds nothing back
            if row.status != PENDING or row.next_attempt_at > now or len(run) >= self.run_rows:
                closed.add(key)
                continue
            run.append(Due(id=row.id, channel=row.channel, chat_id=row.chat_id, payload=row.payload))
        return list(chats.values())

    async def _attempt_run(self, run: list[Due]) -> list[Outcome]:
        """Send a chat's run in order; after a row that did not go, the rest are given back untried."""
        outcomes: list[Outcome] = []
        with contextlib.suppress(
            asyncio.CancelledError
        ):  # stopping: what went is recorded, the rest given back
            for item in run:
                outcomes.append(await self._attempt(item))
                if outcomes[-1].kind != "sent":
                    break
        tried = {o.item_id for o in outcomes}
        return outcomes + [Outcome(item_id=d.id, kind="released") for d in run if d.id not in tried]

    # --- one send ---------------------------------------------------------------------------------------

    async def _attempt(self, item: Due) -> Outcome:
        item_id = item.id
        task = asyncio.current_task()
        if task is not None:
            task.item_id = item_id  # type: ignore[attr-defined]
        pacer = self.pacers[item.channel]
        if not await pacer.turn(item.chat_id):  # the bot must wait: give the row back, not sit on its lease
            return Outcome(item_id=item_id, kind="released", after=pacer.paused_for())
        sender = self.senders[item.channel]
        self._sending.add(item_id)
        try:
            result = await deliver(sender, item)
        except Unreachable as error:
            return Outcome(item_id=item_id, kind="unreachable", error=str(error))
        except PermanentFailure as error:
            return Outcome(item_id=item_id, kind="dead", error=str(error))
        except Hold as error:
            return Outcome(item_id=item_id, kind="hold", error=str(error))
        except RetryLater as error:
            if error.after and error.scope == "channel":
                pacer.pause(error.after)  # every chat of this bot waits, not only this one
            return Outcome(item_id=item_id, kind="retry", error=str(error), after=error.after)
        except (
            Exception
        ) as error:  # a bug or an unexpected answer: retry with backoff, a bounded number of times
            log.warning("send on %s failed: %s", item.channel, type(error).__name__)
            return Outcome(item_id=item_id, kind="error", error=f"{type(error).__name__}: {error}")
        finally:
            self._sending.discard(item_id)
        return Outcome(item_id=item_id, kind="sent", external_id=result.external_id)

    # --- outcomes ---------------------------------------------------------------------------------------

    def _record(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        now = utcnow()
        sent = [o for o in outcomes if o.kind == "sent"]
        with session_scope(self.db) as session:
            if sent:  # the usual outcome, for many rows in one statement
                session.connection().execute(
                    _RECORD_SENT, [{"row": o.item_id, "external": o.external_id, "now": now} for o in sent]
                )
            for outcome in outcomes:
                if outcome.kind == "sent":
                    continue
                item = session.get(OutboxItem, outcome.item_id)
                if item is not None and item.status == PENDING:
                    self._apply(session, item, outcome, now)
        self._leased.difference_update(o.item_id for o in outcomes)

    def _apply(self, session: Session, item: OutboxItem, outcome: Outcome, now: datetime) -> None:
        item.lease_owner = None
        if outcome.kind == "released":  # never tried: no attempt spent
            item.next_attempt_at = now + timedelta(seconds=outcome.after or 0)
            return
        item.last_error = outcome.error
        if outcome.kind == "hold":
            item.status = HELD
            return
        item.attempts += 1
        if outcome.kind == "sent":
            item.status, item.external_id, item.sent_at, item.failing_since = (
                SENT,
                outcome.external_id,
                now,
                None,
            )
        elif outcome.kind in ("dead", "unreachable"):
            item.status = DEAD
            log.warning("outbox row %s dead-lettered on %s", item.id, item.channel)
            if outcome.kind == "unreachable":
                self._unreachable(session, item)
        elif outcome.kind == "retry":
            item.failing_since = item.failing_since or now
            if now - item.failing_since >= self.retry_for:
                self._give_up(item, f"still failing after {self.retry_for}")
            else:
                delay = (
                    outcome.after if outcome.after is not None else backoff(item.attempts, self.backoff_max)
                )
                item.next_attempt_at = now + timedelta(seconds=delay)
        elif item.attempts >= self.max_attempts:  # "error": something unexpected, again and again
            self._give_up(item, f"{item.attempts} attempts")
        else:
            item.next_attempt_at = now + timedelta(seconds=backoff(item.attempts, self.backoff_max))

    @staticmethod
    def _give_up(item: OutboxItem, why: str) -> None:
        item.status, item.holds_chat = DEAD, True  # its chat's later rows wait for `outbox retry`
        log.warning("outbox row %s on %s dead after %s; its chat waits", item.id, item.channel, why)

    @staticmethod
    def _unreachable(session: Session, item: OutboxItem) -> None:
        session.execute(
            update(ChannelIdentity)
            .where(col(ChannelIdentity.channel) == item.channel, col(ChannelIdentity.chat_id) == item.chat_id)
            .values(unreachable=True)
        )
        # Nothing else can reach a customer who blocked us: the rest of the chat's queue is dead too.
        session.execute(
            update(OutboxItem)
            .where(
                col(OutboxItem.channel) == item.channel,
                col(OutboxItem.chat_id) == item.chat_id,
                col(OutboxItem.status) == PENDING,
                col(OutboxItem.id) != item.id,
            )
            .values(status=DEAD, last_error="recipient unreachable")
        )


def _error_text(error: BaseException) -> str:
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def retry_dead(db: Engine, ids: list[int] | None = None) -> int:
    """Put dead letters back in the queue (all, or those given); returns how many.

    They go out in their chats' order: a dead letter that held its chat is its head again, and the rows
    that waited behind it follow it.
    """
    with session_scope(db) as session:
        query = update(OutboxItem).where(col(OutboxItem.status).in_(DEAD_LETTERS))
        if ids:
            query = query.where(col(OutboxItem.id).in_(ids))
        result = session.execute(
            query.values(
                status=PENDING,
                attempts=0,
                next_attempt_at=utcnow(),
                failing_since=None,
                holds_chat=False,
                lease_owner=None,
            )
        )
        return int(cast(CursorResult[Any], result).rowcount)


# --- what channels ask of their own outbox rows --------------------------------------------------------------
# An adapter reads and updates its rows only through these, never the table itself.

WAITING = (PENDING, HELD)
# How far a sent message has come, as channels report it later; a status never goes back.
STATUS_RANK = {SENT: 1, "delivered": 2, "read": 3}


def waiting_count(db: Engine, channel: str, chat_id: str) -> int:
    """How many of the chat's messages are queued or held (the one being sent counts too)."""
    with Session(db) as session:
        return int(
            session.execute(
                select(func.count())
                .select_from(OutboxItem)
                .where(
                    col(OutboxItem.channel) == channel,
                    col(OutboxItem.chat_id) == chat_id,
                    col(OutboxItem.status).in_(WAITING),
                )
            ).scalar_one()
        )


def sent_times(db: Engine, channel: str, chat_id: str, since: datetime, limit: int) -> list[datetime]:
    """When the chat's messages sent since `since` went out, the latest first, at most `limit`."""
    with Session(db) as session:
        times = (
            session.execute(
                select(col(OutboxItem.sent_at))
                .where(
                    col(OutboxItem.channel) == channel,
                    col(OutboxItem.chat_id) == chat_id,
                    col(OutboxItem.status) == SENT,
                    col(OutboxItem.sent_at) >= since,
                )
                .order_by(col(OutboxItem.sent_at).desc())
                .limit(limit)
            )
            .scalars()
            .all()
        )
    return [t for t in times if t is not None]


def sent_any(db: Engine, channel: str, external_ids: list[str]) -> bool:
    """Whether one of these channel message ids is of a message we sent."""
    if not external_ids:
        return False
    with Session(db) as session:
        found = session.execute(
            select(col(OutboxItem.id))
            .where(col(OutboxItem.channel) == channel, col(OutboxItem.external_id).in_(external_ids))
            .limit(1)
        ).first()
    return found is not None


@dataclass(frozen=True, kw_only=True)
class Reported:
    """The row a channel's status report was about (`report_status`)."""

    chat_id: str


def report_status(
    session: Session,
    channel: str,
    external_id: str,
    status: str,
    *,
    error: str | None = None,
    resend: str | None = None,
    now: datetime,
) -> Reported | None:
    """A channel's later word on a message it took (delivered, read, failed), in the caller's transaction.

    "failed" makes the row a dead letter with the error, or, when `resend` gives a reason, puts it back in
    the queue with that reason (WhatsApp's closed window); other statuses only move it forward. None when no
    row of this channel sent `external_id`.
    """
    item = session.execute(
        select(OutboxItem)
        .where(col(OutboxItem.channel) == channel, col(OutboxItem.external_id) == external_id)
        .with_for_update()
    ).scalar_one_or_none()
    if item is None:
        return None
    if status == FAILED:
        if resend is not None:
            item.status, item.next_attempt_at, item.last_error = PENDING, now, resend
        else:
            item.status, item.last_error = FAILED, error or FAILED
    elif STATUS_RANK.get(status, 0) > STATUS_RANK.get(item.status, 99):
        item.status = status  # never back: read stays read when a late "delivered" comes
    return Reported(chat_id=item.chat_id)


def note_held(session: Session, channel: str, chat_id: str, reason: str) -> None:
    """Say why the chat's held rows wait (shown by `outbox list` and the health page)."""
    session.execute(
        update(OutboxItem)
        .where(
            col(OutboxItem.channel) == channel,
            col(OutboxItem.chat_id) == chat_id,
            col(OutboxItem.status) == HELD,
        )
        .values(last_error=reason[:1000])
    )
