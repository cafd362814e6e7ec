"""Pure warranty rules: parse serials, evaluate a claim against the policy file, explain the decision."""

from __future__ import annotations

from policy.codes import CLAUSE_IDS, PARAM_KINDS, REASON_PARAMS
from policy.contract import ClaimError, claim_from_json, claim_to_json, claims_from_json, decision_to_json
from policy.dates import add_months, last_day_of_month
from policy.engine import cargo_pieces, discount_amount, evaluate, evaluate_units, refusal_clauses, unit_claim
from policy.loader import PolicyFileError, default_policy, load_policy
from policy.model import (
    Basis,
    Circumstances,
    Claim,
    Clause,
    Decision,
    Method,
    Outcome,
    Policy,
    Proof,
    Reason,
    UnitFacts,
)
from policy.serials import (
    ParsedSerial,
    SerialRangeError,
    expand_range,
    find_serials,
    looks_like_serial_attempt,
    normalize_serial,
    parse_serial,
    serial_spans,
)
from policy.texts import ParamFormatter, clause_meaning, language_chain, raw_param, render_reasons

__all__ = [
    "CLAUSE_IDS",
    "PARAM_KINDS",
    "REASON_PARAMS",
    "Basis",
    "Circumstances",
    "Claim",
    "ClaimError",
    "Clause",
    "Decision",
    "Method",
    "Outcome",
    "ParamFormatter",
    "ParsedSerial",
    "Policy",
    "PolicyFileError",
    "Proof",
    "Reason",
    "SerialRangeError",
    "UnitFacts",
    "add_months",
    "cargo_pieces",
    "claim_from_json",
    "claim_to_json",
    "claims_from_json",
    "clause_meaning",
    "decision_to_json",
    "default_policy",
    "discount_amount",
    "evaluate",
    "evaluate_units",
    "expand_range",
    "find_serials",
    "language_chain",
    "last_day_of_month",
    "load_policy",
    "looks_like_serial_attempt",
    "normalize_serial",
    "parse_serial",
    "raw_param",
    "refusal_clauses",
    "render_reasons",
    "serial_spans",
    "unit_claim",
]
