"""The case status table: every status reachable from a new case, an illegal change refused with its reason."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bot.status import INITIAL, TRANSITIONS, CaseStatus, IllegalTransition, allowed, move


@dataclass
class _Case:
    status: str
    ref: str = "WR-2026-000042"


def test_every_status_is_reachable_from_a_new_case_and_every_one_but_closed_can_close() -> None:
    seen, todo = set(INITIAL), list(INITIAL)
    while todo:
        for target in TRANSITIONS[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    assert seen == set(CaseStatus)
    assert all(CaseStatus.closed in TRANSITIONS[s] for s in CaseStatus if s is not CaseStatus.closed)


def test_a_change_the_table_allows_is_made_and_staying_is_always_allowed() -> None:
    case = _Case(status="waiting_customer")  # as the database gives it back: a plain str
    assert move(case, CaseStatus.claimed) is CaseStatus.claimed
    assert case.status == "claimed"
    assert all(allowed(s, s) for s in CaseStatus)


def test_an_illegal_change_is_refused_with_what_the_case_can_become() -> None:
    case = _Case(status="closed")
    with pytest.raises(
        IllegalTransition,
        match=r"WR-2026-000042 is closed: it cannot become in_service \(it can become: open\)",
    ):
        move(case, CaseStatus.in_service)
    assert case.status == "closed"


def test_an_unknown_stored_status_is_an_error_not_a_silent_change() -> None:
    with pytest.raises(ValueError, match="shipped"):
        move(_Case(status="shipped"), CaseStatus.open)
