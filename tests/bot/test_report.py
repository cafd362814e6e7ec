"""The manufacturer's report and batch alerts: figures checked against a database seeded with real cases (through
the engine and the desk, on SQLite and PostgreSQL), the command line, the desk page's charts in headless
Chromium, and a batch alert sent once to Slack (the loopback fake)."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select, update
from sqlmodel import Session, col

from adapters import slack
from bot.app import Bot, build
from bot.config import Settings
from bot.messages import InboundMessage
from bot.registry import import_registry
from bot.report import AlertRule, Period, build_report, check_batches, parse_period, render_figures
from bot.server import create_app
from bot.store import AuditEntry, Case, Conversation
from bot.store.clock import utcnow
from tests.browser_support import SCREENSHOTS, WAIT_MS
from tests.fakes.server import serve
from tests.fakes.slack import BOT_TOKEN, FakeSlack
from tests.fakes.slack import create_app as fake_slack_app
from tests.support import REGISTRY, wait_until

MARCH = Period(date(2026, 3, 1), date(2026, 3, 31))
XSS = "<script>alert(1)</script><img src=x onerror=alert(2)> {{ 7*7 }}"


# --- seeding: real cases through the engine and the desk, then placed in March 2026 -------------------------------


class Seeder:
    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.count = 0

    def say(self, chat: str, *texts: str, channel: str = "test", locale: str | None = None) -> None:
        for text in texts:
            self.count += 1
            self.bot.engine.accept(
                InboundMessage(
                    channel=channel,
                    external_id=f"m{self.count}",
                    sender_id=chat,
                    chat_id=chat,
                    text=text,
                    received_at=utcnow(),
                    sender_name=f"Customer {chat}",
                    locale_hint=locale,
                )
            )
            self.bot.engine.process_pending()

    def ref(self, chat: str) -> str:
        """The latest case of a chat (waited for: with a server running, its worker may be the one processing)."""

        def latest() -> str | None:
            with Session(self.bot.db) as session:
                return session.execute(
                    select(col(Case.ref))
                    .join(Conversation, col(Conversation.id) == col(Case.conversation_id))
                    .where(col(Conversation.chat_id) == chat)
                    .order_by(col(Case.id).desc())
                    .limit(1)
                ).scalar_one_or_none()

        return wait_until(latest, what=f"the case of chat {chat}")


def place(db: Engine, ref: str, opened: datetime, steps: dict[str, float]) -> None:
    """Put a case's opening at `opened` and each audit action `steps[action]` hours later (the others at the
    opening): the report reads these times; the cases themselves went through the engine and the desk."""
    with Session(db) as session, session.begin():
        case = session.execute(select(Case).where(col(Case.ref) == ref)).scalar_one()
        case.created_at = opened
        for entry in session.execute(select(AuditEntry).where(col(AuditEntry.case_id) == case.id)).scalars():
            entry.at = opened + timedelta(hours=steps.get(entry.action, 0))


def seed(bot: Bot) -> dict[str, str]:
    """Five cases; four opened in March 2026 (one at 23:30 on the 31st), one on 1 April at midnight."""
    import_registry(bot.db, REGISTRY, policy=bot.policy)
    seeder = Seeder(bot)
    desk = bot.desk
    # A: registered (PO-26-0045, USD 18,000), covered; factory repair, closed, rated 5.
    seeder.say("a", "CSP2604D0007", f"Display shows E07 and shuts down under load {XSS}", "human")
    a = seeder.ref("a")
    desk.claim(a, engineer="Li Wei")
    desk.choose_method(a, engineer="Li Wei", method="factory_repair")
    desk.close(a, engineer="Li Wei")
    seeder.say("a", "rate:5")
    # B: two units of the same order, covered; a discount given as goodwill (M5 needs 10 covered units).
    seeder.say("b", "CSP2604D0012 CSP2604D0013", "Both displays flicker and then go black", "human")
    b = seeder.ref("b")
    desk.choose_method(
        b,
        engineer="Ana",
        method="discount_compensation",
        goodwill="goodwill",
        reason="Two units of one order failed",
    )
    # C: made January 2020, no proof, normal use: refused by the policy; the refusal confirmed, closed, rated 2.
    seeder.say(
        "c", "CSP2001A0001 display shows E07 and shuts down", "proof:none", "cause:normal", "cmd:human"
    )
    c = seeder.ref("c")
    desk.choose_method(c, engineer="Ana", method="not_covered", reason="The warranty ended in 2022")
    desk.close(c, engineer="Ana")
    seeder.say("c", "rate:2")
    # D: in Spanish, on another channel; nobody acted on it yet.
    seeder.say(
        "d",
        "CSP2604D0020",
        "La pantalla muestra E07 y se apaga cuando hay carga",
        "humano",
        channel="telegram",
        locale="es",
    )
    d = seeder.ref("d")
    # E: opened on 1 April at midnight: outside March. Not used as the manual says (X4): refused.
    seeder.say("e", "CSP2311B0872 display shows E07 and shuts down", "cause:misuse")
    e = seeder.ref("e")
    place(bot.db, a, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), {"claimed": 1, "method_chosen": 5, "closed": 30})
    place(bot.db, b, datetime(2026, 3, 5, 10, 0, tzinfo=UTC), {"method_chosen": 2})
    place(bot.db, c, datetime(2026, 3, 9, 8, 0, tzinfo=UTC), {"refused": 4, "closed": 6})
    place(bot.db, d, datetime(2026, 3, 31, 23, 30, tzinfo=UTC), {})
    place(bot.db, e, datetime(2026, 4, 1, 0, 0, tzinfo=UTC), {})
    return {"a": a, "b": b, "c": c, "d": d, "e": e}


def _pairs(groups: Any) -> dict[str, tuple[int, int]]:
    return {"/".join(g.key): (g.claims, g.units) for g in groups}


# --- the figures -------------------------------------------------------------------------------------------------


def test_report_figures_of_a_seeded_month(bot: Bot) -> None:
    refs = seed(bot)
    now = datetime(2026, 4, 2, 12, 0, tzinfo=UTC)
    report = build_report(bot.db, MARCH, policy=bot.policy, now=now)

    assert (report.claims, report.units) == (4, 5)  # E (1 April) is out
    assert _pairs(report.by_model) == {"CSP": (4, 5)}
    assert _pairs(report.by_month) == {"2026-04": (3, 4), "2020-01": (1, 1)}
    batches = {(b.model, b.month): (b.claims, b.units, b.units_sold) for b in report.by_batch}
    # PO-26-0045 holds CSP2604D0001..0060 (60 units); the 2020 serial is in no registry.
    assert batches == {("CSP", "2026-04"): (3, 4, 60), ("CSP", "2020-01"): (1, 1, None)}
    assert report.by_batch[0].rate == pytest.approx(4 / 60)
    assert _pairs(report.by_cause) == {"not_stated": (3, 4), "normal_use": (1, 1)}
    assert _pairs(report.by_outcome) == {"covered": (3, 4), "not_covered": (1, 1)}
    clauses = _pairs(report.by_clause)
    assert clauses["covered/W2"] == (3, 4)  # the port arrival proven by the registry
    assert clauses["not_covered/X1"] == (1, 1)
    assert _pairs(report.by_method) == {
        "factory_repair": (1, 1),
        "discount_compensation": (1, 2),
        "not_covered": (1, 1),
        "undecided": (1, 1),
    }
    assert _pairs(report.by_channel) == {"test": (3, 4), "telegram": (1, 1)}
    assert _pairs(report.by_language) == {"en": (3, 4), "es": (1, 1)}

    times = {d.name: (d.count, d.median_hours, d.p90_hours) for d in report.times}
    # First response: A claimed after 1 h, B decided after 2 h, C refused after 4 h; D not yet.
    assert times["first_response"] == (3, 2.0, 4.0)
    assert times["decision"] == (3, 4.0, 5.0)  # 2, 4, 5 h
    assert times["close"] == (2, 18.0, 30.0)  # 6 and 30 h
    assert (report.csat_average, report.csat_count) == (3.5, 2)
    assert _pairs(report.csat_distribution) == {"2": (1, 0), "5": (1, 0)}
    assert _pairs(report.units_repaired) == {"factory_repair": (1, 1)}
    # B's goodwill discount: 1% of PO-26-0045's USD 18,000, counted once for the order.
    assert [(m.currency, m.amount, m.claims) for m in report.discounts] == [("USD", Decimal("180.00"), 1)]
    assert report.alerts == []

    # The latest fault descriptions per batch are the customers' text, kept as it is (escaped when shown).
    faults = dict(report.by_batch[0].faults)
    assert XSS in faults[refs["a"]]
    html = render_figures(report)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "{{ 7*7 }}" in html  # data, never template source

    # April alone: E only.
    april = build_report(bot.db, Period(date(2026, 4, 1), date(2026, 4, 30)), policy=bot.policy, now=now)
    assert (april.claims, april.units) == (1, 1)
    assert {(b.model, b.month, b.units_sold) for b in april.by_batch} == {("CSP", "2023-11", 40)}
    assert _pairs(april.by_cause) == {"misuse": (1, 1)}
    assert _pairs(april.by_clause)["not_covered/X4"] == (1, 1)


def test_periods() -> None:
    today = date(2026, 5, 17)
    assert parse_period(None, None, today=today) == Period(date(2026, 5, 1), today)
    assert parse_period("2026-01-01", None, today=today) == Period(date(2026, 1, 1), today)
    assert parse_period(None, "2026-02-10", today=today) == Period(date(2026, 2, 1), date(2026, 2, 10))
    for start, end in (
        ("2026-13-01", None),
        ("yesterday", None),
        (None, "2026-2-1"),
        ("2026-03-02", "2026-03-01"),
    ):
        with pytest.raises(ValueError):
            parse_period(start, end, today=today)


def test_batch_alert_by_rate_once_per_window(bot: Bot) -> None:
    """The rate rule against units sold: 3 claimed units of 60 sold (5%) pass 5%; a later claim within the
    window raises nothing; once the window has passed the batch can be alerted again."""
    import_registry(bot.db, REGISTRY, policy=bot.policy)
    seeder = Seeder(bot)
    seeder.say("x", "CSP2604D0031 CSP2604D0032", "Both displays flicker and then go black", "human")
    rule = AlertRule(rate=0.05, window_days=30)
    now = utcnow()
    produced = date(2026, 4, 10)
    with Session(bot.db) as session, session.begin():
        assert check_batches(session, bot.policy, rule, [("CSP", produced)], case_ref="X", now=now) == []
    seeder.say("y", "CSP2604D0033", "The display flickers and then goes black", "human")
    with Session(bot.db) as session, session.begin():
        alerts = check_batches(session, bot.policy, rule, [("CSP", produced)], case_ref="Y", now=now)
        assert [(a.model, a.month, a.claims, a.units, a.units_sold) for a in alerts] == [
            ("CSP", "2026-04", 2, 3, 60)
        ]
        assert "3 of 60 units sold (5.0%)" in alerts[0].text()
    with Session(bot.db) as session, session.begin():
        assert check_batches(session, bot.policy, rule, [("CSP", produced)], case_ref="Y", now=now) == []
    with Session(bot.db) as session, session.begin():  # 31 days on the claims are out of the window too
        later = now + timedelta(days=31)
        assert check_batches(session, bot.policy, rule, [("CSP", produced)], case_ref="Y", now=later) == []
        moved = update(Case).values(created_at=later - timedelta(days=1))
        session.execute(moved)
        assert (
            len(check_batches(session, bot.policy, rule, [("CSP", produced)], case_ref="Y", now=later)) == 1
        )


# --- the command line ----------------------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env, "COLUMNS": "120"},
        timeout=120,
        check=False,
    )


def test_report_command_table_csv_and_bad_dates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/warranty.db"
    bot = build(
        Settings(
            _env_file=None,
            database_url=url,
            data_dir=tmp_path,  # type: ignore[call-arg]
            attachments_dir=tmp_path / "attachments",
        )
    )
    seed(bot)
    bot.db.dispose()
    env = {"DATABASE_URL": url}

    table = cli("report", "--from", "2026-03-01", "--to", "2026-03-31", env=env, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "2026-03-01 to 2026-03-31: 4 claims, 5 units" in table.stdout
    assert "By batch" in table.stdout and "2026-04" in table.stdout and "6.67%" in table.stdout
    assert "CSAT: 3.50 of 5 from 2 rating(s)" in table.stdout
    assert "Discount credited: 180.00 USD on 1 claim(s)" in table.stdout

    exported = cli(
        "report", "--from", "2026-03-01", "--to", "2026-03-31", "--csv", "-", env=env, cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert rows[0]["section"] == "period" and (rows[0]["claims"], rows[0]["units"]) == ("4", "5")
    batch = next(r for r in rows if r["section"] == "batch" and r["key"] == "CSP/2026-04")
    assert (batch["claims"], batch["units"], batch["units_sold"], batch["rate"]) == ("3", "4", "60", "0.0667")
    median = next(r for r in rows if r["section"] == "time_to_decision" and r["metric"] == "median_hours")
    assert median["value"] == "4.0"

    path = tmp_path / "out" / "march.csv"
    path.parent.mkdir()
    written = cli(
        "report", "--from", "2026-03-01", "--to", "2026-03-31", "--csv", str(path), env=env, cwd=tmp_path
    )
    assert written.returncode == 0, written.stderr
    # The same CSV but for the time it was made (the period row's last cell).
    assert path.read_text(encoding="utf-8").splitlines()[2:] == exported.stdout.splitlines()[2:]

    for args, message in (
        (("--from", "2026-02-30"), "--from must be a date YYYY-MM-DD"),
        (("--to", "March"), "--to must be a date YYYY-MM-DD"),
        (("--from", "2026-03-02", "--to", "2026-03-01"), "starts (2026-03-02) after it ends"),
    ):
        bad = cli("report", *args, env=env, cwd=tmp_path)
        assert bad.returncode == 2, bad.stdout
        assert bad.stdout == ""
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], bad.stderr
    unwritable = cli("report", "--csv", str(tmp_path / "no" / "such" / "dir.csv"), env=env, cwd=tmp_path)
    assert unwritable.returncode == 2 and len(unwritable.stderr.strip().splitlines()) == 1


# --- the desk API -----------------------------------------------------------------------------------------------

DESK_TOKEN = "desk-token-for-the-report-test"


def test_desk_report_api_needs_the_token_and_checks_dates(tmp_path: Path) -> None:
    bot = build(_settings(tmp_path, desk_token=SecretStr(DESK_TOKEN)))
    seed(bot)
    with serve(create_app(bot)) as base, httpx.Client(base_url=base, timeout=10) as http:
        auth = {"Authorization": f"Bearer {DESK_TOKEN}"}
        for path in ("/api/desk/report", "/api/desk/report.csv", "/api/desk/report.html"):
            assert http.get(path).status_code == 401
            assert http.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        march = {"from": "2026-03-01", "to": "2026-03-31"}
        data = http.get("/api/desk/report", params=march, headers=auth).json()
        assert (data["claims"], data["units"]) == (4, 5)
        assert data["discounts"] == [{"currency": "USD", "amount": "180.00", "claims": 1}]
        exported = http.get("/api/desk/report.csv", params=march, headers=auth)
        assert exported.headers["content-type"].startswith("text/csv")
        assert "attachment" in exported.headers["content-disposition"]
        assert exported.text.startswith("section,key,claims,units")
        bad = http.get("/api/desk/report", params={"from": "2026-03-32"}, headers=auth)
        assert bad.status_code == 422 and "from must be a date" in bad.json()["error"]
        assert http.get("/desk/report").status_code == 200


def _settings(tmp_path: Path, **update: Any) -> Settings:
    return Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path}/warranty.db",  # type: ignore[call-arg]
        data_dir=tmp_path,
        attachments_dir=tmp_path / "attachments",
        **update,
    )


# --- batch alerts through Slack ------------------------------------------------------------------------------

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ESCALATION = "C07ESC4L8QZ"
ENGINEER = "U05LIWEI7KD"


def test_batch_alert_reaches_slack_once_per_window(settings: Settings, db: Engine) -> None:
    """Two claims of batch CSP 2026-04 within 30 days pass BATCH_ALERT_CLAIMS=2: the engineers' channel is told
    once, through the outbox like every desk event; the third claim of the batch raises no second alert."""
    fake = FakeSlack(users={ENGINEER: "Li Wei"}, members=["U07WBOT9RZ2", ENGINEER])
    with serve(fake_slack_app(fake)) as api_url:
        settings = settings.model_copy(
            update={
                "slack_bot_token": SecretStr(BOT_TOKEN),
                "slack_signing_secret": SecretStr(SECRET),
                "slack_api_url": f"{api_url}/api/",
                "slack_escalation_channel": ESCALATION,
                "slack_mode": "http",
                "public_url": "https://warranty.example",
                "batch_alert_claims": 2,
                "batch_alert_window_days": 30,
            }
        )
        bot = build(settings, db=db, external_desks=("slack",))
        import_registry(db, REGISTRY, policy=bot.policy)
        desk = slack.from_settings(bot)
        assert desk is not None
        seeder = Seeder(bot)
        with serve(create_app(bot, channels=[desk])):
            seeder.say("p", "CSP2604D0041", "Display shows E07 and shuts down under load", "human")
            first = seeder.ref("p")
            seeder.say("q", "CSP2604D0042", "The display shows E07, then the unit shuts down", "human")
            second = seeder.ref("q")
            seeder.say("r", "CSP2604D0043", "E07 on the display and it shuts down", "human")
            third = seeder.ref("r")
            wait_until(
                lambda: all(
                    any(ref in p["text"] for p in fake.posts(channel=ESCALATION))
                    for ref in (first, second, third)
                ),
                what="the three case messages",
            )

            def alerts() -> list[dict[str, Any]]:
                return [p for p in fake.posts(channel=ESCALATION) if "Batch alert" in p["text"]]

            posted = wait_until(alerts, what="the batch alert")
            wait_until(lambda: not _pending_slack(db), what="every Slack event delivered")
    assert len(alerts()) == 1
    text = posted[0]["text"]
    assert "thread_ts" not in posted[0]  # in the channel, not in a case's thread
    assert "CSP made 2026-04 has 2 claims in the last 30 days" in text and "2 of 60 units sold" in text
    assert second in text
    with Session(db) as session:
        raised = (
            session.execute(
                select(col(Case.ref))
                .join(AuditEntry, col(AuditEntry.case_id) == col(Case.id))
                .where(col(AuditEntry.action) == "batch_alert")
            )
            .scalars()
            .all()
        )
    assert raised == [second]  # in that case's history on the desk, too
    now = utcnow()
    report = build_report(db, Period(now.date(), now.date()), policy=bot.policy, now=now)
    assert [(a.model, a.month, a.claims, a.case_ref) for a in report.alerts] == [
        ("CSP", "2026-04", 2, second)
    ]


def _pending_slack(db: Engine) -> list[int]:
    from bot.store import OutboxItem

    with Session(db) as session:
        return list(
            session.execute(
                select(col(OutboxItem.id)).where(
                    col(OutboxItem.channel) == "slack", col(OutboxItem.status) == "pending"
                )
            ).scalars()
        )


# --- the desk page in headless Chromium ----------------------------------------------------------------------------


@pytest.mark.browser
def test_report_page_draws_the_charts(browser: Any, tmp_path: Path) -> None:
    """From the desk's header to the report: the month's figures, the SVG charts, a customer's markup shown
    as text, the CSV downloaded with the token; no script error, no CSP violation, no dialog."""
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    bot = build(_settings(tmp_path, desk_token=SecretStr(DESK_TOKEN)))
    refs = seed(bot)
    problems: list[str] = []
    with serve(create_app(bot)) as base:
        context = browser.new_context(
            locale="en-US", accept_downloads=True, viewport={"width": 1280, "height": 900}
        )
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        # Chromium logs every 4xx ("Failed to load resource"); the desk's first probe is an expected 401.
        page.on(
            "console",
            lambda m: (
                problems.append(f"console: {m.text}")
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )

        def dialog(d: Any) -> None:
            problems.append(f"dialog: {d.message}")
            d.dismiss()

        page.on("dialog", dialog)

        page.goto(f"{base}/desk/report")  # not signed in: says where to sign in
        expect(page.locator("#notice")).to_contain_text("Sign in on the desk first")
        page.goto(f"{base}/desk")
        page.get_by_label("Desk token").fill(DESK_TOKEN)
        page.get_by_label("Your name").fill("Amira")
        page.get_by_role("button", name="Open the desk").click()
        page.get_by_role("link", name="Report and batch alerts").click()
        expect(page).to_have_url(
            f"{base}/desk/report?"
            + "from="
            + date.today().strftime("%Y-%m-01")
            + f"&to={date.today().isoformat()}"
        )
        page.get_by_label("From").fill("2026-03-01")
        page.get_by_label("To (included)").fill("2026-03-31")
        page.get_by_role("button", name="Show").click()

        report = page.locator("#report")
        expect(report).to_contain_text("4 claims, 5 units opened 2026-03-01 to 2026-03-31")
        expect(page.locator("#time-decision")).to_contain_text("median 4.0 h, 90th percentile 5.0 h")
        expect(page.locator("#csat")).to_contain_text("3.50 of 5 from 2 ratings")
        expect(page.locator("#discounts")).to_contain_text("180.00 USD on 1 claim")
        # The charts: one bar per batch, per channel; each bar as long as its share of the longest.
        expect(page.locator("#chart-batch svg rect")).to_have_count(2)
        expect(page.locator("#chart-channel svg rect")).to_have_count(2)
        widths = page.locator("#chart-channel svg rect").evaluate_all(
            "(rects) => rects.map((r) => r.getBoundingClientRect().width)"
        )
        assert widths[0] > 0 and widths[1] == pytest.approx(widths[0] / 3, rel=0.02)  # test 3, telegram 1
        fill = page.locator("#chart-model svg rect").first.evaluate("(r) => getComputedStyle(r).fill")
        assert fill not in ("", "none", "rgb(0, 0, 0)")  # coloured by report.css, under the CSP
        # The customer's markup is text on the page, not markup.
        fault = page.locator("#batch-table .fault-text", has_text="under load")
        expect(fault).to_contain_text(XSS)
        assert page.locator("#batch-table img").count() == 0
        expect(page.locator("#batch-table")).to_contain_text(refs["a"])
        page.screenshot(path=str(SCREENSHOTS / "report-page.png"), full_page=True)

        with page.expect_download() as download:
            page.get_by_role("link", name="Download CSV").click()
        saved = Path(download.value.path())
        rows = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
        assert (rows[0]["claims"], rows[0]["units"]) == ("4", "5")
        assert download.value.suggested_filename == "warranty-report-2026-03-01-2026-03-31.csv"
        context.close()
    assert problems == []
