"""Benchmark 1: the engine in-process: a scripted full claim per conversation, accept then process, timed.

Each worker builds the bot (`bot.app.build`; one worker in this process, two in two processes) and plays
its own customers one message at a time: `engine.accept(message)`, then `engine.process_pending()` until
the inbox is empty. The latency of a message is that whole call pair; throughput is all workers' messages
over the wall time of the run.

The lockstep row is the group commit as the worker sees it under load: `LOCKSTEP` conversations at once,
one message of each accepted, then one `process_pending()` for all of them (batches of up to
`INBOX_BATCH_SIZE` chats, one transaction each), and so on through the script. A message's latency there
runs from its own accept to the end of the processing that answered it.

Each conversation names a serial of its own (`own_script`), so that no two customers send the same text:
the reader remembers its recent readings (bot/understanding/reader.py), and the same text a hundred times
would be read once, which real traffic does not do.
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from bench.common import (
    Progress,
    Table,
    database,
    inbound,
    load_average,
    ms,
    percentile,
    rate,
    say,
    settings_for,
)
from bench.script import SCRIPT
from bot.app import Bot, build
from bot.store import Case, InboxItem, make_engine, upgrade

# The serial SCRIPT names (in no registry); each conversation names one of its own in its place.
SCRIPT_SERIAL = "CSP2604D0007"
_conversation_numbers = itertools.count(1)
LOCKSTEP = 40  # conversations played together in the lockstep row


def own_script() -> tuple[str, ...]:
    """SCRIPT with a serial of this conversation's own (same model and month, in no registry either)."""
    assert any(SCRIPT_SERIAL in text for text in SCRIPT), "bench.script.SCRIPT no longer names SCRIPT_SERIAL"
    serial = f"CSP2604{next(_conversation_numbers):06d}"
    return tuple(text.replace(SCRIPT_SERIAL, serial) for text in SCRIPT)


def play(bot: Bot, chat: str, script: tuple[str, ...] | None = None) -> list[float]:
    """One customer's whole claim; the latency of each message (accept + processing), in seconds."""
    latencies = []
    for number, text in enumerate(script or own_script()):
        started = time.perf_counter()
        bot.engine.accept(inbound(chat, number, text))
        bot.engine.process_pending()
        latencies.append(time.perf_counter() - started)
    return latencies


def play_many(
    bot: Bot, prefix: str, conversations: int, progress: Callable[[int], None] | None = None
) -> tuple[list[float], float]:
    latencies: list[float] = []
    started = time.monotonic()
    for number in range(conversations):
        latencies.extend(play(bot, f"{prefix}-{number}"))
        if progress is not None:
            progress(number + 1)
    return latencies, time.monotonic() - started


def play_lockstep(
    bot: Bot, prefix: str, conversations: int, chats: int = LOCKSTEP
) -> tuple[list[float], float]:
    """`conversations` claims, `chats` at a time in lockstep: one message of each accepted, then one
    `process_pending()` for all; each message's latency (its accept to the end of that processing) and the
    wall time."""
    latencies: list[float] = []
    started = time.monotonic()
    progress = Progress(prefix, conversations)
    done = 0
    while done < conversations:
        group = [(f"{prefix}-{done + n}", own_script()) for n in range(min(chats, conversations - done))]
        for step in range(len(SCRIPT)):
            accepted = []
            for chat, script in group:
                accepted.append(time.perf_counter())
                bot.engine.accept(inbound(chat, step, script[step]))
            bot.engine.process_pending()
            finished = time.perf_counter()
            latencies.extend(finished - at for at in accepted)
        done += len(group)
        progress(done)
    return latencies, time.monotonic() - started


def run_lockstep(url: str, workdir: Path, label: str, conversations: int, warmup: int) -> dict[str, Any]:
    """One worker in this process, its conversations in lockstep (see the module's docstring)."""
    bot = build(settings_for(url, workdir), migrate=False)
    for number in range(warmup):
        play(bot, f"{label}-warmup-{number}")
    latencies, wall = play_lockstep(bot, label, conversations)
    bot.db.dispose()
    return {"latencies": latencies, "wall": wall}


def _worker(
    url: str, workdir: str, name: str, conversations: int, warmup: int, barrier: Any, results: Any
) -> None:
    """One worker process (spawned): warm up, wait for the others, play its customers, report."""
    bot = build(settings_for(url, Path(workdir)), migrate=False)
    for number in range(warmup):
        play(bot, f"{name}-warmup-{number}")
    barrier.wait(timeout=300)
    started = time.monotonic()
    progress = Progress(f"{name}", conversations) if name.endswith("w0") else None
    latencies, _ = play_many(bot, name, conversations, progress)
    results.put({"name": name, "start": started, "end": time.monotonic(), "latencies": latencies})
    bot.db.dispose()


def run_workers(
    url: str, workdir: Path, label: str, workers: int, conversations: int, warmup: int
) -> dict[str, Any]:
    """`workers` processes on one database, started together (one worker runs in this process); their
    latencies and the wall time."""
    if workers == 1:
        bot = build(settings_for(url, workdir), migrate=False)
        for number in range(warmup):
            play(bot, f"{label}-warmup-{number}")
        latencies, wall = play_many(bot, label, conversations, Progress(label, conversations))
        bot.db.dispose()
        return {"latencies": latencies, "wall": wall}
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    results = context.Queue()
    processes = [
        context.Process(
            target=_worker,
            args=(url, str(workdir), f"{label}-w{n}", conversations, warmup, barrier, results),
            daemon=True,
        )
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=1800) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        if process.exitcode != 0:
            raise RuntimeError(f"engine worker exited with {process.exitcode}")
    latencies = [x for r in reports for x in r["latencies"]]
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return {"latencies": latencies, "wall": wall}


def outcome(url: str) -> tuple[int, int]:
    """Cases opened and inbox rows that failed: a broken script shows here, not as a fast number."""
    engine = make_engine(url)
    with Session(engine) as session:
        cases = session.execute(select(func.count()).select_from(Case)).scalar_one()
        failed = session.execute(
            select(func.count()).select_from(InboxItem).where(col(InboxItem.status) == "failed")
        ).scalar_one()
    engine.dispose()
    return int(cases), int(failed)


# The table's rows: one worker, two worker processes (each playing one message at a time), and one worker
# whose conversations go in lockstep.
ROWS = ("1", "2", "lockstep")


def run(databases: tuple[str, ...], workdir: Path, *, quick: bool) -> Table:
    conversations = 2 if quick else 100
    lockstep_conversations = (1 if quick else 3) * LOCKSTEP
    warmup = 1 if quick else 3
    table = Table(
        title="1. Engine in-process: scripted full claim (accept + process, one message at a time; and in lockstep)",
        columns=(
            "database",
            "workers",
            "messages",
            "messages/s",
            "p50 ms",
            "p99 ms",
            "cases opened",
            "failed",
            "load avg",
        ),
    )
    for kind in databases:
        for row in ROWS:
            with database(kind, workdir, f"engine{row}") as url:
                engine = make_engine(url)
                upgrade(engine)
                engine.dispose()
                if row == "lockstep":
                    say(
                        f"engine: {kind}, 1 worker, {lockstep_conversations} conversations, {LOCKSTEP} at a time"
                    )
                    result = run_lockstep(
                        url, workdir, f"engine-{kind}-lockstep", lockstep_conversations, warmup
                    )
                    shown, warmups, figure = (
                        f"1, {LOCKSTEP} chats in lockstep",
                        warmup,
                        "engine lockstep messages/s",
                    )
                else:
                    workers = int(row)
                    say(f"engine: {kind}, {workers} worker(s), {conversations} conversations each")
                    result = run_workers(url, workdir, f"engine-{kind}-{row}", workers, conversations, warmup)
                    shown, warmups, figure = row, workers * warmup, "engine messages/s"  # the best of 1 and 2
                cases, failed = outcome(url)
            latencies = result["latencies"]
            key = f"{figure} {kind}"
            table.figures[key] = max(table.figures.get(key, 0.0), len(latencies) / result["wall"])
            table.rows.append(
                (
                    kind,
                    shown,
                    str(len(latencies)),
                    rate(len(latencies), result["wall"]),
                    ms(percentile(latencies, 0.5)),
                    ms(percentile(latencies, 0.99)),
                    str(cases - warmups),
                    str(failed),
                    load_average(),
                )
            )
    table.notes.append(
        f"Script per conversation: {' → '.join(repr(s) for s in SCRIPT)}, with a serial of the conversation's "
        f"own in place of {SCRIPT_SERIAL}; {conversations} conversations per worker after {warmup} warm-up "
        "conversations (not counted)."
    )
    table.notes.append(
        f"Lockstep ({lockstep_conversations} conversations, {LOCKSTEP} at a time): one message of each of "
        f"{LOCKSTEP} chats accepted, then one process_pending() for them all (batches of up to "
        "INBOX_BATCH_SIZE chats, one commit each), as the worker sees the inbox under load; a message's "
        "latency runs from its own accept to the end of that processing."
    )
    table.notes.append(
        "Two workers are two processes on one database. On SQLite they share one writer (BEGIN IMMEDIATE "
        "serialises every write transaction), so a second worker cannot add throughput there."
    )
    return table
