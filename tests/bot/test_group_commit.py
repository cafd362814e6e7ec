"""The engine's hot path (issue 15): few SQL statements a message, the heads of many chats in one transaction
(group commit), and a bad message in a batch that holds back only its own chat; on the inbox side, the
webhooks of a moment stored in one transaction, and SQLite's writer processes taking turns.

Statements are counted by an SQLAlchemy event listener on the bot's own engine: a count, not a timing.
`BEGIN` (transaction control) is not counted; on PostgreSQL there is none to count.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, select
from sqlmodel import Session

from bot.app import Bot
from bot.store import InboxItem
from bot.store.db import _SqliteWriter
from tests.support import CLAIM, bot_texts, customer_texts, inbound, wait_until

# The bound of the brief: a message of a conversation under way (claim, load, log, queue, state, identity).
STATEMENTS_PER_MESSAGE = 6
# On PostgreSQL, where each is a round trip: the claim with the load, and the closing writes together.
STATEMENTS_PER_MESSAGE_POSTGRESQL = 2


@contextmanager
def counting(bot: Bot) -> Iterator[dict[str, Any]]:
    """The statements and commits the bot's database engine runs while inside."""
    seen: dict[str, Any] = {"statements": [], "commits": 0}

    def statement(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if not sql.lstrip().upper().startswith("BEGIN"):
            seen["statements"].append(sql.split("\n")[0][:100])

    def commit(_conn: Any) -> None:
        seen["commits"] += 1

    event.listen(bot.db, "before_cursor_execute", statement)
    event.listen(bot.db, "commit", commit)
    try:
        yield seen
    finally:
        event.remove(bot.db, "before_cursor_execute", statement)
        event.remove(bot.db, "commit", commit)


def test_a_message_of_a_conversation_under_way_takes_at_most_six_statements(bot: Bot) -> None:
    # A batch that took long (the first message loads what it needs) makes the next ones smaller on SQLite,
    # and a full batch is followed by one more claim: the bound here is the message's own statements.
    bot.engine.config.batch_seconds = 3600.0
    bot.engine.accept(inbound("hello", chat="c", locale_hint="en"))  # the customer's language from the start
    bot.engine.process_pending()
    bot.engine.accept(inbound("it shuts down under load", chat="c", locale_hint="en"))
    with counting(bot) as seen:
        assert bot.engine.process_pending() == 1
    bound = (
        STATEMENTS_PER_MESSAGE_POSTGRESQL if bot.db.dialect.name == "postgresql" else STATEMENTS_PER_MESSAGE
    )
    assert len(seen["statements"]) <= bound, "\n".join(seen["statements"])
    assert seen["commits"] == 1
    assert len(bot_texts(bot, "c")) >= 2  # it did answer


def test_the_heads_of_many_chats_commit_together_in_few_statements(bot: Bot) -> None:
    bot.engine.config.batch_seconds = 3600.0  # no batch made smaller for taking long (SQLite)
    chats = [f"chat-{n}" for n in range(20)]
    for chat in chats:  # each conversation under way, waiting for its serial number
        bot.engine.accept(inbound("hello", chat=chat, locale_hint="en"))
    bot.engine.process_pending()
    for chat in chats:
        bot.engine.accept(inbound(CLAIM[0], chat=chat, locale_hint="en"))
    with counting(bot) as seen:
        assert bot.engine.process_pending() == len(chats)
    # One transaction for all twenty: one commit (one fsync) serves them.
    assert seen["commits"] == 1
    # + one registry query for the batch, and a near-miss query for each serial the registry lacks.
    assert len(seen["statements"]) <= STATEMENTS_PER_MESSAGE + 1 + len(chats), "\n".join(seen["statements"])
    for chat in chats:
        assert customer_texts(bot, chat) == ["hello", CLAIM[0]]


def test_a_batch_is_bounded_and_keeps_each_chats_order(bot: Bot) -> None:
    size = bot.engine.config.batch_size
    bot.engine.config.batch_seconds = 3600.0  # no batch made smaller for taking long: the bound alone
    chats = [f"c{n}" for n in range(size + 5)]
    for text in ("hello", "status"):
        for chat in chats:
            bot.engine.accept(inbound(text, chat=chat))
    with counting(bot) as seen:
        assert bot.engine.process_pending() == 2 * len(chats)
    # Batches of at most `size` heads, never two messages of one chat in a batch: 74 messages in 3.
    assert seen["commits"] == -(-2 * len(chats) // size)
    for chat in chats:
        assert customer_texts(bot, chat) == ["hello", "status"]


def test_a_bad_message_in_a_batch_holds_back_only_its_own_chat(bot: Bot, poison: None) -> None:
    bot.engine.accept(inbound("hello", chat="bad"))
    for n in range(5):
        bot.engine.accept(inbound("hello", chat=f"good-{n}"))
    bot.engine.process_pending()
    bot.engine.accept(inbound("poison", chat="bad"))
    bot.engine.accept(inbound("status", chat="bad"))
    for n in range(5):
        bot.engine.accept(inbound("status", chat=f"good-{n}"))
    bot.engine.process_pending()  # one batch fails on the poison; each message again, alone
    for n in range(5):
        assert customer_texts(bot, f"good-{n}") == ["hello", "status"]
    assert customer_texts(bot, "bad") == ["hello"]
    with Session(bot.db) as session:
        rows = (
            session.execute(
                select(InboxItem).where(InboxItem.chat_id == "bad").order_by(InboxItem.id)  # type: ignore[arg-type]
            )
            .scalars()
            .all()
        )
    assert [r.status for r in rows] == ["done", "pending", "pending"]
    # The poison failed (once, or again after its 0.1 s pause); the message behind it was never tried.
    assert rows[1].attempts >= 1 and rows[2].attempts == 0
    assert "refused by the poison trigger" in (rows[1].error or "")


# --- the inbox: concurrent accepts share one commit ------------------------------------------------------


def inbox(bot: Bot) -> list[InboxItem]:
    with Session(bot.db) as session:
        return list(session.execute(select(InboxItem).order_by(InboxItem.id)).scalars())  # type: ignore[arg-type]


def test_accept_many_stores_in_order_in_one_commit_and_knows_each_redelivery(bot: Bot) -> None:
    stored = bot.engine.accept(inbound("hello", chat="a", external_id="1"))
    messages = [
        inbound("hello", chat="a", external_id="1"),  # already in the inbox
        inbound("serial", chat="b", external_id="2"),
        inbound("serial", chat="b", external_id="2"),  # a redelivery that came with the original
        inbound("hi\x00", chat="c", external_id="3"),
    ]
    with counting(bot) as seen:
        accepted = bot.engine.accept_many(messages)
    # One statement in one transaction (on PostgreSQL the statement's own, in autocommit: no BEGIN, COMMIT).
    assert seen["commits"] == 1 and len(seen["statements"]) == 1, seen["statements"]
    assert [a.duplicate for a in accepted] == [True, False, True, False]
    rows = inbox(bot)
    assert [(r.external_id, r.chat_id) for r in rows] == [("1", "a"), ("2", "b"), ("3", "c")]
    assert [accepted[1].inbox_id, accepted[3].inbox_id] == [rows[1].id, rows[2].id]
    assert stored.inbox_id == rows[0].id and accepted[0].inbox_id is None
    assert rows[2].payload["text"] == "hi\ufffd"  # cleaned as accept cleans it
    assert bot.engine.accept_many([]) == []


def test_webhooks_accepted_at_once_share_a_commit_and_each_gets_its_own_outcome(bot: Bot) -> None:
    messages = [inbound("hello", chat=f"chat-{n}", external_id=f"x{n}") for n in range(20)]
    # One message that cannot be stored (its raw part is not JSON): it fails alone, the others are stored.
    bad = inbound("hello", chat="bad", external_id="bad", raw={"not json": object()})

    async def accept_all() -> list[Any]:
        return await asyncio.gather(
            *(bot.engine.accept_soon(m) for m in [*messages[:10], bad, *messages[10:]]),
            bot.engine.accept_soon(messages[3]),  # the same update twice at once
            return_exceptions=True,
        )

    outcomes = asyncio.run(accept_all())
    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert len(failed) == 1 and outcomes[10] is failed[0]
    accepted = [o for o in outcomes if not isinstance(o, Exception)]
    assert sum(not a.duplicate for a in accepted) == 20 and accepted[-1].duplicate
    assert [r.external_id for r in inbox(bot)] == [m.external_id for m in messages]

    more = [inbound("status", chat=f"chat-{n}", external_id=f"y{n}") for n in range(20)]

    async def accept_more() -> list[Any]:
        return await asyncio.gather(*(bot.engine.accept_soon(m) for m in more))

    with counting(bot) as seen:
        assert all(not a.duplicate for a in asyncio.run(accept_more()))
    assert seen["commits"] == 1  # twenty webhooks at once, one transaction


def test_a_process_that_releases_the_sqlite_writer_lets_the_waiting_one_go_first(tmp_path: Path) -> None:
    database = str(tmp_path / "bot.db")
    first, second = (
        _SqliteWriter(database),
        _SqliteWriter(database),
    )  # two processes' locks, as the kernel sees
    order: list[str] = []
    first.__enter__()

    def waiter() -> None:
        with second:
            order.append("second")

    thread = threading.Thread(target=waiter)
    thread.start()

    def second_waits() -> bool:
        probe = os.open(database + "-want", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # held shared: the second one waits for the lock
        finally:
            os.close(probe)  # (closing releases a lock taken)
        return False

    wait_until(second_waits, what="the second writer waiting")
    first.__exit__()  # returns once the second one has the lock
    with first:  # the first one's next turn comes after the second one's
        order.append("first")
    thread.join(timeout=10)
    assert order == ["second", "first"]
