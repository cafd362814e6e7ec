"""Evaluate a warranty claim against a policy, step by step as docs/policy.md's "How a claim is decided" says."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

from policy.dates import add_months
from policy.model import (
    Basis,
    Circumstances,
    Claim,
    Decision,
    Method,
    Outcome,
    Policy,
    Proof,
    Reason,
    UnitFacts,
)
from policy.serials import parse_serial

_CENT = Decimal("0.01")

# (circumstance attribute, clause, reason code) for X4–X7, in clause order.
_CIRCUMSTANCES: tuple[tuple[str, str, str], ...] = (
    ("misuse", "X4", "misuse"),
    ("human_damage", "X5", "human_damage"),
    ("force_majeure", "X6", "force_majeure"),
    ("unauthorized_repair", "X7", "unauthorized_repair"),
)
_METHOD_CLAUSES: dict[Method, str] = {
    Method.remote_guidance: "M2",
    Method.factory_repair: "M3",
    Method.door_to_door: "M4",
    Method.discount_compensation: "M5",
}
# Shipping happens (and its freight is the customer's) only for parts sent out or goods sent back.
_SHIPPING_METHODS = frozenset({Method.remote_guidance, Method.factory_repair})


@dataclass(frozen=True, kw_only=True)
class _Period:
    basis: Basis
    start: date
    end: date


def cargo_pieces(order_pieces: int, policy: Policy) -> int:
    """The extra pieces cargo compensation (M1) ships: the policy's share of the order, rounded up."""
    return math.ceil(Decimal(order_pieces) * policy.cargo_rate)


def discount_amount(order_total: Decimal, policy: Policy) -> Decimal:
    """M5's amount for one order: the policy's rate (1%) of the order total, rounded half-up to cents.

    The one money computation: the engine, the conversation's preference prompt and the desk all use it,
    so 1% of 1012.50 is 10.13 everywhere (half-even would give 10.12).
    """
    return (order_total * policy.discount_rate).quantize(_CENT, rounding=ROUND_HALF_UP)


def evaluate_units(claims: Sequence[Claim], policy: Policy) -> list[Decision]:
    """Decide the units of one claim together, in two passes (docs/policy.md, "Several units in one claim").

    Pass 1 evaluates each unit on its own facts and counts the units covered by steps 1-4; pass 2 evaluates
    each again with `units` set to that count, so 5 covered and 35 expired units give no M5. The discount
    is 1% of each order's total, counted once per order: it is on the first unit of each order (by
    `order_id`; a unit without one is its own order) whose decision carries it, and the other units of that
    order have `discount_amount` None and no amount among their reasons. Summing `discount_amount` over the
    decisions therefore gives the claim's whole discount.
    """
    first = [evaluate(replace(claim, units=1, prefers_discount=False), policy) for claim in claims]
    covered = sum(1 for decision in first if decision.outcome is Outcome.covered)
    decided: list[Decision] = []
    counted: set[str] = set()
    for index, claim in enumerate(claims):
        decision = evaluate(replace(claim, units=covered), policy)
        if decision.discount_amount is not None:
            order = f"order:{claim.order_id}" if claim.order_id is not None else f"unit:{index}"
            if order in counted:
                kept = tuple(r for r in decision.reasons if r.code != "discount_amount")
                decision = replace(decision, discount_amount=None, reasons=kept)
            counted.add(order)
        decided.append(decision)
    return decided


def unit_claim(
    serial: str,
    *,
    claim_date: date,
    record: UnitFacts | None,
    proof: Proof = Proof.none,
    circumstances: Circumstances | None = None,
    prefers_discount: bool = False,
) -> Claim:
    """One unit's claim: the registry's record proves the sale and gives the dates and the order; without one,
    `proof` is what the customer showed."""
    return Claim(
        serial=serial,
        claim_date=claim_date,
        port_arrival_date=record.port_arrival_date if record else None,
        production_date=record.production_date if record else None,
        proof=Proof.registry if record is not None else proof,
        circumstances=circumstances or Circumstances(),
        cargo_compensation=record.cargo_compensation if record else False,
        order_id=record.order_id if record else None,
        order_pieces=record.order_pieces if record else None,
        order_total=record.order_total if record else None,
        currency=record.currency if record else None,
        prefers_discount=prefers_discount,
    )


def refusal_clauses(units: Iterable[tuple[str, Iterable[str]]]) -> list[str]:
    """The clauses a refusal cites, from the units' (outcome, clauses): the exclusions (X…) and the limits on
    service (M…) of the refused units; not M5, which is a way of compensating, not a reason to refuse."""
    return sorted(
        {
            clause
            for outcome, clauses in units
            if outcome == Outcome.not_covered
            for clause in clauses
            if clause[0] in "XM" and clause != "M5"
        }
    )


def evaluate(claim: Claim, policy: Policy) -> Decision:
    """Decide a claim; every step runs and the decision cites every clause it rests on."""
    clauses: set[str] = set()
    reasons: list[Reason] = []
    refused = False

    # 1. M1: an order that took cargo compensation has no after-sales service.
    if claim.cargo_compensation:
        refused = True
        clauses.add("M1")
        if claim.order_pieces is not None:
            pieces = {
                "cargo_pieces": str(cargo_pieces(claim.order_pieces, policy)),
                "order_pieces": str(claim.order_pieces),
            }
            reasons.append(Reason(code="cargo_compensation_pieces", params=pieces))
        else:
            reasons.append(Reason(code="cargo_compensation", params={}))

    # 2. X3: an engineer found the certificate altered or not matching the product.
    if claim.proof is Proof.altered:
        refused = True
        clauses.add("X3")
        reasons.append(Reason(code="altered_certificate", params={}))

    # 3. X4–X7: only established facts exclude; unknown (None) and false exclude nothing.
    for attribute, clause, code in _CIRCUMSTANCES:
        if getattr(claim.circumstances, attribute) is True:
            refused = True
            clauses.add(clause)
            reasons.append(Reason(code=code, params={}))

    # 4. Dates.
    production = claim.production_date
    if production is None:
        parsed = parse_serial(claim.serial, policy)
        production = parsed.production_date if parsed is not None else None
    period, date_reason = _period(claim, production, policy)
    reasons.append(date_reason)
    if period is not None:
        clauses.update({"W1", "W2" if period.basis is Basis.port_arrival else "W3"})
        if claim.claim_date > period.end:
            refused = True
            clauses.add("X1")
            # X2 rests on missing or altered proof: never cited when documents or records were shown.
            if period.basis is Basis.serial_production and claim.proof in (Proof.none, Proof.altered):
                clauses.add("X2")

    # 5. Outcome, methods and the discount.
    if refused:
        outcome = Outcome.not_covered
    elif period is None:
        outcome = Outcome.review
    else:
        outcome = Outcome.covered
    methods = _methods(claim, policy) if outcome is Outcome.covered else ()
    clauses.update(_METHOD_CLAUSES[method] for method in methods)
    if _SHIPPING_METHODS.intersection(methods):
        clauses.add("F1")
    discount: Decimal | None = None
    if Method.discount_compensation in methods:
        rate_percent = _plain(policy.discount_rate * 100)
        if claim.order_total is not None:
            discount = discount_amount(claim.order_total, policy)
        if discount is not None and claim.order_total is not None and claim.prefers_discount:
            params = {
                "amount": _money(discount, claim.currency),
                "order_total": _money(claim.order_total, claim.currency),
                "rate_percent": rate_percent,
            }
            reasons.append(Reason(code="discount_amount", params=params))
        else:
            # An option, not a grant (M5): a customer who did not ask for the discount is told no amount.
            reasons.append(Reason(code="discount_offered", params={"rate_percent": rate_percent}))

    return Decision(
        outcome=outcome,
        basis=period.basis if period is not None else None,
        production_date=production,
        warranty_start=period.start if period is not None else None,
        warranty_end=period.end if period is not None else None,
        clauses=tuple(sorted(clauses)),
        methods=methods,
        discount_amount=discount,
        reasons=tuple(reasons),
    )


def _period(claim: Claim, production: date | None, policy: Policy) -> tuple[_Period | None, Reason]:
    """The warranty period and the reason explaining it, or None and the reason it cannot be computed."""
    if production is None:
        return None, Reason(code="unreadable_serial", params={"serial": claim.serial})
    if production > claim.claim_date:
        params = {"production_date": production.isoformat(), "claim_date": claim.claim_date.isoformat()}
        return None, Reason(code="production_after_claim", params=params)
    arrival = claim.port_arrival_date
    if arrival is not None and arrival < production:
        params = {"port_arrival_date": arrival.isoformat(), "production_date": production.isoformat()}
        return None, Reason(code="arrival_before_production", params=params)
    # W2 needs both a proven purchase and a known arrival; anything less falls back to W3.
    if claim.proof in (Proof.registry, Proof.documents) and arrival is not None:
        basis, start = Basis.port_arrival, arrival
    else:
        basis, start = Basis.serial_production, add_months(production, policy.serial_fallback_offset_months)
    if claim.claim_date < start:
        params = {"claim_date": claim.claim_date.isoformat(), "warranty_start": start.isoformat()}
        return None, Reason(code="claim_before_start", params=params)
    end = add_months(start, policy.term_months) - timedelta(days=1)
    params = {
        "claim_date": claim.claim_date.isoformat(),
        "warranty_start": start.isoformat(),
        "warranty_end": end.isoformat(),
        "term_months": str(policy.term_months),
    }
    if basis is Basis.serial_production:
        params["production_date"] = production.isoformat()
        params["offset_months"] = str(policy.serial_fallback_offset_months)
    expired = claim.claim_date > end
    code = ("expired" if expired else "in_warranty") + ("_serial" if basis is Basis.serial_production else "")
    if code == "expired_serial" and claim.proof in (Proof.registry, Proof.documents):
        # Proof was shown but no port-arrival date is known: the serial's dates apply, without X2's words.
        code = "expired_serial_no_arrival"
    return _Period(basis=basis, start=start, end=end), Reason(code=code, params=params)


def _methods(claim: Claim, policy: Policy) -> tuple[Method, ...]:
    """The methods offered on a covered claim; the engineer picks among M2–M4 after remote diagnosis."""
    repairs = (Method.remote_guidance, Method.factory_repair, Method.door_to_door)
    if claim.units < policy.discount_min_units:
        return repairs
    if claim.prefers_discount:
        return (Method.discount_compensation,)
    return (*repairs, Method.discount_compensation)


def _plain(value: Decimal) -> str:
    """A decimal without exponent or trailing zeros: 1.00 -> "1", 1.50 -> "1.5"."""
    return f"{value.normalize():f}"


def _money(amount: Decimal, currency: str | None) -> str:
    text = f"{amount.quantize(_CENT, rounding=ROUND_HALF_UP):f}"
    return f"{text} {currency}" if currency else text
