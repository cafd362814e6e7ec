"""Database engines and sessions: SQLite (WAL, one writer at a time) or PostgreSQL, and schema upgrades.

Storage failures that can pass (a lost connection, a full disk, a lock timeout, a read-only file) are told
apart from the rest by `is_transient`; a connection that failed that way is dropped from the pool, so the
next transaction opens a fresh one (a SQLite connection opened read-only stays read-only, for example).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import ExceptionContext, make_url
from sqlmodel import Session

MIGRATIONS = Path(__file__).with_name("migrations")
log = logging.getLogger(__name__)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def insert_for(dialect: str) -> Any:
    """The dialect's own `insert` (PostgreSQL's or SQLite's), which has ON CONFLICT."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def wal_checkpoint(engine: Engine, mode: str = "PASSIVE") -> None:
    """Copy an SQLite file's write-ahead log into the database (`PRAGMA wal_checkpoint`), at the driver,
    which is in autocommit: a checkpoint cannot run inside a transaction."""
    assert mode in ("PASSIVE", "FULL", "RESTART", "TRUNCATE")
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.execute(f"PRAGMA wal_checkpoint({mode})")


def make_engine(url: str, *, synchronous: str = "FULL", background_checkpoints: bool = False) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and write-ahead `BEGIN IMMEDIATE`.

    `background_checkpoints` (what `serve` and its worker use): SQLite copies the write-ahead log back into
    the database in a thread of this process every `CHECKPOINT_SECONDS`, not in the commit that filled the
    log past 1,000 pages. That commit (a webhook's 2xx, a batch's replies) waited for the copy: 0.5 s at a
    million cases (docs/performance.md, table 3)."""
    parsed = make_url(url)
    level = {"FULL": "FULL", "NORMAL": "NORMAL"}[synchronous.upper()]
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_size=10, max_overflow=10)
        _ping_after_idle(engine)
        event.listen(engine, "handle_error", _drop_broken_connection)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    if parsed.database and parsed.database != ":memory:":
        event.listen(engine, "do_connect", _writable_or_refuse(Path(parsed.database)))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, say when transactions begin, so that we can begin IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL (the default): a commit (the inbox row behind a webhook's 2xx) is on disk before the call
        # returns, so it survives an OS crash or a power loss too, not only a killed process; NORMAL only
        # a killed process (SQLITE_SYNCHRONOUS; docs/operations.md).
        cursor.execute(f"PRAGMA synchronous={level}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        if background_checkpoints:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A writing transaction takes the write lock up front (a reader that later writes would fail with
        # SQLITE_BUSY); reads stay deferred, so that WAL lets them run beside the one writer.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if _writing.get() else "BEGIN")

    event.listen(engine, "handle_error", _drop_broken_connection)
    if background_checkpoints and parsed.database and parsed.database != ":memory:":
        _Checkpointer(engine, Path(parsed.database)).start()
    return engine


# A pooled PostgreSQL connection idle for longer is pinged before it is used again (see _ping_after_idle).
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_after_idle(engine: Engine) -> None:
    """Ping a pooled connection before its next use when it sat in the pool `PING_AFTER_IDLE_SECONDS` or
    more, and replace it (and the pool's older ones) if the server does not answer: a server restarted, or
    a connection a firewall dropped while idle, costs no failed transaction. SQLAlchemy's `pool_pre_ping`
    pings before every use, which was a round trip of every transaction: two of a message's sixteen (an
    accept and its processing) on the worker's busy path. A connection used within the last second that
    went away fails its transaction as transient (the worker pauses and retries, a webhook answers 503),
    and SQLAlchemy then replaces the pool's older connections."""

    @event.listens_for(engine, "checkin")
    def _idle_since(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool opens a new connection instead, and replaces those older than this one.
            raise exc.InvalidatePoolError(f"ping after idle failed: {error}") from error


CHECKPOINT_SECONDS = 1.0


class _Checkpointer:
    """Copies an SQLite file's write-ahead log into the database now and then, in a daemon thread: PASSIVE,
    so that it waits for no reader or writer (what readers still use is copied next time). It ends when its
    engine is disposed of or gone, and never opens (so creates) a database whose log is not there."""

    def __init__(self, engine: Engine, path: Path) -> None:
        self._engine = weakref.ref(engine)
        self._wal = path.with_name(path.name + "-wal")
        self._stop = threading.Event()
        event.listen(engine, "engine_disposed", lambda _: self._stop.set())

    def start(self) -> None:
        threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True).start()

    def _run(self) -> None:
        failed = False
        while not self._stop.wait(CHECKPOINT_SECONDS):
            engine = self._engine()
            if engine is None:
                return
            if not self._wal.exists():
                continue
            try:
                wal_checkpoint(engine)
                failed = False
            except Exception as error:  # the storage is away for a while: the log waits, and so do we
                if not failed:
                    log.warning(
                        "SQLite checkpoint failed, trying again: %s", str(error).splitlines()[0][:200]
                    )
                failed = True
            del engine


# SQLite errors after which the connection itself is suspect: drop it, the next one is opened afresh.
_SQLITE_BROKEN = ("readonly", "disk i/o error", "unable to open", "disk is full", "disk image is malformed")


def _writable_or_refuse(path: Path) -> Any:
    """Refuse to open a SQLite file that cannot be written (read-only file or folder), as a passing error.

    SQLite would open it read-only instead, and a process that once opened a file read-only keeps it so:
    the library holds on to those file handles, and shares them with the process's later connections, even
    after the file became writable. Refusing leaves nothing behind; the next connection, once the storage is
    writable, opens it read-write.
    """

    def check(*_: Any) -> None:
        sidecars = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
        files_ok = all(os.access(f, os.W_OK) for f in (path, *sidecars) if f.exists())
        folder_ok = os.access(path.parent, os.W_OK) or all(f.exists() for f in sidecars)
        if not (files_ok and folder_ok):
            raise sqlite3.OperationalError(f"attempt to write a readonly database: {path} is read-only")

    return check


def _drop_broken_connection(context: ExceptionContext) -> None:
    if context.is_disconnect or context.engine is None:
        return
    if context.engine.dialect.name == "sqlite":
        message = str(context.original_exception).lower()
        if any(m in message for m in _SQLITE_BROKEN):
            context.is_disconnect = True


def is_transient(error: BaseException) -> bool:
    """Whether a storage failure can pass by itself: a lost or refused connection, a full disk or a lock
    timeout (SQLAlchemy's OperationalError covers these on both databases), a pool timeout, a disk write
    error. Not transient: a constraint violation, bad data, a bug."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(
        error, exc.OperationalError | exc.InterfaceError | exc.DisconnectionError | exc.TimeoutError
    ):
        return True
    if isinstance(error, exc.ResourceClosedError | exc.PendingRollbackError):
        return True  # the connection went away under a session that was still using it
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return True
    cause = error.__cause__ or error.__context__
    return (
        cause is not None
        and cause is not error
        and isinstance(cause, exc.SQLAlchemyError | OSError)
        and (is_transient(cause))
    )


_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EAGAIN}


_writing: ContextVar[bool] = ContextVar("writing", default=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One writing transaction: committed when the block ends normally, rolled back otherwise.

    Plain `Session(engine)` is for reading.
    """
    token = _writing.set(True)
    # SQLite has one writer: writers of this process and of its worker queue on a lock instead of SQLite's
    # sleep-and-retry busy handler, which adds up to 100 ms a wait under load. PostgreSQL needs no such lock.
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


class _SqliteWriter:
    """The writers of one SQLite file take turns on a lock: threads of this process on an `RLock`, and
    processes (`serve` and its worker) on an exclusive `flock` of a file beside the database, released by
    the kernel if the process dies. A waiter wakes the moment the lock is free, where SQLite's busy handler
    sleeps and retries (up to 100 ms a sleep). The file lock is an optimisation only: where it cannot be
    taken (a read-only folder) SQLite's own locking still serialises the writers.

    Turns alternate between processes: a kernel lock is not handed to the process that waited longest,
    and a worker that releases it and takes it again for its next batch microseconds later would win
    nearly every time, so that the web front's inbox insert (the webhook's 2xx) waited behind batch after
    batch. A process about to wait for the lock holds a shared lock of a second file (`-want`) meanwhile;
    one that released the lock and finds `-want` held lets the waiter go first (it waits until the waiter
    has the lock, which is when the shared lock is let go)."""

    def __init__(self, database: str | None) -> None:
        self.lock = threading.RLock()
        self.depth = 0  # nested session_scope calls of the thread holding `lock`
        self.path = Path(database + "-writer") if database and database != ":memory:" else None
        self.want_path = Path(database + "-want") if database and database != ":memory:" else None
        self.fd: int | None = None
        self.want_fd: int | None = None
        self.held = False

    def __enter__(self) -> None:
        self.lock.acquire()
        if self.depth == 0 and self.path is not None:
            try:
                if self.fd is None:
                    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                want = self._want()
                if want is not None:
                    fcntl.flock(want, fcntl.LOCK_SH)  # "a writer waits here": see _let_waiter_go
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX)
                finally:
                    if want is not None:
                        fcntl.flock(want, fcntl.LOCK_UN)
                self.held = True
            except OSError:
                self.held = False
        self.depth += 1

    def __exit__(self, *_: object) -> None:
        self.depth -= 1
        if self.depth == 0 and self.held and self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.held = False
            self._let_waiter_go()
        self.lock.release()

    def _want(self) -> int | None:
        if self.want_fd is None and self.want_path is not None:
            with contextlib.suppress(OSError):
                self.want_fd = os.open(self.want_path, os.O_RDWR | os.O_CREAT, 0o644)
        return self.want_fd

    def _let_waiter_go(self) -> None:
        """When another process waits for the lock just released, wait until it has it (its next
        transaction, and this thread's, then queue behind that one). Only other processes can be waiting
        there: this process's other writers wait for `lock`, which this thread still holds."""
        want = self._want()
        if want is None:
            return
        with contextlib.suppress(OSError):
            try:
                fcntl.flock(want, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fcntl.flock(want, fcntl.LOCK_EX)  # returns once every waiter holds the lock
            fcntl.flock(want, fcntl.LOCK_UN)


_sqlite_writers: weakref.WeakKeyDictionary[Engine, _SqliteWriter] = weakref.WeakKeyDictionary()
_sqlite_writers_guard = threading.Lock()


def _sqlite_writer(engine: Engine) -> _SqliteWriter:
    with _sqlite_writers_guard:
        writer = _sqlite_writers.get(engine)
        if writer is None:
            writer = _sqlite_writers[engine] = _SqliteWriter(engine.url.database)
        return writer


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


def after_prefix(prefix: str) -> str:
    """The first text after every text that starts with `prefix` (not empty), in byte order: `prefix <= x <
    after_prefix(prefix)` is a range of an index, where LIKE 'prefix%' reads every row on SQLite (its LIKE is
    case-insensitive) and on PostgreSQL outside the C locale."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration.

    On PostgreSQL the upgrade runs under a session advisory lock keyed by the schema, so that servers
    starting at once on an empty database take turns: the first creates the schema, the others find it
    current (without it, one of them fails on `alembic_version`'s unique key).
    """
    config = alembic_config(engine)
    if engine.dialect.name != "postgresql":
        command.upgrade(config, "head")
        return
    with engine.connect() as connection:
        schema = str(connection.execute(text("SELECT current_schema()")).scalar_one())
        key = lock_key("schema-upgrade", schema)
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        finally:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


@contextmanager
def write_transaction(connection: Connection) -> Iterator[Connection]:
    """One writing transaction on a connection already checked out (one that holds a temporary table, say):
    committed when the block ends normally, rolled back otherwise; on SQLite it begins IMMEDIATE, under the
    process's writer lock, as `session_scope` does."""
    token = _writing.set(True)
    lock = _sqlite_writer(connection.engine) if is_sqlite(connection.engine) else contextlib.nullcontext()
    try:
        with lock, connection.begin():
            yield connection
    finally:
        _writing.reset(token)


def write_statement(connection: Connection) -> contextlib.AbstractContextManager[Connection]:
    """`write_transaction` for one statement (an executemany with RETURNING is one while its rows fit in a
    page of SQLAlchemy's insertmanyvalues): on PostgreSQL it runs in autocommit, where a statement is a
    transaction of its own, committed and durable when it returns, all or nothing, with no BEGIN and COMMIT
    round trips around it. Elsewhere `write_transaction`."""
    if connection.dialect.name != "postgresql":
        return write_transaction(connection)
    return _autocommit(connection)


@contextmanager
def _autocommit(connection: Connection) -> Iterator[Connection]:
    # The driver's autocommit, set on this checkout only: the pool gives the connection back as it was.
    yield connection.execution_options(isolation_level="AUTOCOMMIT")
    connection.commit()  # nothing to send (autocommit): it ends SQLAlchemy's own transaction, as a commit
