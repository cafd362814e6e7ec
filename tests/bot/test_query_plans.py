"""The hot path's look for each chat's head reads the waiting rows only (ix_inbox_waiting, ix_outbox_waiting):
the inbox and the outbox keep every row, and a scan of them all grew with the database (docs/performance.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

from bot.app import Bot
from bot.channels import kv_items
from tests.support import CLAIM, ChannelApi, deliver, say


@contextmanager
def statements(db: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the database is sent meanwhile, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
        if not many:
            seen.append((statement, parameters))

    event.listen(db, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(db, "before_cursor_execute", record)


def plan(db: Engine, statement: str, parameters: Any) -> str:
    """How the database would run `statement` (not run: EXPLAIN alone), as one text."""
    with db.connect() as connection:
        if db.dialect.name == "sqlite":
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            return "\n".join(str(row[-1]) for row in rows)
        # The test's tables are tiny: a sequential scan would win on cost; asked for an index, which one.
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        rows = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
        return "\n".join(str(row[0]) for row in rows)


def test_claiming_and_leasing_heads_read_only_the_waiting_rows(bot: Bot) -> None:
    with statements(bot.db) as seen:
        say(bot, *CLAIM)
        deliver(bot, ChannelApi())
    grouped = [(s, p) for s, p in seen if "GROUP BY" in s]
    inbox = [plan(bot.db, s, p) for s, p in grouped if "UPDATE inboxitem" in s]
    outbox = [plan(bot.db, s, p) for s, p in grouped if "FROM outboxitem" in s and "inboxitem" not in s]
    assert inbox and outbox, [s for s, _ in grouped]
    if bot.db.dialect.name == "sqlite":
        # Reading a range of an index (SEARCH), never all of a table or an index (SCAN; "SCAN anon_1" is a
        # subquery's own result): which index, SQLite chooses by its statistics.
        scans = [line for p in inbox + outbox for line in p.splitlines() if line.startswith("SCAN ")]
        assert all(line.startswith("SCAN anon_") for line in scans), inbox + outbox
    else:
        assert all("ix_inbox_waiting" in p for p in inbox), inbox
        assert all("ix_outbox_waiting" in p for p in outbox), outbox


def test_the_keys_of_a_batch_of_chats_are_read_from_the_key_index(db: Engine) -> None:
    # The Telegram webhook asks, for each batch of updates, which of its chats have something waiting: two
    # prefixes a chat. SQLite's LIKE (case-insensitive) read every key for it, and so did the ranges OR-ed
    # together; one SELECT a range reads the index.
    prefixes = [f"telegram:{kind}:{chat}:" for chat in range(100, 140) for kind in ("pending", "album")]
    with statements(db) as seen:
        kv_items(db, prefixes)
    ((statement, parameters),) = [(s, p) for s, p in seen if "FROM keyvalue" in s]
    steps = plan(db, statement, parameters)
    if db.dialect.name == "sqlite":
        assert "SCAN" not in steps and "SEARCH keyvalue USING INDEX" in steps, steps
    else:
        assert "Seq Scan" not in steps and "keyvalue_pkey" in steps, steps
        with db.connect() as connection:  # byte order, so that a range is exactly a prefix (migration 0006)
            collation = connection.exec_driver_sql(
                "SELECT collation_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'keyvalue' AND column_name = 'key'"
            ).scalar_one()
        assert collation == "C"
