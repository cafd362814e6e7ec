"""Benchmark 3: per-message latency with a small and a large database (cases and registry units).

The tables are bulk-filled with SQL (PostgreSQL: INSERT ... SELECT generate_series; SQLite: INSERT ... from a
recursive CTE): per filled case a customer, a channel identity, a conversation, the case, one case unit, one
inbox row, one outbox row, two logged messages and an audit row; and as many registry units (1,000 to an
order). Then the scripted claim of benchmark 1 runs in-process, one worker.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import Engine, text

from bench.common import Progress, Table, database, load_average, ms, percentile, rate, say, settings_for
from bench.engine import play, play_many
from bot.app import build
from bot.store import make_engine, upgrade

# Each statement inserts rows 1..n; {g} is the number source, {pad7} pads n to 7 digits, and {now},
# {today} and {false} are the dialect's spellings. Ids are not given: on fresh tables they come out 1..n,
# which the rows use.
FILL = (
    (
        "customer",
        "INSERT INTO customer (name, language, language_explicit, created_at) "
        "SELECT 'Customer ' || n, 'en', {false}, {now} FROM {g}",
    ),
    (
        "channelidentity",
        "INSERT INTO channelidentity (customer_id, channel, chat_id, sender_id, unreachable, data) "
        "SELECT n, 'fill', 'chat' || n, 'chat' || n, {false}, '{{}}' FROM {g}",
    ),
    (
        "conversation",
        "INSERT INTO conversation (customer_id, channel, chat_id, state, data, case_id, updated_at) "
        "SELECT n, 'fill', 'chat' || n, 'with_engineer', '{{\"name\": \"with_engineer\"}}', n, {now} "
        "FROM {g}",
    ),
    (
        "case",
        'INSERT INTO "case" (ref, customer_id, conversation_id, channel, language, status, fault, '
        "claim_date, prefers_discount, desk_ref, created_at, updated_at) "
        "SELECT 'WR-2025-' || {pad7}, n, n, 'fill', 'en', 'closed', 'display shows E07', {today}, {false}, "
        "'{{}}', {now}, {now} FROM {g}",
    ),
    (
        "caseunit",
        "INSERT INTO caseunit (case_id, serial, outcome, clauses, decision) "
        "SELECT n, 'CSP2501F' || {pad7}, 'covered', '[\"W1\"]', '{{}}' FROM {g}",
    ),
    (
        "inboxitem",
        "INSERT INTO inboxitem (channel, external_id, chat_id, payload, status, received_at, processed_at) "
        "SELECT 'fill', 'upd' || n, 'chat' || n, '{{\"text\": \"hello\"}}', 'done', {now}, {now} FROM {g}",
    ),
    (
        "outboxitem",
        "INSERT INTO outboxitem (channel, chat_id, payload, status, attempts, next_attempt_at, "
        "created_at, sent_at) "
        "SELECT 'fill', 'chat' || n, '{{\"text\": \"case opened\"}}', 'sent', 1, {now}, {now}, {now} "
        "FROM {g}",
    ),
    (
        "message",
        "INSERT INTO message (conversation_id, case_id, author, text, buttons, attachment_ids, created_at) "
        "SELECT (n + 1) / 2, (n + 1) / 2, 'customer', 'display shows E07', '[]', '[]', {now} FROM {g2}",
    ),
    (
        "audit",
        "INSERT INTO audit (case_id, actor, action, detail, at) "
        "SELECT n, 'bot', 'opened', '{{}}', {now} FROM {g}",
    ),
    (
        "registryorder",
        "INSERT INTO registryorder (order_id, customer, cargo_compensation, order_pieces, "
        "order_total, currency) "
        "SELECT 'FILL-' || {pad7}, 'Fill Distributor', {false}, 1000, 25000, 'USD' FROM {g_orders}",
    ),
    (
        "registryunit",
        "INSERT INTO registryunit (serial, order_id, production_date, port_arrival_date) "
        "SELECT 'CSP2501R' || {pad7}, 'FILL-' || {order_pad7}, {today}, {today} FROM {g}",
    ),
)


def fill(db: Engine, size: int) -> float:
    """Fill the tables with `size` cases and registry units; the seconds it took."""
    started = time.monotonic()
    orders = max(1, size // 1000)
    if db.dialect.name == "postgresql":
        spell = {
            "g": f"generate_series(1, {size}) AS g(n)",
            "g2": f"generate_series(1, {2 * size}) AS g(n)",
            "g_orders": f"generate_series(1, {orders}) AS g(n)",
            "pad7": "lpad(n::text, 7, '0')",
            "order_pad7": "lpad(((n - 1) / 1000 + 1)::text, 7, '0')",
            "now": "now()",
            "today": "current_date",
            "false": "false",
        }
        prefix = {"g": "", "g2": "", "g_orders": ""}
    else:
        spell = {
            "g": "g",
            "g2": "g",
            "g_orders": "g",
            "pad7": "printf('%07d', n)",
            "order_pad7": "printf('%07d', (n - 1) / 1000 + 1)",
            "now": "strftime('%Y-%m-%d %H:%M:%f', 'now')",
            "today": "date('now')",
            "false": "0",
        }
        count = {"g": size, "g2": 2 * size, "g_orders": orders}
        prefix = {
            k: f"WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {v}) "  # noqa: S608
            for k, v in count.items()
        }
    progress = Progress(f"fill {size:,}", len(FILL), every=10)
    for done, (_, statement) in enumerate(FILL, start=1):
        source = next((k for k in ("g_orders", "g2", "g") if "{" + k + "}" in statement), "g")
        sql = prefix[source] + statement.format(**spell)
        with db.begin() as connection:
            connection.execute(text(sql))
        progress(done)
    if db.dialect.name == "postgresql":
        # Autovacuum would analyse the new rows soon enough in production; here the plans must not wait.
        with db.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    return time.monotonic() - started


def run(databases: tuple[str, ...], workdir: Path, *, quick: bool) -> Table:
    sizes = (100, 1_000) if quick else (1_000, 1_000_000)
    conversations = 2 if quick else 50
    warmup = 1 if quick else 3
    table = Table(
        title=f"3. Scale: per-message latency with {sizes[0]:,} and {sizes[1]:,} cases and registry units",
        columns=(
            "database",
            "cases + registry units",
            "fill s",
            "messages",
            "messages/s",
            "p50 ms",
            "p99 ms",
            "p50 vs small",
            "p99 vs small",
            "load avg",
        ),
    )
    for kind in databases:
        base: tuple[float, float] | None = None
        for size in sizes:
            say(f"scale: {kind}, {size:,} cases and units: filling")
            with database(kind, workdir, f"scale{size}") as url:
                db = make_engine(url)
                upgrade(db)
                seconds = fill(db, size)
                db.dispose()
                # As the worker runs: the write-ahead log copied back by a thread, not by a commit.
                bot = build(settings_for(url, workdir), migrate=False, background_checkpoints=True)
                for number in range(warmup):
                    play(bot, f"scale-warmup-{number}")
                say(f"scale: {kind}, {size:,}: {conversations} conversations")
                latencies, wall = play_many(
                    bot, "scale", conversations, Progress(f"scale {size:,}", conversations)
                )
                bot.db.dispose()
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            base = base or (p50, p99)
            table.rows.append(
                (
                    kind,
                    f"{size:,}",
                    f"{seconds:.0f}",
                    str(len(latencies)),
                    rate(len(latencies), wall),
                    ms(p50),
                    ms(p99),
                    f"{p50 / base[0]:.2f}×",
                    f"{p99 / base[1]:.2f}×",
                    load_average(),
                )
            )
    table.notes.append(
        "Per filled case: customer, channel identity, conversation, case, case unit, inbox row, outbox row, two "
        "logged messages, audit row; registry units 1,000 to an order. Target: p50 at the large size within 1.5× "
        "of the small one. PostgreSQL is ANALYZEd after the fill (as autovacuum would); SQLite is not."
    )
    return table
