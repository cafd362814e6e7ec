"""A case's status: the one list of them, and which change of status is allowed.

The engine opens a case (`open`, or `to_confirm` when the policy refused every unit) and moves it when the
customer answers or writes again after it closed; every other change is the desk's (bot/desk.py), whether
the engineer acts on Slack or on the local desk page. `move` is the only way a status changes: a change the
table does not allow raises `IllegalTransition` and nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol


class CaseStatus(StrEnum):
    open = "open"  # with the engineers, nobody has claimed it
    to_confirm = "to_confirm"  # the policy refused every unit: a person confirms the refusal or overturns it
    claimed = "claimed"
    waiting_customer = "waiting_customer"  # an engineer asked the customer something
    in_service = "in_service"  # a service method was chosen
    resolved = "resolved"  # refused; the customer was asked for a rating
    closed = "closed"


S = CaseStatus
# Where each status may go (staying where it is is always allowed).
TRANSITIONS: Mapping[CaseStatus, frozenset[CaseStatus]] = {
    S.open: frozenset({S.claimed, S.to_confirm, S.waiting_customer, S.in_service, S.resolved, S.closed}),
    S.to_confirm: frozenset({S.open, S.claimed, S.in_service, S.resolved, S.closed}),
    S.claimed: frozenset({S.to_confirm, S.waiting_customer, S.in_service, S.resolved, S.closed}),
    S.waiting_customer: frozenset({S.claimed, S.in_service, S.resolved, S.closed}),
    S.in_service: frozenset({S.waiting_customer, S.resolved, S.closed}),
    S.resolved: frozenset({S.open, S.waiting_customer, S.in_service, S.closed}),
    S.closed: frozenset({S.open}),  # the customer wrote again about it
}
# The statuses a new case starts in.
INITIAL = (S.open, S.to_confirm)
# Statuses the policy's outcome still decides: a refusal of every unit is to confirm, anything else open.
UNDECIDED = frozenset({S.open, S.to_confirm, S.claimed})


class IllegalTransition(ValueError):
    """A change of status the table does not allow."""


class HasStatus(Protocol):
    status: str

    @property
    def ref(self) -> str: ...


def allowed(current: str, new: CaseStatus) -> bool:
    old = CaseStatus(current)
    return new is old or new in TRANSITIONS[old]


def move(case: HasStatus, new: CaseStatus) -> CaseStatus:
    """Set the case's status to `new`, or raise `IllegalTransition` saying which changes there are."""
    if not allowed(case.status, new):
        targets = ", ".join(sorted(TRANSITIONS[CaseStatus(case.status)]))
        raise IllegalTransition(
            f"case {case.ref} is {case.status}: it cannot become {new.value} (it can become: {targets})"
        )
    case.status = new
    return new
