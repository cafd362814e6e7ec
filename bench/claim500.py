"""Benchmark 4: a distributor's 500-unit claim, CSP2604D0001-CSP2604D0500 in one message: the time from each
message to the bot's answer, in-process (accept + processing), with the units in the registry and without.

With the registry the units need no proof; the cause answer brings the decision for all 500 units and, since
the claim is large, the repair-or-discount question; the preference opens the case (500 case units) with every
unit's decision explained. Without the registry the customer first answers the proof question with the button.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import text

from bench.common import Table, database, inbound, load_average, ms, percentile, say, settings_for
from bot.app import Bot, build
from bot.registry import import_registry

SERIALS = "CSP2604D0001-CSP2604D0500"
REGISTRY = (
    "order_id,customer,serial,serial_to,production_date,port_arrival_date,cargo_compensation,order_pieces,"
    "order_total,currency\n"
    "PO-26-0500,Bench Distributor,CSP2604D0001,CSP2604D0500,2026-04-10,2026-05-20,false,500,125000.00,USD\n"
)
SCRIPTS = {
    "registered": ("hello", f"{SERIALS} display shows E07 and shuts down", "cause:normal", "pref:repair"),
    "not registered (proof:none)": (
        "hello",
        f"{SERIALS} display shows E07 and shuts down",
        "proof:none",
        "cause:normal",
        "pref:repair",
    ),
}
# The step whose answer is the decision, per script.
DECISION_STEP = {"registered": 2, "not registered (proof:none)": 3}


def timed(bot: Bot, chat: str, script: tuple[str, ...]) -> list[float]:
    latencies = []
    for number, said in enumerate(script):
        started = time.perf_counter()
        bot.engine.accept(inbound(chat, number, said))
        bot.engine.process_pending()
        latencies.append(time.perf_counter() - started)
    return latencies


def run(databases: tuple[str, ...], workdir: Path, *, quick: bool) -> Table:
    repeats = 1 if quick else 5
    table = Table(
        title="4. A 500-unit distributor claim (CSP2604D0001-CSP2604D0500 in one message)",
        columns=(
            "database",
            "units",
            "serials message ms",
            "decision ms (median)",
            "decision ms (max)",
            "case opened ms (median)",
            "case opened ms (max)",
            "case units",
            "load avg",
        ),
    )
    csv = workdir / "registry-500.csv"
    csv.write_text(REGISTRY, encoding="utf-8")
    for kind in databases:
        for variant, script in SCRIPTS.items():
            say(f"claim500: {kind}, {variant}, {repeats} claims")
            with database(kind, workdir, "claim500") as url:
                bot = build(settings_for(url, workdir))
                if variant == "registered":
                    import_registry(bot.db, csv, policy=bot.policy)
                timed(bot, "claim500-warmup", script)
                runs = [timed(bot, f"claim500-{n}", script) for n in range(repeats)]
                with bot.db.connect() as connection:
                    units = connection.execute(text("SELECT count(*) FROM caseunit")).scalar_one()
                bot.db.dispose()
            step = DECISION_STEP[variant]
            decisions = [r[step] for r in runs]
            table.rows.append(
                (
                    kind,
                    variant,
                    ms(percentile([r[1] for r in runs], 0.5)),
                    ms(percentile(decisions, 0.5)),
                    ms(max(decisions)),
                    ms(percentile([r[-1] for r in runs], 0.5)),
                    ms(max(r[-1] for r in runs)),
                    f"{units / (repeats + 1):.0f} per case",
                    load_average(),
                )
            )
    table.notes.append(
        "Each claim: "
        + " → ".join(repr(s) for s in SCRIPTS["registered"])
        + " (registered) or with 'proof:none' "
        "before the cause (not registered). Decision = the cause answer, whose reply decides all 500 units "
        "(covered, and the repair-or-discount offer); case opened = the preference, whose processing writes the "
        "case with its 500 units and renders every unit's decision. Times are accept + processing of that one "
        f"message (the replies rendered and queued). Median and max of {repeats} claims after one warm-up claim. "
        "Target: decided in under a second."
    )
    return table
