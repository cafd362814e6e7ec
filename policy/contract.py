"""The JSON decision contract of docs/policy.md: a claim comes in as JSON, a decision goes out as JSON."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from decimal import Decimal, InvalidOperation

from policy.model import Circumstances, Claim, Decision, Policy, Proof
from policy.texts import render_reasons

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CLAIM_FIELDS = (
    "serial",
    "claim_date",
    "port_arrival_date",
    "production_date",
    "proof",
    "circumstances",
    "cargo_compensation",
    "units",
    "order_id",
    "order_pieces",
    "order_total",
    "currency",
    "prefers_discount",
)
_CIRCUMSTANCE_FIELDS = ("misuse", "human_damage", "force_majeure", "unauthorized_repair")


class ClaimError(ValueError):
    """A claim JSON that breaks the contract; `field` names the offending field (dotted for nested ones)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def claim_from_json(data: object) -> Claim:
    """Build a claim from decoded JSON; a missing or null optional field means unknown (or its default).

    Raises:
        ClaimError: the data is not an object, a required field is missing, or a field has a bad value.
    """
    if not isinstance(data, dict):
        raise ClaimError("claim", f"must be a JSON object, not {_json_type(data)}")
    unknown = [key for key in data if key not in _CLAIM_FIELDS]
    if unknown:
        raise ClaimError(str(unknown[0]), f"unknown field (expected one of {', '.join(_CLAIM_FIELDS)})")
    serial = data.get("serial")
    if serial is None:
        raise ClaimError("serial", "missing")
    if not isinstance(serial, str) or not serial.strip():
        raise ClaimError("serial", f"must be a non-empty string: {serial!r}")
    if data.get("claim_date") is None:
        raise ClaimError("claim_date", "missing")
    claim_date = _date(data, "claim_date")
    assert claim_date is not None  # checked just above; narrows the type
    return Claim(
        serial=serial,
        claim_date=claim_date,
        port_arrival_date=_date(data, "port_arrival_date"),
        production_date=_date(data, "production_date"),
        proof=_proof(data.get("proof")),
        circumstances=_circumstances(data.get("circumstances")),
        cargo_compensation=_flag(data, "cargo_compensation"),
        units=_count(data, "units") or 1,
        order_id=_order_id(data.get("order_id")),
        order_pieces=_count(data, "order_pieces"),
        order_total=_money(data.get("order_total")),
        currency=_currency(data.get("currency")),
        prefers_discount=_flag(data, "prefers_discount"),
    )


def claims_from_json(data: object) -> list[Claim]:
    """Build the units of one claim from a JSON array of claims (several units: `evaluate_units`).

    Raises:
        ClaimError: the data is not a non-empty array, or one of its claims breaks the contract; the
            field is prefixed with the claim's index, as in `[3].serial`.
    """
    if not isinstance(data, list):
        raise ClaimError("claims", f"must be a JSON array, not {_json_type(data)}")
    if not data:
        raise ClaimError("claims", "must hold at least one claim")
    claims = []
    for index, item in enumerate(data):
        try:
            claims.append(claim_from_json(item))
        except ClaimError as error:
            raise ClaimError(f"[{index}].{error.field}", error.message) from error
    return claims


def claim_to_json(claim: Claim) -> dict[str, object]:
    """A claim in the contract's shape, so that `claim_from_json(claim_to_json(c)) == c` (stored facts)."""
    facts = claim.circumstances
    return {
        "serial": claim.serial,
        "claim_date": claim.claim_date.isoformat(),
        "port_arrival_date": _iso(claim.port_arrival_date),
        "production_date": _iso(claim.production_date),
        "proof": claim.proof.value,
        "circumstances": {name: getattr(facts, name) for name in _CIRCUMSTANCE_FIELDS},
        "cargo_compensation": claim.cargo_compensation,
        "units": claim.units,
        "order_id": claim.order_id,
        "order_pieces": claim.order_pieces,
        "order_total": _cents(claim.order_total),
        "currency": claim.currency,
        "prefers_discount": claim.prefers_discount,
    }


def decision_to_json(decision: Decision, policy: Policy, language: str = "en") -> dict[str, object]:
    """The decision in the contract's shape: ISO dates, money as "250.00", sorted clauses, reasons as text."""
    return {
        "outcome": decision.outcome.value,
        "basis": decision.basis.value if decision.basis is not None else None,
        "production_date": _iso(decision.production_date),
        "warranty_start": _iso(decision.warranty_start),
        "warranty_end": _iso(decision.warranty_end),
        "clauses": sorted(decision.clauses),
        "methods": [method.value for method in decision.methods],
        "discount_amount": _cents(decision.discount_amount),
        "reasons": render_reasons(decision, policy, language),
    }


def _cents(amount: Decimal | None) -> str | None:
    return f"{amount:.2f}" if amount is not None else None


def _iso(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _date(data: Mapping[str, object], field: str) -> date | None:
    value = data.get(field)
    if value is None:
        return None
    # date.fromisoformat also takes "20260501" and week dates; the contract allows YYYY-MM-DD only.
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ClaimError(field, f"not a date (expected YYYY-MM-DD): {value!r}")


def _proof(value: object) -> Proof:
    if value is None:
        return Proof.none
    if isinstance(value, str) and value in Proof.__members__:
        return Proof(value)
    raise ClaimError("proof", f"unknown proof (expected one of {', '.join(Proof)}): {value!r}")


def _circumstances(value: object) -> Circumstances:
    if value is None:
        return Circumstances()
    if not isinstance(value, dict):
        raise ClaimError("circumstances", f"must be an object, not {_json_type(value)}")
    facts: dict[str, bool | None] = {}
    for key, fact in value.items():
        field = f"circumstances.{key}"
        if key not in _CIRCUMSTANCE_FIELDS:
            expected = ", ".join(_CIRCUMSTANCE_FIELDS)
            raise ClaimError(field, f"unknown circumstance (expected one of {expected})")
        if fact is not None and not isinstance(fact, bool):
            raise ClaimError(field, f"must be true, false or null: {fact!r}")
        facts[key] = fact
    return Circumstances(
        misuse=facts.get("misuse"),
        human_damage=facts.get("human_damage"),
        force_majeure=facts.get("force_majeure"),
        unauthorized_repair=facts.get("unauthorized_repair"),
    )


def _flag(data: Mapping[str, object], field: str) -> bool:
    value = data.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ClaimError(field, f"must be true or false: {value!r}")
    return value


def _count(data: Mapping[str, object], field: str) -> int | None:
    value = data.get(field)
    if value is None:
        return None
    # JSON true would pass as the int 1; a count must be a real integer.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ClaimError(field, f"must be a positive integer: {value!r}")
    return value


def _money(value: object) -> Decimal | None:
    if value is None:
        return None
    amount: Decimal | None = None
    # Strings are the contract's form; integers are exact too. Floats are refused: 0.1 is not 0.1.
    if isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            amount = None
    elif isinstance(value, int) and not isinstance(value, bool):
        amount = Decimal(value)
    # Sub-cent amounts and exponents ("1E+3") are typos, not money.
    cents_at_most = amount is not None and amount.is_finite() and amount.as_tuple().exponent in range(-2, 1)
    if amount is not None and cents_at_most and amount >= 0:
        return amount
    raise ClaimError("order_total", f'not an amount of money (expected a string like "250.00"): {value!r}')


def _order_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise ClaimError("order_id", f"must be a non-empty string of at most 64 characters: {value!r}")
    return value.strip()


def _currency(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]{3}", value):
        raise ClaimError("currency", f"must be a three-letter currency code: {value!r}")
    return value.upper()
