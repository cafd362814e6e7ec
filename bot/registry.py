"""The shipment registry: import the orders-and-serials file (CSV or XLSX) and look serials up in it."""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar
from zipfile import BadZipFile, ZipFile

import openpyxl
from openpyxl.utils.exceptions import InvalidFileException
from rapidfuzz.distance import OSA
from sqlalchemy import Connection, Engine, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.store.db import after_prefix, write_transaction
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
# A serial written as it is stored: normalising it changes nothing and it is a valid serial as it stands.
_PLAIN_SERIAL = re.compile(rf"[A-Z0-9]{{1,{_MAX_KEY}}}")
_KNOWN_LIMIT = 10_000  # distinct order or date cells remembered while reading (bounded memory)
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

    The file is streamed: its units are staged in a temporary table as they are read (COPY on PostgreSQL,
    executemany batches on SQLite), and merged into the registry once every row is valid, in one
    transaction. One bad row and nothing is imported. A re-import
    updates changed values and adds new rows; orders and units missing from the file are kept.

    `progress(done, total)` counts one step per data row read, then one per unit written, for one bar
    that never goes back: while the file is read, `total` assumes a unit per row (an estimate); once it
    is validated, `total` is exact. Called every few thousand rows read, then as the merge begins and once
    at the end (the merge is two statements over every unit, with nothing to report between them).

    An XLSX file whose parts unpack to more than `max_unpacked_bytes` is refused before it is read.

    Raises:
        RegistryImportError: the file cannot be read, or has bad rows (all of them are listed).
    """
    with _open(path, max_unpacked_bytes) as (rows, expected_rows, text_cells), engine.connect() as connection:
        meter = _Progress(progress, expected_rows)
        try:
            # The file's units go to a temporary table as they are read, a batch at a time, so that memory
            # stays bounded; only the orders (a few per thousand units) are kept in memory.
            with connection.begin(), _Stage(connection) as stage:
                orders = _validate(rows, policy, meter, stage, text_cells=text_cells)
            # Valid as a whole: merge it into the registry in one transaction.
            with write_transaction(connection):
                return _write(connection, orders, stage.units, meter)
        finally:
            _Stage.drop(connection)


# What `lookup` reads, built once (SQLAlchemy caches its compiled form; the list of serials is one parameter).
_LOOKUP = (
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
    .where(_UNITS.c.serial.in_(bindparam("serials", expanding=True)))
)


def lookup(session: Session, serials: Iterable[str]) -> dict[str, UnitFacts]:
    """What the registry knows about `serials`, keyed by normalised serial; unknown serials are left out."""
    wanted = sorted({normalize_serial(serial) for serial in serials} - {""})
    found: dict[str, UnitFacts] = {}
    connection = session.connection()  # Core: the ORM adds nothing to a read of plain rows
    for chunk in _chunks(wanted, _in_limit(connection.dialect.name)):
        for row in connection.execute(_LOOKUP, {"serials": list(chunk)}):
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
        # A range of the serial's index, not LIKE 'prefix%': SQLite's LIKE (case-insensitive) and PostgreSQL's
        # (outside the C collation) read every unit instead, 80 ms a lookup at a million units.
        rows = session.execute(
            select(_UNITS.c.serial)
            .where(
                _UNITS.c.serial >= prefix, _UNITS.c.serial < after_prefix(prefix), _UNITS.c.serial != serial
            )
            .limit(_NEAR_CANDIDATES)
        ).scalars()
        close = [r for r in rows if r.startswith(prefix) and OSA.distance(serial, r, score_cutoff=1) <= 1]
        if len(close) == 1:
            found[serial] = close[0]
    return found


# Reading --------------------------------------------------------------------------------------------------

_Row = tuple[int, Sequence[object]]


@contextmanager
def _open(path: Path, max_unpacked_bytes: int) -> Iterator[tuple[Iterator[_Row], int, bool]]:
    """The file's lines as (line number, cells), the header included, the data rows it seems to hold, and
    whether every cell is text (CSV) rather than a spreadsheet's typed values."""
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
        expected = _count_rows(path)
        with path.open("rb") as raw:
            rows = _csv_rows(raw)
            try:
                yield rows, expected, True
            finally:
                rows.close()  # before the file: the reader lets go of it first
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
        yield enumerate(sheet.iter_rows(values_only=True), start=1), expected, False
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
        raise RegistryImportError(
            [
                (
                    0,
                    (
                        f"the XLSX file unpacks to {unpacked / 2**20:.0f} MB, more than the {limit / 2**20:.0f} MB allowed "
                        "(REGISTRY_MAX_UNPACKED_BYTES): split the registry, or save it as CSV"
                    ),
                )
            ]
        )


_CHUNK = 1 << 20


def _count_rows(path: Path) -> int:
    """The data rows a CSV file seems to hold (its lines less the header), counted without decoding it."""
    lines, last = 0, b"\n"
    with path.open("rb") as raw:
        while chunk := raw.read(_CHUNK):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n") - 1


def _csv_rows(raw: BinaryIO) -> Generator[_Row, None, None]:
    """The rows of a CSV file, decoded as they are read (the BOM of Excel's "CSV UTF-8" dropped)."""
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    try:
        header = next((line for line in text if line.strip()), "")
        # Header names hold none of these, so the header line alone tells the delimiter reliably.
        delimiter = max((",", ";", "\t"), key=header.count)
        text.seek(0)
        reader = csv.reader(text, delimiter=delimiter)
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
    except UnicodeDecodeError as error:
        raise RegistryImportError(
            [
                (
                    _undecodable_line(raw),
                    "the file is not UTF-8 text: save it as CSV UTF-8 (comma or semicolon delimited)",
                )
            ]
        ) from error
    finally:
        text.detach()  # the caller closes the file


def _undecodable_line(raw: BinaryIO) -> int:
    """The first line that is not UTF-8 (a newline byte is never part of a UTF-8 character, so line by line
    finds the same place as decoding the whole file)."""
    raw.seek(0)
    for number, line in enumerate(raw, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return 0


class _Progress:
    """Feeds the caller's progress callback: a step per data row read, then a step per unit written."""

    EVERY = 5_000

    def __init__(self, callback: ProgressCallback | None, expected_rows: int) -> None:
        self.callback = callback
        self.expected_rows = max(expected_rows, 0)
        self.rows = 0
        self._report(0, 2 * self.expected_rows)

    def row_read(self, count: int = 1) -> None:
        self.rows += count
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
    rows: Iterator[_Row], policy: Policy, meter: _Progress, stage: _Stage, *, text_cells: bool
) -> dict[str, _Order]:
    """Read and check every row, staging each unit; the file's orders, or every problem of the file raised.

    `text_cells` (a CSV file): a row whose order cells and date cells are the very text of a row already
    read, and whose serial is plain, needs no parsing again. A registry repeats its order's five values and
    its batches' dates on thousands of rows, so most rows take the short way; every other row, and every row
    of a spreadsheet (whose typed cells 1, 1.0 and True look alike as keys), is read cell by cell.
    """
    errors: list[tuple[int, str]] = []
    columns: dict[str, int] | None = None
    orders: dict[str, _Order] = {}
    order_lines: dict[str, int] = {}
    known_orders: dict[tuple[object, ...], str] = {}  # order cells as written -> order id, when valid
    known_dates: dict[tuple[object, object], tuple[str | None, str | None]] = {}
    order_cells: tuple[int, ...] = ()
    serial_at = serial_to_at = production_at = arrival_at = width = 0
    order_key: Callable[[Sequence[object]], Any] = itemgetter(0)
    date_key: Callable[[Sequence[object]], Any] = itemgetter(0)
    batch = stage.batch
    for line, cells in rows:
        if text_cells and columns is not None and len(cells) >= width:
            serial = cells[serial_at]
            if (serial_to_at < 0 or not cells[serial_to_at]) and _PLAIN_SERIAL.fullmatch(serial):  # type: ignore[call-overload]
                order_id = known_orders.get(order_key(cells))
                dates = known_dates.get(date_key(cells))
                if order_id is not None and dates is not None:
                    # stage.add and meter.row_read, inline: this is the loop's hot path.
                    batch.append((stage.units, serial, order_id, dates[0], dates[1], line))  # type: ignore[arg-type]
                    stage.units += 1
                    if len(batch) >= WRITE_BATCH:
                        stage.flush()
                    meter.rows += 1
                    if meter.rows % meter.EVERY == 0:
                        meter.row_read(0)
                    continue
        if all(_text(cell) == "" for cell in cells):
            continue
        if columns is None:
            columns = _header(line, cells)
            order_cells = tuple(columns[name] for name in ("order_id", *_Order._fields))
            serial_at, production_at, arrival_at = (
                columns[name] for name in ("serial", "production_date", "port_arrival_date")
            )
            serial_to_at = columns.get("serial_to", -1)
            width = max(*order_cells, serial_at, serial_to_at, production_at, arrival_at) + 1
            order_key, date_key = itemgetter(*order_cells), itemgetter(production_at, arrival_at)
            continue
        meter.row_read()
        problems: list[str] = []
        parsed = _parse_row(cells, columns, policy, problems)
        errors.extend((line, problem) for problem in problems)
        if parsed is None:
            continue
        order_id, order, serials, unit = parsed
        if order_id in orders:
            conflicts = _conflicts(order_id, orders[order_id], order, order_lines[order_id])
            errors.extend((line, problem) for problem in conflicts)
        else:
            orders[order_id], order_lines[order_id], conflicts = order, line, []
        production = None if unit.production_date is None else unit.production_date.isoformat()
        arrival = None if unit.port_arrival_date is None else unit.port_arrival_date.isoformat()
        for serial in serials:
            stage.add(serial, order_id, production, arrival, line)
        if text_cells and len(cells) >= width:
            if not conflicts:
                if len(known_orders) >= _KNOWN_LIMIT:
                    known_orders.clear()
                known_orders[order_key(cells)] = order_id
            if len(known_dates) >= _KNOWN_LIMIT:
                known_dates.clear()
            known_dates[date_key(cells)] = (production, arrival)
    if columns is None:
        errors.append((0, "the file is empty: expected a header line naming the columns"))
    stage.finish()
    # Problems are sorted by line (stably) when raised, so a row's repeated serial follows its other problems.
    errors.extend(stage.repeats())
    if errors:
        raise RegistryImportError(errors)
    return orders


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


class _Stage:
    """The file's units in a temporary table of the import's connection, written a batch at a time as the
    file is read: through COPY on PostgreSQL (psycopg's copy API), executemany on SQLite. Nothing else sees
    it; `_write` merges it into the registry. `n` numbers the units in file order."""

    TABLE = "registry_import_stage"
    COLUMNS = ("n", "serial", "order_id", "production_date", "port_arrival_date", "line")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.postgres = connection.dialect.name == "postgresql"
        if connection.dialect.name not in ("postgresql", "sqlite"):
            raise NotImplementedError(
                f"the registry import supports SQLite and PostgreSQL, not {connection.dialect.name}"
            )
        self.units = 0
        self.batch: list[tuple[int, str, str, str | None, str | None, int]] = []
        self._copy: Any = None  # psycopg's Copy, while the COPY is open
        self._copying: Any = None
        self._cursor: Any = None
        self.drop(connection)
        if self.postgres:
            connection.exec_driver_sql(
                f"CREATE TEMPORARY TABLE {self.TABLE} (n bigint NOT NULL, serial varchar(64) NOT NULL, "
                "order_id varchar(64) NOT NULL, production_date date, port_arrival_date date, line integer NOT NULL)"
            )
            self._cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            self._copying = self._cursor.copy(f"COPY {self.TABLE} ({', '.join(self.COLUMNS)}) FROM STDIN")
            self._copy = self._copying.__enter__()
        else:
            connection.exec_driver_sql(
                f"CREATE TEMPORARY TABLE {self.TABLE} (n INTEGER PRIMARY KEY, serial TEXT NOT NULL, "
                "order_id TEXT NOT NULL, production_date TEXT, port_arrival_date TEXT, line INTEGER NOT NULL)"
            )

    def __enter__(self) -> _Stage:
        return self

    def __exit__(self, *failure: Any) -> None:
        # A COPY still open holds the connection: end it (with the failure, which aborts it) before the
        # transaction is rolled back.
        if self._copy is not None:
            self._copy = None
            self._copying.__exit__(*failure)
            self._cursor.close()

    def add(self, serial: str, order_id: str, production: str | None, arrival: str | None, line: int) -> None:
        self.batch.append((self.units, serial, order_id, production, arrival, line))
        self.units += 1
        if len(self.batch) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        if self.postgres:
            write = self._copy.write_row
            for row in self.batch:
                write(row)
        else:
            self.connection.exec_driver_sql(
                f"INSERT INTO {self.TABLE} VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
                self.batch,
            )
        self.batch.clear()  # the same list: `_validate` appends to it

    def finish(self) -> None:
        """Every unit is staged: end the COPY, and let the planner know the table's size."""
        self.flush()
        if self.postgres:
            self.__exit__(None, None, None)
            # Statistics for the plans of `repeats` and of the merge: hash joins over the whole stage.
            self.connection.exec_driver_sql(f"ANALYZE {self.TABLE}")

    def repeats(self) -> list[tuple[int, str]]:
        """A problem for each row that lists serials an earlier row listed, as the first of them names."""
        # A unique index of the stage's serials, built with one sort, tells whether any serial repeats, and the
        # merge then reads the stage in serial order through it instead of sorting it again. Only when one
        # repeats (the build fails, and its savepoint is rolled back) does the query below name them.
        try:
            with self.connection.begin_nested():
                self.connection.exec_driver_sql(
                    f"CREATE UNIQUE INDEX {self.TABLE}_serial ON {self.TABLE} (serial)"
                )
            return []
        except IntegrityError:
            pass
        if self.postgres:
            # Grouping a million serials by sorting them takes 0.45 s of the server's CPU where the hash
            # aggregate it would choose, spilling to disk within work_mem, takes 0.8 s (EXPLAIN ANALYZE).
            # For this query only: SET LOCAL ends with the validating transaction.
            self.connection.exec_driver_sql("SET LOCAL enable_hashagg = off")
        found = self.connection.exec_driver_sql(
            f"SELECT s.line, s.serial, f.first FROM {self.TABLE} s JOIN (SELECT serial, MIN(line) AS first "  # noqa: S608
            f"FROM {self.TABLE} GROUP BY serial HAVING COUNT(*) > 1) f ON f.serial = s.serial "
            "WHERE s.line > f.first ORDER BY s.n"
        )
        rows: dict[int, list[tuple[str, int]]] = {}
        for line, serial, first in found:
            rows.setdefault(line, []).append((serial, first))
        problems = []
        for line, repeated in rows.items():
            serial, first = repeated[0]
            more = f" ({len(repeated)} serials of this range are listed earlier)" if len(repeated) > 1 else ""
            problems.append((line, f"serial: {serial} is already listed on line {first}{more}"))
        return problems

    @classmethod
    def drop(cls, connection: Connection) -> None:
        if connection.invalidated or connection.closed:
            return
        with connection.begin() if not connection.in_transaction() else contextlib.nullcontext():
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {cls.TABLE}")


def _write(connection: Connection, orders: dict[str, _Order], total: int, meter: _Progress) -> ImportReport:
    """Merge the staged units and the orders into the registry (in the caller's transaction).

    The units are merged by two set statements over the whole stage: an UPDATE of the stored units whose
    values differ, then a plain INSERT of the units not stored yet, in serial order. Their row counts are the
    report's changed and new units. For a million new units on PostgreSQL that is 5 s of the server's CPU,
    where one `INSERT ... ON CONFLICT DO UPDATE` took 6.5 s (it confirms each speculative insertion with a WAL
    record of its own) and the same in chunks of 5,000, each with a query counting its new units, 13 s (the
    chunks' plans probe the registry a unit at a time). Each statement's units are checked against their
    orders once, set-based, by the statement triggers of migration 0007 (PostgreSQL's own foreign key ran a
    query a unit: 3 s of the server's 6 s for a million new units); their transition table is kept in
    work_mem and then in a temporary file of the server.
    """
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        # The INSERT below expects no other writer to add a serial between its check and its insertion. The
        # importer is the registry's only writer, and this lock makes a second import wait for the first to
        # commit (SQLite's writer lock does that there); readers pass it, so the bot's lookups go on.
        connection.exec_driver_sql("LOCK TABLE registryunit IN SHARE ROW EXCLUSIVE MODE")
    meter.units_written(0, total)
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
    differs = "IS DISTINCT FROM" if postgres else "IS NOT"
    stage = _Stage.TABLE
    fields = ("order_id", "production_date", "port_arrival_date")
    changed = " OR ".join(f"registryunit.{name} {differs} s.{name}" for name in fields)
    # Only constants are formatted into these statements (the stage's name, column names, an operator).
    updated = connection.exec_driver_sql(
        f"UPDATE registryunit SET {', '.join(f'{name} = s.{name}' for name in fields)} "  # noqa: S608
        f"FROM {stage} s WHERE registryunit.serial = s.serial AND ({changed})"
    ).rowcount
    # In serial order, the registry's primary key grows at its end instead of at random pages.
    inserted = connection.exec_driver_sql(
        f"INSERT INTO registryunit (serial, {', '.join(fields)}) SELECT s.serial, "  # noqa: S608
        f"{', '.join(f's.{name}' for name in fields)} FROM {stage} s "
        "WHERE NOT EXISTS (SELECT 1 FROM registryunit u WHERE u.serial = s.serial) ORDER BY s.serial"
    ).rowcount
    meter.units_written(total, total)
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
