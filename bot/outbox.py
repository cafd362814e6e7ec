"""The transactional outbox: rows written with the change that made them, delivered by a loop with retries.

Delivery keeps each chat's order: a chat's next row waits until the one before it is sent or dead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, Engine, func, select, update
from sqlmodel import Session, col

from bot.messages import Attachment, Button, OutboundMessage
from bot.store import ChannelIdentity, OutboxItem, session_scope
from bot.store.clock import utcnow

log = logging.getLogger(__name__)

PENDING, HELD, SENT, DEAD = "pending", "held", "sent", "dead"
# Reported by a channel after it took the message (a WhatsApp status "failed"): a dead letter too.
FAILED = "failed"
DEAD_LETTERS = (DEAD, FAILED)
STATUSES = (PENDING, HELD, SENT, "delivered", "read", DEAD, FAILED)
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 300.0
SEND_LEASE_SECONDS = 60.0
CHAIN_LIMIT = 20  # rows of one chat sent back to back before other chats get their turn


class DeliveryError(Exception):
    """Base of what a sender raises when a message did not go out."""


class RetryLater(DeliveryError):
    """A passing failure (5xx, timeout, 429): try again, after `after` seconds when the channel said so."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


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
    """What a channel adapter offers the outbox."""

    async def send(self, message: OutboundMessage, payload: Mapping[str, Any]) -> Delivered: ...


def to_payload(message: OutboundMessage) -> dict[str, Any]:
    return {
        "text": message.text,
        "buttons": [asdict(b) for b in message.buttons],
        "attachments": [asdict(a) for a in message.attachments],
        "reply_to": message.reply_to,
    }


def from_payload(channel: str, chat_id: str, payload: Mapping[str, Any]) -> OutboundMessage:
    return OutboundMessage(
        channel=channel,
        chat_id=chat_id,
        text=payload.get("text", ""),
        buttons=tuple(Button(**b) for b in payload.get("buttons", ())),
        attachments=tuple(Attachment(**a) for a in payload.get("attachments", ())),
        reply_to=payload.get("reply_to"),
    )


def enqueue(session: Session, message: OutboundMessage, **extra: Any) -> OutboxItem:
    """Add a message to the outbox in the caller's transaction."""
    item = OutboxItem(
        channel=message.channel, chat_id=message.chat_id, payload={**to_payload(message), **extra}
    )
    session.add(item)
    return item


def enqueue_event(session: Session, channel: str, key: str, event: str, **data: Any) -> OutboxItem:
    """Add an event for an external desk (Slack): `key` orders events of one case."""
    item = OutboxItem(channel=channel, chat_id=key, payload={"event": event, **data})
    session.add(item)
    return item


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


def backoff(attempts: int) -> float:
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1)))


class Deliverer:
    """Sends due outbox rows through the senders of the configured channels."""

    def __init__(self, db: Engine, senders: Mapping[str, Sender], *, max_attempts: int = 8) -> None:
        self.db = db
        self.senders = dict(senders)
        self.max_attempts = max_attempts

    async def run(
        self, stop: asyncio.Event, *, poll_seconds: float = 0.5, wake: threading.Event | None = None
    ) -> None:
        """Deliver until `stop` is set; woken early by `wake` when new rows were written."""
        wake = wake or threading.Event()
        while not stop.is_set():
            wake.clear()
            try:
                attempted = await self.deliver_due()
            except Exception:
                log.exception("outbox delivery round failed")
                attempted = 0
            if not attempted:
                await asyncio.to_thread(wake.wait, poll_seconds)

    async def deliver_due(self, limit: int = 100) -> int:
        """One round: the head row of every chat that has a due row. Returns how many were attempted."""
        heads = await asyncio.to_thread(self._due_heads, limit)
        if not heads:
            return 0
        results = await asyncio.gather(*(self._deliver(item_id) for item_id in heads))
        return sum(results)

    def _due_heads(self, limit: int) -> list[int]:
        now = utcnow()
        with Session(self.db) as session:
            # The oldest waiting row of each chat is its head; only heads may go, which keeps chat order
            # (a held head holds its chat back until it is released).
            heads = (
                select(func.min(col(OutboxItem.id)).label("id"))
                .where(col(OutboxItem.status).in_((PENDING, HELD)), col(OutboxItem.channel).in_(self.senders))
                .group_by(col(OutboxItem.channel), col(OutboxItem.chat_id))
                .subquery()
            )
            rows = session.execute(
                select(col(OutboxItem.id))
                .where(
                    col(OutboxItem.id).in_(select(heads.c.id)),
                    col(OutboxItem.status) == PENDING,
                    col(OutboxItem.next_attempt_at) <= now,
                )
                .order_by(col(OutboxItem.id))
                .limit(limit)
            ).scalars()
            return [int(r) for r in rows if r is not None]

    async def _deliver(self, item_id: int) -> int:
        """Send a chat's head row and, while they succeed, the rows queued behind it (a few at most)."""
        attempted = 0
        next_id: int | None = item_id
        while next_id is not None and attempted < CHAIN_LIMIT:
            sent = await self._deliver_one(next_id)
            attempted += 1 if sent is not None else 0
            next_id = await asyncio.to_thread(self._next_due, sent) if sent is not None else None
        return attempted

    def _next_due(self, sent: OutboxItem) -> int | None:
        """The chat's next row when the one before it went out, so a conversation needs no extra round."""
        if sent.status != SENT:
            return None
        with Session(self.db) as session:
            row = session.execute(
                select(col(OutboxItem.id), col(OutboxItem.status), col(OutboxItem.next_attempt_at))
                .where(col(OutboxItem.channel) == sent.channel, col(OutboxItem.chat_id) == sent.chat_id,
                       col(OutboxItem.status).in_((PENDING, HELD)), col(OutboxItem.id) > (sent.id or 0))
                .order_by(col(OutboxItem.id))
                .limit(1)
            ).first()
        if row is None or row.status != PENDING or row.next_attempt_at > utcnow():
            return None
        return int(row.id)

    async def _deliver_one(self, item_id: int) -> OutboxItem | None:
        """Try one row; returns it with its new status, or None if another worker has it."""
        item = await asyncio.to_thread(self._claim, item_id)
        if item is None:
            return None
        sender = self.senders[item.channel]
        message = from_payload(item.channel, item.chat_id, item.payload)
        try:
            result = await sender.send(message, item.payload)
        except Unreachable as error:
            await asyncio.to_thread(self._finish, item_id, DEAD, str(error), unreachable=True)
        except PermanentFailure as error:
            await asyncio.to_thread(self._finish, item_id, DEAD, str(error))
        except Hold as error:
            await asyncio.to_thread(self._hold, item_id, str(error))
        except RetryLater as error:
            await asyncio.to_thread(self._retry, item_id, str(error), error.after)
        except Exception as error:  # a bug or an unexpected answer: retry with backoff, keep the error
            log.warning("send on %s failed: %s", item.channel, type(error).__name__)
            await asyncio.to_thread(self._retry, item_id, f"{type(error).__name__}: {error}", None)
        else:
            await asyncio.to_thread(self._finish, item_id, SENT, None, external_id=result.external_id)
            item.status = SENT
        return item

    def _claim(self, item_id: int) -> OutboxItem | None:
        """Take the row for one send: a lease on `next_attempt_at`, so a crashed sender's row comes back."""
        now = utcnow()
        with session_scope(self.db) as session:
            claimed = session.execute(
                update(OutboxItem)
                .where(
                    col(OutboxItem.id) == item_id,
                    col(OutboxItem.status) == PENDING,
                    col(OutboxItem.next_attempt_at) <= now,
                )
                .values(next_attempt_at=now + timedelta(seconds=SEND_LEASE_SECONDS))
            )
            if cast(CursorResult[Any], claimed).rowcount != 1:
                return None  # another worker has it
            item = session.get(OutboxItem, item_id)
            if item is None:
                return None
            session.expunge(item)
            return item

    def _finish(
        self,
        item_id: int,
        status: str,
        error: str | None,
        *,
        external_id: str | None = None,
        unreachable: bool = False,
    ) -> None:
        with session_scope(self.db) as session:
            item = session.get(OutboxItem, item_id)
            if item is None:
                return
            item.status = status
            item.attempts += 1
            item.last_error = error
            item.external_id = external_id
            item.sent_at = utcnow() if status == SENT else None
            if unreachable:
                session.execute(
                    update(ChannelIdentity)
                    .where(
                        col(ChannelIdentity.channel) == item.channel,
                        col(ChannelIdentity.chat_id) == item.chat_id,
                    )
                    .values(unreachable=True)
                )
                # Nothing else can reach a customer who blocked us: the rest of the chat's queue is dead too.
                session.execute(
                    update(OutboxItem)
                    .where(
                        col(OutboxItem.channel) == item.channel,
                        col(OutboxItem.chat_id) == item.chat_id,
                        col(OutboxItem.status) == PENDING,
                    )
                    .values(status=DEAD, last_error="recipient unreachable")
                )
            if status == DEAD:
                log.warning("outbox row %s dead-lettered on %s", item_id, item.channel)

    def _hold(self, item_id: int, reason: str) -> None:
        with session_scope(self.db) as session:
            item = session.get(OutboxItem, item_id)
            if item is not None:
                item.status = HELD
                item.last_error = reason

    def _retry(self, item_id: int, error: str, after: float | None) -> None:
        with session_scope(self.db) as session:
            item = session.get(OutboxItem, item_id)
            if item is None:
                return
            item.attempts += 1
            item.last_error = error
            if item.attempts >= self.max_attempts:
                item.status = DEAD
                log.warning("outbox row %s dead after %s attempts", item_id, item.attempts)
                return
            delay = after if after is not None else backoff(item.attempts)
            item.next_attempt_at = utcnow() + timedelta(seconds=delay)


def retry_dead(db: Engine, ids: list[int] | None = None) -> int:
    """Put dead letters back in the queue (all, or those given); returns how many."""
    with session_scope(db) as session:
        query = update(OutboxItem).where(col(OutboxItem.status).in_(DEAD_LETTERS))
        if ids:
            query = query.where(col(OutboxItem.id).in_(ids))
        result = session.execute(query.values(status=PENDING, attempts=0, next_attempt_at=utcnow()))
        return int(cast(CursorResult[Any], result).rowcount)
