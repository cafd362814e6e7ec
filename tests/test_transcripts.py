"""One full claim per language, rendered and kept as data (tests/data/transcripts/<lang>.txt) to be read and
reviewed in the diff: a change of any customer text shows up there, in every language at once.

Regenerate after a deliberate change:  UPDATE_TRANSCRIPTS=1 .venv/bin/python -m pytest tests/test_transcripts.py
"""

from __future__ import annotations

import os
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from bot.conversation import LANGUAGES, Choice, Reply
from bot.render import Renderer
from policy import Claim, Proof, default_policy, evaluate

POLICY = default_policy()
RENDERER = Renderer(POLICY)
DATA = Path(__file__).parent / "data" / "transcripts"
TODAY = date(2026, 3, 2)
CASE = "WR-2026-000042"
SERIALS = [f"CSP2402A{n:04d}" for n in range(100, 112)]
# Invisible characters are written visibly, so that a reviewer sees them in the diff.
VISIBLE = {"\u2068": "⟨", "\u2069": "⟩", "\u00a0": "␣", "\u202f": "⎵", "\u200f": "◂"}
LEGEND = "(⟨ ⟩ are the isolates U+2068 U+2069, ␣ U+00A0 and ⎵ U+202F no-break spaces, ◂ U+200F RLM)"


def _unit(serial: str, **fields: object) -> object:
    return evaluate(Claim(serial=serial, claim_date=TODAY, **fields), POLICY)  # type: ignore[arg-type]


COVERED = _unit("CSP2402A0100", port_arrival_date=date(2024, 4, 10), proof=Proof.registry, units=12,
                order_total=Decimal("125000.00"), currency="USD", prefers_discount=True)  # fmt: skip
EXPIRED = _unit("CSP2001A0001")
CARGO = _unit("CSP2402A0153", port_arrival_date=date(2024, 4, 10), proof=Proof.registry, cargo_compensation=True,
              order_pieces=1000)  # fmt: skip


def _group(decision: object, *serials: str) -> dict[str, object]:
    return {"decision": decision, "serials": list(serials), "preliminary": decision.preliminary}  # type: ignore[attr-defined]


def _choices(*names: str) -> tuple[Choice, ...]:
    return tuple(Choice(label=name, value=name) for name in names)


CAUSES = ("cause_normal", "cause_damage", "cause_misuse", "cause_repair", "cause_disaster", "cause_unsure")
CLAIM: list[Reply] = [
    Reply(template="greeting"),
    Reply(template="ask_serial"),
    Reply(template="units_received", params={"count": 13, "serials": [*SERIALS, "CSP2001A0001"],
                                             "registered": SERIALS}),
    Reply(template="ask_fault"),
    Reply(template="ask_proof", params={"count": 13, "unregistered": ["CSP2001A0001"],
                                        "serials": [*SERIALS, "CSP2001A0001"]},
          choices=_choices("proof_sent", "proof_none")),
    Reply(template="ask_cause", choices=_choices(*CAUSES)),
    Reply(template="ask_preference", params={"covered": 12, "discounts": [
        {"order_id": "PO-88123", "amount": Decimal("1250.00"), "currency": "USD"}]},
          choices=_choices("prefer_repair", "prefer_discount")),
    Reply(template="decision", params={"units": 13, "groups": [_group(COVERED, *SERIALS), _group(EXPIRED, "CSP2001A0001")]}),
    Reply(template="case_opened", params={"case_ref": CASE, "units": 13}),
    Reply(template="case_claimed", params={"case_ref": CASE, "engineer": "Li Wei"}),
    Reply(template="ask_customer", params={"case_ref": CASE, "engineer": "Li Wei",
                                           "question": "Please send a photo of the label on CSP2402A0105."}),
    Reply(template="method_discount_compensation", params={"case_ref": CASE, "amount": Decimal("1250.00"),
                                                           "currency": "USD"}),
    Reply(template="rating_request", params={"case_ref": CASE}, choices=tuple(
        Choice(label="rate", value=f"rate:{n}", params={"n": n}) for n in range(1, 6))),
    Reply(template="rating_thanks"),
    # A second claim, refused: an order that took cargo compensation.
    Reply(template="decision", params={"units": 1, "groups": [_group(CARGO, "CSP2402A0153")]}),
    Reply(template="refusal_case_opened", params={"case_ref": "WR-2026-000043", "refused": True, "review": False,
                                                  "clauses": ["M1", "W1", "W2"], "documents_help": False,
                                                  "cargo": True}),
]  # fmt: skip


def transcript(language: str) -> str:
    lines = [f"# One full claim in {language}, rendered by bot/render.py {LEGEND}", ""]
    for reply in CLAIM:
        rendered = RENDERER.render(reply, language=language)
        lines += [f"## {reply.template}", rendered.text]
        if rendered.buttons:
            lines.append("[" + "] [".join(button.label for button in rendered.buttons) + "]")
        lines.append("")
    text = "\n".join(lines)
    for char, shown in VISIBLE.items():
        text = text.replace(char, shown)
    return text


def test_the_visible_marks_do_not_occur_in_the_texts() -> None:
    assert not set(VISIBLE.values()) & set("".join(RENDERER.render(r, language="en").text for r in CLAIM))


@pytest.mark.parametrize("language", [*LANGUAGES, "pt_PT"])
def test_full_claim_matches_its_transcript(language: str) -> None:
    path = DATA / f"{language}.txt"
    actual = transcript(language)
    if os.environ.get("UPDATE_TRANSCRIPTS"):
        DATA.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"no {path}: run with UPDATE_TRANSCRIPTS=1 to write it, then review it"
    assert actual == path.read_text(encoding="utf-8"), f"{path} differs: review the change, then regenerate"
