"""Properties that hold for every claim and date, checked by hypothesis."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from policy import (
    Circumstances,
    Claim,
    Outcome,
    Proof,
    add_months,
    decision_to_json,
    default_policy,
    evaluate,
    find_serials,
    normalize_serial,
)

POLICY = default_policy()
DATES = st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31))
FACT = st.sampled_from([None, False, True])


@st.composite
def serials(draw: st.DrawFn) -> str:
    model = draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=4))
    yy = draw(st.integers(0, 99))
    mm = draw(st.integers(1, 12))
    seq = draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=4, max_size=8))
    return f"{model}{yy:02d}{mm:02d}{seq}"


CLAIMS = st.builds(
    Claim,
    serial=st.one_of(serials(), serials().map(str.lower), st.text(max_size=12)),
    claim_date=DATES,
    port_arrival_date=st.none() | DATES,
    production_date=st.none() | DATES,
    proof=st.sampled_from(Proof),
    circumstances=st.builds(
        Circumstances, misuse=FACT, human_damage=FACT, force_majeure=FACT, unauthorized_repair=FACT
    ),
    cargo_compensation=st.booleans(),
    units=st.integers(1, 50),
    order_pieces=st.none() | st.integers(1, 100_000),
    order_total=st.none() | st.decimals(min_value=0, max_value=10**7, places=2),
    currency=st.none() | st.sampled_from(["USD", "EUR"]),
    prefers_discount=st.booleans(),
)
# Claims with nothing against them but (possibly) their dates.
CLEAN_CLAIMS = CLAIMS.map(
    lambda claim: dataclasses.replace(
        claim, cargo_compensation=False, circumstances=Circumstances(), proof=Proof.registry
    )
)


@given(DATES, st.integers(-1200, 1200))
def test_add_months_lands_in_the_right_month_on_or_before_the_day(start: date, months: int) -> None:
    result = add_months(start, months)
    assert result.year * 12 + result.month == start.year * 12 + start.month + months
    assert result.day <= start.day
    assert result.day == start.day or (result + timedelta(days=1)).day == 1


@given(CLAIMS)
def test_warranty_end_is_start_plus_term_minus_a_day(claim: Claim) -> None:
    decision = evaluate(claim, POLICY)
    if decision.warranty_start is None:
        assert (decision.warranty_end, decision.basis) == (None, None)
    else:
        assert decision.warranty_end == add_months(decision.warranty_start, POLICY.term_months) - timedelta(1)


@given(CLEAN_CLAIMS)
def test_a_claim_on_the_last_covered_day_is_never_refused_for_dates(claim: Claim) -> None:
    end = evaluate(claim, POLICY).warranty_end
    if end is not None:
        decision = evaluate(dataclasses.replace(claim, claim_date=end), POLICY)
        assert decision.outcome == Outcome.covered
        assert not {"X1", "X2"} & set(decision.clauses)


@given(CLAIMS)
def test_methods_exactly_when_covered(claim: Claim) -> None:
    decision = evaluate(claim, POLICY)
    assert bool(decision.methods) == (decision.outcome == Outcome.covered)


@given(CLAIMS)
def test_a_refusal_cites_an_exclusion_or_cargo_compensation(claim: Claim) -> None:
    decision = evaluate(claim, POLICY)
    if decision.outcome == Outcome.not_covered:
        assert any(clause.startswith("X") or clause == "M1" for clause in decision.clauses)
    else:
        assert not any(clause.startswith("X") or clause == "M1" for clause in decision.clauses)


@given(CLAIMS)
def test_a_preliminary_refusal_rests_only_on_what_the_customer_said(claim: Claim) -> None:
    decision = evaluate(claim, POLICY)
    said = {"X4", "X5", "X6", "X7"}
    firm = {"X1", "X2", "X3", "M1"}
    if decision.preliminary:
        assert said & set(decision.clauses) and not firm & set(decision.clauses)


@given(CLAIMS)
def test_every_decision_renders_to_the_contract(claim: Claim) -> None:
    decision = evaluate(claim, POLICY)
    data = decision_to_json(decision, POLICY)
    assert data["clauses"] == sorted(decision.clauses) == list(decision.clauses)
    reasons = data["reasons"]
    assert isinstance(reasons, list)
    assert len(reasons) == len(decision.reasons) > 0
    amount = decision.discount_amount
    assert amount is None or amount == amount.quantize(Decimal("0.01"))


@given(st.lists(serials(), max_size=20), st.sampled_from([", ", "\n", "\t", "; ", " "]))
def test_a_list_of_serials_is_found_in_order(found: list[str], separator: str) -> None:
    expected = list(dict.fromkeys(found))
    assert find_serials(separator.join(found), POLICY) == expected


# What customers type: ASCII, full-width forms, Cyrillic, dashes. (Combining marks from arbitrary
# Unicode can recompose once spaces are removed; no serial contains them, so they are left out.)
TYPED = st.text(
    st.characters(codec="ascii") | st.sampled_from("ＣＳＰ２４０２Ａ－ СсАаЕеКкОоРрХх\u2010\u2011\u2013")
)


@given(TYPED)
def test_normalize_serial_is_idempotent(text: str) -> None:
    assert normalize_serial(normalize_serial(text)) == normalize_serial(text)
