"""The evaluation order beyond the worked examples: date edges, review cases, methods, discount, reasons."""

from __future__ import annotations

import dataclasses
from datetime import date
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest

from policy import (
    Basis,
    Circumstances,
    Claim,
    Decision,
    Method,
    Outcome,
    Proof,
    Reason,
    cargo_pieces,
    default_policy,
    discount_amount,
    evaluate,
    evaluate_units,
    render_reasons,
)

POLICY = default_policy()
REPAIRS = (Method.remote_guidance, Method.factory_repair, Method.door_to_door)
REGISTRY = Claim(
    serial="CSP2402A0153",
    claim_date=date(2026, 5, 9),
    port_arrival_date=date(2024, 3, 10),
    proof=Proof.registry,
)
NO_PROOF = Claim(serial="CSP2402A0153", claim_date=date(2026, 5, 28))


def dates_of(decision: Decision) -> tuple[Basis | None, date | None, date | None, date | None]:
    return decision.basis, decision.production_date, decision.warranty_start, decision.warranty_end


def test_last_covered_day_and_the_day_after() -> None:
    on_end = evaluate(REGISTRY, POLICY)
    after = evaluate(dataclasses.replace(REGISTRY, claim_date=date(2026, 5, 10)), POLICY)
    assert (on_end.outcome, on_end.warranty_end) == (Outcome.covered, date(2026, 5, 9))
    assert (after.outcome, after.clauses, after.preliminary) == (
        Outcome.not_covered,
        ("W1", "W2", "X1"),
        False,
    )


@pytest.mark.parametrize(
    ("arrival", "end"),
    [
        # start + 26 months clamps to 2026-02-28; the last covered day is the day before.
        (date(2023, 12, 31), date(2026, 2, 27)),
        (date(2024, 2, 29), date(2026, 4, 28)),
        (date(2024, 1, 31), date(2026, 3, 30)),
        (date(2024, 3, 1), date(2026, 4, 30)),
    ],
)
def test_port_arrival_month_ends(arrival: date, end: date) -> None:
    claim = Claim(
        serial="CSP2312A0001", claim_date=date(2026, 1, 1), port_arrival_date=arrival, proof=Proof.documents
    )
    decision = evaluate(claim, POLICY)
    assert dates_of(decision) == (Basis.port_arrival, date(2023, 12, 31), arrival, end)


@pytest.mark.parametrize(
    ("serial", "production", "start", "end"),
    [
        ("CSP2402A0153", date(2024, 2, 29), date(2024, 3, 29), date(2026, 5, 28)),
        # Production 2024-01-31 + 1 month clamps to the leap day.
        ("CSP2401A0153", date(2024, 1, 31), date(2024, 2, 29), date(2026, 4, 28)),
        ("CSP2501A0153", date(2025, 1, 31), date(2025, 2, 28), date(2027, 4, 27)),
        ("CSP2312A0153", date(2023, 12, 31), date(2024, 1, 31), date(2026, 3, 30)),
    ],
)
def test_serial_production_dates(serial: str, production: date, start: date, end: date) -> None:
    decision = evaluate(Claim(serial=serial, claim_date=start), POLICY)
    assert dates_of(decision) == (Basis.serial_production, production, start, end)
    assert (decision.outcome, decision.clauses) == (Outcome.covered, ("F1", "M2", "M3", "M4", "W1", "W3"))


def test_serial_is_normalised_before_reading() -> None:
    decision = evaluate(dataclasses.replace(NO_PROOF, serial=" csp-2402-a0153 "), POLICY)
    assert dates_of(decision) == (
        Basis.serial_production,
        date(2024, 2, 29),
        date(2024, 3, 29),
        date(2026, 5, 28),
    )


def test_registry_production_date_overrides_the_serial() -> None:
    claim = dataclasses.replace(NO_PROOF, production_date=date(2024, 1, 15), claim_date=date(2026, 3, 15))
    decision = evaluate(claim, POLICY)
    assert dates_of(decision) == (
        Basis.serial_production,
        date(2024, 1, 15),
        date(2024, 2, 15),
        date(2026, 4, 14),
    )


def test_production_date_makes_an_unreadable_serial_usable() -> None:
    claim = dataclasses.replace(NO_PROOF, serial="hello", production_date=date(2024, 2, 29))
    decision = evaluate(claim, POLICY)
    assert (decision.outcome, decision.warranty_end) == (Outcome.covered, date(2026, 5, 28))


@pytest.mark.parametrize(
    ("proof", "arrival", "basis"),
    [
        (Proof.registry, date(2024, 3, 10), Basis.port_arrival),
        (Proof.documents, date(2024, 3, 10), Basis.port_arrival),
        (Proof.none, date(2024, 3, 10), Basis.serial_production),
        (Proof.registry, None, Basis.serial_production),
        (Proof.documents, None, Basis.serial_production),
        (Proof.altered, date(2024, 3, 10), Basis.serial_production),
    ],
)
def test_basis_needs_proof_and_arrival(proof: Proof, arrival: date | None, basis: Basis) -> None:
    claim = Claim(serial="CSP2402A0153", claim_date=date(2025, 1, 1), port_arrival_date=arrival, proof=proof)
    assert evaluate(claim, POLICY).basis == basis


REVIEWS = [
    ("unreadable serial", dataclasses.replace(NO_PROOF, serial="CSP2413A0153"),
     Reason(code="unreadable_serial", params={"serial": "CSP2413A0153"}), None),
    ("production after claim", dataclasses.replace(NO_PROOF, claim_date=date(2024, 2, 28)),
     Reason(code="production_after_claim",
            params={"production_date": "2024-02-29", "claim_date": "2024-02-28"}),
     date(2024, 2, 29)),
    ("arrival before production", dataclasses.replace(REGISTRY, port_arrival_date=date(2024, 2, 10)),
     Reason(code="arrival_before_production",
            params={"port_arrival_date": "2024-02-10", "production_date": "2024-02-29"}),
     date(2024, 2, 29)),
    ("claim before start", dataclasses.replace(NO_PROOF, claim_date=date(2024, 3, 15)),
     Reason(code="claim_before_start", params={"claim_date": "2024-03-15", "warranty_start": "2024-03-29"}),
     date(2024, 2, 29)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("claim", "reason", "production"), [r[1:] for r in REVIEWS], ids=[r[0] for r in REVIEWS]
)
def test_dates_that_cannot_be_computed_go_to_review(
    claim: Claim, reason: Reason, production: date | None
) -> None:
    decision = evaluate(claim, POLICY)
    expected = Decision(
        outcome=Outcome.review, basis=None, production_date=production, warranty_start=None,
        warranty_end=None, clauses=(), methods=(), discount_amount=None, reasons=(reason,),
    )  # fmt: skip
    assert decision == expected
    assert decision.preliminary is False


def test_refusal_from_steps_1_to_3_wins_over_review() -> None:
    unreadable = dataclasses.replace(NO_PROOF, serial="hello")
    said = evaluate(dataclasses.replace(unreadable, circumstances=Circumstances(misuse=True)), POLICY)
    records = evaluate(dataclasses.replace(unreadable, cargo_compensation=True), POLICY)
    assert (said.outcome, said.clauses, said.preliminary) == (Outcome.not_covered, ("X4",), True)
    assert (records.outcome, records.clauses, records.preliminary) == (Outcome.not_covered, ("M1",), False)
    assert [r.code for r in said.reasons] == ["misuse", "unreadable_serial"]


def test_every_established_circumstance_is_cited() -> None:
    facts = Circumstances(misuse=True, human_damage=True, force_majeure=True, unauthorized_repair=True)
    decision = evaluate(dataclasses.replace(REGISTRY, circumstances=facts), POLICY)
    assert decision.clauses == ("W1", "W2", "X4", "X5", "X6", "X7")
    assert [r.code for r in decision.reasons] == [
        "misuse", "human_damage", "force_majeure", "unauthorized_repair", "in_warranty",
    ]  # fmt: skip
    assert (decision.methods, decision.preliminary) == ((), True)


def test_unknown_and_false_circumstances_exclude_nothing() -> None:
    facts = Circumstances(misuse=False, human_damage=None, force_majeure=False, unauthorized_repair=None)
    assert evaluate(dataclasses.replace(REGISTRY, circumstances=facts), POLICY).outcome == Outcome.covered


def test_expired_and_said_refusal_is_not_preliminary() -> None:
    claim = dataclasses.replace(
        REGISTRY, claim_date=date(2027, 1, 1), circumstances=Circumstances(force_majeure=True)
    )
    decision = evaluate(claim, POLICY)
    assert (decision.clauses, decision.preliminary) == (("W1", "W2", "X1", "X6"), False)


def test_altered_certificate() -> None:
    decision = evaluate(dataclasses.replace(REGISTRY, proof=Proof.altered), POLICY)
    assert (decision.outcome, decision.clauses) == (Outcome.not_covered, ("W1", "W3", "X3"))
    assert (decision.reasons[0], decision.preliminary) == (
        Reason(code="altered_certificate", params={}),
        False,
    )


def test_cargo_compensation_reason_names_the_pieces() -> None:
    decision = evaluate(dataclasses.replace(REGISTRY, cargo_compensation=True, order_pieces=1000), POLICY)
    assert render_reasons(decision, POLICY)[0] == (
        "The order chose cargo compensation: 10 extra pieces were shipped with its 1000 pieces instead of"
        " after-sales service, so later problems are the customer's."
    )


@pytest.mark.parametrize(("pieces", "extra"), [(1000, 10), (1001, 11), (1, 1), (50, 1), (100, 1), (101, 2)])
def test_cargo_pieces_round_up(pieces: int, extra: int) -> None:
    assert cargo_pieces(pieces, POLICY) == extra


@pytest.mark.parametrize(
    ("units", "prefers_discount", "methods", "clauses"),
    [
        (1, False, REPAIRS, ("F1", "M2", "M3", "M4", "W1", "W2")),
        (1, True, REPAIRS, ("F1", "M2", "M3", "M4", "W1", "W2")),
        (9, True, REPAIRS, ("F1", "M2", "M3", "M4", "W1", "W2")),
        (10, False, (*REPAIRS, Method.discount_compensation), ("F1", "M2", "M3", "M4", "M5", "W1", "W2")),
        (10, True, (Method.discount_compensation,), ("M5", "W1", "W2")),
        (40, True, (Method.discount_compensation,), ("M5", "W1", "W2")),
    ],
)
def test_methods(
    units: int, prefers_discount: bool, methods: tuple[Method, ...], clauses: tuple[str, ...]
) -> None:
    decision = evaluate(dataclasses.replace(REGISTRY, units=units, prefers_discount=prefers_discount), POLICY)
    assert (decision.methods, decision.clauses) == (methods, clauses)


@pytest.mark.parametrize(
    ("total", "amount"),
    [
        (Decimal("25000.00"), Decimal("250.00")),
        (Decimal("0.50"), Decimal("0.01")),  # half-up, where half-even would give 0.00
        (Decimal("12345.67"), Decimal("123.46")),
        (Decimal("1234.49"), Decimal("12.34")),
        (Decimal("0"), Decimal("0.00")),
    ],
)
def test_discount_amount_rounds_half_up_to_cents(total: Decimal, amount: Decimal) -> None:
    claim = dataclasses.replace(REGISTRY, units=10, order_total=total)
    assert evaluate(claim, POLICY).discount_amount == amount


def test_discount_amount_only_with_discount_method() -> None:
    claim = dataclasses.replace(REGISTRY, units=9, order_total=Decimal("25000.00"), prefers_discount=True)
    assert evaluate(claim, POLICY).discount_amount is None


def test_discount_reason_with_currency_and_without_total() -> None:
    with_total = dataclasses.replace(
        REGISTRY, units=12, order_total=Decimal("25000.00"), currency="USD", prefers_discount=True
    )
    without_total = dataclasses.replace(REGISTRY, units=12, prefers_discount=True)
    assert render_reasons(evaluate(with_total, POLICY), POLICY)[1] == (
        "Discount compensation: 250.00 USD off your next order (1% of the order total 25000.00 USD)."
    )
    assert render_reasons(evaluate(without_total, POLICY), POLICY)[1] == (
        "Discount compensation is available: 1% of the order total off your next order."
    )


def test_a_customer_who_did_not_ask_for_the_discount_is_told_no_amount() -> None:
    # 12 covered units, the customer chose repair: M5 stays an option for the engineer (with its amount
    # on the decision), but no reason tells the customer an amount as if it were granted.
    claim = dataclasses.replace(REGISTRY, units=12, order_total=Decimal("18000.00"), currency="USD")
    decision = evaluate(claim, POLICY)
    assert decision.methods == (*REPAIRS, Method.discount_compensation)
    assert decision.discount_amount == Decimal("180.00")
    reasons = render_reasons(decision, POLICY)
    assert not any("180" in reason for reason in reasons), reasons
    assert [r.code for r in decision.reasons] == ["in_warranty", "discount_offered"]


@pytest.mark.parametrize(
    ("total", "amount"),
    [
        (Decimal("1012.50"), Decimal("10.13")),  # half-even would give 10.12
        (Decimal("1011.50"), Decimal("10.12")),  # 10.115 -> 10.12 both ways
        (Decimal("0.50"), Decimal("0.01")),
        (Decimal("999.99"), Decimal("10.00")),
    ],
)
def test_one_money_function_rounds_half_up(total: Decimal, amount: Decimal) -> None:
    assert discount_amount(total, POLICY) == amount
    claim = dataclasses.replace(REGISTRY, units=12, order_total=total, prefers_discount=True)
    assert evaluate(claim, POLICY).discount_amount == amount


@pytest.mark.parametrize(
    ("proof", "arrival", "clauses", "code"),
    [
        (Proof.none, None, ("W1", "W3", "X1", "X2"), "expired_serial"),
        (Proof.altered, None, ("W1", "W3", "X1", "X2", "X3"), "expired_serial"),
        # Documents or records shown, but no port arrival known: W3's dates, and X2 is not cited.
        (Proof.documents, None, ("W1", "W3", "X1"), "expired_serial_no_arrival"),
        (Proof.registry, None, ("W1", "W3", "X1"), "expired_serial_no_arrival"),
        (Proof.documents, date(2024, 3, 10), ("W1", "W2", "X1"), "expired"),
    ],
)
def test_x2_only_when_proof_is_none_or_altered(
    proof: Proof, arrival: date | None, clauses: tuple[str, ...], code: str
) -> None:
    claim = Claim(serial="CSP2402A0153", claim_date=date(2026, 6, 1), proof=proof, port_arrival_date=arrival)
    decision = evaluate(claim, POLICY)
    assert (decision.outcome, decision.clauses) == (Outcome.not_covered, clauses)
    assert code in [r.code for r in decision.reasons]
    text = " ".join(render_reasons(decision, POLICY))
    assert ("without the purchase invoice" in text) == ("X2" in clauses), text


# --- several units: two passes -------------------------------------------------------------------------


def _units(count: int, order_id: str, **facts: Any) -> list[Claim]:
    base = dataclasses.replace(REGISTRY, claim_date=date(2026, 5, 1), order_id=order_id)
    return [dataclasses.replace(base, serial=f"CSP2402A{order_id}{n:02d}", **facts) for n in range(count)]


def test_m5_counts_the_covered_units_only() -> None:
    # 5 covered and 35 expired units of one claim: 5 < 10, so no discount compensation and no amount.
    covered = _units(5, "A", order_total=Decimal("40000.00"))
    expired = _units(35, "B", port_arrival_date=date(2024, 2, 29), order_total=Decimal("40000.00"))
    decisions = evaluate_units([*covered, *expired], POLICY)
    assert [d.outcome for d in decisions] == [Outcome.covered] * 5 + [Outcome.not_covered] * 35
    assert all(d.methods == REPAIRS for d in decisions[:5])
    assert all(d.discount_amount is None and "M5" not in d.clauses for d in decisions)
    # Each unit on its own facts: 40 serials alone would have offered M5.
    alone = evaluate(dataclasses.replace(covered[0], units=40), POLICY)
    assert Method.discount_compensation in alone.methods


def test_the_discount_is_counted_once_per_order() -> None:
    first = _units(12, "A", order_total=Decimal("1012.50"), currency="USD", prefers_discount=True)
    second = _units(3, "B", order_total=Decimal("25000.00"), currency="USD", prefers_discount=True)
    decisions = evaluate_units([*first, *second], POLICY)
    assert all(d.methods == (Method.discount_compensation,) for d in decisions)
    amounts = [d.discount_amount for d in decisions]
    assert amounts == [Decimal("10.13"), *[None] * 11, Decimal("250.00"), None, None]
    assert sum(a for a in amounts if a is not None) == Decimal("260.13")
    # The amount is told once per order, on the unit that carries it.
    told = [r for d in decisions for r in d.reasons if r.code == "discount_amount"]
    assert [r.params["amount"] for r in told] == ["10.13 USD", "250.00 USD"]


def test_units_without_an_order_are_each_their_own_order() -> None:
    claims = [dataclasses.replace(c, order_id=None) for c in _units(10, "A", order_total=Decimal("100.00"))]
    decisions = evaluate_units(claims, POLICY)
    assert [d.discount_amount for d in decisions] == [Decimal("1.00")] * 10


def test_evaluate_units_of_nothing_is_nothing() -> None:
    assert evaluate_units([], POLICY) == []


def test_render_reasons_falls_back_to_english() -> None:
    french = {"in_warranty": "Sous garantie jusqu'au {warranty_end}."}
    policy = dataclasses.replace(
        POLICY, reason_texts=MappingProxyType({**POLICY.reason_texts, "fr": MappingProxyType(french)})
    )
    decision = evaluate(dataclasses.replace(REGISTRY, circumstances=Circumstances(human_damage=True)), policy)
    english = ["The damage was caused by people (human-induced damage).",
               "In warranty until 2026-05-09 (26 months from port arrival on 2024-03-10)."]  # fmt: skip
    assert render_reasons(decision, policy, "fr") == [english[0], "Sous garantie jusqu'au 2026-05-09."]
    assert render_reasons(decision, policy, "de") == english


def test_policy_term_comes_from_the_policy() -> None:
    two_years = dataclasses.replace(POLICY, term_months=24)
    decision = evaluate(REGISTRY, two_years)
    assert (decision.outcome, decision.warranty_end) == (Outcome.not_covered, date(2026, 3, 9))


def test_a_refusal_cites_the_exclusions_and_service_limits_of_the_refused_units_only() -> None:
    from policy import refusal_clauses

    units = [
        ("not_covered", ["W1", "X4", "M1"]),
        ("covered", ["W2", "X5", "M5"]),
        ("not_covered", ["M5", "X2"]),
    ]
    assert refusal_clauses(units) == ["M1", "X2", "X4"]
    assert refusal_clauses([]) == []
