"""Shared fixtures: real databases (a SQLite file, PostgreSQL in a throwaway schema) and the bot's parts."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, create_engine, text

from bot.app import Bot, build
from bot.config import Settings
from bot.store import make_engine, upgrade
from tests.browser_support import axe_source, browser  # noqa: F401  (fixtures of the browser tests)
from tests.fakes.mail import imap, mailbox, smtp  # noqa: F401  (fixtures of the e-mail tests)
from tests.support import Servers

# Tests send hundreds of requests a minute from 127.0.0.1, more than any customer does; the rate limits' own
# tests (tests/test_limits.py) set theirs explicitly. Servers started as processes inherit these.
for _limit in ("RATE_LIMIT_CLIENT", "RATE_LIMIT_SESSIONS", "RATE_LIMIT_READS", "RATE_LIMIT_GLOBAL"):
    os.environ.setdefault(_limit, "1000000/minute")

POSTGRES_URL = Settings().test_postgres_url


def _postgres_reachable() -> str | None:
    try:
        with create_engine(POSTGRES_URL).connect() as connection:
            connection.execute(text("select 1"))
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return None


_PG_PROBLEM = _postgres_reachable()


def postgres_or_skip() -> None:
    """PostgreSQL tests skip on a machine without it, but never in CI, where they must run."""
    if _PG_PROBLEM is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL must be reachable in CI at {POSTGRES_URL}: {_PG_PROBLEM}")
    pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {_PG_PROBLEM}")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A DATABASE_URL for PostgreSQL that points at a fresh schema, dropped afterwards."""
    with postgres_schema() as url:
        yield url


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A DATABASE_URL for a throwaway PostgreSQL schema (skipped locally without PostgreSQL, failed in CI)."""
    postgres_or_skip()
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/warranty.db"
    return str(request.getfixturevalue("postgres_url"))


def _migrated(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    yield from _migrated(database_url)


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[Engine]:
    """A migrated schema of the test PostgreSQL, for what only PostgreSQL has (concurrent writers, a server
    that ends connections)."""
    yield from _migrated(postgres_url)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        data_dir=tmp_path,  # type: ignore[call-arg]
        attachments_dir=tmp_path / "attachments",
    )


@pytest.fixture
def bot(settings: Settings, db: Engine) -> Bot:
    return build(settings, db=db)


@pytest.fixture
def servers() -> Iterator[Servers]:
    """`warranty-bot serve` processes a test starts (`servers.start(Server(...))`), stopped after it."""
    started = Servers()
    yield started
    started.stop()
