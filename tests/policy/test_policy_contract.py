"""The JSON contract: claims in (and every way one can be wrong), decisions out in the exact format."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from policy import (
    Basis,
    Circumstances,
    Claim,
    ClaimError,
    Decision,
    Method,
    Outcome,
    Proof,
    Reason,
    claim_from_json,
    claim_to_json,
    claims_from_json,
    decision_to_json,
    default_policy,
)

POLICY = default_policy()
MINIMAL: dict[str, Any] = {"serial": "CSP2402A0153", "claim_date": "2026-05-01"}


def test_missing_optional_fields_mean_unknown_or_default() -> None:
    assert claim_from_json(MINIMAL) == Claim(serial="CSP2402A0153", claim_date=date(2026, 5, 1))


def test_null_optional_fields_mean_unknown_or_default() -> None:
    nulls = dict.fromkeys(
        ["port_arrival_date", "production_date", "proof", "circumstances", "cargo_compensation", "units",
         "order_pieces", "order_total", "currency", "prefers_discount"]
    )  # fmt: skip
    assert claim_from_json(MINIMAL | nulls) == Claim(serial="CSP2402A0153", claim_date=date(2026, 5, 1))


def test_every_field() -> None:
    data = MINIMAL | {
        "port_arrival_date": "2024-03-10",
        "production_date": "2024-02-15",
        "proof": "documents",
        "circumstances": {"misuse": False, "human_damage": None, "force_majeure": True},
        "cargo_compensation": True,
        "units": 12,
        "order_pieces": 1000,
        "order_total": "25000.5",
        "currency": "usd",
        "prefers_discount": True,
    }
    expected = Claim(
        serial="CSP2402A0153",
        claim_date=date(2026, 5, 1),
        port_arrival_date=date(2024, 3, 10),
        production_date=date(2024, 2, 15),
        proof=Proof.documents,
        circumstances=Circumstances(misuse=False, human_damage=None, force_majeure=True),
        cargo_compensation=True,
        units=12,
        order_pieces=1000,
        order_total=Decimal("25000.5"),
        currency="USD",
        prefers_discount=True,
    )
    assert claim_from_json(data) == expected


def test_integer_money_is_exact() -> None:
    assert claim_from_json(MINIMAL | {"order_total": 25000}).order_total == Decimal(25000)


MONEY = 'order_total: not an amount of money (expected a string like "250.00"): '
PROOF = "proof: unknown proof (expected one of registry, documents, none, altered): "
BAD_CLAIMS: list[tuple[object, str]] = [
    (["CSP2402A0153"], "claim: must be a JSON object, not an array"),
    ("CSP2402A0153", "claim: must be a JSON object, not a string"),
    (None, "claim: must be a JSON object, not null"),
    ({"claim_date": "2026-05-01"}, "serial: missing"),
    ({"serial": None, "claim_date": "2026-05-01"}, "serial: missing"),
    ({"serial": 123, "claim_date": "2026-05-01"}, "serial: must be a non-empty string: 123"),
    ({"serial": "  ", "claim_date": "2026-05-01"}, "serial: must be a non-empty string: '  '"),
    ({"serial": "CSP2402A0153"}, "claim_date: missing"),
    (MINIMAL | {"claim_date": "2026-13-01"}, "claim_date: not a date (expected YYYY-MM-DD): '2026-13-01'"),
    (MINIMAL | {"claim_date": "2026-02-30"}, "claim_date: not a date (expected YYYY-MM-DD): '2026-02-30'"),
    (MINIMAL | {"claim_date": "20260501"}, "claim_date: not a date (expected YYYY-MM-DD): '20260501'"),
    (MINIMAL | {"claim_date": "01/05/2026"}, "claim_date: not a date (expected YYYY-MM-DD): '01/05/2026'"),
    (MINIMAL | {"claim_date": 20260501}, "claim_date: not a date (expected YYYY-MM-DD): 20260501"),
    (MINIMAL | {"port_arrival_date": "2024-3-10"},
     "port_arrival_date: not a date (expected YYYY-MM-DD): '2024-3-10'"),
    (MINIMAL | {"production_date": "2024-02-29T00:00:00"},
     "production_date: not a date (expected YYYY-MM-DD): '2024-02-29T00:00:00'"),
    (MINIMAL | {"proof": "invoice"},
     PROOF + "'invoice'"),
    (MINIMAL | {"proof": True}, PROOF + "True"),
    (MINIMAL | {"circumstances": {"drunk": True}},
     "circumstances.drunk: unknown circumstance (expected one of misuse, human_damage, force_majeure,"
     " unauthorized_repair)"),
    (MINIMAL | {"circumstances": {"misuse": "yes"}},
     "circumstances.misuse: must be true, false or null: 'yes'"),
    (MINIMAL | {"circumstances": {"force_majeure": 0}},
     "circumstances.force_majeure: must be true, false or null: 0"),
    (MINIMAL | {"circumstances": [True]}, "circumstances: must be an object, not an array"),
    (MINIMAL | {"cargo_compensation": "yes"}, "cargo_compensation: must be true or false: 'yes'"),
    (MINIMAL | {"prefers_discount": 1}, "prefers_discount: must be true or false: 1"),
    (MINIMAL | {"units": 0}, "units: must be a positive integer: 0"),
    (MINIMAL | {"units": -3}, "units: must be a positive integer: -3"),
    (MINIMAL | {"units": 1.5}, "units: must be a positive integer: 1.5"),
    (MINIMAL | {"units": True}, "units: must be a positive integer: True"),
    (MINIMAL | {"order_pieces": "1000"}, "order_pieces: must be a positive integer: '1000'"),
    (MINIMAL | {"order_pieces": 10.0}, "order_pieces: must be a positive integer: 10.0"),
    (MINIMAL | {"order_total": "abc"}, MONEY + "'abc'"),
    (MINIMAL | {"order_total": "-1.00"},
     MONEY + "'-1.00'"),
    (MINIMAL | {"order_total": "1.234"},
     MONEY + "'1.234'"),
    (MINIMAL | {"order_total": "NaN"}, MONEY + "'NaN'"),
    (MINIMAL | {"order_total": "1E+3"},
     MONEY + "'1E+3'"),
    (MINIMAL | {"order_total": 250.5}, MONEY + "250.5"),
    (MINIMAL | {"currency": "dollars"}, "currency: must be a three-letter currency code: 'dollars'"),
    (MINIMAL | {"colour": "red"},
     "colour: unknown field (expected one of serial, claim_date, port_arrival_date, production_date, proof,"
     " circumstances, cargo_compensation, units, order_id, order_pieces, order_total, currency, prefers_discount)"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "message"), BAD_CLAIMS, ids=[m.split(":")[0] for _, m in BAD_CLAIMS])
def test_bad_claim(data: object, message: str) -> None:
    with pytest.raises(ClaimError) as caught:
        claim_from_json(data)
    assert str(caught.value) == message
    assert caught.value.field == message.split(":")[0]


def test_decision_to_json_formats() -> None:
    decision = Decision(
        outcome=Outcome.covered,
        basis=Basis.serial_production,
        production_date=date(2024, 2, 29),
        warranty_start=date(2024, 3, 29),
        warranty_end=date(2026, 5, 28),
        clauses=("W3", "M5", "W1"),
        methods=(Method.discount_compensation,),
        discount_amount=Decimal("7"),
        reasons=(Reason(code="human_damage", params={}),),
    )
    assert decision_to_json(decision, POLICY) == {
        "outcome": "covered",
        "basis": "serial_production",
        "production_date": "2024-02-29",
        "warranty_start": "2024-03-29",
        "warranty_end": "2026-05-28",
        "clauses": ["M5", "W1", "W3"],
        "methods": ["discount_compensation"],
        "discount_amount": "7.00",
        "reasons": ["The damage was caused by people (human-induced damage)."],
    }


def test_claim_to_json_round_trips() -> None:
    claim = Claim(
        serial="CSP2402A0153",
        claim_date=date(2026, 5, 1),
        port_arrival_date=date(2024, 3, 10),
        production_date=date(2024, 2, 6),
        proof=Proof.documents,
        circumstances=Circumstances(misuse=False, human_damage=None, force_majeure=True),
        cargo_compensation=True,
        units=3,
        order_id="PO-24-0117",
        order_pieces=1000,
        order_total=Decimal("1012.50"),
        currency="USD",
        prefers_discount=True,
    )
    assert claim_from_json(claim_to_json(claim)) == claim
    assert claim_from_json(claim_to_json(Claim(serial="x", claim_date=date(2026, 5, 1)))) == Claim(
        serial="x", claim_date=date(2026, 5, 1)
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"serial": "x"}, "claims: must be a JSON array, not an object"),
        ([], "claims: must hold at least one claim"),
        ([MINIMAL, {"serial": "x"}], "[1].claim_date: missing"),
        (
            [MINIMAL, MINIMAL | {"order_id": ""}],
            "[1].order_id: must be a non-empty string of at most 64 characters: ''",
        ),
        ([7], "[0].claim: must be a JSON object, not a number"),
    ],
)
def test_bad_claims(data: object, message: str) -> None:
    with pytest.raises(ClaimError) as caught:
        claims_from_json(data)
    assert str(caught.value) == message
