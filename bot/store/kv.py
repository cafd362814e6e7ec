"""Small shared state for adapters (tokens, mailbox positions, conversation references) in the KeyValue table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete
from sqlmodel import Session, col

from bot.store.db import insert_for, lock_chat, session_scope
from bot.store.models import KeyValue


def kv_get(db: Engine, key: str) -> tuple[dict[str, Any], datetime | None] | None:
    """The value stored under `key` and when it expires, or None."""
    with Session(db) as session:
        row = session.get(KeyValue, key)
        return (dict(row.value), row.expires_at) if row is not None else None


def kv_put(db: Engine, key: str, value: dict[str, Any], expires_at: datetime | None = None) -> None:
    """Store `value` under `key`, replacing what was there: one statement, so that a key taken or deleted
    meanwhile by another process is simply stored again."""
    with session_scope(db) as session:
        lock_chat(session, "keyvalue", key)  # takes turns with kv_change on the same key (PostgreSQL)
        kv_upsert(session, key, value, expires_at)


def kv_upsert(session: Session, key: str, value: dict[str, Any], expires_at: datetime | None) -> None:
    """`kv_put` inside the caller's transaction (INSERT … ON CONFLICT DO UPDATE)."""
    statement = insert_for(session.get_bind().dialect.name)(KeyValue).values(
        key=key, value=value, expires_at=expires_at
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["key"], set_={"value": value, "expires_at": expires_at}
        )
    )


def kv_delete(db: Engine, key: str) -> None:
    with session_scope(db) as session:
        session.execute(delete(KeyValue).where(col(KeyValue.key) == key))  # gone already: nothing to do
