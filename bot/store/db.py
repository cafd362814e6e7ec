"""Database engines and sessions: SQLite (WAL, one writer at a time) or PostgreSQL, and schema upgrades."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

MIGRATIONS = Path(__file__).with_name("migrations")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and write-ahead `BEGIN IMMEDIATE`."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, say when transactions begin, so that we can begin IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A writing transaction takes the write lock up front (a reader that later writes would fail with
        # SQLITE_BUSY); reads stay deferred, so that WAL lets them run beside the one writer.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if _writing.get() else "BEGIN")

    return engine


_writing: ContextVar[bool] = ContextVar("writing", default=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One writing transaction: committed when the block ends normally, rolled back otherwise.

    Plain `Session(engine)` is for reading.
    """
    token = _writing.set(True)
    # SQLite has one writer: writers of this process queue on a lock instead of SQLite's sleep-and-retry
    # busy handler, which adds up to 100 ms a wait under load. PostgreSQL needs no such lock.
    lock = _sqlite_writer(engine) if is_sqlite(engine) else contextlib.nullcontext()
    try:
        with lock, Session(engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
    finally:
        _writing.reset(token)


_sqlite_writers: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_sqlite_writers_guard = threading.Lock()


def _sqlite_writer(engine: Engine) -> threading.RLock:
    with _sqlite_writers_guard:
        return _sqlite_writers.setdefault(engine, threading.RLock())




def lock_key(*parts: str) -> int:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_chat(session: Session, *parts: str) -> None:
    """Serialise work on one conversation until the transaction ends, across workers.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: `BEGIN IMMEDIATE` already serialises writers.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(*parts)})


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # configparser interpolates "%": escape it (URLs carry percent-encoded options)
    config.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration."""
    command.upgrade(alembic_config(engine), "head")
