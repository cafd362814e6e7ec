"""The database tables (SQLModel). Times are aware UTC; JSON columns hold channel-neutral values."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Index,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlmodel import Field, SQLModel

from bot.store.clock import utcnow


class Customer(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str | None = None
    language: str | None = None
    language_explicit: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class ChannelIdentity(SQLModel, table=True):
    """How one customer is reached on one channel; `data` keeps channel specifics (Teams reference, windows)."""

    __table_args__ = (UniqueConstraint("channel", "chat_id"),)
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    channel: str = Field(max_length=32)
    chat_id: str = Field(max_length=255)
    sender_id: str = Field(default="", max_length=255)
    display_name: str | None = None
    unreachable: bool = False
    last_inbound_at: datetime | None = None
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Conversation(SQLModel, table=True):
    """The customer's dialogue with the bot on one chat; `data` is the pure conversation state."""

    __table_args__ = (UniqueConstraint("channel", "chat_id"),)
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    channel: str = Field(max_length=32)
    chat_id: str = Field(max_length=255)
    state: str = Field(default="new", max_length=32)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    case_id: int | None = None  # the open case; no foreign key, case.conversation_id points back
    updated_at: datetime = Field(default_factory=utcnow)


# The rows that wait, as the partial indexes on them say it: a chat's head is looked for among these only, in an
# index that holds no done or sent row (the inbox and the outbox keep every row; a scan of all of them grew with
# the database: 15 ms a batch at 200,000 inbox rows on SQLite, against 0.2 ms).
INBOX_WAITING = ("pending", "parked")
OUTBOX_WAITING = ("pending", "held", "dead")


def literal_in(column: Any, values: tuple[str, ...]) -> ColumnElement[bool]:
    """`column IN ('a', 'b')` with the values written into the SQL, not bound: a partial index is used only
    for a query that says its condition in the same words (the planner cannot see a bound value)."""
    assert all(v.isidentifier() for v in values)  # constants of ours, never input
    return cast(ColumnElement[bool], column.in_([literal_column(f"'{v}'") for v in values]))


def _where(values: tuple[str, ...]) -> dict[str, Any]:
    condition = text(f"status IN ({', '.join(repr(v) for v in values)})")
    return {"sqlite_where": condition, "postgresql_where": condition}


class InboxItem(SQLModel, table=True):
    """An inbound message as received, stored before the channel is acknowledged."""

    __table_args__ = (
        UniqueConstraint("channel", "external_id"),
        Index("ix_inbox_pending", "status", "id"),
        Index("ix_inbox_chat", "channel", "chat_id", "status"),
        Index("ix_inbox_waiting", "channel", "chat_id", "id", **_where(INBOX_WAITING)),
    )
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=32)
    external_id: str = Field(max_length=255)
    chat_id: str = Field(max_length=255)
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    # pending -> done ; pending -> parked (failed the same way `inbox_max_attempts` times; holds its chat's
    # later messages until re-driven) ; failed (written by earlier versions: kept, holds nothing)
    status: str = Field(default="pending", max_length=16)
    error: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # failures in a row, same way
    next_attempt_at: datetime | None = None  # after a failure: not before this
    received_at: datetime = Field(default_factory=utcnow)
    processed_at: datetime | None = None


class Message(SQLModel, table=True):
    """The log of one conversation: what the customer, the bot and engineers said."""

    __table_args__ = (Index("ix_message_conv", "conversation_id", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.id")
    case_id: int | None = Field(default=None, foreign_key="case.id", index=True)
    author: str = Field(max_length=16)  # customer | bot | engineer | note
    author_name: str | None = None
    text: str = Field(default="", sa_column=Column(Text, nullable=False))
    buttons: list[dict[str, str]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    attachment_ids: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    client_id: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=utcnow)


class Case(SQLModel, table=True):
    """A warranty claim handed to the engineers; `ref` is the public reference customers see."""

    id: int | None = Field(default=None, primary_key=True)
    ref: str = Field(default="", max_length=32, index=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    conversation_id: int = Field(foreign_key="conversation.id", index=True)
    channel: str = Field(max_length=32)
    language: str = Field(default="en", max_length=8)
    status: str = Field(default="open", max_length=24, index=True)
    fault: str = Field(default="", sa_column=Column(Text, nullable=False))
    claim_date: date
    prefers_discount: bool = False
    method: str | None = Field(default=None, max_length=32)
    refusal_reason: str | None = Field(default=None, sa_column=Column(Text))
    claimed_by: str | None = None
    rating: int | None = None
    desk_ref: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow, index=True)  # moves on every change and message
    reminded_at: datetime | None = None
    desk_seen_id: int | None = None  # the last message the local desk has shown an engineer (unread after it)


class CaseUnit(SQLModel, table=True):
    """One unit (serial) of a case with the decision the policy gave it."""

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    serial: str = Field(max_length=64, index=True)
    model: str | None = None
    order_id: str | None = Field(default=None, max_length=64)
    production_date: date | None = None
    port_arrival_date: date | None = None
    warranty_end: date | None = None
    outcome: str = Field(max_length=16)
    basis: str | None = None
    clauses: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    decision: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class StoredAttachment(SQLModel, table=True):
    """A file a customer sent, kept in the attachments folder under `path` (relative)."""

    __tablename__ = "attachment"
    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int | None = Field(default=None, foreign_key="conversation.id", index=True)
    case_id: int | None = Field(default=None, foreign_key="case.id", index=True)
    kind: str = Field(max_length=16)
    name: str = Field(max_length=255)
    mime: str = Field(max_length=128)
    size: int
    path: str = Field(max_length=512)
    sha256: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class RegistryOrder(SQLModel, table=True):
    order_id: str = Field(primary_key=True, max_length=64)
    customer: str = ""
    cargo_compensation: bool = False
    order_pieces: int | None = None
    order_total: Decimal | None = Field(default=None, sa_column=Column(Numeric(14, 2)))
    currency: str | None = Field(default=None, max_length=3)


class RegistryUnit(SQLModel, table=True):
    serial: str = Field(primary_key=True, max_length=64)
    # A foreign key on SQLite; on PostgreSQL the statement triggers of migration 0007 keep the same rule
    # (its own check ran a query a unit, half of an import's server time). Nothing reads units by order.
    order_id: str = Field(foreign_key="registryorder.order_id")
    production_date: date | None = None
    port_arrival_date: date | None = None


class OutboxItem(SQLModel, table=True):
    """A message waiting to leave: to a customer's channel, or an event for the engineers' desk."""

    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_chat", "channel", "chat_id", "id"),
        Index("ix_outbox_waiting", "channel", "chat_id", "id", **_where(OUTBOX_WAITING)),
    )
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=32)
    chat_id: str = Field(max_length=255)
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    # pending -> sent -> delivered -> read ; pending -> dead ; sent -> failed (reported later by channel)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    lease_owner: str | None = Field(
        default=None, max_length=128
    )  # the worker sending it (until the lease ends)
    failing_since: datetime | None = None  # first of the passing failures in a row (5xx, 429, timeouts)
    holds_chat: bool = Field(
        default=False, sa_column_kwargs={"server_default": "0"}
    )  # a dead head: the chat waits
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    external_id: str | None = Field(default=None, max_length=255, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class AuditEntry(SQLModel, table=True):
    """Every change of a case: who did what, when."""

    __tablename__ = "audit"
    id: int | None = Field(default=None, primary_key=True)
    case_id: int | None = Field(default=None, foreign_key="case.id", index=True)
    actor: str = Field(max_length=255)
    action: str = Field(max_length=64)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    at: datetime = Field(default_factory=utcnow)


class KeyValue(SQLModel, table=True):
    """Small shared state for adapters (access tokens, mailbox UIDs), visible to every worker.

    Keys are compared byte by byte (SQLite's BINARY; PostgreSQL's "C" collation, migration 0006), so that the
    keys that start with a prefix are one range of the primary key's index on both (bot/channels.py
    kv_items)."""

    key: str = Field(
        sa_column=Column(String(128).with_variant(String(128, collation="C"), "postgresql"), primary_key=True)
    )
    value: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    expires_at: datetime | None = None


class Fulfilment(SQLModel, table=True):
    """What follows the chosen service method (bot/fulfilment.py): the step, the RMA, shipments, slots."""

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id", unique=True)
    method: str = Field(max_length=32)
    step: str = Field(max_length=32, index=True)
    rma: str | None = Field(default=None, max_length=48, index=True)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reminded: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )  # reminders sent
    step_since: datetime = Field(default_factory=utcnow)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Credit(SQLModel, table=True):
    """A discount compensation (M5) granted against an order, for the customer's next order."""

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    company: str = Field(default="", max_length=255, index=True)  # the registry's customer of the order
    order_id: str = Field(max_length=64, index=True)
    amount: Decimal = Field(sa_column=Column(Numeric(14, 2), nullable=False))
    currency: str | None = Field(default=None, max_length=3)
    goodwill: bool = False
    granted_by: str = Field(default="", max_length=255)
    created_at: datetime = Field(default_factory=utcnow)


def table_of(model: type[SQLModel]) -> Table:
    """A model's table, for Core statements on the hot paths (the engine's batch writes, the outbox)."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]
