"""Processing and delivery in processes of their own: `warranty-bot worker`, and the workers `serve` starts
beside its web front.

A worker takes the waiting inbox messages (`Engine.process_pending`: the heads of many chats in one
transaction) until none is left, then waits for a wake-up or the poll interval; its outbox deliverer
(bot/outbox.py) sends the replies. `serve` starts N processing workers (`--role process`, niced) and one
deliverer (`--role deliver`), each a process; a standalone `warranty-bot worker` does both, the deliverer in a
thread with its own event loop. Nothing lives in a worker's memory between transactions, so it can be killed
at any moment: an uncommitted batch is rolled back by the database and its messages stay pending for the next
worker, and a send it leased is taken back by the next deliverer of its name (or when the lease runs out). On
PostgreSQL any number of workers share one database (heads are claimed with `FOR UPDATE SKIP LOCKED`, one per
chat, so each chat keeps its order); on SQLite one.

`serve` talks to the workers it started over their standard input and output (`--attached`). On a worker's
stdin: `w` wakes a processing worker (a message was accepted), `s` wakes a deliverer (replies were queued),
`x` stops it (it finishes its transaction and its sends under way, and exits). On its stdout: `r` (ready) and,
from a processing worker, `q` as each batch commits replies. End of input without `x`, or SIGTERM, means the
server is gone (killed): the worker finishes its transaction and exits at once, leaving its sends under way as
a kill would, to the deliverer the next server starts under the same name. So a server killed with SIGKILL
leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from bot.app import Bot, build_when_storage_allows, freeze_loaded
from bot.batching import Signal
from bot.config import Role, Settings
from bot.engine import Engine, StorageUnavailable
from bot.logs import setup_logging
from bot.outbox import STOP_GRACE_SECONDS
from bot.store.clock import utcnow

if TYPE_CHECKING:
    from adapters.base import Channel

log = logging.getLogger(__name__)

WAKE = b"w"  # server -> worker: messages are waiting
SEND = b"s"  # server -> worker: the server queued replies
QUIT = b"x"  # server -> worker: finish what is under way and exit (then the end of input)
READY = b"r"  # worker -> server: warmed up, processing (or delivering)
QUEUED = b"q"  # processing worker -> server: replies were queued (for the server's deliverer process)
# A worker started by `serve` runs at a lower CPU priority than its web front: when both want the CPU, the
# webhook's inbox insert (the 2xx the channel waits for) goes first and processing takes the rest. Measured
# (issue 15, SQLite, 2 cores): accepted/s under a blast 313 -> 508, the front's CPU per update unchanged.
ATTACHED_NICENESS = 10


def processing_loop(
    engine: Engine,
    stop: threading.Event,
    poll_seconds: float,
    *,
    remind_seconds: float = 0.0,
) -> None:
    """Process until `stop` is set: every waiting message, then a wait for `engine.inbox_signal` (or the poll
    interval). A database failure that can pass is waited out (doubling pauses); nothing is lost meanwhile.
    Every `remind_seconds` (when set) the fulfilment reminders that are due go out (bot/fulfilment.py)."""
    failures = 0  # rounds in a row the database failed in a passing way
    next_reminders = 0.0
    while not stop.is_set():
        engine.inbox_signal.clear()
        try:
            engine.process_pending()
            failures = 0
            if remind_seconds and time.monotonic() >= next_reminders:
                next_reminders = time.monotonic() + remind_seconds
                engine.remind_fulfilment(utcnow())
        except StorageUnavailable:
            failures += 1
            stop.wait(engine.retry_delay(failures))
            continue
        except Exception:
            log.exception("inbox round failed")
        engine.inbox_signal.wait(timeout=poll_seconds)


def warm_up(bot: Bot) -> threading.Thread:
    """A worker's start: the language models and the lexicon before the first message; the templates compile
    in the thread returned (a message that needs one first waits only for that one). What each loaded is then
    left out of the garbage collector's full collections (`freeze_loaded`)."""
    bot.engine.warm_up(templates=False)
    freeze_loaded()

    def templates() -> None:
        bot.renderer.preload()
        freeze_loaded()

    thread = threading.Thread(target=templates, name="templates", daemon=True)
    thread.start()
    return thread


def run_worker(settings: Settings, *, attached: bool = False, role: Role = Role.both) -> None:
    """The `warranty-bot worker` command: process and deliver (or, attached, one of the two: `role`) until
    SIGTERM or SIGINT (attached: until the server says so); the transaction under way is finished first, and
    the sends under way."""
    processes, delivers = role is not Role.deliver, role is not Role.process
    setup_logging(settings.log_level)
    stop = threading.Event()
    wake = threading.Event()  # the engine's inbox signal, set by the server's wake-ups
    replies = Signal()  # the engine's outbox signal: set by each batch that queued replies, and by the server
    processing = threading.Event()  # before it is set, nothing is in flight: stopping is exiting
    # Attached: the server is gone (killed). Sends under way are left as a kill leaves them, to the worker of
    # the same name that the next server starts (it takes their leases back at once).
    gone = threading.Event()
    out: IO[bytes] | None = None

    def stopping(*_: object) -> None:
        if not processing.is_set():
            os._exit(0)
        stop.set()
        wake.set()

    def server_gone(*_: object) -> None:
        gone.set()
        stopping()

    if attached:
        # Ctrl-C reaches the whole process group: the server stops its workers itself (QUIT, then end of input).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, server_gone)  # also what the kernel sends when the server dies
        _die_with_parent()
        out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nothing else may write to the server's channel

        def listen() -> None:
            told_to_quit = False
            with os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0) as wakes:
                while byte := wakes.read(1):
                    if byte == QUIT:
                        told_to_quit = True
                        stopping()
                    else:
                        (replies if byte == SEND else wake).set()
            if not told_to_quit:
                server_gone()  # end of input unannounced: the server is gone

        threading.Thread(target=listen, name="wake", daemon=True).start()
    else:
        signal.signal(signal.SIGTERM, stopping)
        signal.signal(signal.SIGINT, stopping)

    from bot.server import load_channels

    bot = build_when_storage_allows(settings, background_checkpoints=True)
    # The channels' capabilities, as the server's (which take case events, one reply a turn), and their senders.
    channels = load_channels(bot)
    engine = bot.engine
    engine.inbox_signal, engine.outbox_signal = wake, replies
    delivering = Delivering(bot, channels, replies) if delivers else None
    if processes:
        warm_up(bot)
    if delivering is not None:
        delivering.start()
        freeze_loaded()  # its channels and clients too (a deliverer alone has no warm-up to do it)
    if attached and processes:
        # This thread only (Linux: a thread's own priority): the warm-up and the templates compiling beside it
        # run at the server's, so that the first message after start does not wait for them on a busy host.
        with contextlib.suppress(OSError):
            os.nice(ATTACHED_NICENESS)
    if out is not None:
        channel = out

        def tell() -> None:
            try:
                channel.write(QUEUED)
            except OSError:
                server_gone()

        if delivering is None:
            engine.outbox_signal = Told(tell)  # the server wakes its deliverer process
        channel.write(READY)
    processing.set()
    if processes:
        log.info("worker %s processing (batches of up to %s chats)", os.getpid(), engine.config.batch_size)
        processing_loop(
            engine, stop, settings.outbox_poll_seconds, remind_seconds=settings.fulfilment_check_seconds
        )
    else:
        log.info("worker %s delivering", os.getpid())
        stop.wait()
    if delivering is not None:
        delivering.stop(gone)
    if gone.is_set():
        os._exit(0)
    bot.db.dispose()


class Told(threading.Event):
    """An attached processing worker's outbox signal: each `set()` (a batch committed replies) tells the server
    at once, which wakes its deliverer process. Told once a round instead, after its last batch, the first
    batch's replies waited for every later one: on SQLite under load a round can be several batches."""

    def __init__(self, tell: Callable[[], None]) -> None:
        super().__init__()
        self.tell = tell

    def set(self) -> None:
        self.tell()


class Delivering:
    """A worker's outbox deliverer, in a thread with its own event loop: it sends what the worker's batches
    queue (woken by `wake`) and what others queued (each poll), through the channels' senders."""

    def __init__(self, bot: Bot, channels: Sequence[Channel], wake: Signal) -> None:
        self.bot = bot
        self.channels = channels
        self.wake = wake
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done: asyncio.Event | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="deliver", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.started.wait(30)

    def stop(self, abandon: threading.Event) -> None:
        """Sends under way may finish (STOP_GRACE_SECONDS), unless `abandon` is set meanwhile."""
        if self.loop is not None and self.done is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self.loop.call_soon_threadsafe(self.done.set)
        deadline = time.monotonic() + STOP_GRACE_SECONDS + 5
        while self.thread.is_alive() and not abandon.is_set() and time.monotonic() < deadline:
            self.thread.join(0.1)

    async def _run(self) -> None:
        from bot.server import make_deliverer

        self.loop, self.done = asyncio.get_running_loop(), asyncio.Event()
        for channel in self.channels:
            try:
                await channel.start_sending()
            except Exception:  # the sender still sends; what it would have read it learns from its sends
                log.exception("%s: could not ready its sender", channel.name)
        self.started.set()
        try:
            await make_deliverer(self.bot, self.channels).run(
                self.done, poll_seconds=self.bot.settings.outbox_poll_seconds, wake=self.wake
            )
        finally:
            for channel in self.channels:
                with contextlib.suppress(Exception):
                    await channel.stop()


def _die_with_parent() -> None:
    """Linux: SIGTERM to this process when the server that started it dies, however it dies (the end of
    input says so too; this also covers a worker still starting)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class WorkerProcess:
    """One `warranty-bot worker --attached` started by `serve`, started again if it dies."""

    number: int
    worker_id: str = ""  # its lease owner (WORKER_ID): the same for the one started again in its place
    role: Role = Role.process
    on_queued: Callable[[], None] = lambda: None  # a processing worker queued replies
    process: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._supervise, name=f"worker-{self.number}", daemon=True)
        self.thread.start()

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self.lock:
            if self.stopping:
                return None
            env = {**os.environ, "WORKER_ID": self.worker_id} if self.worker_id else None
            self.process = subprocess.Popen(  # noqa: S603 (our own command and a role name)
                [sys.executable, "-m", "bot.cli", "worker", "--attached", "--role", self.role],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            return self.process

    def _supervise(self) -> None:
        failures = 0
        while not self.stopping:
            process = self._spawn()
            if process is None:
                return
            started = time.monotonic()
            assert process.stdout is not None
            while data := process.stdout.read1(64):  # type: ignore[attr-defined]
                if READY in data:
                    self.ready.set()
                    log.info("worker process %s (%s, pid %s) ready", self.number, self.role, process.pid)
                if QUEUED in data:
                    self.on_queued()
            code = process.wait()
            if self.stopping:
                return
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            pause = min(30.0, 0.5 * 2 ** max(0, failures - 1))
            log.warning(
                "worker process %s (pid %s) exited with %s; starting another in %.1f s",
                self.number,
                process.pid,
                code,
                pause,
            )
            time.sleep(pause)

    def wake(self, *, messages: bool = True, replies: bool = False) -> None:
        """Tell the worker that messages wait, or that replies do, or both: what its role does."""
        data = WAKE * (messages and self.role is not Role.deliver) + SEND * (
            replies and self.role is not Role.process
        )
        with self.lock:
            process = self.process
        if process is None or process.stdin is None or not data:
            return
        try:
            process.stdin.write(data)
            process.stdin.flush()
        except (OSError, ValueError):
            pass  # it is gone: the supervisor starts another

    def stop(self, timeout: float) -> None:
        with self.lock:
            self.stopping = True
            process = self.process
        if process is not None:
            with contextlib.suppress(OSError, ValueError):
                if process.stdin is not None:
                    process.stdin.write(QUIT)
                    process.stdin.flush()
            _close(process.stdin)  # it finishes its transaction and its sends under way, and exits
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            _close(process.stdout)
        if self.thread is not None:
            self.thread.join(timeout=5)


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):
            stream.close()
