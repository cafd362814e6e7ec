"""Fixtures of the tests of bot/ that more than one module uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from bot.app import Bot


@pytest.fixture
def poison(bot: Bot) -> Iterator[None]:
    """Customer messages saying 'poison' are refused by the database (a constraint-like, lasting error)."""
    with bot.db.begin() as connection:
        if bot.db.dialect.name == "sqlite":
            connection.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON message WHEN NEW.text = 'poison' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the poison trigger'); END"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF NEW.text = 'poison' THEN RAISE EXCEPTION 'refused by the poison trigger'; END IF; "
                    "RETURN NEW; END $$"
                )
            )
            connection.execute(
                text("CREATE TRIGGER poison BEFORE INSERT ON message FOR EACH ROW EXECUTE FUNCTION poison()")
            )
    yield
