"""The values that cross the line between channels and the core: inbound and outbound messages."""

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
