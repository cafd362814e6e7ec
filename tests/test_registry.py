"""The shipment-registry import and lookup, against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import json
import threading
import time
import zipfile
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError, NotSupportedError, OperationalError
from sqlalchemy.orm import Session

from bot.registry import ImportReport, RegistryImportError, import_registry, lookup, near_serials
from bot.store.db import session_scope
from bot.store.models import RegistryOrder, RegistryUnit
from policy import UnitFacts, default_policy
from tests import registry_equivalence

SAMPLE = Path(__file__).parent / "data" / "registry-sample.csv"
HEADER = (
    "order_id,customer,serial,serial_to,production_date,port_arrival_date,cargo_compensation,"
    "order_pieces,order_total,currency"
)
POLICY = default_policy()


@pytest.fixture
def engine(db: Engine) -> Engine:
    """A migrated database (conftest's `db`: a SQLite file, or a fresh schema of the test PostgreSQL)."""
    return db


def write(tmp_path: Path, text: str, name: str = "registry.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def csv_text(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


def run(engine: Engine, path: Path, progress: Callable[[int, int], None] | None = None) -> ImportReport:
    return import_registry(engine, path, policy=POLICY, progress=progress)


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        orders = connection.execute(select(func.count()).select_from(RegistryOrder)).scalar_one()
        units = connection.execute(select(func.count()).select_from(RegistryUnit)).scalar_one()
    return orders, units


def find(engine: Engine, *serials: str) -> dict[str, UnitFacts]:
    with session_scope(engine) as session:
        return lookup(session, serials)


def import_error(engine: Engine, path: Path) -> RegistryImportError:
    with pytest.raises(RegistryImportError) as caught:
        run(engine, path)
    return caught.value


# The sample file of docs/registry.md --------------------------------------------------------------------


def test_sample_file_imports_and_looks_up(engine: Engine) -> None:
    report = run(engine, SAMPLE)

    assert report == ImportReport(
        orders=5, units=1252, inserted=1252, updated=0, unchanged=0, orders_inserted=5, orders_updated=0
    )
    assert counts(engine) == (5, 1252)
    facts = find(
        engine,
        "CSP2402A0153",
        "csp-2403-a0217",
        "CSP2311B0872",
        "CSP2405C1190",
        "CSP2402A0388",
        "CSP2402A0099",
        "",
    )
    assert facts["CSP2402A0153"] == UnitFacts(
        serial="CSP2402A0153",
        order_id="PO-24-0117",
        production_date=date(2024, 2, 13),
        port_arrival_date=date(2024, 3, 10),
        cargo_compensation=False,
        order_pieces=1000,
        order_total=Decimal("25000.00"),
        currency="USD",
    )
    total = facts["CSP2402A0153"].order_total
    assert isinstance(total, Decimal) and str(total) == "25000.00"
    assert facts["CSP2403A0217"].cargo_compensation is True  # keyed by the normalised serial
    assert facts["CSP2403A0217"].order_total == Decimal("4200.00")
    assert facts["CSP2311B0872"].currency == "EUR"
    assert facts["CSP2405C1190"].order_id == "PO-24-0231"
    assert facts["CSP2402A0388"].port_arrival_date == date(2024, 3, 10)
    assert set(facts) == {"CSP2402A0153", "CSP2403A0217", "CSP2311B0872", "CSP2405C1190", "CSP2402A0388"}


# Reading the formats -----------------------------------------------------------------------------------


def test_csv_single_units_and_ranges(engine: Engine, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        csv_text(
            "PO-1,Acme,CSP2402A0100,CSP2402A0104,2024-02-10,2024-03-10,no,7,175.5,usd",
            "PO-1,Acme,csp 2402 a0200,,2024-02-10,2024-03-10,no,7,175.50,USD",
            "PO-2,Beta,CSP2402A0300,CSP2402A0300,2024-02-11,,YES,,,",
        ),
    )

    report = run(engine, path)

    assert (report.orders, report.units, report.inserted) == (2, 7, 7)
    facts = find(engine, *[f"CSP2402A010{n}" for n in range(6)], "CSP2402A0200", "CSP2402A0300")
    assert sorted(facts) == [*[f"CSP2402A010{n}" for n in range(5)], "CSP2402A0200", "CSP2402A0300"]
    assert facts["CSP2402A0104"].order_total == Decimal("175.50")
    assert facts["CSP2402A0200"].currency == "USD"
    beta = facts["CSP2402A0300"]
    assert (
        beta.cargo_compensation,
        beta.port_arrival_date,
        beta.order_pieces,
        beta.order_total,
        beta.currency,
    ) == (True, None, None, None, None)


def test_xlsx_with_real_dates_and_any_column_order(engine: Engine, tmp_path: Path) -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(
        [
            "Currency",
            " SERIAL ",
            "Serial To",
            "Order ID",
            "customer",
            "production_date",
            "port_arrival_date",
            "cargo_compensation",
            "order_pieces",
            "order_total",
            "notes",
        ]
    )
    sheet.append(
        [
            "USD",
            "CSP2402A0100",
            "CSP2402A0149",
            "PO-24-0117",
            "Lima Fleet",
            date(2024, 2, 6),
            datetime(2024, 3, 10, 0, 0),
            False,
            1000,
            25000,
            "first batch",
        ]
    )
    sheet.append(["USD", "CSP2402A0153/X", None, None, None, 45000, None, None, None, None, None])  # bad
    sheet.append(
        [
            "USD",
            "CSP2402A0150",
            None,
            "PO-24-0117",
            "Lima Fleet",
            "2024-02-13",
            "2024-03-10",
            0,
            1000.0,
            25000.0,
            None,
        ]
    )
    sheet.append(
        [
            "EUR",
            "CSP2311B0872",
            "",
            10234,
            "Gulf",
            date(2023, 11, 14),
            date(2024, 1, 15),
            True,
            40,
            1160.1,
            None,
        ]
    )
    path = tmp_path / "registry.xlsx"
    workbook.save(path)

    error = import_error(engine, path)
    assert error.errors == [
        (3, "order_id: required"),
        (3, "serial: not a serial (letters and digits only; a range ends in serial_to): 'CSP2402A0153/X'"),
        (3, "production_date: not a date (expected YYYY-MM-DD): '45000'"),
    ]

    sheet.delete_rows(3)
    workbook.save(path)
    report = run(engine, path)

    assert (report.orders, report.units) == (2, 52)
    facts = find(engine, "CSP2402A0149", "CSP2402A0150", "CSP2311B0872")
    assert facts["CSP2402A0149"].port_arrival_date == date(2024, 3, 10)
    assert facts["CSP2402A0150"].order_total == Decimal("25000.00")
    gulf = facts["CSP2311B0872"]
    assert (gulf.order_id, gulf.cargo_compensation, gulf.order_total) == ("10234", True, Decimal("1160.10"))


def test_bom_semicolons_and_decimal_commas(engine: Engine, tmp_path: Path) -> None:
    text = (
        csv_text(
            "PO-7;Café Motors;CSP2403A0217;;2024-03-05;2024-04-20;1;12;1234,5;BRL",
            "PO-7;Café Motors;CSP2403A0218;CSP2403A0219;2024-03-05;2024-04-20;true;12;1234.50;BRL",
        )
        .replace(",", ";")
        .replace("1234;5", "1234,5")
    )
    path = write(tmp_path, "\ufeff" + text.replace("\n", "\r\n"))

    report = run(engine, path)

    assert (report.orders, report.units) == (1, 3)
    unit = find(engine, "CSP2403A0217")["CSP2403A0217"]
    assert (unit.order_total, unit.cargo_compensation, unit.currency) == (Decimal("1234.50"), True, "BRL")


def test_reimport_is_idempotent_and_updates_changed_values(engine: Engine, tmp_path: Path) -> None:
    rows = [
        "PO-1,Acme,CSP2402A0100,CSP2402A0109,2024-02-10,2024-03-10,false,20,500.00,USD",
        "PO-1,Acme,CSP2402A0110,CSP2402A0119,2024-02-10,2024-03-10,false,20,500.00,USD",
    ]
    path = write(tmp_path, csv_text(*rows))
    run(engine, path)

    again = run(engine, path)
    assert (again.inserted, again.updated, again.unchanged, again.orders_updated) == (0, 0, 20, 0)
    assert counts(engine) == (1, 20)

    rows[1] = rows[1].replace("2024-03-10", "2024-03-18")
    path = write(tmp_path, csv_text(*rows, "PO-2,Beta,CSP2402A0120,,2024-02-10,2024-03-18,false,1,25.00,USD"))
    changed = run(engine, path)

    assert (changed.inserted, changed.updated, changed.unchanged) == (1, 10, 10)
    assert counts(engine) == (2, 21)
    facts = find(engine, "CSP2402A0109", "CSP2402A0110")
    assert facts["CSP2402A0109"].port_arrival_date == date(2024, 3, 10)
    assert facts["CSP2402A0110"].port_arrival_date == date(2024, 3, 18)


def test_reimport_updates_order_values_and_moves_units(engine: Engine, tmp_path: Path) -> None:
    run(
        engine,
        write(
            tmp_path,
            csv_text(
                "PO-1,Acme,CSP2402A0100,CSP2402A0101,2024-02-10,2024-03-10,false,2,50.00,USD",
            ),
        ),
    )
    report = run(
        engine,
        write(
            tmp_path,
            csv_text(
                "PO-1,Acme Ltd,CSP2402A0100,,2024-02-10,2024-03-10,true,2,55.00,USD",
                "PO-2,Beta,CSP2402A0101,,2024-02-10,2024-03-10,false,1,25.00,USD",
            ),
        ),
    )

    assert (report.orders_inserted, report.orders_updated, report.updated, report.unchanged) == (1, 1, 1, 1)
    facts = find(engine, "CSP2402A0100", "CSP2402A0101")
    assert (facts["CSP2402A0100"].cargo_compensation, facts["CSP2402A0100"].order_total) == (
        True,
        Decimal("55.00"),
    )
    assert facts["CSP2402A0101"].order_id == "PO-2"


# While an import merges -----------------------------------------------------------------------------------


def test_lookups_go_on_while_an_import_merges_and_other_writers_wait(engine: Engine, tmp_path: Path) -> None:
    # The progress call that opens the merge comes inside its transaction, with PostgreSQL's lock taken: from
    # there, other connections look a serial up (and see the registry as it was), and, on PostgreSQL, a
    # second writer waits for the import (lock_timeout turns the wait into an error instead of a hang).
    first = "PO-1,Acme,CSP2402A0100,,2024-02-10,2024-03-10,false,1,25.00,USD"
    run(engine, write(tmp_path, csv_text(first)))
    path = write(tmp_path, csv_text(first.replace("2024-03-10", "2024-03-18")), name="again.csv")
    seen: list[object] = []

    def look_up() -> None:
        with Session(engine) as session:  # a reader, as the bot's lookups are
            if engine.dialect.name == "postgresql":
                session.execute(text("SET LOCAL lock_timeout = '10s'"))
            seen.append(lookup(session, ["CSP2402A0100"])["CSP2402A0100"].port_arrival_date)

    def during_merge(done: int, total: int) -> None:
        if done != 1 or total != 2:  # one row read; the merge of its unit starts
            return
        # In a thread of its own, as the bot's are: this one is inside the import's write transaction.
        reader = threading.Thread(target=look_up)
        reader.start()
        reader.join(timeout=60)
        if engine.dialect.name == "postgresql":
            with engine.connect() as other:
                other.execute(text("SET lock_timeout = '50ms'"))
                try:
                    other.execute(
                        text("INSERT INTO registryunit (serial, order_id) VALUES ('CSP2402A0101', 'PO-1')")
                    )
                except OperationalError as error:
                    seen.append(type(error.orig).__name__)

    report = run(engine, path, progress=during_merge)

    assert (report.updated, report.unchanged) == (1, 0)
    expected = [date(2024, 3, 10)] + (["LockNotAvailable"] if engine.dialect.name == "postgresql" else [])
    assert seen == expected
    assert find(engine, "CSP2402A0100")["CSP2402A0100"].port_arrival_date == date(2024, 3, 18)
    assert counts(engine) == (1, 1)


# The registry's integrity: every unit names a stored order ----------------------------------------------

TWO_ORDERS = (
    "PO-1,Acme,CSP2402A0100,,2024-02-10,2024-03-10,false,1,25.00,USD",
    "PO-2,Acme,CSP2402A0200,,2024-02-10,2024-03-10,false,1,25.00,USD",
)
NEW_ORDER = "INSERT INTO registryorder (order_id, customer, cargo_compensation) VALUES ('{}', '', false)"


def test_every_unit_names_a_stored_order_and_a_named_order_stays(engine: Engine, tmp_path: Path) -> None:
    # SQLite's foreign key; on PostgreSQL the statement triggers of migration 0007 that keep the same rule.
    run(engine, write(tmp_path, csv_text(*TWO_ORDERS)))
    refused = [
        # one of the statement's two units names no stored order
        "INSERT INTO registryunit (serial, order_id) VALUES ('CSP2402A0101', 'PO-1'), ('CSP2402A0102', 'PO-9')",
        "UPDATE registryunit SET order_id = 'PO-9' WHERE serial = 'CSP2402A0100'",
        "DELETE FROM registryorder WHERE order_id = 'PO-1'",
        "UPDATE registryorder SET order_id = 'PO-3' WHERE order_id = 'PO-2'",
    ]
    for statement in refused:
        with pytest.raises(IntegrityError, match=r"(?i)foreign key"), engine.begin() as connection:
            connection.execute(text(statement))
    if engine.dialect.name == "postgresql":  # SQLite has no TRUNCATE
        with pytest.raises(NotSupportedError, match="cannot truncate"), engine.begin() as connection:
            connection.execute(text("TRUNCATE registryorder"))
    assert counts(engine) == (2, 2)

    with engine.begin() as connection:  # what the rule allows
        connection.execute(text(NEW_ORDER.format("PO-3")))
        connection.execute(text("UPDATE registryunit SET order_id = 'PO-3' WHERE order_id = 'PO-2'"))
        connection.execute(text("DELETE FROM registryorder WHERE order_id = 'PO-2'"))  # no unit names it now
        connection.execute(
            text("INSERT INTO registryunit (serial, order_id) VALUES ('CSP2402A0101', 'PO-1')")
        )
    assert counts(engine) == (2, 3)
    assert find(engine, "CSP2402A0200")["CSP2402A0200"].order_id == "PO-3"
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("TRUNCATE registryorder, registryunit"))  # both at once leaves no unit
        assert counts(engine) == (0, 0)


def _waits_for_a_lock(engine: Engine, pid: int) -> bool:
    """Whether the PostgreSQL backend `pid` comes to wait for a lock (polled for up to 30 s)."""
    with engine.connect() as connection:
        for _ in range(600):
            state = connection.execute(
                text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar_one_or_none()
            connection.rollback()  # a fresh snapshot of pg_stat_activity for the next look
            if state == "Lock":
                return True
            time.sleep(0.05)
    return False


def _in_thread(work: Callable[[], None]) -> tuple[threading.Thread, list[str]]:
    """`work` started in a thread; the list receives 'done', or the name of the exception it raised."""
    outcome: list[str] = []

    def target() -> None:
        try:
            work()
            outcome.append("done")
        except Exception as error:  # the test reads which one
            outcome.append(type(error).__name__)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def test_postgresql_keeps_the_rule_between_concurrent_transactions(
    postgres_db: Engine, tmp_path: Path
) -> None:
    # Each side of a race waits for the other's transaction, as with PostgreSQL's own foreign key, and then
    # sees what it committed: the rule holds whichever comes first. (SQLite has one writer: no race.)
    engine = postgres_db
    run(engine, write(tmp_path, csv_text(*TWO_ORDERS)))
    with engine.begin() as connection:
        connection.execute(text(NEW_ORDER.format("PO-3")))

    def race(first: str, second: str) -> list[str]:
        with engine.connect() as ahead, engine.connect() as behind:
            pid = behind.execute(text("SELECT pg_backend_pid()")).scalar_one()
            behind.commit()
            ahead.execute(text(first))

            def then() -> None:
                with behind.begin():
                    behind.execute(text(second))

            thread, outcome = _in_thread(then)
            waited = _waits_for_a_lock(engine, pid)
            ahead.commit()
            thread.join(timeout=60)
        return [*outcome, "waited" if waited else "did not wait"]

    # Units first: a delete of their order waits for their transaction, then finds them.
    unit = "INSERT INTO registryunit (serial, order_id) VALUES ('{}', 'PO-3')"
    assert race(unit.format("CSP2402A0300"), "DELETE FROM registryorder WHERE order_id = 'PO-3'") == [
        "IntegrityError",
        "waited",
    ]
    # The delete first: units of the order wait for it, then find it gone.
    with engine.begin() as connection:
        connection.execute(text(NEW_ORDER.format("PO-4")))
    assert race(
        "DELETE FROM registryorder WHERE order_id = 'PO-4'",
        "INSERT INTO registryunit (serial, order_id) VALUES ('CSP2402A0400', 'PO-4')",
    ) == ["IntegrityError", "waited"]
    assert counts(engine) == (3, 3)

    # Outside READ COMMITTED a delete could not see units committed after its transaction began: refused.
    with (
        engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection,
        pytest.raises(NotSupportedError, match="READ COMMITTED"),
    ):
        connection.execute(text("DELETE FROM registryorder WHERE order_id = 'PO-2'"))
    assert counts(engine) == (3, 3)


def test_the_registry_tables_match_their_models_but_for_postgresqls_foreign_key(engine: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    ours = [d for d in diffs if "registry" in repr(d)]
    if engine.dialect.name == "sqlite":
        assert ours == []
    else:  # kept by migration 0007's triggers instead (the tests above)
        assert [(d[0], d[1].parent.name, d[1].column_keys) for d in ours] == [
            ("add_fk", "registryunit", ["order_id"])
        ]


# Bad files ----------------------------------------------------------------------------------------------


def test_bad_rows_are_all_reported_by_line_and_nothing_is_written(engine: Engine, tmp_path: Path) -> None:
    run(engine, SAMPLE)
    before = counts(engine)
    text = (
        HEADER + "\n"  # 1
        "PO-24-0117,Lima Fleet Services SAC,CSP2402A0100,CSP2402A0149,2024-02-06,2024-03-11,false,"
        "1000,25000.00,USD\n"  # 2 ok
        "PO-9,Acme,CSP2402A5000,,2024-02-10,2024-13-01,false,10,250.00,USD\n"  # 3
        "\n"  # 4
        'PO-10,"Beta\nMotors",CSP2402A6000,,2024-02-10,2024-03-10,maybe,10,100.00,USD\n'  # 5-6
        "PO-11,Gamma,CSP2402A7000,,10/02/2024,2024-03-10,false,ten,12.345,US\n"  # 7
        "PO-12,Delta,CSP2402A8000,CSP2402A7990,2024-02-10,2024-03-10,false,1,1.00,USD\n"  # 8
        "PO-13,Echo,CSP2402A9000,,2024-03-10,2024-02-10,false,1,1.00,USD\n"  # 9
    )
    error = import_error(engine, write(tmp_path, text))

    assert error.errors == [
        (3, "port_arrival_date: not a date (expected YYYY-MM-DD): '2024-13-01'"),
        (5, "cargo_compensation: not a yes/no value (expected true, false, yes, no, 1 or 0): 'maybe'"),
        (7, "production_date: not a date (expected YYYY-MM-DD): '10/02/2024'"),
        (7, "order_pieces: not a whole number of pieces: 'ten'"),
        (7, "order_total: more than 2 decimals: '12.345'"),
        (7, "currency: not a 3-letter currency code (e.g. USD): 'US'"),
        (8, "serial_to: CSP2402A8000 to CSP2402A7990: the range runs backwards"),
        (9, "port_arrival_date: 2024-02-10 is before production_date 2024-03-10"),
    ]
    assert str(error) == (
        "5 bad rows (8 problems); first: line 3: port_arrival_date: not a date (expected YYYY-MM-DD): "
        "'2024-13-01'"
    )
    assert counts(engine) == before
    # The good row would have moved the port arrival date; it must not have been applied.
    assert find(engine, "CSP2402A0100")["CSP2402A0100"].port_arrival_date == date(2024, 3, 10)


def test_missing_columns_are_named(engine: Engine, tmp_path: Path) -> None:
    text = "order_id;Serial;production_date;port_arrival_date;cargo_compensation;order_pieces\nPO-1;X1;;;;\n"

    error = import_error(engine, write(tmp_path, text))

    assert len(error.errors) == 1
    line, message = error.errors[0]
    assert line == 1
    assert message.startswith("missing columns: customer, order_total, currency (the header must name")
    assert str(error).startswith("1 bad row: line 1: missing columns: customer, order_total, currency")
    assert counts(engine) == (0, 0)


def test_bad_boolean(engine: Engine, tmp_path: Path) -> None:
    error = import_error(
        engine,
        write(
            tmp_path,
            csv_text(
                "PO-1,Acme,CSP2402A0100,,2024-02-10,2024-03-10,si,1,1.00,USD",
            ),
        ),
    )
    assert error.errors == [
        (2, "cargo_compensation: not a yes/no value (expected true, false, yes, no, 1 or 0): 'si'")
    ]


def test_reversed_and_foreign_ranges(engine: Engine, tmp_path: Path) -> None:
    error = import_error(
        engine,
        write(
            tmp_path,
            csv_text(
                "PO-1,Acme,CSP2402A0149,CSP2402A0100,2024-02-10,2024-03-10,false,1,1.00,USD",
                "PO-1,Acme,CSP2402A0200,CSP2403A0210,2024-02-10,2024-03-10,false,1,1.00,USD",
                "PO-1,Acme,CSP2402A0300..CSP2402A0310,,2024-02-10,2024-03-10,false,1,1.00,USD",
            ),
        ),
    )
    assert error.errors == [
        (2, "serial_to: CSP2402A0149 to CSP2402A0100: the range runs backwards"),
        (3, "serial_to: CSP2402A0200 to CSP2403A0210: not serials of one model, month and batch"),
        (
            4,
            "serial: not a serial (letters and digits only; a range ends in serial_to): "
            "'CSP2402A0300..CSP2402A0310'",
        ),
    ]
    assert counts(engine) == (0, 0)


def test_conflicting_order_values_and_repeated_serials(engine: Engine, tmp_path: Path) -> None:
    error = import_error(
        engine,
        write(
            tmp_path,
            csv_text(
                "PO-1,Acme,CSP2402A0100,CSP2402A0109,2024-02-10,2024-03-10,false,20,500.00,USD",
                "PO-1,Acme,CSP2402A0110,,2024-02-10,2024-03-10,true,20,500,USD",
                "PO-1,ACME,CSP2402A0105,CSP2402A0111,2024-02-10,2024-03-10,false,20,510.00,EUR",
            ),
        ),
    )
    assert error.errors == [
        (3, "cargo_compensation: true differs from line 2 for order PO-1 (false)"),
        (4, "customer: 'ACME' differs from line 2 for order PO-1 ('Acme')"),
        (4, "order_total: '510.00' differs from line 2 for order PO-1 ('500.00')"),
        (4, "currency: 'EUR' differs from line 2 for order PO-1 ('USD')"),
        (4, "serial: CSP2402A0105 is already listed on line 2 (6 serials of this range are listed earlier)"),
    ]


def test_unreadable_files(engine: Engine, tmp_path: Path) -> None:
    assert import_error(engine, write(tmp_path, "\n \n")).errors == [
        (0, "the file is empty: expected a header line naming the columns")
    ]
    latin1 = write(tmp_path, csv_text("PO-1,Café,CSP2402A0100,,,,,,,"), encoding="latin-1")
    error = import_error(engine, latin1)
    assert error.errors[0][0] == 2 and "not UTF-8" in str(error)
    error = import_error(engine, tmp_path / "missing.csv")
    assert error.errors[0][0] == 0 and "cannot read" in str(error)


def bomb(tmp_path: Path, unpacked_mb: int) -> Path:
    """A real workbook whose sheet is rewritten as `unpacked_mb` MB of rows that deflate about 340:1."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(HEADER.split(","))
    plain = tmp_path / "plain.xlsx"
    workbook.save(plain)
    path = tmp_path / "bomb.xlsx"
    row = b'<row><c t="inlineStr"><is><t>CSP2402A0100</t></is></c></row>' * 1000
    with (
        zipfile.ZipFile(plain) as source,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out,
    ):
        for info in source.infolist():
            if info.filename != "xl/worksheets/sheet1.xml":
                out.writestr(info, source.read(info))
                continue
            with out.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as part:
                part.write(
                    b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                    b"<sheetData>"
                )
                for _ in range(unpacked_mb * 2**20 // len(row) + 1):
                    part.write(row)
                part.write(b"</sheetData></worksheet>")
    return path


def test_an_xlsx_zip_bomb_is_refused_before_it_is_read(engine: Engine, tmp_path: Path) -> None:
    run(engine, SAMPLE)
    before = counts(engine)
    path = bomb(tmp_path, 600)  # about 2 MB on disk
    assert path.stat().st_size < 3 * 2**20
    error = import_error(engine, path)
    assert len(error.errors) == 1 and error.errors[0][0] == 0
    assert "unpacks to 600 MB, more than the 512 MB allowed (REGISTRY_MAX_UNPACKED_BYTES)" in str(error)
    assert counts(engine) == before


def test_the_unpacked_size_limit_is_a_setting(engine: Engine, tmp_path: Path) -> None:
    small = bomb(tmp_path, 3)
    with pytest.raises(RegistryImportError, match="unpacks to 3 MB, more than the 2 MB"):
        import_registry(engine, small, policy=POLICY, max_unpacked_bytes=2 * 2**20)
    # Under the limit it is read as it is: a sheet of serials without the other columns.
    with pytest.raises(RegistryImportError, match="missing columns"):
        import_registry(engine, small, policy=POLICY, max_unpacked_bytes=4 * 2**20)


def test_rows_are_counted_as_rows_and_problems_as_problems(engine: Engine, tmp_path: Path) -> None:
    rows = [f"PO-{n},A,CSP2402A{n:04},,2024-02-30,,maybe,ten,1.001,US" for n in range(1, 301)]
    error = import_error(engine, write(tmp_path, csv_text(*rows)))
    assert (error.bad_rows, len(error.errors)) == (300, 1500)
    assert error.counted() == "300 bad rows (1500 problems)"
    assert str(error).startswith("300 bad rows (1500 problems); first: line 2: production_date")


# Size -----------------------------------------------------------------------------------------------------


def test_twenty_thousand_units_in_batches(engine: Engine, tmp_path: Path) -> None:
    # 20 ranges of 1,000 (the policy's longest range), over 4 orders: several stage batches and IN chunks.
    rows = [
        f"PO-{n % 4},Fleet {n % 4},CSP2402{letter}0000,CSP2402{letter}0999,2024-02-10,2024-03-10,"
        f"{'true' if n % 4 == 0 else 'false'},5000,125000.00,USD"
        for n, letter in enumerate("ABCDEFGHIJKLMNOPQRST")
    ]
    path = write(tmp_path, csv_text(*rows))
    calls: list[tuple[int, int]] = []

    report = run(engine, path, progress=lambda done, total: calls.append((done, total)))

    assert (report.orders, report.units, report.inserted) == (4, 20_000, 20_000)
    assert counts(engine) == (4, 20_000)
    # 20 rows read, then 20,000 units written (merged in one go); the first total guesses a unit a row.
    assert calls == [(0, 40), (20, 20_020), (20_020, 20_020)]
    serials = [f"CSP2402{letter}{n:04d}" for letter in "ABC" for n in range(1000)]
    facts = find(engine, *serials)
    assert len(facts) == 3000
    assert facts["CSP2402A0000"].cargo_compensation and not facts["CSP2402B0999"].cargo_compensation

    again = run(engine, path)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 20_000)


def test_progress_counts_rows_read_then_units_written(engine: Engine, tmp_path: Path) -> None:
    rows = [f"PO-1,Acme,CSP2402A{n:04d},,2024-02-10,2024-03-10,false,6000,1.00,USD" for n in range(6000)]
    calls: list[tuple[int, int]] = []

    run(engine, write(tmp_path, csv_text(*rows)), progress=lambda done, total: calls.append((done, total)))

    # Every 5,000 rows read; then the merge's start and end.
    assert calls == [(0, 12_000), (5_000, 12_000), (6_000, 12_000), (12_000, 12_000)]


# The streaming importer against the one it replaced -----------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(registry_equivalence.scenarios()))
def test_the_same_registry_reports_and_errors_as_the_importer_before_streaming(
    engine: Engine, tmp_path: Path, scenario: str
) -> None:
    # Recorded with the importer that read the whole file before writing (tests/registry_equivalence.py):
    # every report, every error of a bad file, and a digest of the registry after each import.
    expected = json.loads(registry_equivalence.EXPECTED.read_text(encoding="utf-8"))[scenario]

    played = registry_equivalence.play(engine, registry_equivalence.scenarios()[scenario], tmp_path)

    assert played == expected


def test_units_are_staged_through_copy_on_postgresql_and_executemany_on_sqlite(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Observed at the libraries' own seams (psycopg's Cursor.copy, SQLAlchemy's cursor events); the calls go
    # through unchanged.
    import psycopg
    from sqlalchemy import event

    copies: list[str] = []
    original = psycopg.Cursor.copy

    def copy(self: psycopg.Cursor[Any], statement: Any, *args: Any, **kwargs: Any) -> Any:
        copies.append(str(statement))
        return original(self, statement, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "copy", copy)
    staged: list[int] = []

    def seen(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if statement.startswith("INSERT INTO registry_import_stage"):
            staged.append(len(parameters) if executemany else 1)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        report = run(engine, SAMPLE)
    finally:
        event.remove(engine, "before_cursor_execute", seen)

    assert report.inserted == 1252
    if engine.dialect.name == "postgresql":
        assert copies == [
            "COPY registry_import_stage (n, serial, order_id, production_date, port_arrival_date, "
            "line) FROM STDIN"
        ]
        assert staged == []
    else:
        assert copies == []
        assert staged == [1252]  # one executemany: the sample is smaller than a batch


def test_a_serial_one_slip_from_a_registered_one_is_suggested(engine: Engine, tmp_path: Path) -> None:
    run(
        engine,
        write(
            tmp_path,
            csv_text(
                "PO-1,A,CSP2402A0100,CSP2402A0149,2024-02-06,2024-03-10,false,1000,25000.00,USD",
                "PO-2,B,CSP2402B0500,,2024-02-06,2024-03-10,false,1000,25000.00,USD",
                "PO-2,B,CSP2403A0777,,2024-03-06,2024-04-10,false,1000,25000.00,USD",
            ),
        ),
    )
    with session_scope(engine) as session:
        near = near_serials(
            session,
            [
                "CSP2402A0100",  # registered: nothing to suggest
                "CSP2402B0050",  # one swap from CSP2402B0500
                "csp2402b5000",  # one edit from it, typed in lower case
                "CSP2402A0150",  # one edit from both CSP2402A0100 and CSP2402A0140 (and more): no one serial
                "CSP2403A0778",  # one edit from CSP2403A0777
                "CSP2404A0777",  # another month: not a slip of CSP2403A0777
                "CSP240_A0777",  # a LIKE wildcard in the prefix matches nothing
            ],
        )
    assert near == {
        "CSP2402B0050": "CSP2402B0500",
        "CSP2402B5000": "CSP2402B0500",
        "CSP2403A0778": "CSP2403A0777",
    }
