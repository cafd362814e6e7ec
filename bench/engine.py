"""Benchmark 1: the engine in-process: a scripted full claim per conversation, accept then process, timed.

Each worker builds the bot (`bot.app.build`; one worker in this process, two in two processes) and plays
its own customers one message at a time: `engine.accept(message)`, then `engine.process_pending()` until
the inbox is empty. The latency of a message is that whole call pair; throughput is all workers' messages
over the wall time of the run.
"""

from __future__ import annotations

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


def play(bot: Bot, chat: str, script: tuple[str, ...] = SCRIPT) -> list[float]:
    """One customer's whole claim; the latency of each message (accept + processing), in seconds."""
    latencies = []
    for number, text in enumerate(script):
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


def run(databases: tuple[str, ...], workdir: Path, *, quick: bool) -> Table:
    conversations = 2 if quick else 100
    warmup = 1 if quick else 3
    table = Table(
        title="1. Engine in-process: scripted full claim (accept + process, one message at a time)",
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
        for workers in (1, 2):
            say(f"engine: {kind}, {workers} worker(s), {conversations} conversations each")
            with database(kind, workdir, f"engine{workers}") as url:
                engine = make_engine(url)
                upgrade(engine)
                engine.dispose()
                result = run_workers(url, workdir, f"engine-{kind}-{workers}", workers, conversations, warmup)
                cases, failed = outcome(url)
            latencies = result["latencies"]
            best = f"engine messages/s {kind}"
            table.figures[best] = max(table.figures.get(best, 0.0), len(latencies) / result["wall"])
            table.rows.append(
                (
                    kind,
                    str(workers),
                    str(len(latencies)),
                    rate(len(latencies), result["wall"]),
                    ms(percentile(latencies, 0.5)),
                    ms(percentile(latencies, 0.99)),
                    str(cases - workers * warmup),
                    str(failed),
                    load_average(),
                )
            )
    table.notes.append(
        f"Script per conversation: {' → '.join(repr(s) for s in SCRIPT)}; {conversations} conversations per "
        f"worker after {warmup} warm-up conversations (not counted)."
    )
    table.notes.append(
        "Two workers are two processes on one database. On SQLite they share one writer (BEGIN IMMEDIATE "
        "serialises every write transaction), so a second worker cannot add throughput there."
    )
    return table
