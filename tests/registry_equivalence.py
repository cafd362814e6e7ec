"""Registry files for the equivalence test of the streaming importer (tests/test_registry.py), and the recorder
of what the importer made of them.

The expected results in tests/data/registry-equivalence.json were recorded with the importer before it streamed
(revision 05fe158, which read the whole file, validated it in memory and wrote with executemany), by
`python -m tests.registry_equivalence --record --database sqlite` (and `postgres`) (both gave the same dump). Every
file here is generated deterministically (no randomness): the same bytes each time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
from sqlalchemy import Engine, select
from sqlmodel import SQLModel

from bot.registry import RegistryImportError, import_registry
from bot.store.models import RegistryOrder, RegistryUnit
from policy import default_policy

SAMPLE = Path(__file__).parent / "data" / "registry-sample.csv"
EXPECTED = Path(__file__).parent / "data" / "registry-equivalence.json"
HEADER = [
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
]
POLICY = default_policy()
LETTERS = "ABCDEFGHJK"


def _customer(order: int) -> str:
    names = [
        "Lima Fleet SAC",
        "Andes Tire & Parts, Ltda.",
        'Gulf "Auto" Trading',
        "Nairobi Motor",
        "Café Ágil",
    ]
    return f"{names[order % len(names)]} {order}"


def generated_rows(orders: int = 40, *, changed: bool = False) -> list[list[object]]:
    """Orders of single units and ranges (1 to 300 units), with empty and odd-cased cells as people write them.

    `changed`: the same registry a month later: some arrival dates moved, an order's terms changed, a unit
    moved to another order, and a new order."""
    rows: list[list[object]] = []
    for order in range(orders):
        order_id = f"PO-{24 + order % 3}-{order:04d}"
        month = 1 + order % 12
        letter = LETTERS[order % len(LETTERS)]
        produced = date(2024, month, 1 + order % 20)
        arrived: date | None = produced + timedelta(days=20 + order % 40) if order % 7 else None
        cargo = ["false", "true", "no", "Yes", "0", "1", ""][order % 7]
        pieces: str = "" if order % 11 == 5 else str(10 * (order + 1))
        total = "" if order % 13 == 6 else f"{(order + 1) * 125}.{order % 100:02d}"
        currency = ["USD", "usd", "EUR", "", "BRL"][order % 5]
        if changed and order == 3:
            total, cargo = "999.99", "true"
        number = 100
        for part in range(1 + order % 6):
            size = [1, 1, 50, 300, 7, 120][(order + part) % 6]
            first = f"CSP24{month:02d}{letter}{number:04d}"
            last = f"CSP24{month:02d}{letter}{number + size - 1:04d}" if size > 1 else ""
            if part == 1 and size == 1:
                first = f"csp-24{month:02d}-{letter.lower()}{number:04d}"  # normalised on import
            part_arrived = arrived
            if changed and order % 5 == 2 and part == 0 and arrived is not None:
                part_arrived = arrived + timedelta(days=3)
            moved = changed and order == 8 and part == 0
            rows.append(
                [
                    "PO-24-0001" if moved else order_id,
                    _customer(1) if moved else _customer(order),
                    first,
                    last,
                    (produced + timedelta(days=part)).isoformat(),
                    "" if part_arrived is None else part_arrived.isoformat(),
                    ["0", "true", "no", "Yes", "0", "1", ""][1 % 7] if moved else cargo,
                    "20" if moved else pieces,
                    "250.01" if moved else total,
                    "usd" if moved else currency,
                ]
            )
            number += size + (order % 4)
    if changed:
        rows.append(
            [
                "PO-26-9000",
                "New Customer",
                "CSP2604D0001",
                "CSP2604D0060",
                "2026-04-10",
                "2026-06-01",
                "false",
                "60",
                "18000.00",
                "USD",
            ]
        )
    return rows


def csv_bytes(
    rows: list[list[object]], *, delimiter: str = ",", bom: bool = False, crlf: bool = False
) -> bytes:
    import csv
    import io

    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(HEADER)
    for n, row in enumerate(rows):
        writer.writerow(row)
        if n % 17 == 16:
            out.write("\r\n" if crlf else "\n")  # a blank line, skipped
    return (("\ufeff" if bom else "") + out.getvalue()).encode("utf-8")


def semicolon_rows() -> list[list[object]]:
    """Decimal commas, as a European spreadsheet writes a semicolon file."""
    rows = generated_rows(12)
    for row in rows:
        if isinstance(row[8], str) and row[8]:
            row[8] = row[8].replace(".", ",")
    return rows


def xlsx_file(path: Path, rows: list[list[object]]) -> Path:
    """The rows as a workbook with real dates, booleans and numbers, and a column order of its own."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    order = [9, 2, 3, 0, 1, 4, 5, 6, 7, 8]
    sheet.append([HEADER[i].replace("_", " ").title() for i in order] + ["notes"])
    for n, row in enumerate(rows):
        cells: list[object] = list(row)
        # Real cell types where the text reads as one (a bad value stays the text it was).
        with contextlib.suppress(ValueError):
            cells[4] = datetime.fromisoformat(str(row[4])) if n % 2 else date.fromisoformat(str(row[4]))
        with contextlib.suppress(ValueError):
            cells[5] = date.fromisoformat(str(row[5])) if row[5] else None
        cargo = str(row[6]).lower()
        if n % 3 and cargo in ("true", "yes", "1", "false", "no", "0"):
            cells[6] = cargo in ("true", "yes", "1")
        with contextlib.suppress(ValueError):
            cells[7] = (float(str(row[7])) if n % 2 else int(str(row[7]))) if row[7] else None
        with contextlib.suppress(ValueError):
            cells[8] = float(str(row[8])) if row[8] else None
        sheet.append([cells[i] for i in order] + [f"note {n}" if n % 4 == 0 else None])
    workbook.save(path)
    return path


def bad_rows() -> list[list[object]]:
    """Problems of every kind among good rows: bad cells, conflicting order terms, repeated serials."""
    rows = generated_rows(10)
    rows[2][4] = "2024-02-30"
    rows[3][6] = "maybe"
    rows[5][1] = f"{rows[5][1]} Ltd"  # conflicts with the order's first row
    rows[5][9] = "GBP"
    rows.insert(
        7,
        [
            "PO-99",
            "Multi\nline, customer",
            "CSP2404D0150",
            "",
            "2024-02-10",
            "2024-03-10",
            "false",
            "1",
            "1.00",
            "USD",
        ],
    )  # repeats a serial of the first order; spans two lines
    rows.insert(
        9, ["PO-98", "X", "CSP2404D0390", "CSP2404D0420", "2024-01-01", "2024-01-05", "no", "", "", ""]
    )
    rows.append(
        ["PO-97", "Y", "CSP2402A0200..0210", "", "2024-02-10", "2023-02-10", "1", "ten", "1.001", "US"]
    )
    rows.append(
        ["PO-96", "Z", "CSP2402A0300", "CSP2402A0200", "2024-02-10", "2024-03-01", "0", "3", "3", "EUR"]
    )
    return rows


Scenario = list[tuple[str, Callable[[Path], Path]]]


def _file(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(workdir: Path) -> Path:
        path = workdir / name
        path.write_bytes(data)
        return path

    return make


def scenarios() -> dict[str, Scenario]:
    """Each scenario: files imported in turn into one empty database."""
    return {
        "sample": [("registry-sample.csv", lambda _: SAMPLE)],
        "generated-then-changed": [
            ("generated.csv", _file("generated.csv", csv_bytes(generated_rows()))),
            ("generated.csv again", _file("generated.csv", csv_bytes(generated_rows()))),
            ("changed.csv", _file("changed.csv", csv_bytes(generated_rows(changed=True), crlf=True))),
        ],
        "semicolons-bom-crlf": [
            (
                "semicolons.csv",
                _file("semicolons.csv", csv_bytes(semicolon_rows(), delimiter=";", bom=True, crlf=True)),
            ),
        ],
        "xlsx": [
            ("generated.xlsx", lambda workdir: xlsx_file(workdir / "generated.xlsx", generated_rows(25)))
        ],
        "bad-rows": [
            ("registry-sample.csv", lambda _: SAMPLE),
            ("bad.csv", _file("bad.csv", csv_bytes(bad_rows()))),
            ("bad.xlsx", lambda workdir: xlsx_file(workdir / "bad.xlsx", bad_rows())),
        ],
    }


def dump(engine: Engine) -> dict[str, Any]:
    """The registry as plain values, sorted by key, and a digest of it."""
    orders_table = SQLModel.metadata.tables[str(RegistryOrder.__tablename__)]
    units_table = SQLModel.metadata.tables[str(RegistryUnit.__tablename__)]
    with engine.connect() as connection:
        orders = [
            [
                r.order_id,
                r.customer,
                bool(r.cargo_compensation),
                r.order_pieces,
                None if r.order_total is None else f"{Decimal(str(r.order_total)):.2f}",
                r.currency,
            ]
            for r in connection.execute(select(orders_table).order_by(orders_table.c.order_id))
        ]
        units = [
            [
                r.serial,
                r.order_id,
                None if r.production_date is None else r.production_date.isoformat(),
                None if r.port_arrival_date is None else r.port_arrival_date.isoformat(),
            ]
            for r in connection.execute(select(units_table).order_by(units_table.c.serial))
        ]
    canonical = json.dumps([orders, units], separators=(",", ":")).encode()
    return {"orders": len(orders), "units": len(units), "sha256": hashlib.sha256(canonical).hexdigest()}


def play(engine: Engine, steps: Scenario, workdir: Path) -> list[dict[str, Any]]:
    """Import each file in turn; what each import reported (or its errors) and the registry after it."""
    results: list[dict[str, Any]] = []
    for name, make in steps:
        path = make(workdir)
        try:
            report = import_registry(engine, path, policy=POLICY)
            outcome: dict[str, Any] = {"file": name, "report": vars(report)}
        except RegistryImportError as error:
            outcome = {"file": name, "errors": [list(e) for e in error.errors], "summary": str(error)}
        outcome["registry"] = dump(engine)
        results.append(outcome)
    return results


def record(kind: str) -> dict[str, Any]:  # pragma: no cover - run by hand, see the module's docstring
    import tempfile

    from bench.common import database
    from bot.store import make_engine, upgrade

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, steps in scenarios().items():
            with database(kind, Path(tmp), "equivalence") as url:
                engine = make_engine(url)
                upgrade(engine)
                results[name] = play(engine, steps, Path(tmp))
                engine.dispose()
    return results


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    json.dump(record(args.database), sys.stdout, indent=1, ensure_ascii=False)
    print()
