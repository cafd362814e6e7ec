"""Alembic environment: runs migrations on the engine handed over by bot.store.db."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlmodel import SQLModel

from bot.store import models  # noqa: F401  (registers the tables)

config = context.config


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()


given = config.attributes.get("connection")  # the caller's connection (it holds the upgrade lock)
if given is not None:
    run(given)
else:
    engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        run(connection)
