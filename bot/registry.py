"""The shipment registry: import the orders-and-serials file (CSV or XLSX) and look serials up in it."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from zipfile import BadZipFile, ZipFile

import openpyxl
from openpyxl.utils.exceptions import InvalidFileException
from rapidfuzz.distance import OSA
from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bot.store.models import RegistryOrder, RegistryUnit
from policy import Policy, SerialRangeError, UnitFacts, expand_range, normalize_serial

COLUMNS = (
    "order_id",
    "customer",
    "serial",
    "serial_to",
    "production_date",
    "port_arrival_date",
    "cargo_compensation",
    "order_pieces",
    "order_total",
    "currency",
)
# A file of single units needs no range column; every other column is required, because a re-import
# writes every column, and a column left out would silently blank what an earlier import stored.
OPTIONAL_COLUMNS = frozenset({"serial_to"})

WRITE_BATCH = 5_000  # rows per executemany: large enough to be fast, small enough for steady progress
SQLITE_IN_LIMIT = 900  # old SQLite builds allow 999 bound parameters per statement
POSTGRES_IN_LIMIT = 10_000  # PostgreSQL allows 65,535; fewer round trips matter more there

_MAX_KEY = 64  # the length of the order_id and serial columns
_MAX_INT4 = 2_147_483_647  # order_pieces is an INTEGER column on PostgreSQL
_MAX_TOTAL = Decimal(10) ** 12  # order_total is NUMERIC(14, 2)
# What an XLSX file may unpack to: a 300,000-row registry is about 60 MB of XML; a zip bomb of 2 MB is
# gigabytes, which openpyxl would read for minutes at a gigabyte of memory. REGISTRY_MAX_UNPACKED_BYTES.
DEFAULT_MAX_UNPACKED_BYTES = 512 * 1024 * 1024
_CENT = Decimal("0.01")

_T = TypeVar("_T")
_ORDERS: Table = RegistryOrder.metadata.tables["registryorder"]
_UNITS: Table = RegistryUnit.metadata.tables["registryunit"]

_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?")
_INTEGER = re.compile(r"\d+")
_AMOUNT = re.compile(r"\d+(?:\.\d+)?")
# A semicolon file saved by a European spreadsheet writes 25000,50; three digits after a comma
# (25,000) would be a thousands separator, so only one or two are read as decimals.
_DECIMAL_COMMA = re.compile(r"\d+,\d{1,2}")
_SERIAL = re.compile(r"[A-Z0-9]+")
_CURRENCY = re.compile(r"[A-Z]{3}")
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0", ""})


class RegistryImportError(Exception):
    """A registry file that was not imported; `errors` lists every problem as (line, message).

    Lines are numbered as a spreadsheet or text editor shows them (the header is line 1); line 0 means
    the file as a whole.
    """

    def __init__(self, errors: Sequence[tuple[int, str]]) -> None:
        # Sorted by line only, so that the problems of one row keep the order of its columns.
        self.errors: list[tuple[int, str]] = sorted(errors, key=lambda error: error[0])
        super().__init__(self.summary())

    @property
    def bad_rows(self) -> int:
        """How many rows have problems (a row with five problems is one bad row; line 0 is no row)."""
        return len({line for line, _ in self.errors if line})

    def counted(self) -> str:
        """`3 bad rows (8 problems)`: rows counted as rows, problems as problems."""
        rows = self.bad_rows
        head = f"{rows} bad row" + ("s" if rows != 1 else "")
        return head + (f" ({len(self.errors)} problems)" if len(self.errors) > rows else "")

    def summary(self) -> str:
        if not self.errors:
            return "the registry file was not imported"
        line, message = self.errors[0]
        first = f"line {line}: {message}" if line else message
        if line == 0 and len(self.errors) == 1:
            return first
        head = self.counted()
        return f"{head}; first: {first}" if len(self.errors) > 1 else f"{head}: {first}"

    def __str__(self) -> str:
        return self.summary()


@dataclass(frozen=True, kw_only=True)
class ImportReport:
    """What an import did: the file's orders and units, and how many of each were new or changed."""

    orders: int
    units: int
    inserted: int
    updated: int
    unchanged: int
    orders_inserted: int
    orders_updated: int


class _Order(NamedTuple):
    customer: str
    cargo_compensation: bool
    order_pieces: int | None
    order_total: Decimal | None
    currency: str | None


class _Unit(NamedTuple):
    order_id: str
    production_date: date | None
    port_arrival_date: date | None


ProgressCallback = Callable[[int, int], None]


def import_registry(
    engine: Engine,
    path: Path,
    *,
    policy: Policy,
    progress: ProgressCallback | None = None,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
) -> ImportReport:
    """Validate the registry file at `path` (CSV or XLSX), then upsert its orders and units in one go.

    Every row is checked before anything is written: one bad row and nothing is imported. A re-import
    updates changed values and adds new rows; orders and units missing from the file are kept.

    `progress(done, total)` counts one step per data row read, then one per unit written, for one bar
    that never goes back: while the file is read, `total` assumes a unit per row (an estimate); once it
    is validated, `total` is exact. Called every few thousand steps and once at the end.

    An XLSX file whose parts unpack to more than `max_unpacked_bytes` is refused before it is read.

    Raises:
        RegistryImportError: the file cannot be read, or has bad rows (all of them are listed).
    """
    with _open(path, max_unpacked_bytes) as (rows, expected_rows):
        meter = _Progress(progress, expected_rows)
        orders, units = _validate(rows, policy, meter)
    return _write(engine, orders, units, meter)


def lookup(session: Session, serials: Iterable[str]) -> dict[str, UnitFacts]:
    """What the registry knows about `serials`, keyed by normalised serial; unknown serials are left out."""
    wanted = sorted({normalize_serial(serial) for serial in serials} - {""})
    found: dict[str, UnitFacts] = {}
    limit = _in_limit(session.get_bind().dialect.name)
    for chunk in _chunks(wanted, limit):
        query = (
            select(
                _UNITS.c.serial,
                _UNITS.c.order_id,
                _UNITS.c.production_date,
                _UNITS.c.port_arrival_date,
                _ORDERS.c.cargo_compensation,
                _ORDERS.c.order_pieces,
                _ORDERS.c.order_total,
                _ORDERS.c.currency,
            )
            .join_from(_UNITS, _ORDERS, _UNITS.c.order_id == _ORDERS.c.order_id)
            .where(_UNITS.c.serial.in_(chunk))
        )
        for row in session.execute(query):
            found[row.serial] = UnitFacts(
                serial=row.serial,
                order_id=row.order_id,
                production_date=row.production_date,
                port_arrival_date=row.port_arrival_date,
                cargo_compensation=bool(row.cargo_compensation),
                order_pieces=row.order_pieces,
                order_total=_as_money(row.order_total),
                currency=row.currency,
            )
    return found


# A typed serial one slip from a registered one ("did you mean …?"): same model and month, one edit or one
# swap of neighbours away, and the only such serial. Candidates are read by the serial's first characters.
_NEAR_PREFIX = 7
_NEAR_CANDIDATES = 5000


def near_serials(session: Session, serials: Iterable[str]) -> dict[str, str]:
    """For each serial the registry lacks, the one registered serial a typo away from it, when there is one."""
    found: dict[str, str] = {}
    for serial in sorted({normalize_serial(s) for s in serials} - {""}):
        if len(serial) <= _NEAR_PREFIX:
            continue
        prefix = serial[:_NEAR_PREFIX]
        rows = session.execute(
            select(_UNITS.c.serial)
            .where(_UNITS.c.serial.like(f"{prefix}%"), _UNITS.c.serial != serial)
            .limit(_NEAR_CANDIDATES)
        ).scalars()
        close = [r for r in rows if OSA.distance(serial, r, score_cutoff=1) <= 1]
        if len(close) == 1:
            found[serial] = close[0]
    return found


# Reading --------------------------------------------------------------------------------------------------

_Row = tuple[int, Sequence[object]]


@contextmanager
def _open(path: Path, max_unpacked_bytes: int) -> Iterator[tuple[Iterator[_Row], int]]:
    """The file's lines as (line number, cells), the header included, and the data rows it seems to hold."""
    try:
        with path.open("rb") as file:
            magic = file.read(8)
    except OSError as error:
        raise RegistryImportError([(0, f"cannot read {path}: {error.strerror or error}")]) from error
    if magic.startswith(b"\xd0\xcf\x11\xe0"):
        raise RegistryImportError(
            [(0, "old Excel .xls files are not supported: save the sheet as .xlsx or CSV")]
        )
    if not magic.startswith(b"PK\x03\x04"):  # not a zip archive, so not XLSX whatever the file is called
        text = _decode(path.read_bytes())
        yield _csv_rows(text), text.count("\n") + (not text.endswith("\n")) - 1
        return
    try:
        _check_unpacked_size(path, max_unpacked_bytes)
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (BadZipFile, InvalidFileException, KeyError, OSError, ValueError) as error:
        raise RegistryImportError([(0, f"not a readable XLSX file: {error}")]) from error
    try:
        sheet: Any = workbook.worksheets[0]
        expected = (sheet.max_row or 1) - 1  # the size the writer stored; None when it stored none
        # Some writers store a wrong size, and read-only mode would cut the rows to it.
        sheet.reset_dimensions()
        # Missing rows come back empty, so counting from 1 gives the row numbers Excel shows.
        yield enumerate(sheet.iter_rows(values_only=True), start=1), expected
    finally:
        workbook.close()


def _check_unpacked_size(path: Path, limit: int) -> None:
    """Refuses an archive whose parts unpack to more than `limit` bytes, before any part is unpacked.

    The sizes are the archive's word, but zipfile holds it to them: a part that unpacks to more than its
    stated size fails its CRC check there, and the reading stops at the stated size.
    """
    with ZipFile(path) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > limit:
        raise RegistryImportError([(0, (
            f"the XLSX file unpacks to {unpacked / 2**20:.0f} MB, more than the {limit / 2**20:.0f} MB allowed "
            "(REGISTRY_MAX_UNPACKED_BYTES): split the registry, or save it as CSV"
        ))])


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # drops the BOM that Excel's "CSV UTF-8" writes
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise RegistryImportError(
            [(line, "the file is not UTF-8 text: save it as CSV UTF-8 (comma or semicolon delimited)")]
        ) from error


def _csv_rows(text: str) -> Iterator[_Row]:
    lines = io.StringIO(text, newline="")
    header = next((line for line in lines if line.strip()), "")
    # Header names hold none of these, so the header line alone tells the delimiter reliably.
    delimiter = max((",", ";", "\t"), key=header.count)
    lines.seek(0)
    reader = csv.reader(lines, delimiter=delimiter)
    end = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise RegistryImportError([(end + 1, f"not readable as CSV: {error}")]) from error
        # A quoted cell may span lines; the row is where it starts, as an editor shows it.
        start, end = end + 1, reader.line_num
        yield start, cells


class _Progress:
    """Feeds the caller's progress callback: a step per data row read, then a step per unit written."""

    EVERY = 5_000

    def __init__(self, callback: ProgressCallback | None, expected_rows: int) -> None:
        self.callback = callback
        self.expected_rows = max(expected_rows, 0)
        self.rows = 0
        self._report(0, 2 * self.expected_rows)

    def row_read(self) -> None:
        self.rows += 1
        if self.rows % self.EVERY == 0:
            # Until the ranges are expanded, one unit a row is the best guess.
            self._report(self.rows, 2 * max(self.expected_rows, self.rows))

    def units_written(self, done: int, total: int) -> None:
        self._report(self.rows + done, self.rows + total)

    def _report(self, done: int, total: int) -> None:
        if self.callback is not None:
            self.callback(done, total)


# Validating -----------------------------------------------------------------------------------------------


class _Bad(ValueError):
    """A cell that cannot be read; the message names what was expected and shows the value."""


def _validate(
    rows: Iterator[_Row], policy: Policy, meter: _Progress
) -> tuple[dict[str, _Order], dict[str, _Unit]]:
    errors: list[tuple[int, str]] = []
    columns: dict[str, int] | None = None
    orders: dict[str, _Order] = {}
    order_lines: dict[str, int] = {}
    units: dict[str, _Unit] = {}
    unit_lines: dict[str, int] = {}
    for line, cells in rows:
        if all(_text(cell) == "" for cell in cells):
            continue
        if columns is None:
            columns = _header(line, cells)
            continue
        meter.row_read()
        problems: list[str] = []
        parsed = _parse_row(cells, columns, policy, problems)
        errors.extend((line, problem) for problem in problems)
        if parsed is None:
            continue
        order_id, order, serials, unit = parsed
        if order_id in orders:
            errors.extend(
                (line, problem)
                for problem in _conflicts(order_id, orders[order_id], order, order_lines[order_id])
            )
        else:
            orders[order_id], order_lines[order_id] = order, line
        repeated = [serial for serial in serials if serial in unit_lines]
        if repeated:
            more = f" ({len(repeated)} serials of this range are listed earlier)" if len(repeated) > 1 else ""
            errors.append(
                (line, f"serial: {repeated[0]} is already listed on line {unit_lines[repeated[0]]}{more}")
            )
        for serial in serials:
            unit_lines.setdefault(serial, line)
            units[serial] = unit
    if columns is None:
        errors.append((0, "the file is empty: expected a header line naming the columns"))
    if errors:
        raise RegistryImportError(errors)
    return orders, units


def _header(line: int, cells: Sequence[object]) -> dict[str, int]:
    columns: dict[str, int] = {}
    problems: list[str] = []
    for index, cell in enumerate(cells):
        # Spreadsheet users write "Order ID" as readily as "order_id".
        name = re.sub(r"[\s-]+", "_", _text(cell).lower())
        if name in columns and name in COLUMNS:
            problems.append(f"column {name} appears twice")
        elif name:
            columns.setdefault(name, index)
    missing = [name for name in COLUMNS if name not in columns and name not in OPTIONAL_COLUMNS]
    if missing:
        problems.insert(
            0,
            f"missing column{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"
            f" (the header must name {', '.join(COLUMNS)})",
        )
    if problems:
        raise RegistryImportError([(line, problem) for problem in problems])
    return columns


def _parse_row(
    cells: Sequence[object], columns: dict[str, int], policy: Policy, problems: list[str]
) -> tuple[str, _Order, list[str], _Unit] | None:
    """Read one data row, adding a message per bad cell to `problems`; None when any cell is bad."""

    def cell(name: str) -> object:
        index = columns.get(name)
        return cells[index] if index is not None and index < len(cells) else None

    def read(name: str, parse: Callable[[object], Any]) -> Any:
        try:
            return parse(cell(name))
        except _Bad as error:
            problems.append(f"{name}: {error}")
            return None

    order_id = read("order_id", _key)
    customer = _text(cell("customer"))
    serial = read("serial", _serial)
    last = read("serial_to", _optional_serial)
    production = read("production_date", _date)
    arrival = read("port_arrival_date", _date)
    order = _Order(
        customer=customer,
        cargo_compensation=read("cargo_compensation", _bool),
        order_pieces=read("order_pieces", _pieces),
        order_total=read("order_total", _money),
        currency=read("currency", _currency),
    )
    if production is not None and arrival is not None and arrival < production:
        # Swapped columns are the likely cause, and they would skew every warranty decision.
        problems.append(
            f"port_arrival_date: {arrival.isoformat()} is before production_date {production.isoformat()}"
        )
    if problems:
        return None
    serials = [serial]
    if last:
        try:
            serials = expand_range(serial, last, policy)
        except SerialRangeError as error:
            problems.append(f"serial_to: {error}")
            return None
    return order_id, order, serials, _Unit(order_id, production, arrival)


def _conflicts(order_id: str, first: _Order, other: _Order, first_line: int) -> list[str]:
    return [
        f"{name}: {_show(new)} differs from line {first_line} for order {order_id} ({_show(old)})"
        for name, old, new in zip(_Order._fields, first, other, strict=True)
        if old != new
    ]


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a spreadsheet keeps numeric ids as floats: 10234.0 means 10234
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value).strip()


def _show(value: object) -> str:
    if isinstance(value, Decimal):
        return f"'{value:.2f}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "empty" if value is None or value == "" else repr(_text(value))


def _key(value: object) -> str:
    text = _text(value)
    if not text:
        raise _Bad("required")
    if len(text) > _MAX_KEY:
        raise _Bad(f"longer than {_MAX_KEY} characters: {text!r}")
    return text


def _serial(value: object) -> str:
    text = _text(value)
    if not text:
        raise _Bad("required")
    serial = normalize_serial(text)
    if not _SERIAL.fullmatch(serial):
        raise _Bad(f"not a serial (letters and digits only; a range ends in serial_to): {text!r}")
    if len(serial) > _MAX_KEY:
        raise _Bad(f"longer than {_MAX_KEY} characters: {text!r}")
    return serial


def _optional_serial(value: object) -> str | None:
    return _serial(value) if _text(value) else None


def _date(value: object) -> date | None:
    if isinstance(value, datetime):  # check first: a datetime is also a date
        return value.date()
    if isinstance(value, date):
        return value
    text = _text(value)
    if not text:
        return None
    match = _DATE.fullmatch(text)
    try:
        if match is None:
            raise ValueError(text)
        return date.fromisoformat(match[1])
    except ValueError:
        raise _Bad(f"not a date (expected YYYY-MM-DD): {text!r}") from None


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Bad(f"not a yes/no value (expected true, false, yes, no, 1 or 0): {_text(value)!r}")


def _pieces(value: object) -> int | None:
    text = _text(value)
    if not text:
        return None
    if not _INTEGER.fullmatch(text) or not 0 < int(text) <= _MAX_INT4:
        raise _Bad(f"not a whole number of pieces: {text!r}")
    return int(text)


def _money(value: object) -> Decimal | None:
    if isinstance(value, float):
        # A spreadsheet cell holds binary floats: 25000.1 arrives as 25000.099999999998545.
        exact = Decimal(repr(value))
        amount = exact.quantize(_CENT)
        if abs(exact - amount) > Decimal("0.000001") or amount < 0 or amount >= _MAX_TOTAL:
            raise _Bad(f"not an amount with at most 2 decimals: {repr(value)!r}")
        return amount
    text = _text(value)
    if not text:
        return None
    if _DECIMAL_COMMA.fullmatch(text):
        text = text.replace(",", ".")
    try:
        if not _AMOUNT.fullmatch(text):
            raise InvalidOperation(text)
        exact = Decimal(text)
        amount = exact.quantize(_CENT)
    except InvalidOperation:
        raise _Bad(f"not an amount (expected e.g. 25000.00): {_text(value)!r}") from None
    if amount != exact:
        raise _Bad(f"more than 2 decimals: {_text(value)!r}")
    if amount >= _MAX_TOTAL:
        raise _Bad(f"too large: {_text(value)!r}")
    return amount


def _currency(value: object) -> str | None:
    text = _text(value).upper()
    if not text:
        return None
    if not _CURRENCY.fullmatch(text):
        raise _Bad(f"not a 3-letter currency code (e.g. USD): {_text(value)!r}")
    return text


def _as_money(value: object) -> Decimal | None:
    # SQLite keeps NUMERIC as an integer or a float; quantizing gives back the 2 places the file had.
    return None if value is None else Decimal(str(value)).quantize(_CENT)


# Writing --------------------------------------------------------------------------------------------------


def _write(
    engine: Engine, orders: dict[str, _Order], units: dict[str, _Unit], meter: _Progress
) -> ImportReport:
    total = len(units)
    meter.units_written(0, total)
    with engine.begin() as connection:
        # Comparing with what is stored first means unchanged rows are not rewritten (no dead tuples on
        # PostgreSQL, a fast no-op re-import) and the report can tell new rows from changed ones.
        stored_orders = _stored(connection, _ORDERS, _Order._fields, list(orders))
        new_orders = [key for key in orders if key not in stored_orders]
        changed_orders = [key for key in orders if key in stored_orders and stored_orders[key] != orders[key]]
        # Orders first: units hold a foreign key to them.
        _upsert(
            connection,
            _ORDERS,
            [{"order_id": key, **orders[key]._asdict()} for key in [*new_orders, *changed_orders]],
        )
        inserted = updated = done = 0
        serials = list(units)
        for batch in _chunks(serials, WRITE_BATCH):
            stored_units = _stored(connection, _UNITS, _Unit._fields, batch)
            rows = []
            for serial in batch:
                unit = units[serial]
                before = stored_units.get(serial)
                if before is None:
                    inserted += 1
                elif before != unit:
                    updated += 1
                else:
                    continue
                rows.append({"serial": serial, **unit._asdict()})
            _upsert(connection, _UNITS, rows)
            done += len(batch)
            meter.units_written(done, total)
    return ImportReport(
        orders=len(orders),
        units=total,
        inserted=inserted,
        updated=updated,
        unchanged=total - inserted - updated,
        orders_inserted=len(new_orders),
        orders_updated=len(changed_orders),
    )


def _stored(
    connection: Connection, table: Table, fields: Sequence[str], keys: Sequence[str]
) -> dict[str, tuple[Any, ...]]:
    """The stored `fields` of the rows of `table` with these primary keys."""
    key = table.primary_key.columns.values()[0]
    columns = [table.c[name] for name in fields]
    found: dict[str, tuple[Any, ...]] = {}
    for chunk in _chunks(keys, _in_limit(connection.dialect.name)):
        for row in connection.execute(select(key, *columns).where(key.in_(chunk))):
            found[row[0]] = tuple(
                _as_money(value) if name == "order_total" else value
                for name, value in zip(fields, row[1:], strict=True)
            )
    return found


def _upsert(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert or update `rows` by primary key, as one executemany per batch."""
    if not rows:
        return
    key = table.primary_key.columns.values()[0].name
    dialect = connection.dialect.name
    if dialect == "postgresql":
        pg = postgresql.insert(table)
        statement: Any = pg.on_conflict_do_update(
            index_elements=[key], set_={name: pg.excluded[name] for name in rows[0] if name != key}
        )
    elif dialect == "sqlite":
        lite = sqlite.insert(table)
        statement = lite.on_conflict_do_update(
            index_elements=[key], set_={name: lite.excluded[name] for name in rows[0] if name != key}
        )
    else:
        raise NotImplementedError(f"the registry import supports SQLite and PostgreSQL, not {dialect}")
    for batch in _chunks(rows, WRITE_BATCH):
        connection.execute(statement, batch)


def _in_limit(dialect: str) -> int:
    return SQLITE_IN_LIMIT if dialect == "sqlite" else POSTGRES_IN_LIMIT


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
