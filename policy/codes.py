"""The clause ids and reason codes the engine produces, so the loader can insist the policy file has them."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# Every clause of docs/policy.md's table: the engine cites W, X, M and F clauses, the bot cites L1 and S1.
CLAUSE_IDS: tuple[str, ...] = (
    "W1", "W2", "W3",
    "X1", "X2", "X3", "X4", "X5", "X6", "X7",
    "M1", "M2", "M3", "M4", "M5",
    "F1", "L1", "S1",
)  # fmt: skip

_DATES = frozenset({"claim_date", "warranty_start", "warranty_end", "term_months"})
_SERIAL_DATES = _DATES | {"production_date", "offset_months"}

# reason code -> the parameters the engine passes; templates may use any of them and nothing else.
REASON_PARAMS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "in_warranty": _DATES,
        "in_warranty_serial": _SERIAL_DATES,
        "expired": _DATES,
        "expired_serial": _SERIAL_DATES,
        # Proof shown (registry or documents) but no port-arrival date: the serial's dates, without X2.
        "expired_serial_no_arrival": _SERIAL_DATES,
        "cargo_compensation": frozenset(),
        "cargo_compensation_pieces": frozenset({"cargo_pieces", "order_pieces"}),
        "altered_certificate": frozenset(),
        "misuse": frozenset(),
        "human_damage": frozenset(),
        "force_majeure": frozenset(),
        "unauthorized_repair": frozenset(),
        "unreadable_serial": frozenset({"serial"}),
        "production_after_claim": frozenset({"production_date", "claim_date"}),
        "arrival_before_production": frozenset({"port_arrival_date", "production_date"}),
        "claim_before_start": frozenset({"claim_date", "warranty_start"}),
        "discount_amount": frozenset({"amount", "order_total", "rate_percent"}),
        "discount_offered": frozenset({"rate_percent"}),
        # Not put in decisions (the contract's worked example has none): the bot adds it to shipping
        # instructions, so every policy file must still word it.
        "freight_customer": frozenset(),
    }
)

# What each parameter is, so that a caller formats it for the customer's locale (policy/texts.py): "date" is
# an ISO date, "money" an amount with an optional ISO currency ("250.00 USD"), "months" and "count" whole
# numbers, "percent" a number of percent ("1" for 1%), "text" is shown as it is.
PARAM_KINDS: Mapping[str, str] = MappingProxyType(
    {
        "claim_date": "date",
        "warranty_start": "date",
        "warranty_end": "date",
        "production_date": "date",
        "port_arrival_date": "date",
        "term_months": "months",
        "offset_months": "months",
        "amount": "money",
        "order_total": "money",
        "rate_percent": "percent",
        "cargo_pieces": "count",
        "order_pieces": "count",
        "serial": "text",
    }
)
