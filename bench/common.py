"""What every benchmark shares: the machine, databases, the claim script, timing statistics and tables."""

from __future__ import annotations

import os
import platform
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, text

from bot.config import Settings
from bot.messages import InboundMessage
from bot.store.clock import utcnow

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DATABASES = ("sqlite", "postgres")


# --- the machine ------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the numbers were measured on; the load average matters: other work shares the cores."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "load average (1, 5, 15 min) at start": load,
        "cpu": _cpu_model(),
        "memory": _mem_total(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": postgres_version() or "not reachable",
        "os": platform.platform(),
    }
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


# --- databases --------------------------------------------------------------------------------------------


def postgres_admin_url() -> str:
    """BENCH_POSTGRES_URL, else the test suite's TEST_POSTGRES_URL setting."""
    configured = Settings(_env_file=None).test_postgres_url  # type: ignore[call-arg]
    return os.environ.get("BENCH_POSTGRES_URL") or configured


def postgres_version() -> str | None:
    try:
        engine = create_engine(postgres_admin_url())
        with engine.connect() as connection:
            version = str(connection.execute(text("show server_version")).scalar())
        engine.dispose()
        return version
    except Exception:
        return None


@contextmanager
def database(kind: str, workdir: Path, name: str = "bench") -> Iterator[str]:
    """A fresh, empty database of `kind`: a SQLite file in `workdir`, or a PostgreSQL schema dropped after."""
    if kind == "sqlite":
        path = workdir / f"{name}-{secrets.token_hex(4)}.db"
        yield f"sqlite:///{path}"
        return
    admin_url = postgres_admin_url()
    schema = f"bench_{secrets.token_hex(6)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in admin_url else "?"
    try:
        yield f"{admin_url}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def settings_for(url: str, workdir: Path, **extra: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url,
        data_dir=workdir,
        attachments_dir=workdir / "attachments",
        log_level="WARNING",
        **extra,
    )


# --- messages ---------------------------------------------------------------------------------------------


def inbound(chat: str, number: int, text: str, channel: str = "bench") -> InboundMessage:
    return InboundMessage(
        channel=channel,
        external_id=f"{chat}:{number}",
        sender_id=chat,
        chat_id=chat,
        text=text,
        received_at=utcnow(),
        locale_hint="en",
        sender_name="Bench Customer",
    )


# --- statistics -------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "–"
    return f"{seconds * 1000:.1f}" if seconds < 10 else f"{seconds * 1000:.0f}"


def rate(count: float, seconds: float) -> str:
    return (
        f"{count / seconds:.0f}"
        if seconds > 0 and count / seconds >= 100
        else (f"{count / seconds:.1f}" if seconds > 0 else "–")
    )


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}×" if theirs and theirs == theirs and ours == ours else "–"


# --- results ----------------------------------------------------------------------------------------------


@dataclass
class Table:
    """One benchmark's results: a Markdown table and notes under it."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Headline figures for the targets table of `python -m bench` (bench/targets.py), by name.
    figures: dict[str, float] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines.extend("| " + " | ".join(str(c) for c in row) + " |" for row in self.rows)
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines)


class Progress:
    """A line on stderr now and then (never more than every `every` seconds, and at the end)."""

    def __init__(self, label: str, total: int, every: float = 2.0) -> None:
        self.label = label
        self.total = total
        self.every = every
        self.last = 0.0
        self.start = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if done >= self.total or now - self.last >= self.every:
            self.last = now
            print(
                f"  {self.label}: {done}/{self.total} ({now - self.start:.0f} s)", file=sys.stderr, flush=True
            )


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def rss_mib(pid: int) -> tuple[float, float]:
    """A process's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in values:
                values[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no channel credentials inherited from the caller's shell."""
    prefixes = (
        "TELEGRAM_",
        "SLACK_",
        "WHATSAPP_",
        "WECHAT_",
        "IMAP_",
        "SMTP_",
        "EMAIL_",
        "TEAMS_",
        "DESK_",
        "DATABASE_URL",
        "PUBLIC_URL",
        "DATA_DIR",
        "ATTACHMENTS_DIR",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
