"""The `warranty-bot` command line: policy checks, database and registry chores, console chat, the server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from typer.exceptions import TyperException

from bot.config import Role, Settings, get_settings
from policy import (
    ClaimError,
    Policy,
    PolicyFileError,
    claim_from_json,
    claims_from_json,
    decision_to_json,
    default_policy,
    evaluate,
    evaluate_units,
    load_policy,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from bot.registry import ImportReport

app = typer.Typer(
    help="After-sales warranty bot: policy checks, registry import, console chat and the server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(
    help="The warranty policy: check a claim, show the rules in force.", no_args_is_help=True
)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
registry_app = typer.Typer(
    help="The shipment registry (serial -> order, production and port-arrival dates).", no_args_is_help=True
)
outbox_app = typer.Typer(help="Messages waiting to leave, and dead letters.", no_args_is_help=True)
inbox_app = typer.Typer(help="Inbound messages, and those parked after failing.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(db_app, name="db")
app.add_typer(registry_app, name="registry")
app.add_typer(outbox_app, name="outbox")
app.add_typer(inbox_app, name="inbox")

PolicyOption = Annotated[
    Path | None,
    typer.Option("--policy", help="Policy file (TOML); default: POLICY_FILE or the packaged one."),
]


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit status 2."""
    typer.echo(f"warranty-bot: {message}", err=True)
    raise typer.Exit(2)


def settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as error:
        first = error.errors()[0]
        fail(
            f"bad setting {'.'.join(str(p) for p in first['loc']).upper()}: {first['msg']} (check .env or the environment)"
        )


def _policy(path: Path | None) -> Policy:
    try:
        if path is not None:
            return load_policy(path)
        configured = settings().policy_file
        return load_policy(configured) if configured else default_policy()
    except PolicyFileError as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot read policy file: {error.strerror}: {error.filename}")


# --- policy ---------------------------------------------------------------------------------------------


@policy_app.command("check")
def policy_check(
    file: Annotated[
        str, typer.Argument(help="Claim as JSON (the contract of docs/policy.md); '-' reads standard input.")
    ] = "-",
    policy_file: PolicyOption = None,
    language: Annotated[str, typer.Option(help="Language of the reasons.")] = "en",
) -> None:
    """Evaluate a claim (or an array of the units of one claim) and print the decision(s) as JSON."""
    policy = _policy(policy_file)
    try:
        raw = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as error:
        fail(f"cannot read {file}: {error.strerror}")
    except UnicodeDecodeError:
        fail(f"{file} is not UTF-8 text")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        fail(f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}")
    output: object
    try:
        if isinstance(data, list):
            # The units of one claim, decided together: their `units` is the number of covered ones (M5).
            decisions = evaluate_units(claims_from_json(data), policy)
            output = [decision_to_json(d, policy, language) for d in decisions]
        else:
            output = decision_to_json(evaluate(claim_from_json(data), policy), policy, language)
    except ClaimError as error:
        fail(f"bad claim: {error}")
    typer.echo(json.dumps(output, ensure_ascii=False, indent=2))


@policy_app.command("show")
def policy_show(policy_file: PolicyOption = None) -> None:
    """Print the policy in force, clause by clause."""
    policy = _policy(policy_file)
    typer.echo(f"{policy.name}")
    typer.echo(
        f"  warranty term: {policy.term_months} months; without proof of purchase it starts at the production "
        f"date + {policy.serial_fallback_offset_months} month(s)"
    )
    typer.echo(f"  serial pattern: {policy.serial_pattern.pattern}")
    typer.echo(
        f"  discount compensation from {policy.discount_min_units} covered units: "
        f"{policy.discount_rate * 100:.0f}% of the order total; cargo compensation {policy.cargo_rate * 100:.0f}% of pieces"
    )
    typer.echo("")
    for clause in policy.clauses.values():
        typer.echo(f"{clause.id}  {clause.title}")
        typer.echo(f"    {clause.summary}")


# --- database and registry -------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the database schema (DATABASE_URL)."""
    from bot.store import make_engine, upgrade

    url = settings().database_url
    try:
        upgrade(make_engine(url))
    except Exception as error:  # a connection or permission problem: say it in one line
        fail(f"cannot upgrade the database: {type(error).__name__}: {str(error).splitlines()[0]}")
    typer.echo("database is up to date")


@registry_app.command("import")
def registry_import(
    file: Annotated[
        Path, typer.Argument(help="CSV or XLSX with the registry header (see docs/registry.md).")
    ],
) -> None:
    """Import or update the shipment registry from a CSV or XLSX file (idempotent)."""
    from bot.store import make_engine, upgrade

    if not file.is_file():
        fail(f"no such file: {file}")
    current = settings()
    engine = make_engine(current.database_url)
    upgrade(engine)
    result = _import_registry(engine, file, str(file), current)
    typer.echo(f"imported {file}:")
    typer.echo(_import_table(result))


def _import_registry(engine: Engine, file: Path, name: str, current: Settings) -> ImportReport:
    """Import with a progress bar; a refused file is its problems on stderr and exit status 2."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from bot.registry import RegistryImportError, import_registry

    policy = _policy(None)
    # The bar goes to a terminal's stderr only, so stdout is just the result and a pipe gets no blank lines.
    console = Console(stderr=True)
    with Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("rows", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            return import_registry(
                engine,
                file,
                policy=policy,
                progress=report,
                max_unpacked_bytes=current.registry_max_unpacked_bytes,
            )
        except RegistryImportError as error:
            progress.stop()
            for line, message in error.errors[:20]:
                typer.echo(f"{name}:{line}: {message}", err=True)
            if len(error.errors) > 20:
                typer.echo(f"... and {len(error.errors) - 20} more problems", err=True)
            if not error.bad_rows:  # the file as a whole
                fail(f"{name}: {error.summary()}; nothing was imported")
            fail(f"{error.counted()} in {name}; nothing was imported")


def _import_table(result: ImportReport) -> str:
    """What an import did, as a short table: the file's orders and units, new, updated and unchanged."""
    orders_unchanged = result.orders - result.orders_inserted - result.orders_updated
    rows = [
        ("", "in file", "new", "updated", "unchanged"),
        ("orders", result.orders, result.orders_inserted, result.orders_updated, orders_unchanged),
        ("units", result.units, result.inserted, result.updated, result.unchanged),
    ]
    return "\n".join(f"  {name:<8}" + "".join(f"{value:>11}" for value in values) for name, *values in rows)


@app.command("demo")
def demo(
    if_empty: Annotated[
        bool, typer.Option("--if-empty", help="Only when the registry is empty (what `make run` does).")
    ] = False,
) -> None:
    """Load a demo registry dated from today, and list serials to try: covered, expired, a distributor's, cargo."""
    import tempfile

    from sqlalchemy import func, select
    from sqlmodel import Session, col

    from bot.demo import DEMO_PREFIX, demo_csv, demo_orders, demo_outcome
    from bot.store import RegistryUnit, make_engine, upgrade
    from bot.store.clock import utcnow

    current = settings()
    engine = make_engine(current.database_url)
    try:
        upgrade(engine)
    except Exception as error:  # a connection or permission problem: say it in one line
        fail(f"cannot open the database: {type(error).__name__}: {str(error).splitlines()[0]}")
    if if_empty:
        # A registry of the demo's own orders only is loaded again (dated from today); a real one is left alone.
        with Session(engine) as session:
            others = session.execute(
                select(func.count())
                .select_from(RegistryUnit)
                .where(~col(RegistryUnit.order_id).startswith(DEMO_PREFIX))
            ).scalar_one()
        if others:
            typer.echo(
                f"The registry holds {others} units; the demo registry is not loaded (`warranty-bot demo` adds it)."
            )
            return
    today = utcnow().date()
    orders = demo_orders(today)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "demo-registry.csv"
        path.write_text(demo_csv(orders), encoding="utf-8")
        result = _import_registry(engine, path, "the demo registry", current)
    policy = _policy(None)
    typer.echo(
        f"Loaded the demo registry, dated from {today.isoformat()}: {result.orders} orders, {result.units} units."
    )
    typer.echo(
        f"Try these in the web chat (http://{current.host}:{current.port}/), each with a fault such as "
        '"the display shows E07":'
    )
    width = max(len(o.typed) for o in orders)
    for o in orders:
        typer.echo(f"  {o.key:<12} {o.typed:<{width}}  {demo_outcome(o, today, policy)}")


# --- outbox -----------------------------------------------------------------------------------------------


@outbox_app.command("list")
def outbox_list(
    status: Annotated[
        str,
        typer.Option(
            help="dead (dead letters, also those a channel reported failed), pending, held or sent."
        ),
    ] = "dead",
) -> None:
    """List outbox rows by status (dead letters by default)."""
    from sqlalchemy import select
    from sqlmodel import Session, col

    from bot.outbox import DEAD_LETTERS, STATUSES
    from bot.store import OutboxItem, make_engine, upgrade

    if status not in STATUSES:
        fail(f"--status must be one of {', '.join(STATUSES)}")
    wanted = DEAD_LETTERS if status == "dead" else (status,)
    engine = make_engine(settings().database_url)
    upgrade(engine)
    with Session(engine) as session:
        rows = (
            session.execute(
                select(OutboxItem).where(col(OutboxItem.status).in_(wanted)).order_by(col(OutboxItem.id))
            )
            .scalars()
            .all()
        )
    for row in rows:
        typer.echo(
            f"{row.id}\t{row.channel}\t{row.status}\t{row.attempts} attempts\t{row.created_at:%Y-%m-%d %H:%M}\t{row.last_error or ''}"
        )
    typer.echo(f"{len(rows)} {status} message(s)", err=True)


@outbox_app.command("retry")
def outbox_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Row ids; none retries every dead row.")] = None,
) -> None:
    """Put dead letters back in the queue; the running server sends them."""
    from bot.outbox import retry_dead
    from bot.store import make_engine, upgrade

    engine = make_engine(settings().database_url)
    upgrade(engine)
    typer.echo(f"{retry_dead(engine, ids or None)} message(s) queued again")


# --- inbox ------------------------------------------------------------------------------------------------


@inbox_app.command("list")
def inbox_list(
    status: Annotated[
        str, typer.Option(help="parked (also rows an earlier version marked failed), pending or done.")
    ] = "parked",
) -> None:
    """List inbound messages by status (parked ones by default): id, channel, status, failures, error."""
    from sqlalchemy import select
    from sqlmodel import Session, col

    from bot.engine import STOPPED
    from bot.store import InboxItem, make_engine, upgrade

    if status not in ("parked", "pending", "done"):
        fail("--status must be one of parked, pending, done")
    wanted = STOPPED if status == "parked" else (status,)
    engine = make_engine(settings().database_url)
    upgrade(engine)
    with Session(engine) as session:
        rows = (
            session.execute(
                select(InboxItem).where(col(InboxItem.status).in_(wanted)).order_by(col(InboxItem.id))
            )
            .scalars()
            .all()
        )
    for row in rows:
        typer.echo(
            f"{row.id}\t{row.channel}\t{row.status}\t{row.attempts} failures\t{row.received_at:%Y-%m-%d %H:%M}\t{row.error or ''}"
        )
    typer.echo(f"{len(rows)} {status} message(s)", err=True)


@inbox_app.command("retry")
def inbox_retry(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Row ids; none re-drives every parked message.")
    ] = None,
) -> None:
    """Process parked messages again, each before the later messages of its chat; the running server does it."""
    from bot.engine import retry_parked
    from bot.store import make_engine, upgrade

    engine = make_engine(settings().database_url)
    upgrade(engine)
    typer.echo(f"{retry_parked(engine, ids or None)} message(s) queued again")


# --- report ---------------------------------------------------------------------------------------------


@app.command("report")
def report(
    start: Annotated[
        str | None,
        typer.Option("--from", help="First day, YYYY-MM-DD (UTC); default: the first of --to's month."),
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Last day, included, YYYY-MM-DD; default: today.")
    ] = None,
    csv_file: Annotated[
        str | None,
        typer.Option(
            "--csv", metavar="FILE|-", help="Write the report as CSV to FILE ('-': standard output)."
        ),
    ] = None,
) -> None:
    """Claims and units by model, batch, fault cause, outcome and clause, channel and language; response
    times; CSAT; repairs and discounts: for the cases opened in the period (docs/reports.md)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from bot.report import PeriodError, build_report, parse_period, to_csv
    from bot.store import make_engine, upgrade
    from bot.store.clock import utcnow

    now = utcnow()
    try:
        period = parse_period(start, end, today=now.date())
    except PeriodError as error:
        fail(str(error))
    policy = _policy(None)
    engine = make_engine(settings().database_url)
    try:
        upgrade(engine)
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), transient=True, console=Console(stderr=True)
        ) as progress:
            progress.add_task(f"counting the cases opened {period}", total=None)
            result = build_report(engine, period, policy=policy, now=now)
    except Exception as error:  # the database cannot be read: one line, not a traceback
        fail(f"cannot read the database: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
    finally:
        engine.dispose()
    if csv_file == "-":
        sys.stdout.write(to_csv(result))
        return
    if csv_file is not None:
        try:
            Path(csv_file).write_text(to_csv(result), encoding="utf-8", newline="")
        except OSError as error:
            fail(f"cannot write {csv_file}: {error.strerror}")
        typer.echo(f"wrote {csv_file}: {result.claims} claims, {result.units} units, {period}", err=True)
        return
    _print_report(result)


def _print_report(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from bot.report import TIME_NAMES, hours_text

    console = Console(highlight=False)
    console.print(
        f"[bold]Warranty report[/bold] {result.period}: {result.claims} claims, {result.units} units"
    )

    def groups(title: str, rows: Any, *names: str) -> None:
        if not rows:
            return
        table = Table(title=title, title_justify="left")
        for name in names:
            table.add_column(name)
        table.add_column("claims", justify="right")
        table.add_column("units", justify="right")
        for row in rows:
            table.add_row(*row.key, str(row.claims), str(row.units))
        console.print(table)

    groups("By model", result.by_model, "model")
    groups("By production month", result.by_month, "month")
    if result.by_batch:
        table = Table(title="By batch (model + production month)", title_justify="left")
        for name, justify in (
            ("model", "left"),
            ("month", "left"),
            ("claims", "right"),
            ("units", "right"),
            ("units sold", "right"),
            ("claimed/sold", "right"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for batch in result.by_batch:
            table.add_row(
                batch.model,
                batch.month,
                str(batch.claims),
                str(batch.units),
                "–" if batch.units_sold is None else str(batch.units_sold),
                "–" if batch.rate is None else f"{batch.rate:.2%}",
            )
        console.print(table)
    groups("By fault cause", result.by_cause, "cause")
    groups("By unit outcome", result.by_outcome, "outcome")
    groups("By outcome and clause", result.by_clause, "outcome", "clause")
    groups("By service method", result.by_method, "method")
    groups("By channel", result.by_channel, "channel")
    groups("By language", result.by_language, "language")
    table = Table(title="Time from the case's opening", title_justify="left")
    for name, justify in (
        ("to", "left"),
        ("cases", "right"),
        ("median", "right"),
        ("90th percentile", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for d in result.times:
        table.add_row(TIME_NAMES[d.name], str(d.count), hours_text(d.median_hours), hours_text(d.p90_hours))
    console.print(table)
    average = "–" if result.csat_average is None else f"{result.csat_average:.2f} of 5"
    console.print(f"CSAT: {average} from {result.csat_count} rating(s)")
    groups("Units repaired (covered units by method)", result.units_repaired, "method")
    for money in result.discounts:
        console.print(f"Discount credited: {money.amount:.2f} {money.currency} on {money.claims} claim(s)")
    for alert in result.alerts:
        console.print(f"{alert.at[:16]}  {alert.text()}")


# --- credits ----------------------------------------------------------------------------------------------


@app.command("credits")
def credits_list(
    company: Annotated[
        str | None, typer.Option(help="Only this company's credits (part of the registry's customer name).")
    ] = None,
    csv: Annotated[bool, typer.Option("--csv", help="CSV with a header instead of aligned columns.")] = False,
) -> None:
    """Discount compensation (M5) credited against orders, newest first: for the sales team's next order."""
    import csv as csv_module
    import sys

    from bot.app import build

    if company is not None and not company.strip():
        fail("--company must not be empty")
    bot = build(settings())
    rows = bot.desk.credits(company=company)
    fields = ("created_at", "company", "order_id", "amount", "currency", "case_ref", "goodwill", "granted_by")
    if csv:
        writer = csv_module.writer(sys.stdout)
        writer.writerow(fields)
        for row in rows:
            writer.writerow([row[f] if f != "created_at" else row[f][:10] for f in fields])
    else:
        for row in rows:
            typer.echo(
                f"{row['created_at'][:10]}\t{row['company'] or '-'}\t{row['order_id']}\t{row['amount']} "
                f"{row['currency'] or ''}\t{row['case_ref']}{' (goodwill)' if row['goodwill'] else ''}\t{row['granted_by']}"
            )
    typer.echo(f"{len(rows)} credit(s)", err=True)


# --- chat and serve ---------------------------------------------------------------------------------------


@app.command("chat")
def chat(
    name: Annotated[str, typer.Option(help="Your name as the engineers see it.")] = "Console customer",
) -> None:
    """Talk to the bot in the terminal, through the same engine as every channel."""
    from adapters.console import run_console

    run_console(settings(), name=name)


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (PORT).")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes that process the inbox beside the web front; more than one only on "
            "PostgreSQL.",
        ),
    ] = 1,
    no_worker: Annotated[
        bool,
        typer.Option("--no-worker", help="Start no worker: run `warranty-bot worker` elsewhere."),
    ] = False,
) -> None:
    """Run the bot: web chat, local desk and every configured channel on one port, and its worker."""
    from bot.server import run_server

    current = settings()
    if workers > 1 and not no_worker and current.database_url.startswith("sqlite"):
        fail("SQLite has one writer: run one worker (--workers 1), or use PostgreSQL for more")
    try:
        run_server(
            current, host=host or current.host, port=port or current.port, workers=0 if no_worker else workers
        )
    except ValueError as error:  # a channel refused its settings (e.g. a webhook without a secret)
        fail(f"cannot start: {error}")


@app.command("worker")
def worker(
    attached: Annotated[
        bool,
        typer.Option("--attached", hidden=True, help="Started by serve: wake-ups over stdin and stdout."),
    ] = False,
    role: Annotated[
        Role,
        typer.Option("--role", hidden=True, help="Started by serve: process, deliver, or both."),
    ] = Role.both,
) -> None:
    """Process the inbox and deliver the outbox (no web front): one beside `serve --no-worker`, or more on
    PostgreSQL.

    Stops after the transaction and the sends under way on SIGTERM or Ctrl-C; killed at any moment, it loses
    nothing.
    """
    from bot.worker import run_worker

    run_worker(settings(), attached=attached, role=role)


def main() -> None:
    """The console script: usage mistakes, like bad input, are one line on stderr and exit status 2."""
    try:
        code = app(standalone_mode=False)
    except TyperException as error:  # a usage mistake (typer carries its own copy of click's exceptions)
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        typer.echo(f"warranty-bot: {message} (see warranty-bot --help)", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
