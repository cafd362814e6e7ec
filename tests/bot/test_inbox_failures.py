"""Inbound messages when processing fails (issue 20): a storage failure that can pass leaves the message
pending, however long it lasts, and it is processed later in its place; a message that fails the same way
again and again is parked, holds its chat's later messages back, and `inbox retry` re-drives it in order.

The failures are real ones of the test's own database: on SQLite another connection holds the write lock
past the busy timeout ("database is locked"); on PostgreSQL a trigger terminates the backend that writes
(what `pg_terminate_backend` does to a server's connections); a poison message is refused by a trigger.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlmodel import Session

from bot.app import Bot, build
from bot.config import Settings
from bot.engine import StorageUnavailable
from bot.store import Case, InboxItem, make_engine
from bot.store import db as db_module
from tests.conftest import POSTGRES_URL
from tests.support import CLAIM, bot_texts, customer_texts, inbound, wait_until


@contextmanager
def storage_outage(db: Engine) -> Iterator[None]:
    """While inside, every write of the bot's engine fails the way a database outage makes it fail."""
    if db.dialect.name == "sqlite":

        def short_wait(connection: Any, _record: Any) -> None:
            connection.execute("PRAGMA busy_timeout=100")

        event.listen(db, "connect", short_wait)
        db.dispose()
        blocker = sqlite3.connect(str(db.url.database), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: writers give up after the busy timeout
        try:
            yield
        finally:
            blocker.rollback()
            blocker.close()
            event.remove(db, "connect", short_wait)
            db.dispose()
        return
    with db.begin() as connection:
        connection.execute(text("CREATE TABLE outage (up boolean)"))
        connection.execute(text("INSERT INTO outage VALUES (false)"))
        connection.execute(
            text(
                "CREATE FUNCTION terminate_writer() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF (SELECT up FROM outage) THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; "
                "RETURN NEW; END $$"
            )
        )
        connection.execute(
            text(
                "CREATE TRIGGER terminate_writer BEFORE INSERT OR UPDATE ON message "
                "FOR EACH ROW EXECUTE FUNCTION terminate_writer()"
            )
        )
        connection.execute(text("UPDATE outage SET up = true"))
    try:
        yield
    finally:
        with db.begin() as connection:
            connection.execute(text("UPDATE outage SET up = false"))


def inbox(bot: Bot) -> list[InboxItem]:
    with Session(bot.db) as session:
        return list(session.execute(select(InboxItem).order_by(InboxItem.id)).scalars())  # type: ignore[arg-type]


def test_a_storage_outage_leaves_messages_pending_and_they_are_processed_later_in_order(bot: Bot) -> None:
    for text_ in CLAIM:
        bot.engine.accept(inbound(text_, chat="a"))
    bot.engine.accept(inbound("hello", chat="b"))
    with storage_outage(bot.db):
        for _ in range(bot.engine.config.max_attempts + 2):  # longer than any count of attempts
            with pytest.raises(StorageUnavailable):
                bot.engine.process_pending()
        items = inbox(bot)
        assert [(i.status, i.attempts) for i in items] == [("pending", 0)] * 4  # kept, nothing counted
    assert bot.engine.process_pending() == 4
    for text_ in CLAIM:  # the same claim in a chat that saw no outage
        bot.engine.accept(inbound(text_, chat="control"))
    assert bot.engine.process_pending() == 3
    assert customer_texts(bot, "a") == customer_texts(bot, "control") and len(customer_texts(bot, "a")) == 3
    assert customer_texts(bot, "b") == ["hello"]
    assert any("WR-" in t for t in bot_texts(bot, "a"))
    with Session(bot.db) as session:
        assert session.execute(select(func.count()).select_from(Case)).scalar_one() == 2  # "a" and "control"
    assert {i.status for i in inbox(bot)} == {"done"}


def cure(bot: Bot) -> None:
    with bot.db.begin() as connection:
        connection.execute(
            text("DROP TRIGGER poison" + ("" if bot.db.dialect.name == "sqlite" else " ON message"))
        )


def cli(database_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "DATABASE_URL": database_url},
        timeout=60,
        check=False,
    )


def test_a_message_failing_the_same_way_is_parked_holds_its_chat_and_is_redriven_in_order(
    bot: Bot, poison: None, database_url: str, tmp_path: Path
) -> None:
    for text_ in ("hello", "poison", "status"):
        bot.engine.accept(inbound(text_, chat="a"))
    bot.engine.accept(inbound("hello", chat="b"))

    def parked() -> list[InboxItem]:
        bot.engine.process_pending()
        return [i for i in inbox(bot) if i.status == "parked"]

    (item,) = wait_until(parked, timeout=20, what="the poison message parked")
    assert item.payload["text"] == "poison"  # the row that failed, not another of its chat
    assert item.attempts == bot.engine.config.max_attempts and "refused by the poison trigger" in (
        item.error or ""
    )
    assert customer_texts(bot, "a") == ["hello"]  # the later message waits behind the parked one
    assert [i.status for i in inbox(bot)] == ["done", "parked", "pending", "done"]
    bot.engine.process_pending()
    assert [i.status for i in inbox(bot)] == ["done", "parked", "pending", "done"]

    listing = cli(database_url, tmp_path, "inbox", "list")
    assert listing.returncode == 0 and "1 parked message(s)" in listing.stderr
    assert listing.stdout.startswith(f"{item.id}\ttest\tparked\t{item.attempts} failures")

    cure(bot)  # the bug is fixed ... and the operator re-drives the message
    retried = cli(database_url, tmp_path, "inbox", "retry")
    assert retried.returncode == 0 and "1 message(s) queued again" in retried.stdout
    assert bot.engine.process_pending() == 2
    assert customer_texts(bot, "a") == ["hello", "poison", "status"]
    assert {i.status for i in inbox(bot)} == {"done"}


def test_inbox_commands_refuse_bad_input(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/warranty.db"
    result = cli(url, tmp_path, "inbox", "list", "--status", "nonsense")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    result = cli(url, tmp_path, "inbox", "retry", "not-a-number")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_chats_held_by_parked_messages_never_crowd_out_the_others(bot: Bot) -> None:
    for n in range(70):  # more held chats than one round of the worker looks at
        bot.engine.accept(inbound("poison", chat=f"held-{n}"))
        bot.engine.accept(inbound("later", chat=f"held-{n}"))
    with bot.db.begin() as connection:  # as if each chat's first message had been parked
        connection.execute(
            text(
                "UPDATE inboxitem SET status = 'parked' WHERE id IN "
                "(SELECT min(id) FROM inboxitem GROUP BY chat_id)"
            )
        )
    bot.engine.accept(inbound("hello", chat="free"))
    assert bot.engine.process_pending() == 1
    assert customer_texts(bot, "free") == ["hello"]
    assert sum(i.status == "pending" for i in inbox(bot)) == 70


def test_sqlite_flushes_every_commit_unless_told_otherwise(tmp_path: Path) -> None:
    """Power loss: an acknowledged message is on disk (synchronous=FULL), unless SQLITE_SYNCHRONOUS=NORMAL."""

    for level, code in (("FULL", 2), ("NORMAL", 1)):
        url = f"sqlite:///{tmp_path}/{level}.db"
        engine = make_engine(url) if level == "FULL" else make_engine(url, synchronous=level)
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA synchronous")).scalar_one() == code
        engine.dispose()


def test_the_server_copies_sqlites_log_into_the_database_in_the_background(tmp_path: Path) -> None:
    """`serve` and its worker: no commit waits for the write-ahead log to be copied back (a checkpoint); a
    thread does it, and the database file itself holds what was committed soon after."""
    from bot.store.db import CHECKPOINT_SECONDS, wal_checkpoint

    def in_the_file(path: Path) -> int:
        # immutable=1: the file as it is on disk, the write-ahead log not read
        with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as reader:
            return int(reader.execute("SELECT count(*) FROM t").fetchone()[0])

    def copied(path: Path) -> bool:
        return in_the_file(path) == 1

    for background in (False, True):
        path = tmp_path / f"{background}.db"
        engine = make_engine(f"sqlite:///{path}", background_checkpoints=background)
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (n INTEGER)"))
        wal_checkpoint(engine, "TRUNCATE")  # the table is in the file once the log was copied
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA wal_autocheckpoint")).scalar_one() == (
                0 if background else 1000
            )
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (1)"))
        if background:
            wait_until(functools.partial(copied, path), timeout=20 * CHECKPOINT_SECONDS, what="a checkpoint")
        else:  # SQLite's own checkpoint waits for 1,000 pages of log
            assert in_the_file(path) == 0
        engine.dispose()


def test_a_postgresql_connection_dropped_while_idle_is_replaced_before_its_next_use(
    postgres_db: Engine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A connection idle in the pool past the threshold is pinged before use (bot.store.db._ping_after_idle);
    # the server ended it meanwhile (a restart does that to every connection): the pool opens a new one,
    # and the message is stored without a failure.
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 0.0)
    bot = build(Settings(_env_file=None, database_url=postgres_url), db=postgres_db)  # type: ignore[call-arg]
    with postgres_db.connect() as connection:
        backend = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar_one()
    admin.dispose()
    assert not bot.engine.accept(inbound("hello", chat="idle")).duplicate
    assert bot.engine.process_pending() == 1
    assert customer_texts(bot, "idle") == ["hello"]
