"""Reliability: a server killed with SIGKILL mid-traffic loses nothing; two workers on one PostgreSQL keep order."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from bot.conversation import State
from bot.store import Case, Conversation, InboxItem, Message, OutboxItem, make_engine
from tests.support import wait_until
from tests.test_server import Server

SCRIPT = ["hello", "CSP2604D0007", "The display shows E07 and it shuts down", "no invoice", "normal use",
          "any news?", "restart"]


def post(server: Server, session: str, text: str, client_id: str) -> bool:
    """True when the server accepted the message (202); False when it could not answer (it was killed)."""
    try:
        response = httpx.post(f"{server.url}/api/webchat/sessions/{session}/messages",
                              json={"text": text, "client_id": client_id}, timeout=5)
    except httpx.TransportError:
        return False
    assert response.status_code == 202, response.text
    return True


def conversation_texts(database_url: str, chat_id: str) -> list[str]:
    engine = make_engine(database_url)
    with Session(engine) as session:
        conversation = session.execute(select(Conversation).where(Conversation.chat_id == chat_id)).scalar_one()
        rows = session.execute(select(Message.text).where(Message.conversation_id == conversation.id,
                                                          Message.author == "customer").order_by(Message.id))
        texts = list(rows.scalars())
    engine.dispose()
    return texts


def settled(database_url: str) -> bool:
    engine = make_engine(database_url)
    with Session(engine) as session:
        pending_in = session.execute(select(func.count()).select_from(InboxItem)
                                     .where(InboxItem.status == "pending")).scalar_one()
        pending_out = session.execute(select(func.count()).select_from(OutboxItem)
                                      .where(OutboxItem.status == "pending")).scalar_one()
    engine.dispose()
    return pending_in == 0 and pending_out == 0


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def test_sigkill_mid_traffic_loses_nothing_and_repeats_nothing(servers: list[Server], tmp_path: Path,
                                                               database_url: str) -> None:
    server = Server(tmp_path, database_url)
    servers.append(server)
    server.start()
    sessions = [httpx.post(f"{server.url}/api/webchat/sessions").json()["session_id"] for _ in range(6)]
    plan = {s: [(f"{s}-{n}", text) for n, text in enumerate(SCRIPT * 5)] for s in sessions}  # 210 messages

    def client(session: str, killed_after: int | None) -> list[tuple[str, str]]:
        """Sends the session's messages in order; returns those not accepted yet when the server died."""
        for index, (client_id, text) in enumerate(plan[session]):
            if killed_after is not None and index == killed_after:
                return plan[session][index:]
            if not post(server, session, text, client_id):
                return plan[session][index:]
        return []

    with ThreadPoolExecutor(len(sessions)) as pool:
        futures = [pool.submit(client, s, None) for s in sessions]
        wait_until(lambda: _accepted(database_url) >= 60, timeout=60, interval=0.5, what="traffic to be under way")
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
        leftovers = {s: f.result() for s, f in zip(sessions, futures, strict=True)}

    server.start()
    for session, remaining in leftovers.items():
        # A client that got no answer sends the same message again: the client_id makes it count once.
        for client_id, text in remaining:
            assert post(server, session, text, client_id)
    wait_until(lambda: settled(database_url), timeout=120, interval=0.5,
               what="every message processed and every reply sent")

    for session in sessions:
        assert conversation_texts(database_url, session) == [text for _, text in plan[session]]
    engine = make_engine(database_url)
    with Session(engine) as db:
        assert db.execute(select(func.count()).select_from(InboxItem)).scalar_one() == 210
        assert set(db.execute(select(InboxItem.status)).scalars()) == {"done"}
        assert set(db.execute(select(OutboxItem.status)).scalars()) == {"sent"}
        for conversation in db.execute(select(Conversation)).scalars():
            assert State.from_dict(conversation.data).name == conversation.state
        assert db.execute(select(func.count()).select_from(Case)).scalar_one() == 6 * 5
    engine.dispose()


def _accepted(database_url: str) -> int:
    engine = make_engine(database_url)
    with Session(engine) as session:
        count = int(session.execute(select(func.count()).select_from(InboxItem)).scalar_one())
    engine.dispose()
    return count


def test_two_workers_on_one_postgresql_keep_order_and_open_no_duplicate_case(
        servers: list[Server], tmp_path: Path, postgres_url: str) -> None:
    # Several workers share a database only on PostgreSQL; SQLite is one process, one writer.
    database_url = postgres_url
    first, second = Server(tmp_path, database_url), Server(tmp_path, database_url)
    servers.extend([first, second])
    first.start()
    second.start()
    sessions = [httpx.post(f"{first.url}/api/webchat/sessions").json()["session_id"] for _ in range(50)]
    script = [*SCRIPT[:5], "first follow-up", "second follow-up"]

    def client(index: int, session: str) -> None:
        for n, text in enumerate(script):
            target = (first, second)[(index + n) % 2]  # interleave the two workers within each conversation
            assert post(target, session, text, f"{session}-{n}")

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(client, range(len(sessions)), sessions))
    wait_until(lambda: settled(database_url), timeout=120, interval=0.5, what="both workers to finish")
    engine = make_engine(database_url)
    with Session(engine) as db:
        cases = db.execute(select(Case.conversation_id, func.count()).group_by(Case.conversation_id)).all()
    engine.dispose()
    assert len(cases) == 50 and {count for _, count in cases} == {1}
    for session in sessions:
        assert conversation_texts(database_url, session) == script
