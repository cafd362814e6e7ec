"""Storage: SQLModel tables, engines and sessions, migrations."""

from bot.store.db import lock_chat, make_engine, session_scope, upgrade
from bot.store.models import (
    AuditEntry,
    Case,
    CaseUnit,
    ChannelIdentity,
    Conversation,
    Credit,
    Customer,
    Fulfilment,
    InboxItem,
    KeyValue,
    Message,
    OutboxItem,
    RegistryOrder,
    RegistryUnit,
    StoredAttachment,
    table_of,
)

__all__ = [
    "AuditEntry",
    "Case",
    "CaseUnit",
    "ChannelIdentity",
    "Conversation",
    "Credit",
    "Customer",
    "Fulfilment",
    "InboxItem",
    "KeyValue",
    "Message",
    "OutboxItem",
    "RegistryOrder",
    "RegistryUnit",
    "StoredAttachment",
    "lock_chat",
    "make_engine",
    "session_scope",
    "table_of",
    "upgrade",
]
