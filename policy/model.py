"""The values of the warranty policy: the policy itself, a claim, and the decision taken on it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import StrEnum


class Proof(StrEnum):
    """What proves the purchase of the unit (docs/policy.md, "Proof of purchase")."""

    registry = "registry"
    documents = "documents"
    none = "none"
    altered = "altered"


class Outcome(StrEnum):
    """The verdict of a decision."""

    covered = "covered"
    not_covered = "not_covered"
    review = "review"


class Basis(StrEnum):
    """Which date the warranty period starts from: W2 (port arrival) or W3 (production date by the serial)."""

    port_arrival = "port_arrival"
    serial_production = "serial_production"


class Method(StrEnum):
    """An after-sales service method, declared in the order decisions list them."""

    remote_guidance = "remote_guidance"
    factory_repair = "factory_repair"
    door_to_door = "door_to_door"
    discount_compensation = "discount_compensation"


@dataclass(frozen=True, kw_only=True)
class Circumstances:
    """What is established about how the fault arose; None means unknown and excludes nothing."""

    misuse: bool | None = None
    human_damage: bool | None = None
    force_majeure: bool | None = None
    unauthorized_repair: bool | None = None


@dataclass(frozen=True, kw_only=True)
class UnitFacts:
    """What the shipment registry knows about one serial."""

    serial: str
    order_id: str
    production_date: date | None = None
    port_arrival_date: date | None = None
    cargo_compensation: bool = False
    order_pieces: int | None = None
    order_total: Decimal | None = None
    currency: str | None = None


@dataclass(frozen=True, kw_only=True)
class Claim:
    """One unit's warranty claim, with the facts known about it (registry facts come in as arguments)."""

    serial: str
    claim_date: date
    port_arrival_date: date | None = None
    # A registry record's production date; it overrides the one read from the serial.
    production_date: date | None = None
    proof: Proof = Proof.none
    circumstances: Circumstances = field(default_factory=Circumstances)
    cargo_compensation: bool = False
    units: int = 1
    # The order the unit belongs to: several units of one order share its discount (M5), counted once.
    order_id: str | None = None
    order_pieces: int | None = None
    order_total: Decimal | None = None
    currency: str | None = None
    prefers_discount: bool = False


@dataclass(frozen=True, kw_only=True)
class Reason:
    """One reason behind a decision, as a code and its parameters; text tables turn it into words."""

    code: str
    params: Mapping[str, str] = field(default_factory=dict)


# Clauses that make a refusal final: dates (X1, X2), records (M1) or an engineer's finding (X3).
_FIRM_REFUSAL_CLAUSES = frozenset({"X1", "X2", "X3", "M1"})


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The policy's answer to a claim: outcome, dates, cited clauses, offered methods and reasons."""

    outcome: Outcome
    basis: Basis | None
    production_date: date | None
    warranty_start: date | None
    warranty_end: date | None
    clauses: tuple[str, ...]
    methods: tuple[Method, ...]
    discount_amount: Decimal | None
    reasons: tuple[Reason, ...]

    @property
    def preliminary(self) -> bool:
        """True for a refusal resting only on what the customer said (X4–X7): an engineer must confirm it."""
        return self.outcome is Outcome.not_covered and not _FIRM_REFUSAL_CLAUSES.intersection(self.clauses)


@dataclass(frozen=True, kw_only=True)
class Clause:
    """A clause of the published policy, cited by id in decisions."""

    id: str
    title: str
    summary: str


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A manufacturer's warranty policy as data, loaded from a policy file."""

    name: str
    term_months: int
    serial_fallback_offset_months: int = 1
    serial_pattern: re.Pattern[str]
    discount_min_units: int
    discount_rate: Decimal
    cargo_rate: Decimal
    clauses: Mapping[str, Clause]
    # language -> reason code -> str.format template
    reason_texts: Mapping[str, Mapping[str, str]]
    max_range_units: int
    # language -> clause id -> what the clause means for a customer, in a few words
    clause_meanings: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
