"""Reliability: a server killed with SIGKILL mid-traffic loses nothing; two workers on one PostgreSQL keep order."""

from __future__ import annotations

import contextlib
import html
import os
import resource
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy import text as sql
from sqlmodel import Session, col

from adapters import telegram as tg
from bot.store import Case, Conversation, InboxItem, Message, OutboxItem, make_engine, upgrade
from tests.conftest import POSTGRES_URL, postgres_schema
from tests.fakes.server import serve
from tests.fakes.telegram import SECRET as TELEGRAM_SECRET
from tests.fakes.telegram import TOKEN as TELEGRAM_TOKEN
from tests.fakes.telegram import FakeTelegram, update
from tests.support import (
    AUTH,
    SCRIPT,
    Server,
    Servers,
    accepted,
    nothing_lost,
    one_case_each,
    post,
    send,
    settled,
    wait_until,
)


def test_sigkill_mid_traffic_loses_nothing_and_repeats_nothing(
    servers: Servers, tmp_path: Path, database_url: str
) -> None:
    server = servers.start(Server(tmp_path, database_url))
    sessions = server.new_sessions(6)
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
        wait_until(
            lambda: accepted(database_url) >= 60, timeout=60, interval=0.5, what="traffic to be under way"
        )
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
        leftovers = {s: f.result() for s, f in zip(sessions, futures, strict=True)}

    server.start()
    for session, remaining in leftovers.items():
        # A client that got no answer sends the same message again: the client_id makes it count once.
        for client_id, text in remaining:
            assert post(server, session, text, client_id)
    nothing_lost(database_url, plan, cases=6 * 5)  # 210 messages


def test_two_workers_on_one_postgresql_keep_order_and_open_no_duplicate_case(
    servers: Servers, tmp_path: Path, postgres_url: str
) -> None:
    # Several workers share a database only on PostgreSQL; SQLite is one process, one writer.
    database_url = postgres_url
    first = servers.start(Server(tmp_path, database_url))
    second = servers.start(Server(tmp_path, database_url))
    sessions = first.new_sessions(50)
    script = [*SCRIPT[:5], "first follow-up", "second follow-up"]

    def client(index: int, session: str) -> None:
        for n, text in enumerate(script):
            target = (first, second)[(index + n) % 2]  # interleave the two workers within each conversation
            assert post(target, session, text, f"{session}-{n}")

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(client, range(len(sessions)), sessions))
    one_case_each(database_url, sessions, script)


# --- issue 20: storage failures, kills during sends, two servers starting at once ---------------------------

TG_SCRIPT = [
    "hello",
    "CSP2604D0007",
    "The display shows E07 and it shuts down",
    "proof:none",
    "cause:normal",
    "any news?",
]


class TelegramServer(Server):
    """A real `warranty-bot serve` process with the Telegram channel by webhook, on a loopback fake Bot API."""

    def __init__(self, workdir: Path, database_url: str, fake_url: str) -> None:
        super().__init__(workdir, database_url)
        self.env.update(
            {
                "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
                "TELEGRAM_API_BASE_URL": fake_url,
                "TELEGRAM_WEBHOOK_SECRET": TELEGRAM_SECRET,
                "TELEGRAM_MODE": "webhook",
                "RETRY_BACKOFF_MAX_SECONDS": "0.5",
                "OUTBOX_POLL_SECONDS": "0.1",
            }
        )

    def post(self, body: bytes) -> int | None:
        try:
            return httpx.post(
                f"{self.url}{tg.WEBHOOK_PATH}",
                content=body,
                timeout=10,
                headers={"content-type": "application/json", tg.SECRET_HEADER: TELEGRAM_SECRET},
            ).status_code
        except httpx.TransportError:
            return None


@dataclass
class Figures:
    """What a run did, as the harness of issue 20 counted it."""

    posted: int = 0  # webhook calls, retries included
    refused: int = 0  # non-2xx answers or no answer: Telegram posts those again
    accepted: int = 0  # distinct updates answered 2xx
    processed: int = 0  # customer messages in the conversations' logs
    delivered: int = 0  # replies the fake Bot API took
    duplicates: int = 0
    order_violations: int = 0
    recovery_seconds: float = 0.0  # from the end of the fault to every reply delivered
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def drive(server: TelegramServer, chats: list[str], figures: Figures, *, deadline: float = 90) -> None:
    """Each chat's updates in order, one at a time, each posted again until it is answered 2xx."""
    stop_at = time.monotonic() + deadline

    def chat(chat_id: str) -> None:
        for number, text in enumerate(TG_SCRIPT, start=1):
            while True:
                assert time.monotonic() < stop_at, "updates still refused at the deadline"
                status = server.post(update(chat_id, number, text))
                with figures.lock:
                    figures.posted += 1
                    figures.accepted += status == 200
                    figures.refused += status != 200
                if status == 200:
                    break
                time.sleep(0.1)

    with ThreadPoolExecutor(len(chats)) as pool:
        list(pool.map(chat, chats))


def check(
    database_url: str,
    fake: FakeTelegram,
    chats: list[str],
    figures: Figures,
    since: float,
    *,
    timeout: float = 60,
) -> None:
    """Every update processed once and in order, one case per chat, every reply delivered once in order."""
    wait_until(
        lambda: settled(database_url) and all(_done(database_url)),
        timeout=timeout,
        interval=0.2,
        what="every message processed and every reply sent",
    )
    figures.recovery_seconds = round(time.monotonic() - since, 1)
    engine = make_engine(database_url)
    with Session(engine) as db:
        for chat_id in chats:
            conversation = db.execute(
                select(Conversation).where(col(Conversation.chat_id) == chat_id)
            ).scalar_one()
            logged = db.execute(
                select(col(Message.author), col(Message.text))
                .where(col(Message.conversation_id) == conversation.id)
                .order_by(col(Message.id))
            ).all()
            customer = [t for a, t in logged if a == "customer"]
            replies = [t for a, t in logged if a != "customer"]
            delivered = [html.unescape(c["text"]) for c in fake.sent(chat_id)]
            figures.processed += len(customer)
            figures.delivered += len(delivered)
            figures.duplicates += len(delivered) - len(set(delivered)) if len(delivered) > len(replies) else 0
            figures.order_violations += sum(1 for a, b in zip(delivered, replies, strict=False) if a != b)
            # Each update logged once, in order (a button's value is logged as the label the customer read).
            assert len(customer) == len(TG_SCRIPT), chat_id
            assert [c for c, t in zip(customer, TG_SCRIPT, strict=True) if ":" not in t] == [
                t for t in TG_SCRIPT if ":" not in t
            ], chat_id
            assert delivered == replies, chat_id
            cases = db.execute(
                select(func.count()).select_from(Case).where(Case.conversation_id == conversation.id)
            )
            assert cases.scalar_one() == 1
        assert db.execute(select(func.count()).select_from(InboxItem)).scalar_one() == len(chats) * len(
            TG_SCRIPT
        )
    engine.dispose()
    print(f"\nfigures: {figures}")


def _done(database_url: str) -> list[bool]:
    engine = make_engine(database_url)
    with Session(engine) as db:
        statuses = set(db.execute(select(col(InboxItem.status))).scalars())
    engine.dispose()
    return [statuses <= {"done"}]


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeTelegram, str]]:
    fake = FakeTelegram(token=TELEGRAM_TOKEN)
    with serve(fake.app()) as url:
        yield fake, url


CHATS = [str(91000000 + n) for n in range(8)]


def test_terminated_database_connections_lose_nothing(
    servers: Servers, tmp_path: Path, postgres_url: str, fake_api: tuple[FakeTelegram, str]
) -> None:
    fake, fake_url = fake_api
    app = f"wb-{secrets.token_hex(4)}"  # only this test's server connects under this name
    server = servers.start(TelegramServer(tmp_path, f"{postgres_url}&application_name={app}", fake_url))
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    stop = threading.Event()
    terminated = 0

    def terminate() -> None:
        nonlocal terminated
        with admin.connect() as connection:
            for _ in range(16):  # every 0.25 s for 4 s
                if stop.is_set():
                    return
                terminated += len(
                    connection.execute(
                        sql(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = :app AND pid <> pg_backend_pid()"
                        ),
                        {"app": app},
                    ).all()
                )
                time.sleep(0.25)

    figures = Figures()
    killer = threading.Thread(target=terminate)
    killer.start()
    try:
        drive(server, CHATS, figures)
    finally:
        stop.set()
        killer.join()
        admin.dispose()
    assert terminated > 0  # the fault did happen
    check(postgres_url, fake, CHATS, figures, time.monotonic())


def test_a_write_failure_window_loses_nothing(
    servers: Servers, tmp_path: Path, fake_api: tuple[FakeTelegram, str]
) -> None:
    fake, fake_url = fake_api
    database_url = f"sqlite:///{tmp_path}/warranty.db"
    server = servers.start(TelegramServer(tmp_path, database_url, fake_url))
    assert server.process is not None
    pid = server.process.pid
    figures = Figures()
    traffic = threading.Thread(target=drive, args=(server, CHATS, figures))
    traffic.start()
    wait_until(lambda: figures.accepted >= 10, timeout=30, what="traffic under way")
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(
        pid, resource.RLIMIT_FSIZE, (1, hard)
    )  # no file of the server may grow: every write fails
    time.sleep(3)  # the window
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    ended = time.monotonic()
    traffic.join()
    assert figures.refused > 0  # the fault did happen
    check(database_url, fake, CHATS, figures, ended)


def test_a_kill_during_sends_then_a_restart_resumes_at_once(
    servers: Servers, tmp_path: Path, database_url: str, fake_api: tuple[FakeTelegram, str]
) -> None:
    fake, fake_url = fake_api
    server = servers.start(TelegramServer(tmp_path, database_url, fake_url))
    fake.outage, fake.hang_seconds = "timeout", 10.0  # every send hangs: in flight when the server dies
    figures = Figures()
    drive(server, CHATS[:4], figures)

    def in_flight() -> bool:
        engine = make_engine(database_url)
        with Session(engine) as db:
            leased: int = db.execute(
                select(func.count())
                .select_from(OutboxItem)
                .where(col(OutboxItem.lease_owner).is_not(None), col(OutboxItem.attempts) == 0)
            ).scalar_one()
        engine.dispose()
        return leased >= 4

    wait_until(in_flight, timeout=30, what="a send in flight for every chat")
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    fake.outage = None
    server.start()  # the same port, so the same worker name: it takes back its leases (60 s each) at once
    check(database_url, fake, CHATS[:4], figures, time.monotonic(), timeout=45)  # inside one lease
    server.stop()  # with its worker, before the fixture drops the PostgreSQL schema under their connections


def test_two_servers_starting_at_once_on_an_empty_postgresql(tmp_path: Path) -> None:
    for _ in range(3):
        with postgres_schema() as url:
            engines = [make_engine(url) for _ in range(3)]
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(upgrade, engines))  # would fail on alembic_version's key without the lock
            with engines[0].connect() as connection:
                assert connection.execute(sql("SELECT count(*) FROM alembic_version")).scalar_one() == 1
            for engine in engines:
                engine.dispose()
    with postgres_schema() as url:
        first, second = Server(tmp_path, url), Server(tmp_path, url)
        try:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(Server.start, (first, second)))
            for one in (first, second):
                assert httpx.post(f"{one.url}/api/webchat/sessions").status_code == 201
        finally:
            first.stop()
            second.stop()


class ReadOnly:
    """Makes a folder read-only and writable again: by its mode, or (as root, whom modes do not stop) by a
    read-only bind mount of it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.mounted = False
        if os.geteuid() == 0:
            done = subprocess.run(
                ["mount", "--bind", str(folder), str(folder)], capture_output=True, check=False
            )
            if done.returncode != 0:
                pytest.skip(f"running as root without the right to mount: {done.stderr.decode().strip()}")
            self.mounted = True

    def set(self, read_only: bool) -> None:
        if self.mounted:
            flags = "remount,bind," + ("ro" if read_only else "rw")
            subprocess.run(["mount", "-o", flags, str(self.folder)], check=True)
            return
        for path in self.folder.iterdir():
            path.chmod(0o444 if read_only else 0o644)
        self.folder.chmod(0o555 if read_only else 0o755)

    def close(self) -> None:
        self.set(False)
        if self.mounted:
            subprocess.run(["umount", str(self.folder)], check=False)


def test_read_only_storage_at_start_is_waited_out_and_then_served(tmp_path: Path) -> None:
    """SQLite in a read-only folder when the server starts: it waits, and serves once the folder is writable."""
    data = tmp_path / "db"
    data.mkdir()
    database_url = f"sqlite:///{data}/warranty.db"
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    server = Server(tmp_path, database_url)
    storage = ReadOnly(data)
    try:
        storage.set(True)
        with server.log.open("ab") as log:
            server.process = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "serve", "--port", str(server.port)],
                cwd=tmp_path,
                env=server.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: b"database not usable yet" in server.log.read_bytes(),
            timeout=30,
            what="the server to find its storage read-only",
        )
        assert server.process.poll() is None  # waiting, not exited
        storage.set(False)
        wait_until(server._healthy, timeout=30, what="the server to start once the storage is writable")
        session = httpx.post(f"{server.url}/api/webchat/sessions").json()["session_id"]
        send(server, session, "hello")
    finally:
        server.stop()
        storage.close()


def test_a_full_disk_window_loses_nothing(
    servers: Servers, tmp_path: Path, fake_api: tuple[FakeTelegram, str]
) -> None:
    """The SQLite folder on a small file system of its own, filled up for 3 s by a ballast file."""
    if os.geteuid() != 0:
        pytest.skip("a file system of the test's own needs root (mount -t tmpfs)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        fake, fake_url = fake_api
        database_url = f"sqlite:///{disk}/warranty.db"
        server = servers.start(TelegramServer(tmp_path, database_url, fake_url))
        figures = Figures()
        traffic = threading.Thread(target=drive, args=(server, CHATS, figures))
        traffic.start()
        wait_until(lambda: figures.accepted >= 10, timeout=30, what="traffic under way")
        ballast = disk / "ballast"
        with ballast.open("wb", buffering=0) as filler, contextlib.suppress(OSError):  # ENOSPC: full
            for _ in range(1024):  # at most 64 MiB, four times the disk
                filler.write(b"\0" * 65536)
        time.sleep(3)  # the window
        ballast.unlink()
        ended = time.monotonic()
        traffic.join()
        assert figures.refused > 0  # the fault did happen
        check(database_url, fake, CHATS, figures, ended)
        server.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_the_workers_deliver_what_the_front_queues_without_waiting_for_their_poll(
    servers: Servers, tmp_path: Path, database_url: str, fake_api: tuple[FakeTelegram, str]
) -> None:
    """`serve`'s worker delivers: the replies its own batches queue (woken as each commits) and an engineer's
    reply queued by the web front's desk (woken by the front's `s`). The poll is a minute, so every reply
    that arrives within the wait below was sent on a wake-up, not found by a poll."""
    fake, fake_url = fake_api
    server = TelegramServer(tmp_path, database_url, fake_url)
    server.env["OUTBOX_POLL_SECONDS"] = "60"
    servers.start(server)
    figures = Figures()
    chat = CHATS[0]
    drive(server, [chat], figures)
    check(database_url, fake, [chat], figures, time.monotonic(), timeout=20)
    engine = make_engine(database_url)
    with Session(engine) as db:
        ref = db.execute(select(col(Case.ref))).scalar_one()
    engine.dispose()
    answer = httpx.post(
        f"{server.url}/api/desk/cases/{ref}/messages",
        json={"text": "An engineer here: we are sending a replacement."},
        headers=AUTH,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    wait_until(
        lambda: any("we are sending a replacement" in c["text"] for c in fake.sent(chat)),
        timeout=20,
        what="the engineer's reply at the fake Bot API",
    )
    server.stop()  # with its worker, before the fixture drops the PostgreSQL schema under their connections
