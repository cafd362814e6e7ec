"""Small shared state for adapters (tokens, mailbox positions, conversation references) in the KeyValue table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from bot.store.db import lock_chat, session_scope
from bot.store.models import KeyValue


def kv_get(db: Engine, key: str) -> tuple[dict[str, Any], datetime | None] | None:
    """The value stored under `key` and when it expires, or None."""
    with Session(db) as session:
        row = session.get(KeyValue, key)
        return (dict(row.value), row.expires_at) if row is not None else None


def kv_put(db: Engine, key: str, value: dict[str, Any], expires_at: datetime | None = None) -> None:
    with session_scope(db) as session:
        lock_chat(session, "keyvalue", key)  # two workers writing the same key take turns (PostgreSQL)
        row = session.get(KeyValue, key)
        if row is None:
            session.add(KeyValue(key=key, value=value, expires_at=expires_at))
        else:
            row.value, row.expires_at = value, expires_at


def kv_delete(db: Engine, key: str) -> None:
    with session_scope(db) as session:
        row = session.get(KeyValue, key)
        if row is not None:
            session.delete(row)
