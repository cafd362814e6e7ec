"""docs/policy.md's worked examples and its decision-contract example, run through the JSON contract."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from bot.cli import app
from policy import claim_from_json, decision_to_json, default_policy, evaluate

POLICY = default_policy()

BASE: dict[str, Any] = {
    "serial": "CSP2402A0153",
    "claim_date": "2026-05-09",
    "port_arrival_date": "2024-03-10",
    "proof": "registry",
}
IN_WARRANTY = "In warranty until 2026-05-09 (26 months from port arrival on 2024-03-10)."
IN_WARRANTY_SERIAL = (
    "In warranty until 2026-05-28 (26 months from 2024-03-29: the production date 2024-02-29 read from the"
    " serial number plus 1 month, used when the port arrival is not proven)."
)
REPAIRS = ["remote_guidance", "factory_repair", "door_to_door"]


def decision(outcome: str, basis: str | None, start: str | None, end: str | None, clauses: list[str],
             methods: list[str], discount: str | None, reasons: list[str],
             production: str | None = "2024-02-29") -> dict[str, object]:  # fmt: skip
    return {
        "outcome": outcome,
        "basis": basis,
        "production_date": production,
        "warranty_start": start,
        "warranty_end": end,
        "clauses": clauses,
        "methods": methods,
        "discount_amount": discount,
        "reasons": reasons,
    }


EXAMPLES: list[tuple[str, dict[str, Any], dict[str, object]]] = [
    (
        "1 last covered day",
        BASE,
        decision("covered", "port_arrival", "2024-03-10", "2026-05-09",
                 ["F1", "M2", "M3", "M4", "W1", "W2"], REPAIRS, None, [IN_WARRANTY]),
    ),
    (
        "2 first day after",
        BASE | {"claim_date": "2026-05-10"},
        decision("not_covered", "port_arrival", "2024-03-10", "2026-05-09", ["W1", "W2", "X1"], [], None,
                 ["The warranty ended on 2026-05-09 (26 months from port arrival on 2024-03-10);"
                  " the fault was reported on 2026-05-10."]),
    ),
    (
        "3 by serial, last covered day",
        {"serial": "CSP2402A0153", "claim_date": "2026-05-28", "proof": "none"},
        decision("covered", "serial_production", "2024-03-29", "2026-05-28",
                 ["F1", "M2", "M3", "M4", "W1", "W3"], REPAIRS, None, [IN_WARRANTY_SERIAL]),
    ),
    (
        "4 by serial, first day after",
        {"serial": "CSP2402A0153", "claim_date": "2026-05-29", "proof": "none"},
        decision("not_covered", "serial_production", "2024-03-29", "2026-05-28", ["W1", "W3", "X1", "X2"], [],
                 None,
                 ["The warranty ended on 2026-05-28 (26 months from 2024-03-29: the production date"
                  " 2024-02-29 read from the serial number plus 1 month); the fault was reported on"
                  " 2026-05-29, and without the purchase invoice and warranty certificate the serial"
                  " number's dates apply."]),
    ),
    (
        "5 cargo compensation",
        BASE | {"cargo_compensation": True},
        decision("not_covered", "port_arrival", "2024-03-10", "2026-05-09", ["M1", "W1", "W2"], [], None,
                 ["The order chose cargo compensation: extra pieces were shipped with it instead of"
                  " after-sales service, so later problems are the customer's.", IN_WARRANTY]),
    ),
    (
        "6 human damage",
        BASE | {"circumstances": {"human_damage": True}},
        decision("not_covered", "port_arrival", "2024-03-10", "2026-05-09", ["W1", "W2", "X5"], [], None,
                 ["The damage was caused by people (human-induced damage).", IN_WARRANTY]),
    ),
    (
        "7 unreadable serial",
        {"serial": "hello", "claim_date": "2026-05-01", "proof": "none"},
        decision("review", None, None, None, [], [], None,
                 ['The serial number "hello" could not be read, so the warranty dates cannot be worked out;'
                  " an engineer will check it."],
                 production=None),
    ),
    (
        "8 discount compensation",
        BASE | {"units": 12, "prefers_discount": True, "order_total": "25000.00"},
        decision("covered", "port_arrival", "2024-03-10", "2026-05-09", ["M5", "W1", "W2"],
                 ["discount_compensation"], "250.00",
                 [IN_WARRANTY,
                  "Discount compensation: 250.00 off your next order (1% of the order total 25000.00)."]),
    ),
    # docs/policy.md's further examples: the clarified X2 and M5 rows and the one rounding rule.
    (
        "9 documents without port arrival, first day after",
        {"serial": "CSP2402A0153", "claim_date": "2026-05-29", "proof": "documents"},
        decision("not_covered", "serial_production", "2024-03-29", "2026-05-28", ["W1", "W3", "X1"], [], None,
                 ["The warranty ended on 2026-05-28 (26 months from 2024-03-29: the production date"
                  " 2024-02-29 read from the serial number plus 1 month, as no port arrival date is known);"
                  " the fault was reported on 2026-05-29."]),
    ),
    (
        "10 many units, repair preferred",
        BASE | {"units": 12, "order_total": "18000.00"},
        decision("covered", "port_arrival", "2024-03-10", "2026-05-09",
                 ["F1", "M2", "M3", "M4", "M5", "W1", "W2"], [*REPAIRS, "discount_compensation"], "180.00",
                 [IN_WARRANTY, "Discount compensation is available: 1% of the order total off your next order."]),
    ),
    (
        "11 discount rounds half-up",
        BASE | {"units": 12, "prefers_discount": True, "order_total": "1012.50", "currency": "USD"},
        decision("covered", "port_arrival", "2024-03-10", "2026-05-09", ["M5", "W1", "W2"],
                 ["discount_compensation"], "10.13",
                 [IN_WARRANTY,
                  "Discount compensation: 10.13 USD off your next order (1% of the order total 1012.50 USD)."]),
    ),
]  # fmt: skip

# Several units in one claim (an array for `policy check`): 5 covered and 35 expired units give no M5.
SEVERAL = [
    BASE | {"serial": f"CSP2402A{n:04d}", "claim_date": "2026-05-01", "order_id": "A", "units": 40,
            "prefers_discount": True, "order_total": "40000.00"}
    for n in range(5)
] + [
    BASE | {"serial": f"CSP2402B{n:04d}", "claim_date": "2026-05-01", "port_arrival_date": "2024-02-29",
            "order_id": "B", "units": 40, "prefers_discount": True, "order_total": "40000.00"}
    for n in range(35)
]  # fmt: skip
# 12 units of one order of 1012.50 USD, discount preferred: 10.13 USD, once for the order.
ONE_ORDER = [
    BASE | {"serial": f"CSP2402C{n:04d}", "order_id": "C", "prefers_discount": True, "order_total": "1012.50",
            "currency": "USD"}
    for n in range(12)
]  # fmt: skip


@pytest.mark.parametrize(("claim", "expected"), [e[1:] for e in EXAMPLES], ids=[e[0] for e in EXAMPLES])
def test_worked_example(claim: dict[str, Any], expected: dict[str, object]) -> None:
    actual = decision_to_json(evaluate(claim_from_json(claim), POLICY), POLICY)
    for field, value in expected.items():
        assert (field, actual[field]) == (field, value)
    assert list(actual) == list(expected)


@pytest.mark.parametrize(("claim", "expected"), [e[1:] for e in EXAMPLES], ids=[e[0] for e in EXAMPLES])
def test_policy_check_gives_every_worked_example(claim: dict[str, Any], expected: dict[str, object]) -> None:
    result = CliRunner().invoke(app, ["policy", "check", "-"], input=json.dumps(claim))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == expected


def check_units(claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, ["policy", "check", "-"], input=json.dumps(claims))
    assert result.exit_code == 0, result.output
    decisions: list[dict[str, Any]] = json.loads(result.stdout)
    return decisions


def test_policy_check_counts_only_covered_units_for_m5() -> None:
    decisions = check_units(SEVERAL)
    assert [d["outcome"] for d in decisions] == ["covered"] * 5 + ["not_covered"] * 35
    assert {tuple(d["methods"]) for d in decisions[:5]} == {tuple(REPAIRS)}
    assert all(d["discount_amount"] is None and "M5" not in d["clauses"] for d in decisions)
    assert {tuple(d["clauses"]) for d in decisions[5:]} == {("W1", "W2", "X1")}


def test_policy_check_counts_the_discount_once_per_order() -> None:
    decisions = check_units(ONE_ORDER)
    assert [d["discount_amount"] for d in decisions] == ["10.13", *[None] * 11]
    assert all(d["methods"] == ["discount_compensation"] for d in decisions)
    told = [r for d in decisions for r in d["reasons"] if r.startswith("Discount compensation")]
    assert told == [
        "Discount compensation: 10.13 USD off your next order (1% of the order total 1012.50 USD)."
    ]


def test_preliminary_only_for_what_the_customer_said() -> None:
    prelim = {name: evaluate(claim_from_json(claim), POLICY).preliminary for name, claim, _ in EXAMPLES}
    expected = {name: False for name, _, _ in EXAMPLES} | {"6 human damage": True}
    assert prelim == expected


def test_contract_example_is_reproduced_exactly() -> None:
    # docs/policy.md's "decision contract" example, verbatim but for line breaks.
    claim = json.loads("""
        {"serial": "CSP2402A0153", "claim_date": "2026-05-01", "port_arrival_date": "2024-03-10",
         "production_date": null, "proof": "registry",
         "circumstances": {"misuse": null, "human_damage": false, "force_majeure": null,
                           "unauthorized_repair": null},
         "cargo_compensation": false, "units": 1, "order_pieces": 1000, "order_total": "25000.00",
         "currency": "USD", "prefers_discount": false}
    """)
    expected = json.loads("""
        {"outcome": "covered", "basis": "port_arrival", "production_date": "2024-02-29",
         "warranty_start": "2024-03-10", "warranty_end": "2026-05-09",
         "clauses": ["F1", "M2", "M3", "M4", "W1", "W2"],
         "methods": ["remote_guidance", "factory_repair", "door_to_door"],
         "discount_amount": null,
         "reasons": ["In warranty until 2026-05-09 (26 months from port arrival on 2024-03-10)."]}
    """)
    actual = decision_to_json(evaluate(claim_from_json(claim), POLICY), POLICY)
    assert json.loads(json.dumps(actual)) == expected
