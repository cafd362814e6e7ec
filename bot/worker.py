"""Processing in a process of its own: `warranty-bot worker`, and the workers `serve` starts beside its web front.

A worker takes the waiting inbox messages (`Engine.process_pending`: the heads of many chats in one
transaction) until none is left, then waits for a wake-up or the poll interval. Nothing lives in its memory
between transactions, so it can be killed at any moment: an uncommitted batch is rolled back by the database
and its messages stay pending for the next worker. On PostgreSQL any number of workers share one database
(heads are claimed with `FOR UPDATE SKIP LOCKED`, one per chat, so each chat keeps its order); on SQLite one.

`serve` talks to the workers it started over their standard input and output (`--attached`): a byte on a
worker's stdin wakes it (a message was accepted), a byte on its stdout wakes the server's deliverer (replies
were queued, told by each batch once it committed; the first byte also says the worker is ready). End of
input means the server is gone: the worker finishes its transaction and exits, so a server killed with
SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from bot.app import Bot, build_when_storage_allows, freeze_loaded
from bot.config import Settings
from bot.engine import Engine, StorageUnavailable
from bot.logs import setup_logging
from bot.store.clock import utcnow

log = logging.getLogger(__name__)

WAKE = b"w"  # server -> worker: messages are waiting
READY = b"r"  # worker -> server: warmed up, processing
QUEUED = b"q"  # worker -> server: replies were queued
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


class Told(threading.Event):
    """An attached worker's outbox signal: each `set()` (a batch committed replies) tells the server at once,
    whose deliverer then wakes. Told once a round instead, after its last batch, the first batch's replies
    waited for every later one: on SQLite under load a round can be several batches of one message each."""

    def __init__(self, tell: Callable[[], None]) -> None:
        super().__init__()
        self.tell = tell

    def set(self) -> None:
        self.tell()


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


def run_worker(settings: Settings, *, attached: bool = False) -> None:
    """The `warranty-bot worker` command: process until SIGTERM or SIGINT (or, attached, until the server's
    end of input); the transaction under way is finished first."""
    setup_logging(settings.log_level)
    stop = threading.Event()
    wake = threading.Event()  # the engine's inbox signal, set by the server's wake-ups
    processing = threading.Event()  # before it is set, nothing is in flight: stopping is exiting
    out: IO[bytes] | None = None

    def stopping(*_: object) -> None:
        if not processing.is_set():
            os._exit(0)
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    if attached:
        _die_with_parent()
        out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nothing else may write to the server's channel

        def listen() -> None:
            with os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0) as wakes:
                while wakes.read(1):
                    wake.set()
            stopping()  # end of input: the server is gone

        threading.Thread(target=listen, name="wake", daemon=True).start()

    from bot.server import load_channels

    bot = build_when_storage_allows(settings, background_checkpoints=True)
    load_channels(
        bot
    )  # the channels' capabilities, as the server's: which take case events, one reply a turn
    engine = bot.engine
    engine.inbox_signal = wake
    warm_up(bot)
    if attached:
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
                stopping()

        channel.write(READY)
        engine.outbox_signal = Told(tell)
    processing.set()
    log.info("worker %s processing (batches of up to %s chats)", os.getpid(), engine.config.batch_size)
    processing_loop(
        engine, stop, settings.outbox_poll_seconds, remind_seconds=settings.fulfilment_check_seconds
    )
    bot.db.dispose()


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
    on_queued: Callable[[], None]
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
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "worker", "--attached"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
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
                    log.info("worker process %s (pid %s) ready", self.number, process.pid)
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

    def wake(self) -> None:
        with self.lock:
            process = self.process
        if process is None or process.stdin is None:
            return
        try:
            process.stdin.write(WAKE)
            process.stdin.flush()
        except (OSError, ValueError):
            pass  # it is gone: the supervisor starts another

    def stop(self, timeout: float) -> None:
        with self.lock:
            self.stopping = True
            process = self.process
        if process is not None:
            _close(process.stdin)  # end of input: it finishes its transaction and exits
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
