"""The values that cross the line between channels and the core: inbound and outbound messages, desk events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Button:
    """A choice offered to the customer; `value` is what comes back when it is picked."""

    label: str
    value: str


@dataclass(frozen=True, kw_only=True)
class Attachment:
    """A file a customer sent or we send; `ref` is the channel's file id until stored, then a storage key."""

    kind: str  # photo | document | voice
    name: str
    mime: str
    size: int
    ref: str


@dataclass(frozen=True, kw_only=True)
class InboundMessage:
    """One thing a customer did on a channel, normalised by its adapter."""

    channel: str
    external_id: str
    sender_id: str
    chat_id: str
    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    received_at: datetime
    locale_hint: str | None = None
    sender_name: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class OutboundMessage:
    """One message to a customer, in channel-neutral form; the adapter renders and degrades it."""

    channel: str
    chat_id: str
    text: str
    buttons: tuple[Button, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    reply_to: str | None = None
    # What sending may need besides the words, so that no adapter reads the database for it: the customer's
    # language (a template's, a notice's), the case the message belongs to (a mail's subject and thread), and
    # who wrote it (an engineer's words are no auto-reply).
    language: str | None = None
    case_ref: str | None = None
    author: str = "bot"


# What a desk event says happened to a case.
CASE_OPENED, CUSTOMER_MESSAGE, CASE_UPDATED = "case_opened", "customer_message", "case_updated"


@dataclass(frozen=True, kw_only=True)
class DeskEvent:
    """One change of a case for an external desk (Slack), with what the desk knew when it happened.

    `detail` by kind: customer_message: sender, text, attachment_ids; case_updated: action, actor, origin and
    the action's own detail as audited (text, question, method, reason, clauses, serial, outcome, ...).
    """

    desk: str  # the outbox channel of the desk, e.g. "slack"
    kind: str  # case_opened | customer_message | case_updated
    case_ref: str
    detail: dict[str, Any] = field(default_factory=dict)
