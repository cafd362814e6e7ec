"""`warranty-bot worker` beside the web front (issue 15): `serve` starts and stops its worker process, a worker
killed with SIGKILL mid-batch loses nothing and another takes over, two workers on one PostgreSQL keep each
chat's order, and a standalone worker processes what `serve --no-worker` accepts."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import func, select
from sqlmodel import Session, col

from bot.app import build
from bot.config import Settings
from bot.store import InboxItem
from bot.worker import ATTACHED_NICENESS, Told, processing_loop, warm_up
from tests.support import (
    SCRIPT,
    Server,
    Servers,
    accepted,
    conversation_texts,
    inbound,
    nothing_lost,
    one_case_each,
    post,
    send,
    settled,
    wait_until,
)


class Serve(Server):
    """`warranty-bot serve` with extra options (`--workers 2`, `--no-worker`)."""

    def __init__(self, workdir: Path, database_url: str, *options: str) -> None:
        super().__init__(workdir, database_url)
        self.options = options

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "serve", "--port", str(self.port), *self.options],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(self._healthy, timeout=60, what="the server to answer /healthz")
        except AssertionError:
            self.stop()
            raise

    def workers(self) -> list[int]:
        """The pids of this server's worker processes."""
        assert self.process is not None
        return worker_pids(self.process.pid)

    def ready(self, count: int) -> bool:
        body = httpx.get(f"{self.url}/healthz", timeout=5).json()
        return bool(body.get("workers", {}).get("ready", 0) >= count)


def worker_pids(parent: int, *, deliverer: bool = False) -> list[int]:
    """The pids of a server's processing workers, or of its deliverer process."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"worker" in cmdline and (b"deliver" in cmdline) == deliverer:
            pids.append(int(entry.name))
    return sorted(pids)


def process_priority(pid: int) -> int:
    """A process's niceness, from /proc (field 19 of stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_serve_starts_its_worker_and_stops_it(servers: Servers, tmp_path: Path) -> None:
    server = servers.start(Serve(tmp_path, f"sqlite:///{tmp_path}/warranty.db"))
    wait_until(lambda: server.ready(1), timeout=60, what="the worker to be ready")
    (pid,) = server.workers()
    assert server.process is not None
    front = process_priority(server.process.pid)
    assert process_priority(pid) == min(19, front + ATTACHED_NICENESS)  # the webhooks' inserts first
    (deliverer,) = worker_pids(server.process.pid, deliverer=True)
    assert process_priority(deliverer) == front  # replies leave at the front's priority
    assert httpx.get(f"{server.url}/healthz").json()["workers"] == {
        "ready": 1,
        "started": 1,
        "deliverer_ready": True,
    }
    session = httpx.post(f"{server.url}/api/webchat/sessions").json()["session_id"]
    send(server, session, "hello")  # processed by the worker process
    server.stop()
    assert server.process is not None and server.process.returncode is not None
    wait_until(lambda: not alive(pid), timeout=15, what="the worker to stop with its server")
    wait_until(lambda: not alive(deliverer), timeout=15, what="the deliverer to stop with its server")


def test_a_worker_killed_mid_batch_loses_nothing_and_another_takes_over(
    servers: Servers, tmp_path: Path, database_url: str
) -> None:
    server = servers.start(Serve(tmp_path, database_url))
    wait_until(lambda: server.ready(1), timeout=60, what="the worker to be ready")
    (first,) = server.workers()
    sessions = server.new_sessions(6)
    plan = {s: [(f"{s}-{n}", text) for n, text in enumerate(SCRIPT * 3)] for s in sessions}  # 126 messages

    def client(session: str) -> None:
        for client_id, text in plan[session]:
            assert post(server, session, text, client_id)

    with ThreadPoolExecutor(len(sessions)) as pool:
        futures = [pool.submit(client, s) for s in sessions]
        wait_until(lambda: accepted(database_url) >= 40, timeout=60, interval=0.2, what="traffic under way")
        os.kill(first, signal.SIGKILL)  # whatever batch it had under way is rolled back by the database
        for future in futures:
            future.result()
    wait_until(lambda: server.workers() not in ([], [first]), timeout=60, what="another worker")
    nothing_lost(database_url, plan, cases=6 * 3)  # 126 messages
    assert "exited with -9" in server.log.read_text()  # the supervisor saw the kill and started another


def test_two_workers_on_one_postgresql_keep_each_chats_order(
    servers: Servers, tmp_path: Path, postgres_url: str
) -> None:
    server = servers.start(Serve(tmp_path, postgres_url, "--workers", "2"))
    wait_until(lambda: server.ready(2), timeout=90, what="both workers to be ready")
    assert len(server.workers()) == 2
    sessions = server.new_sessions(30)
    script = [*SCRIPT[:5], "first follow-up", "second follow-up"]

    def client(session: str) -> None:
        for n, text in enumerate(script):
            assert post(server, session, text, f"{session}-{n}")

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(client, sessions))
    one_case_each(postgres_url, sessions, script)


def test_serve_without_a_worker_leaves_processing_to_warranty_bot_worker(
    servers: Servers, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path}/warranty.db"
    server = servers.start(Serve(tmp_path, database_url, "--no-worker"))
    assert server.workers() == []
    session = httpx.post(f"{server.url}/api/webchat/sessions").json()["session_id"]
    assert post(server, session, "hello", "c-1")
    worker = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "worker"],
        cwd=tmp_path,
        env=server.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: settled(database_url), timeout=60, interval=0.5, what="the worker to process it")
        assert conversation_texts(database_url, session) == ["hello"]
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0


def test_more_than_one_worker_on_sqlite_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/warranty.db"}
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "serve", "--workers", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "SQLite has one writer" in done.stderr


def test_each_batch_tells_the_server_of_its_replies_before_the_next_batch(settings: Settings) -> None:
    """An attached processing worker tells `serve` (which wakes its deliverer process) as each batch commits
    its replies, not once the round's last batch is done: the first chats' replies do not wait for the later
    chats. (A worker that delivers too wakes its own deliverer thread through the same signal.)"""
    bot = build(settings.model_copy(update={"inbox_batch_size": 1}))  # a batch a chat: three batches
    for chat in ("chat-1", "chat-2", "chat-3"):
        bot.engine.accept(inbound("hello", chat=chat))
    stop = threading.Event()
    waiting: list[int] = []  # the messages still pending each time the server was told

    def tell() -> None:
        with Session(bot.db) as session:
            pending = session.execute(
                select(func.count()).select_from(InboxItem).where(col(InboxItem.status) == "pending")
            ).scalar_one()
        waiting.append(pending)
        if not pending:
            stop.set()
            bot.engine.inbox_signal.set()

    bot.engine.outbox_signal = Told(tell)
    loop = threading.Thread(target=processing_loop, args=(bot.engine, stop, 0.05), daemon=True)
    loop.start()
    loop.join(timeout=60)
    stop.set()
    bot.db.dispose()
    assert not loop.is_alive()
    assert waiting == [2, 1, 0]


def test_a_worker_leaves_what_it_loaded_at_start_out_of_full_collections(settings: Settings) -> None:
    """The language models, the lexicon and the templates go to the collector's permanent generation
    (`gc.freeze`), so that no full collection stops the worker to go through them again."""
    bot = build(settings)
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        warm_up(bot).join(timeout=120)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        bot.db.dispose()
