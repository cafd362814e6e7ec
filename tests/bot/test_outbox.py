"""A channel outage: the Bot API answers 5xx, 429 and nothing at all for a while; afterwards every reply is
delivered once, in order per conversation; permanent failures are dead letters that operators see and retry."""

from __future__ import annotations

import asyncio
import html
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bot.config import Settings
from bot.outbox import Limits, Pacer
from bot.store import OutboxItem
from tests.fakes.telegram import Running, bot_servers, update
from tests.support import wait_until

CHATS = ["70000001", "70000002", "70000003", "70000004"]
SCRIPT = ["hello", "CSP2604D0007 the display shows E07 and it shuts down under load", "status"]


@pytest.fixture
def start(settings: Settings, db: Engine) -> Iterator[Callable[..., Running]]:
    """Starts the fake Bot API and the bot's server with the Telegram channel (webhook unless told)."""
    with bot_servers(settings, db) as run:
        yield run


def rows(running: Running) -> list[OutboxItem]:
    with Session(running.bot.db) as session:
        return list(session.execute(select(OutboxItem).order_by(col(OutboxItem.id))).scalars())


def attempted(running: Running, at_least: int) -> bool:
    """Every chat's head row (the oldest unsent one) has been tried `at_least` times, none delivered."""
    heads: dict[str, OutboxItem] = {}
    for row in rows(running):
        if row.status == "pending":
            heads.setdefault(row.chat_id, row)
    return len(heads) == len(CHATS) and all(h.attempts >= at_least for h in heads.values())


def logged(running: Running, chat: str) -> list[str]:
    return [m["text"] for m in running.bot.engine.transcript("telegram", chat) if m["author"] == "bot"]


def delivered(running: Running, chat: str) -> list[str]:
    """What reached the customer: successful sendMessage calls, with our HTML escaping undone."""
    return [html.unescape(call["text"]) for call in running.fake.sent(chat)]


def test_replies_survive_an_outage_once_and_in_order(start: Callable[..., Running]) -> None:
    running = start(telegram_timeout_seconds=1.0, outbox_max_attempts=30)
    running.fake.outage = "5xx"
    running.fake.hang_seconds = 2.5
    for number, text in enumerate(SCRIPT, start=1):
        for chat in CHATS:
            assert running.post(update(chat, number, text)).status_code == 200
    wait_until(lambda: all(len(logged(running, c)) >= 5 for c in CHATS), what="every message processed")
    wait_until(lambda: attempted(running, 1), timeout=30, what="sends refused with 502")
    running.fake.outage = "429"
    wait_until(lambda: attempted(running, 2), timeout=30, what="sends refused with 429")
    running.fake.outage = "timeout"
    wait_until(lambda: attempted(running, 3), timeout=30, what="sends timing out")
    assert not any(delivered(running, chat) for chat in CHATS)

    running.fake.outage = None
    wait_until(lambda: all(r.status == "sent" for r in rows(running)), timeout=60, what="every reply sent")
    for chat in CHATS:
        assert delivered(running, chat) == logged(running, chat)  # each once, in the order they were written


def test_permanent_failures_are_dead_letters_listed_and_retried(
    start: Callable[..., Running],
    database_url: str,
    tmp_path: Any,
) -> None:
    running = start(outbox_max_attempts=5)
    blocked, refused = CHATS[:2]
    running.fake.block(blocked)
    running.fake.fail_next("sendMessage", 400, "Bad Request: message text is empty", after=0)
    assert running.post(update(refused, 1, "hello")).status_code == 200
    wait_until(lambda: any(r.status == "dead" for r in rows(running)), timeout=30, what="the refused message")
    assert running.post(update(blocked, 1, "hello")).status_code == 200
    wait_until(
        lambda: {r.chat_id for r in rows(running) if r.status == "dead"} == {blocked, refused},
        timeout=30,
        what="two dead letters",
    )
    dead = [r for r in rows(running) if r.status == "dead"]
    errors = {r.chat_id: r.last_error or "" for r in dead if r.attempts}
    assert "message text is empty" in errors[refused].lower()
    assert "blocked" in errors[blocked].lower()

    env = {**os.environ, "DATABASE_URL": database_url}
    listing = subprocess.run(
        [sys.executable, "-m", "bot.cli", "outbox", "list"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0
    assert len(listing.stdout.strip().splitlines()) == len(dead)
    assert f"{len(dead)} dead message(s)" in listing.stderr

    running.fake.blocked.clear()  # the customer unblocked the bot
    retried = subprocess.run(
        [sys.executable, "-m", "bot.cli", "outbox", "retry"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert retried.returncode == 0 and f"{len(dead)} message(s) queued again" in retried.stdout
    running.bot.engine.outbox_signal.set()
    wait_until(
        lambda: all(r.status == "sent" for r in rows(running)), timeout=30, what="the retried letters sent"
    )
    # A blocked customer's whole queue waited and follows in order; a single refused message does not hold
    # back the ones after it, so once retried it arrives late, but exactly once.
    assert delivered(running, blocked) == logged(running, blocked)
    assert sorted(delivered(running, refused)) == sorted(logged(running, refused))


# --- outages longer than any attempt count (issue 20) ------------------------------------------------------


def post_script(running: Running, chats: list[str] = CHATS, script: list[str] = SCRIPT) -> None:
    for number, text in enumerate(script, start=1):
        for chat in chats:
            assert running.post(update(chat, number, text)).status_code == 200
    total = len(script) * len(chats)
    wait_until(
        lambda: len(items := running.inbox()) == total and all(i.status == "done" for i in items),
        what="every message processed",
    )


def test_a_5xx_outage_longer_than_the_attempt_budget_loses_nothing(start: Callable[..., Running]) -> None:
    # An attempt budget of 2 would have dead-lettered every chat's first reply after the second 502.
    running = start(outbox_max_attempts=2, retry_backoff_max_seconds=0.2)
    running.fake.outage = "5xx"
    post_script(running)
    wait_until(lambda: attempted(running, 8), timeout=30, what="eight refused sends of every chat's head")
    assert not [r for r in rows(running) if r.status != "pending"]  # nothing given up, nothing sent
    running.fake.outage = None
    wait_until(lambda: all(r.status == "sent" for r in rows(running)), timeout=60, what="every reply sent")
    for chat in CHATS:
        assert delivered(running, chat) == logged(running, chat)  # each once, in order


def test_429_is_honoured_per_chat_and_for_the_bot_and_spends_no_attempts(
    start: Callable[..., Running],
) -> None:
    running = start(outbox_max_attempts=2, retry_backoff_max_seconds=0.2)
    running.fake.outage = "429"  # every send: "retry after 1", for the whole bot
    post_script(running)
    wait_until(lambda: attempted(running, 3), timeout=30, what="three refused sends of every chat's head")
    assert not [r for r in rows(running) if r.status != "pending"]
    running.fake.outage = None
    wait_until(lambda: all(r.status == "sent" for r in rows(running)), timeout=60, what="every reply sent")
    for chat in CHATS:
        assert delivered(running, chat) == logged(running, chat)
    assert running.fake.early == []  # no chat was sent to again before the wait it was told had passed


def test_a_reply_that_keeps_failing_holds_its_chat_and_a_retry_keeps_order(
    start: Callable[..., Running],
    database_url: str,
    tmp_path: Any,
) -> None:
    running = start(outbox_retry_hours=1 / 3600, retry_backoff_max_seconds=0.2)  # give up after a second
    running.fake.outage = "5xx"
    post_script(running)

    def gave_up() -> bool:
        heads: dict[str, OutboxItem] = {}
        for row in rows(running):
            if row.status in ("pending", "dead"):
                heads.setdefault(row.chat_id, row)
        return len(heads) == len(CHATS) and all(h.status == "dead" and h.holds_chat for h in heads.values())

    wait_until(gave_up, timeout=30, what="every chat's head dead after its retry time")
    running.fake.outage = None
    # The chats' later replies wait behind their dead heads: sending them now would break the order.
    assert {r.status for r in rows(running) if not r.holds_chat} == {"pending"}
    assert not any(delivered(running, chat) for chat in CHATS)
    env = {**os.environ, "DATABASE_URL": database_url}
    listing = subprocess.run(
        [sys.executable, "-m", "bot.cli", "outbox", "list"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0 and f"{len(CHATS)} dead message(s)" in listing.stderr
    retried = subprocess.run(
        [sys.executable, "-m", "bot.cli", "outbox", "retry"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert retried.returncode == 0 and f"{len(CHATS)} message(s) queued again" in retried.stdout
    running.bot.engine.outbox_signal.set()
    wait_until(
        lambda: all(r.status == "sent" for r in rows(running)), timeout=30, what="the chats' replies sent"
    )
    for chat in CHATS:
        assert delivered(running, chat) == logged(running, chat)  # the re-driven head first, then the rest


@pytest.mark.parametrize(
    "chats, script, per_second",
    [
        ([str(80000000 + n) for n in range(20)], SCRIPT, 30.0),  # 120 replies: the bot's limit
        (CHATS[:2], SCRIPT * 2, 30.0),  # 10 replies to each chat: the chat's limit
        # 240 replies at 100/s: over the free limit, allowed only as paid broadcasts (up to 1000/s)
        ([str(81000000 + n) for n in range(40)], SCRIPT, 100.0),
    ],
    ids=["per-bot", "per-chat", "paid-broadcast"],
)
def test_a_backlog_is_sent_within_telegrams_published_limits(
    start: Callable[..., Running],
    chats: list[str],
    script: list[str],
    per_second: float,
) -> None:
    running = start(retry_backoff_max_seconds=0.5, telegram_messages_per_second=per_second)
    running.fake.rate_limits = True  # over about 30/s per bot or about 1/s per chat, the fake answers 429
    running.fake.outage = "5xx"  # a backlog builds up, as after an outage
    post_script(running, chats, script)
    running.fake.outage = None
    wait_until(lambda: all(r.status == "sent" for r in rows(running)), timeout=60, what="the backlog sent")
    assert running.fake.limited == [] and running.fake.early == []
    for chat in chats:
        assert delivered(running, chat) == logged(running, chat)
    # Every send over 30 a second asked for a paid broadcast; none at the free rate did (it costs Stars).
    sent = running.fake.calls_to("sendMessage")
    paid = [call.get("allow_paid_broadcast") for call in sent]
    assert paid == ([True] * len(sent) if per_second > 30 else [None] * len(sent))
    assert len(running.fake.paid) == (len(sent) if per_second > 30 else 0)


def test_the_bots_pace_is_a_sliding_window_of_a_second() -> None:
    """30 a second is 30 in any second: a backlog's first 30 sends go back to back, and every later one
    waits until the 30th before it is a second old (so the average holds at the limit, and no second
    ever holds a 31st send)."""

    async def backlog(pacer: Pacer, count: int) -> tuple[list[float], list[float]]:
        waits, times = [], []
        for n in range(count):
            waits.append(pacer._wait(f"chat-{n}", time.monotonic()))  # a chat each: only the bot's limit
            assert await pacer.turn(f"chat-{n}")
            times.append(pacer._bot[-1])  # when the pacer counted the send (a busy test may note it late)
        return waits, times

    waits, times = asyncio.run(backlog(Pacer(Limits(per_second=30)), 75))
    assert waits[:30] == [0.0] * 30 and 0 < waits[30] <= 1.0
    assert all(later - earlier >= 1.0 - 1e-9 for earlier, later in zip(times, times[30:], strict=False))
