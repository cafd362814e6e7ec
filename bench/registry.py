"""Benchmark 5: registry import speed (`bot.registry.import_registry`) for a file of single-unit rows, and the
importing process's peak memory. The import runs in a fresh process so that its peak RSS is its own."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from bench.common import Table, database, load_average, rss_mib, say
from bot.registry import import_registry
from bot.store import make_engine, upgrade
from policy import default_policy

HEADER = (
    "order_id,customer,serial,production_date,port_arrival_date,cargo_compensation,order_pieces,"
    "order_total,currency\n"
)


def write_csv(path: Path, units: int) -> None:
    """`units` single-unit rows, 1,000 to an order, serials CSP2502K0000001 on (valid, all distinct)."""
    with path.open("w", encoding="utf-8") as file:
        file.write(HEADER)
        for start in range(0, units, 1000):
            order = f"PO-25-{start // 1000 + 1:06d}"
            pieces = min(1000, units - start)
            file.writelines(
                f"{order},Registry Bench Distributor,CSP2502K{n + 1:07d},2025-02-10,2025-03-20,false,{pieces},"
                "25000.00,USD\n"
                for n in range(start, start + pieces)
            )


def _backend(db: Engine) -> int | None:
    """The pid of the PostgreSQL backend behind the pool's one idle connection, when that server runs on this
    machine and its processes can be read (/proc); None otherwise (SQLite, a remote server)."""
    if db.dialect.name != "postgresql":
        return None
    with db.connect() as connection:
        pid = int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    try:
        return pid if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"postgres") else None
    except OSError:
        return None


def _cpu_seconds(pid: int | None) -> float | None:
    """A process's CPU time so far (user + system), from /proc/PID/stat."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _import(url: str, path: str, results: Any) -> None:
    db = make_engine(url)
    merge_from: list[tuple[float, float | None]] = []

    def progress(done: int, total: int) -> None:
        # Steps count rows read, then units written: the last call at the row count opens the merge.
        if done <= rows:
            merge_from[:] = [(time.monotonic(), _cpu_seconds(backend))]

    with Path(path).open(encoding="utf-8") as file:
        rows = sum(1 for _ in file) - 1
    # The import checks out the pool's one connection, so its server process is this one (checked below).
    backend = _backend(db)
    server_cpu = _cpu_seconds(backend)
    started, cpu = time.monotonic(), time.process_time()
    report = import_registry(db, Path(path), policy=default_policy(), progress=progress)
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    server_end = _cpu_seconds(backend) if _backend(db) == backend else None
    validated = (merge_from[0][0] if merge_from else time.monotonic()) - started
    merge_cpu = merge_from[0][1] if merge_from else None
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across the fork and exec that spawn this
    # process, so it would report the parent's size when the parent is the larger (it was: 243 MiB after
    # the webhook benchmark, for an import that peaks at about 95).
    peak_mib = rss_mib(os.getpid())[1]
    db.dispose()
    results.put(
        {
            "seconds": seconds,
            "cpu": cpu,
            "validated": validated,
            "units": report.units,
            "inserted": report.inserted,
            "peak_mib": peak_mib,
            # The server process's CPU time over the whole import and over the merge (PostgreSQL on this machine).
            "server_cpu": None if server_cpu is None or server_end is None else server_end - server_cpu,
            "server_merge_cpu": None if merge_cpu is None or server_end is None else server_end - merge_cpu,
        }
    )


def run(databases: tuple[str, ...], workdir: Path, *, quick: bool) -> Table:
    units = 2_000 if quick else 1_000_000
    table = Table(
        title=f"5. Registry import: {units:,} single-unit rows (CSV)",
        columns=(
            "database",
            "rows",
            "file MiB",
            "seconds",
            "rows/s",
            "read + validate + stage s",
            "write s",
            "importer CPU s",
            "server CPU s (merge)",
            "importer peak RSS MiB",
            "load avg",
        ),
    )
    csv = workdir / f"registry-{units}.csv"
    say(f"registry: writing {units:,} rows to {csv.name}")
    write_csv(csv, units)
    context = multiprocessing.get_context("spawn")
    for kind in databases:
        say(f"registry: importing {units:,} rows into {kind}")
        with database(kind, workdir, "registry") as url:
            db = make_engine(url)
            upgrade(db)
            db.dispose()
            results = context.Queue()
            process = context.Process(target=_import, args=(url, str(csv), results), daemon=True)
            process.start()
            report = results.get(timeout=1800)
            process.join(timeout=60)
        table.figures[f"import rows/s {kind}"] = report["units"] / report["seconds"]
        table.figures[f"import RSS MiB {kind}"] = report["peak_mib"]
        table.rows.append(
            (
                kind,
                f"{report['inserted']:,}",
                f"{csv.stat().st_size / 2**20:.0f}",
                f"{report['seconds']:.1f}",
                f"{report['units'] / report['seconds']:,.0f}",
                f"{report['validated']:.1f}",
                f"{report['seconds'] - report['validated']:.1f}",
                f"{report['cpu']:.1f}",
                "–"
                if report["server_cpu"] is None
                else f"{report['server_cpu']:.1f} ({report['server_merge_cpu']:.1f})",
                f"{report['peak_mib']:.0f}",
                load_average(),
            )
        )
    table.notes.append(
        "Rows per second over the whole import_registry call, in a fresh process: read and validate every row "
        "while staging its units in a temporary table (COPY on PostgreSQL, executemany on SQLite), then merge "
        "them into the registry in one transaction (write s). Importer CPU s is that process's own CPU time "
        "(on SQLite it includes the database's work, on PostgreSQL not the server's): on a loaded machine it "
        "moves less than the wall time. Server CPU s is the PostgreSQL backend's CPU time for the import, and in "
        "brackets for the merge (read from /proc: '–' when the server runs elsewhere). Peak RSS is the importing process's own high-water mark (VmHWM). The "
        "server's own memory, idle and under load, is in table 2."
    )
    return table
