"""Demo registry for a first try: orders dated relative to the day it is loaded (`warranty-bot demo`).

The sample file in tests/data has fixed dates, so most of its units run out of warranty as time passes.
These orders are made from `today`, so on any day the first try shows a covered claim, an expired one, a
distributor's claim of 40 units (discount compensation offered) and an order with cargo compensation.
Every order id starts with DEMO- and every serial's batch with DM, so they cannot meet a real registry's.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from bot.registry import COLUMNS
from policy import Claim, Method, Outcome, Policy, Proof, add_months, evaluate_units

DEMO_PREFIX = "DEMO-"  # every demo order's id starts so; `demo --if-empty` reloads a registry of only these


@dataclass(frozen=True, kw_only=True)
class DemoOrder:
    """One demo order: a range of serials, its dates, and what a customer should type to try it."""

    key: str  # what it shows: covered, expired, distributor, cargo
    order_id: str
    customer: str
    first: str
    last: str
    production_date: date
    port_arrival_date: date
    cargo_compensation: bool
    order_pieces: int
    order_total: Decimal
    currency: str

    @property
    def units(self) -> int:
        return int(self.last[-4:]) - int(self.first[-4:]) + 1

    @property
    def typed(self) -> str:
        """What to type in the chat: one serial, or the whole range for the distributor."""
        return f"{self.first}-{self.last}" if self.key == "distributor" else self.first


def _serial(made: date, batch: int) -> str:
    return f"CSP{made.year % 100:02d}{made.month:02d}DM{batch:04d}"


def demo_orders(today: date) -> list[DemoOrder]:
    """The demo orders as of `today` (pure: the same day gives the same orders)."""

    def order(
        key: str,
        customer: str,
        made_months_ago: int,
        arrived_months_ago: int,
        count: int,
        *,
        cargo: bool = False,
        pieces: int | None = None,
        total: str,
        currency: str = "USD",
    ) -> DemoOrder:
        made = add_months(today, -made_months_ago)
        return DemoOrder(
            key=key,
            order_id=f"{DEMO_PREFIX}{key.upper()}",
            customer=customer,
            first=_serial(made, 1),
            last=_serial(made, count),
            production_date=made,
            port_arrival_date=add_months(today, -arrived_months_ago),
            cargo_compensation=cargo,
            order_pieces=pieces or count,
            order_total=Decimal(total),
            currency=currency,
        )

    return [
        # Arrived two months ago: in warranty for two more years (W1, W2).
        order("covered", "Demo: Lima Fleet Services SAC", 4, 2, 3, total="75.00"),
        # Arrived 30 months ago: the 26-month warranty ended four months ago (X1).
        order("expired", "Demo: Gulf Auto Trading LLC", 32, 30, 2, total="58.00", currency="EUR"),
        # A distributor's 40 units, half a year old: 10 or more covered units are offered the discount (M5).
        order("distributor", "Demo: Nairobi Motor Supplies", 8, 6, 40, total="1160.00"),
        # The order chose cargo compensation: later problems are the customer's own (M1).
        # (Its 200 pieces shipped with 2 extra; five of them are listed here.)
        order("cargo", "Demo: Andes Tire & Parts, Ltda.", 5, 3, 5, cargo=True, pieces=200, total="5800.00"),
    ]


def demo_csv(orders: list[DemoOrder]) -> str:
    """The orders as a registry file (docs/registry.md), one range per order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for o in orders:
        writer.writerow(
            [
                o.order_id,
                o.customer,
                o.first,
                o.last,
                o.production_date.isoformat(),
                o.port_arrival_date.isoformat(),
                "true" if o.cargo_compensation else "false",
                o.order_pieces,
                f"{o.order_total:.2f}",
                o.currency,
            ]
        )
    return out.getvalue()


def demo_outcome(o: DemoOrder, today: date, policy: Policy) -> str:
    """What the policy says today about the order's units claimed together, in a few words for the CLI."""
    prefix = o.first[:-4]
    claims = [
        Claim(
            serial=f"{prefix}{n:04d}",
            claim_date=today,
            port_arrival_date=o.port_arrival_date,
            production_date=o.production_date,
            proof=Proof.registry,
            cargo_compensation=o.cargo_compensation,
            order_id=o.order_id,
            order_pieces=o.order_pieces,
            order_total=o.order_total,
            currency=o.currency,
        )
        for n in range(1, (o.units if o.key == "distributor" else 1) + 1)
    ]
    decision = evaluate_units(claims, policy)[0]
    end = decision.warranty_end.isoformat() if decision.warranty_end else "?"
    if decision.outcome is Outcome.covered:
        offered = Method.discount_compensation in decision.methods
        return f"covered until {end}" + (", discount compensation offered" if offered else "")
    if o.key == "expired":
        return f"not covered: warranty ended {end} ({', '.join(decision.clauses)})"
    return f"not covered ({', '.join(decision.clauses)})"
