"""Customers who only type, in every language: from a first message to a case with exactly the units meant,
in the fewest turns the facts allow, never asked again for what they already said (pure: the conversation)."""

from __future__ import annotations

import tomllib
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot import conversation as conv
from policy import UnitFacts, default_policy

POLICY = default_policy()
TODAY = date(2026, 5, 1)
DIALOGUES = Path(__file__).parent.parent / "data" / "dialogues"
# What each question asks for: once the customer has said it, the question must not come again.
ASKS = {"ask_serial": "serials", "ask_fault": "fault", "ask_proof": "proof", "ask_cause": "cause"}


def _unit(serial: str, *, arrival: date, produced: date) -> UnitFacts:
    return UnitFacts(
        serial=serial,
        order_id="PO-1",
        production_date=produced,
        port_arrival_date=arrival,
        order_pieces=1000,
        order_total=Decimal("25000.00"),
        currency="USD",
    )


REGISTRY = {
    "CSP2402A0153": _unit("CSP2402A0153", arrival=date(2024, 3, 10), produced=date(2024, 2, 20)),
    "CSP2402A0154": _unit("CSP2402A0154", arrival=date(2022, 2, 1), produced=date(2022, 1, 5)),
    **{
        f"CSP2402A{n:04d}": _unit(f"CSP2402A{n:04d}", arrival=date(2024, 3, 10), produced=date(2024, 2, 20))
        for n in range(100, 140)
    },
}


def dialogues() -> list[Any]:
    found = []
    for path in sorted(DIALOGUES.glob("*.toml")):
        for number, dialogue in enumerate(tomllib.loads(path.read_text(encoding="utf-8"))["dialogue"], 1):
            found.append(pytest.param(path.stem, dialogue, id=f"{path.stem}-{number}"))
    return found


def test_every_language_has_typed_dialogues() -> None:
    assert {p.values[0] for p in dialogues()} == set(conv.LANGUAGES)


@pytest.mark.parametrize(("language", "dialogue"), dialogues())
def test_a_customer_who_only_types_gets_a_case(language: str, dialogue: dict[str, Any]) -> None:
    state = conv.State(language=language)
    said: set[str] = set()
    cases: list[conv.OpenCase] = []
    for turn, text in enumerate(dialogue["turns"], 1):
        facts = conv.Facts(today=TODAY, policy=POLICY, registry=REGISTRY)
        transition = conv.step(state, conv.Event(text=text), facts)
        asked = [ASKS[r.template] for r in transition.replies if r.template in ASKS]
        assert not said & set(asked), f"turn {turn} ({text!r}) asked again for {said & set(asked)}"
        state = conv.State.from_dict(transition.state.to_dict())
        said |= {
            slot
            for slot, value in (
                ("serials", state.serials),
                ("fault", state.fault),
                ("proof", state.proof),
                ("cause", state.cause),
            )
            if value
        }
        cases.extend(e for e in transition.effects if isinstance(e, conv.OpenCase))
        if cases:
            assert turn == len(dialogue["turns"]), (
                f"the case opened at turn {turn} of {len(dialogue['turns'])}"
            )
    assert len(cases) == 1, f"no case after {dialogue['turns']}; state {state}"
    assert [u.serial for u in cases[0].units] == dialogue["serials"]
    assert cases[0].fault
    assert len(dialogue["turns"]) <= dialogue["most_turns"]
    assert state.name == "with_engineer"
