"""Reports for the manufacturer: claims and units by model, production batch, fault cause, outcome and clause,
channel and language; response times; CSAT; warranty cost proxies; and batch alerts.

One query layer (SQLAlchemy, bound parameters, the same on SQLite and PostgreSQL; the two places where
the dialects differ, a month of a date and a JSON array as rows, are one small function each). The clock
is passed in: nothing here reads it. A report covers the cases *opened* in its period (whole UTC days,
both ends included); every figure is about those cases, whenever their later steps happened.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template
from sqlalchemy import Engine as DbEngine
from sqlalchemy import and_, case, distinct, func, not_, or_, select, true
from sqlmodel import Session, col

from bot.store import AuditEntry, Case, CaseUnit, Credit, KeyValue, RegistryUnit, lock_chat
from policy import Policy, last_day_of_month, parse_serial

UNKNOWN = "unknown"
UNDECIDED = "undecided"  # a case whose service method is not chosen yet
# The service methods that repair units (M2, M3, M4): their covered units are the "units repaired" proxy.
REPAIR_METHODS = ("remote_guidance", "factory_repair", "door_to_door")
DISCOUNT = "discount_compensation"
# An engineer's first action the customer sees (claimed, a reply, a question, a method, a refusal, closing).
RESPONSES = ("claimed", "replied", "asked_customer", "method_chosen", "refused", "closed")
DECISIONS = ("method_chosen", "refused")
# How the fault arose, from the claim's circumstances (POLICY.md X4–X7), in the order they are told apart.
CAUSES = ("misuse", "human_damage", "unauthorized_repair", "force_majeure")
NORMAL_USE, NOT_STATED = "normal_use", "not_stated"
ALERT_ACTION = "batch_alert"
ALERT_KEY = "batch-alert:"
FAULTS_SHOWN = 3  # the latest fault descriptions shown per batch
FAULT_CHARS = 200


class PeriodError(ValueError):
    """A period that cannot be read (not a date, or ending before it starts); the message says what to give."""


@dataclass(frozen=True)
class Period:
    """Whole UTC days from `start` to `end`, both included."""

    start: date
    end: date

    def bounds(self) -> tuple[datetime, datetime]:
        return (
            datetime.combine(self.start, time(), UTC),
            datetime.combine(self.end + timedelta(days=1), time(), UTC),
        )

    def __str__(self) -> str:
        return f"{self.start.isoformat()} to {self.end.isoformat()}"


def parse_period(start: str | None, end: str | None, *, today: date) -> Period:
    """The period from two ISO dates, either left out: `end` defaults to today, `start` to the first day of
    `end`'s month (the month to date)."""
    last = _date(end, "--to") if end else today
    first = _date(start, "--from") if start else last.replace(day=1)
    if first > last:
        raise PeriodError(f"the period starts ({first}) after it ends ({last}): give --from before --to")
    return Period(first, last)


def _date(text: str, name: str) -> date:
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise PeriodError(f"{name} must be a date YYYY-MM-DD, not {text[:20]!r}") from None


@dataclass(frozen=True)
class Group:
    """Claims (cases) and units of one group; `key` has one part per dimension (model, month...)."""

    key: tuple[str, ...]
    claims: int
    units: int

    @property
    def label(self) -> str:
        return " ".join(self.key)


@dataclass(frozen=True)
class Batch:
    """One production batch (model and production month) and what its claims weigh against units sold."""

    model: str
    month: str  # YYYY-MM
    claims: int
    units: int
    units_sold: int | None  # units of this batch in the registry; None when the registry has none
    faults: tuple[tuple[str, str], ...] = ()  # (case ref, fault description) of the latest claims

    @property
    def rate(self) -> float | None:
        return self.units / self.units_sold if self.units_sold else None

    @property
    def label(self) -> str:
        return f"{self.model} {self.month}"


@dataclass(frozen=True)
class Durations:
    """How long a step took from the case's opening, over the cases that reached it (hours)."""

    name: str
    count: int
    median_hours: float | None
    p90_hours: float | None


@dataclass(frozen=True)
class Money:
    currency: str
    amount: Decimal
    claims: int


@dataclass(frozen=True)
class Alert:
    """A batch alert: the batch's claims in the window passed the configured rule."""

    model: str
    month: str
    claims: int
    units: int
    units_sold: int | None
    window_days: int
    at: str  # ISO time it was raised
    case_ref: str  # the claim that raised it

    @property
    def rate(self) -> float | None:
        return self.units / self.units_sold if self.units_sold else None

    def text(self) -> str:
        sold = (
            f", {self.units} of {self.units_sold} units sold ({self.rate:.1%})"
            if self.units_sold and self.rate is not None
            else f", {self.units} units"
        )
        return (
            f"Batch alert: {self.model} made {self.month} has {self.claims} claims in the last"
            f" {self.window_days} days{sold}; latest {self.case_ref}."
        )


@dataclass(frozen=True)
class Report:
    period: Period
    generated_at: datetime
    claims: int
    units: int
    by_model: list[Group]
    by_month: list[Group]
    by_batch: list[Batch]
    by_cause: list[Group]
    by_outcome: list[Group]
    by_clause: list[Group]  # key: (outcome, clause)
    by_method: list[Group]
    by_channel: list[Group]
    by_language: list[Group]
    times: list[Durations]
    csat_average: float | None
    csat_count: int
    csat_distribution: list[Group]  # key: (rating,), claims = ratings given
    units_repaired: list[Group]  # key: (method,), units = covered units of cases with that method
    discounts: list[Money]
    alerts: list[Alert] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["period"] = {"from": self.period.start.isoformat(), "to": self.period.end.isoformat()}
        data["generated_at"] = self.generated_at.isoformat()
        for batch, row in zip(self.by_batch, data["by_batch"], strict=True):
            row["rate"] = batch.rate
            row["faults"] = [{"ref": ref, "fault": text} for ref, text in batch.faults]
        data["discounts"] = [
            {**d, "amount": f"{m.amount:.2f}"} for d, m in zip(data["discounts"], self.discounts, strict=True)
        ]
        return data


# --- the report -------------------------------------------------------------------------------------------


def build_report(db: DbEngine, period: Period, *, policy: Policy, now: datetime) -> Report:
    """Every figure of the report for the cases opened in `period`; `now` only stamps it."""
    with Session(db) as session:
        return _Query(session, period, policy).report(now)


@dataclass
class _Query:
    session: Session
    period: Period
    policy: Policy

    def __post_init__(self) -> None:
        low, high = self.period.bounds()
        self.in_period = and_(col(Case.created_at) >= low, col(Case.created_at) < high)
        self.dialect = self.session.get_bind().dialect.name

    def report(self, now: datetime) -> Report:
        claims, units = self.session.execute(
            select(func.count(distinct(col(Case.id))), func.count(col(CaseUnit.id)))
            .select_from(Case)
            .outerjoin(CaseUnit, col(CaseUnit.case_id) == col(Case.id))
            .where(self.in_period)
        ).one()
        average, rated = self.session.execute(
            select(func.avg(col(Case.rating)), func.count(col(Case.rating))).where(self.in_period)
        ).one()
        return Report(
            period=self.period,
            generated_at=now,
            claims=int(claims),
            units=int(units),
            by_model=self.grouped(col(CaseUnit.model)),
            by_month=self.grouped(month_of(col(CaseUnit.production_date), self.dialect)),
            by_batch=self.batches(),
            by_cause=self.grouped(cause_of()),
            by_outcome=self.grouped(col(CaseUnit.outcome)),
            by_clause=self.clauses(),
            by_method=self.grouped(col(Case.method), missing=UNDECIDED),
            by_channel=self.grouped(col(Case.channel)),
            by_language=self.grouped(col(Case.language)),
            times=self.times(),
            csat_average=float(average) if average is not None else None,
            csat_count=int(rated),
            csat_distribution=[
                Group((str(rating),), int(count), 0)
                for rating, count in self.session.execute(
                    select(col(Case.rating), func.count())
                    .where(self.in_period, col(Case.rating).is_not(None))
                    .group_by(col(Case.rating))
                    .order_by(col(Case.rating))
                )
            ],
            units_repaired=self.units_repaired(),
            discounts=self.discounts(),
            alerts=self.alerts(),
        )

    def grouped(self, *keys: Any, missing: str = UNKNOWN) -> list[Group]:
        """Claims and units per value of `keys`, most claims first; a case without units counts as a claim,
        and a value not known is `missing`."""
        rows = self.session.execute(
            select(*keys, func.count(distinct(col(Case.id))), func.count(col(CaseUnit.id)))
            .select_from(Case)
            .outerjoin(CaseUnit, col(CaseUnit.case_id) == col(Case.id))
            .where(self.in_period)
            .group_by(*keys)
        ).all()
        groups = [
            Group(
                tuple(missing if v is None else str(v) for v in row[: len(keys)]), int(row[-2]), int(row[-1])
            )
            for row in rows
        ]
        return sorted(groups, key=lambda g: (-g.claims, -g.units, g.key))

    def batches(self) -> list[Batch]:
        grouped = [
            g
            for g in self.grouped(col(CaseUnit.model), month_of(col(CaseUnit.production_date), self.dialect))
            if UNKNOWN not in g.key
        ]
        sold = units_sold(self.session, self.policy, {(g.key[0], g.key[1]) for g in grouped})
        faults = self.latest_faults([(g.key[0], g.key[1]) for g in grouped])
        return [
            Batch(
                model=g.key[0],
                month=g.key[1],
                claims=g.claims,
                units=g.units,
                units_sold=sold.get((g.key[0], g.key[1])),
                faults=faults.get((g.key[0], g.key[1]), ()),
            )
            for g in grouped
        ]

    def latest_faults(
        self, batches: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
        """The latest claims' fault descriptions (customer text, shown as data) of the first batches."""
        found: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        for model, month in batches[:10]:
            first, last = month_range(month)
            rows = self.session.execute(
                select(col(Case.ref), col(Case.fault))
                .where(
                    self.in_period,
                    col(Case.id).in_(
                        select(col(CaseUnit.case_id)).where(
                            col(CaseUnit.model) == model,
                            col(CaseUnit.production_date) >= first,
                            col(CaseUnit.production_date) <= last,
                        )
                    ),
                )
                .order_by(col(Case.id).desc())
                .limit(FAULTS_SHOWN)
            ).all()
            found[(model, month)] = tuple((ref, (fault or "")[:FAULT_CHARS]) for ref, fault in rows)
        return found

    def clauses(self) -> list[Group]:
        """Units (and their claims) per outcome and clause; a unit counts once under each clause it cites."""
        clause = json_elements(col(CaseUnit.clauses), self.dialect)
        rows = self.session.execute(
            select(col(CaseUnit.outcome), clause.c.value, func.count(distinct(col(Case.id))), func.count())
            .select_from(Case)
            .join(CaseUnit, col(CaseUnit.case_id) == col(Case.id))
            .join(clause, true())
            .where(self.in_period)
            .group_by(col(CaseUnit.outcome), clause.c.value)
        ).all()
        groups = [
            Group((str(outcome), str(value)), int(claims), int(units))
            for outcome, value, claims, units in rows
        ]
        return sorted(groups, key=lambda g: (g.key[0], -g.units, g.key[1]))

    def times(self) -> list[Durations]:
        def first(actions: Iterable[str]) -> Any:
            return func.min(case((col(AuditEntry.action).in_(tuple(actions)), col(AuditEntry.at))))

        rows = self.session.execute(
            select(col(Case.created_at), first(RESPONSES), first(DECISIONS), first(("closed",)))
            .select_from(Case)
            .outerjoin(AuditEntry, col(AuditEntry.case_id) == col(Case.id))
            .where(self.in_period)
            .group_by(col(Case.id), col(Case.created_at))
        ).all()
        names = ("first_response", "decision", "close")
        return [durations(name, [_hours(row[0], row[i + 1]) for row in rows]) for i, name in enumerate(names)]

    def units_repaired(self) -> list[Group]:
        rows = self.session.execute(
            select(col(Case.method), func.count(distinct(col(Case.id))), func.count(col(CaseUnit.id)))
            .select_from(Case)
            .join(CaseUnit, col(CaseUnit.case_id) == col(Case.id))
            .where(self.in_period, col(Case.method).in_(REPAIR_METHODS), col(CaseUnit.outcome) == "covered")
            .group_by(col(Case.method))
        ).all()
        return sorted((Group((str(m),), int(c), int(u)) for m, c, u in rows), key=lambda g: (-g.units, g.key))

    def discounts(self) -> list[Money]:
        """The M5 discounts credited (the credit ledger, bot/fulfilment.py), per currency, for the cases of the
        period."""
        rows = self.session.execute(
            select(
                col(Credit.currency), func.sum(col(Credit.amount)), func.count(distinct(col(Credit.case_id)))
            )
            .join(Case, col(Case.id) == col(Credit.case_id))
            .where(self.in_period)
            .group_by(col(Credit.currency))
        ).all()
        return sorted(
            (Money(currency or UNKNOWN, Decimal(total or 0), claims) for currency, total, claims in rows),
            key=lambda m: m.currency,
        )

    def alerts(self) -> list[Alert]:
        rows = self.session.execute(
            select(col(AuditEntry.detail), col(AuditEntry.at), col(Case.ref))
            .join(Case, col(Case.id) == col(AuditEntry.case_id))
            .where(
                col(AuditEntry.action) == ALERT_ACTION,
                col(AuditEntry.at) >= self.period.bounds()[0],
                col(AuditEntry.at) < self.period.bounds()[1],
            )
            .order_by(col(AuditEntry.id).desc())
        ).all()
        return [_alert_from(detail, at, ref) for detail, at, ref in rows]


def _alert_from(detail: dict[str, Any], at: datetime, ref: str) -> Alert:
    return Alert(
        model=str(detail.get("model")),
        month=str(detail.get("month")),
        claims=int(detail.get("claims") or 0),
        units=int(detail.get("units") or 0),
        units_sold=detail.get("units_sold"),
        window_days=int(detail.get("window_days") or 0),
        at=at.isoformat(),
        case_ref=ref,
    )


# --- the two places where the dialects differ -------------------------------------------------------------


def month_of(column: Any, dialect: str) -> Any:
    """A date's month as text YYYY-MM."""
    if dialect == "postgresql":
        return func.to_char(column, "YYYY-MM")
    return func.strftime("%Y-%m", column)


def json_elements(column: Any, dialect: str) -> Any:
    """A JSON array column as rows, one `value` per element (lateral on PostgreSQL, as functions in FROM are)."""
    if dialect == "postgresql":
        return func.json_array_elements_text(column).table_valued("value")
    return func.json_each(column).table_valued("value")


def cause_of() -> Any:
    """How the unit's fault arose, from the circumstances stored with its claim (POLICY.md X4–X7)."""

    def fact(name: str) -> Any:
        return col(CaseUnit.decision)[("claim", "circumstances", name)].as_boolean()

    return case(
        *((fact(name), name) for name in CAUSES),
        (and_(*(not_(fact(name)) for name in CAUSES)), NORMAL_USE),
        else_=NOT_STATED,
    )


# --- figures ------------------------------------------------------------------------------------------------


def durations(name: str, hours: Iterable[float | None]) -> Durations:
    """Median and 90th percentile (nearest rank: the smallest value with 90% of the values at or below it)."""
    values = sorted(h for h in hours if h is not None)
    if not values:
        return Durations(name, 0, None, None)
    middle = len(values) // 2
    median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
    p90 = values[max(0, math.ceil(0.9 * len(values)) - 1)]
    return Durations(name, len(values), round(median, 2), round(p90, 2))


def _hours(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (_utc(end) - _utc(start)).total_seconds() / 3600)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def month_range(month: str) -> tuple[date, date]:
    year, number = (int(part) for part in month.split("-"))
    return date(year, number, 1), last_day_of_month(year, number)


def units_sold(session: Session, policy: Policy, batches: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Units of each batch (model, YYYY-MM) in the shipment registry: the model read from the serial, the
    month from the registry's production date, or from the serial when the registry has none."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    months = sorted({month for _, month in batches})
    dated = [
        and_(col(RegistryUnit.production_date) >= first, col(RegistryUnit.production_date) <= last)
        for first, last in (month_range(m) for m in months)
    ]
    if not dated:
        return {}
    serials = session.execute(
        select(col(RegistryUnit.serial), col(RegistryUnit.production_date)).where(
            or_(*dated, col(RegistryUnit.production_date).is_(None))
        )
    )
    for serial, produced in serials:
        parsed = parse_serial(serial, policy)
        if parsed is None:
            continue
        made = produced or parsed.production_date
        key = (parsed.model, f"{made.year:04d}-{made.month:02d}")
        if key in batches:
            counts[key] += 1
    return dict(counts)


# --- batch alerts -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRule:
    """When a batch's claims call for the engineers: at least `claims` claims (cases) and at least `rate`
    claimed units per unit sold (the registry's), within the last `window_days` days; a threshold of 0 is
    not used, both 0 turns the alerts off. One alert per batch per window."""

    claims: int = 0
    rate: float = 0.0
    window_days: int = 30

    @property
    def enabled(self) -> bool:
        return self.claims > 0 or self.rate > 0


def check_batches(
    session: Session,
    policy: Policy,
    rule: AlertRule,
    batches: Iterable[tuple[str, date]],
    *,
    case_ref: str,
    now: datetime,
) -> list[Alert]:
    """The alerts due for these batches (model and a production date in the month), each recorded (in the
    KeyValue table, until the window ends) so that the batch is not alerted again within the window.

    Runs in the caller's transaction, after the new claim's units were added; on PostgreSQL a batch is
    checked under a transaction lock, so that two claims at once raise one alert.
    """
    if not rule.enabled:
        return []
    since = now - timedelta(days=rule.window_days)
    due: list[Alert] = []
    for model, month in sorted({(m, f"{d.year:04d}-{d.month:02d}") for m, d in batches}):
        first, last = month_range(month)
        claims, units = session.execute(
            select(func.count(distinct(col(Case.id))), func.count(col(CaseUnit.id)))
            .select_from(CaseUnit)
            .join(Case, col(Case.id) == col(CaseUnit.case_id))
            .where(
                col(Case.created_at) >= since,
                col(CaseUnit.model) == model,
                col(CaseUnit.production_date) >= first,
                col(CaseUnit.production_date) <= last,
            )
        ).one()
        if claims < rule.claims:
            continue
        sold = units_sold(session, policy, {(model, month)}).get((model, month)) if rule.rate > 0 else None
        if rule.rate > 0 and not (sold and units / sold >= rule.rate):
            continue
        key = f"{ALERT_KEY}{model}:{month}"
        lock_chat(session, "batch-alert", model, month)
        raised = session.get(KeyValue, key)
        if raised is not None and raised.expires_at is not None and _utc(raised.expires_at) > now:
            continue
        if sold is None:
            sold = units_sold(session, policy, {(model, month)}).get((model, month))
        alert = Alert(
            model=model,
            month=month,
            claims=int(claims),
            units=int(units),
            units_sold=sold,
            window_days=rule.window_days,
            at=now.isoformat(),
            case_ref=case_ref,
        )
        value = {"at": alert.at, "case": case_ref, "claims": alert.claims, "units": alert.units}
        if raised is None:
            session.add(KeyValue(key=key, value=value, expires_at=now + timedelta(days=rule.window_days)))
        else:
            raised.value, raised.expires_at = value, now + timedelta(days=rule.window_days)
        due.append(alert)
    return due


def alert_detail(alert: Alert) -> dict[str, Any]:
    """What an alert's audit row and desk event carry."""
    return {
        "model": alert.model,
        "month": alert.month,
        "claims": alert.claims,
        "units": alert.units,
        "units_sold": alert.units_sold,
        "window_days": alert.window_days,
        "text": alert.text(),
    }


# --- output -------------------------------------------------------------------------------------------------

CSV_HEADER = ("section", "key", "claims", "units", "units_sold", "rate", "metric", "value")
TIME_NAMES = {"first_response": "first response", "decision": "decision", "close": "close"}


def csv_rows(report: Report) -> list[tuple[Any, ...]]:
    """The report as rows of CSV_HEADER: one row per group, and metric/value rows for the single figures."""
    rows: list[tuple[Any, ...]] = [
        (
            "period",
            f"{report.period.start.isoformat()}/{report.period.end.isoformat()}",
            report.claims,
            report.units,
            "",
            "",
            "generated_at",
            report.generated_at.isoformat(),
        ),
    ]
    for section, groups in (
        ("model", report.by_model),
        ("production_month", report.by_month),
        ("fault_cause", report.by_cause),
        ("outcome", report.by_outcome),
        ("outcome_clause", report.by_clause),
        ("method", report.by_method),
        ("channel", report.by_channel),
        ("language", report.by_language),
        ("units_repaired", report.units_repaired),
    ):
        rows.extend((section, "/".join(g.key), g.claims, g.units, "", "", "", "") for g in groups)
    rows.extend(
        (
            "batch",
            f"{b.model}/{b.month}",
            b.claims,
            b.units,
            _blank(b.units_sold),
            "" if b.rate is None else f"{b.rate:.4f}",
            "",
            "",
        )
        for b in report.by_batch
    )
    for d in report.times:
        rows.append(("time_to_" + d.name, "", d.count, "", "", "", "median_hours", _blank(d.median_hours)))
        rows.append(("time_to_" + d.name, "", d.count, "", "", "", "p90_hours", _blank(d.p90_hours)))
    rows.append(
        (
            "csat",
            "",
            report.csat_count,
            "",
            "",
            "",
            "average",
            "" if report.csat_average is None else f"{report.csat_average:.2f}",
        )
    )
    rows.extend(
        ("csat", g.key[0], g.claims, "", "", "", "ratings", g.claims) for g in report.csat_distribution
    )
    rows.extend(
        ("discount_credited", m.currency, m.claims, "", "", "", "amount", f"{m.amount:.2f}")
        for m in report.discounts
    )
    rows.extend(
        (
            "batch_alert",
            f"{a.model}/{a.month}",
            a.claims,
            a.units,
            _blank(a.units_sold),
            "",
            "raised_at",
            a.at,
        )
        for a in report.alerts
    )
    return rows


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    # A cell starting = + - @ would be a formula in a spreadsheet: customer-typed text never is.
    writer.writerows(tuple(_cell(v) for v in row) for row in csv_rows(report))
    return out.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "@", "\t", "\r"):
        return "'" + value
    return value


def _blank(value: Any) -> Any:
    return "" if value is None else value


def hours_text(hours: float | None) -> str:
    if hours is None:
        return "–"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} d"


# --- the desk page's figures ------------------------------------------------------------------------------

FIGURES = Path(__file__).with_name("web") / "report-figures.html"


@lru_cache(maxsize=1)
def _figures_template() -> Template:
    # Autoescaped whatever the name: every value is data (fault descriptions are the customers' own text).
    environment = Environment(
        loader=FileSystemLoader(str(FIGURES.parent)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    return environment.get_template(FIGURES.name)


def render_figures(report: Report) -> str:
    """The report's figures and inline SVG charts, as an HTML fragment for the desk's report page."""
    return _figures_template().render(
        report=report,
        time_names=TIME_NAMES,
        hours=hours_text,
        width=480,
        row=26,
        label_width=170,
        bar_max=260,
    )
