"""The `warranty-bot` command line: policy checks, database and registry chores, console chat, the server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from typer.exceptions import TyperException

from bot.config import Settings, get_settings
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from bot.registry import RegistryImportError, import_registry
    from bot.store import make_engine, upgrade

    if not file.is_file():
        fail(f"no such file: {file}")
    current = settings()
    engine = make_engine(current.database_url)
    upgrade(engine)
    policy = _policy(None)
    with Progress(
        TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    ) as progress:
        task = progress.add_task("rows", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            result = import_registry(
                engine, file, policy=policy, progress=report, max_unpacked_bytes=current.registry_max_unpacked_bytes
            )
        except RegistryImportError as error:
            progress.stop()
            for line, message in error.errors[:20]:
                typer.echo(f"{file}:{line}: {message}", err=True)
            if len(error.errors) > 20:
                typer.echo(f"... and {len(error.errors) - 20} more problems", err=True)
            if not error.bad_rows:  # the file as a whole
                fail(f"{file}: {error.summary()}; nothing was imported")
            fail(f"{error.counted()} in {file}; nothing was imported")
    typer.echo(f"imported {file}: {result}")


# --- outbox -----------------------------------------------------------------------------------------------


@outbox_app.command("list")
def outbox_list(
    status: Annotated[str, typer.Option(help="dead (dead letters, also those a channel reported failed), pending, held or sent.")] = "dead",
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
    status: Annotated[str, typer.Option(help="parked (also rows an earlier version marked failed), pending or done.")] = "parked",
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
        rows = session.execute(
            select(InboxItem).where(col(InboxItem.status).in_(wanted)).order_by(col(InboxItem.id))
        ).scalars().all()
    for row in rows:
        typer.echo(
            f"{row.id}\t{row.channel}\t{row.status}\t{row.attempts} failures\t{row.received_at:%Y-%m-%d %H:%M}\t{row.error or ''}"
        )
    typer.echo(f"{len(rows)} {status} message(s)", err=True)


@inbox_app.command("retry")
def inbox_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Row ids; none re-drives every parked message.")] = None,
) -> None:
    """Process parked messages again, each before the later messages of its chat; the running server does it."""
    from bot.engine import retry_parked
    from bot.store import make_engine, upgrade

    engine = make_engine(settings().database_url)
    upgrade(engine)
    typer.echo(f"{retry_parked(engine, ids or None)} message(s) queued again")


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
) -> None:
    """Run the bot: web chat, local desk and every configured channel on one port."""
    from bot.server import run_server

    current = settings()
    try:
        run_server(current, host=host or current.host, port=port or current.port)
    except ValueError as error:  # a channel refused its settings (e.g. a webhook without a secret)
        fail(f"cannot start: {error}")


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
