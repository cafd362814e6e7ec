"""The conversation as scripted dialogues: pure, fast, every path of a claim."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import conversation as conv
from policy import Outcome, UnitFacts, default_policy

POLICY = default_policy()
TODAY = date(2026, 5, 1)
RANGE = [f"CSP2402A{n:04d}" for n in range(100, 140)]


def unit(
    serial: str,
    *,
    arrival: date | None = date(2024, 3, 10),
    cargo: bool = False,
    order: str = "PO-1",
    produced: date = date(2024, 2, 20),
) -> UnitFacts:
    return UnitFacts(
        serial=serial,
        order_id=order,
        production_date=produced,
        port_arrival_date=arrival,
        cargo_compensation=cargo,
        order_pieces=1000,
        order_total=Decimal("25000.00"),
        currency="USD",
    )


REGISTRY = {
    "CSP2402A0153": unit("CSP2402A0153"),
    "CSP2402A0154": unit(
        "CSP2402A0154", produced=date(2022, 1, 5), arrival=date(2022, 2, 1)
    ),  # ended 2024-03-31
    "CSP2402A0160": unit("CSP2402A0160", cargo=True, order="PO-CARGO"),
    **{serial: unit(serial, order="PO-40") for serial in RANGE},
}


def run(
    *texts: str | tuple[str, tuple[int, ...]],
    today: date = TODAY,
    case_status: str | None = None,
    state: conv.State | None = None,
) -> tuple[conv.State, list[str], list[conv.Effect], list[conv.Reply]]:
    state = state or conv.State()
    templates: list[str] = []
    effects: list[conv.Effect] = []
    replies: list[conv.Reply] = []
    for item in texts:
        text, attachments = (item, ()) if isinstance(item, str) else item
        facts = conv.Facts(
            today=today,
            policy=POLICY,
            registry=REGISTRY,
            case_ref="WR-2026-000001" if state.name == "with_engineer" else None,
            case_status=case_status if state.name == "with_engineer" else None,
        )
        transition = conv.step(state, conv.Event(text=text, attachment_ids=attachments), facts)
        state = conv.State.from_dict(transition.state.to_dict())  # what the database keeps, round-tripped
        templates.extend(r.template for r in transition.replies)
        replies.extend(transition.replies)
        effects.extend(transition.effects)
    return state, templates, effects, replies


def opened(effects: list[conv.Effect]) -> conv.OpenCase:
    cases = [e for e in effects if isinstance(e, conv.OpenCase)]
    assert len(cases) == 1, effects
    return cases[0]


def test_covered_claim_from_greeting_to_case() -> None:
    state, templates, effects, _ = run(
        "hello", "CSP2402A0153", "The display shows E07 and it shuts down", "cause:normal"
    )
    assert templates == [
        "greeting",
        "ask_serial",
        "units_received",
        "ask_fault",
        "ask_cause",
        "decision",
        "case_opened",
    ]
    assert state.name == "with_engineer"
    case = opened(effects)
    assert case.fault == "The display shows E07 and it shuts down"
    assert case.claim_date == TODAY
    decision = case.units[0].decision
    assert decision.outcome is Outcome.covered
    assert decision.warranty_end == date(2026, 5, 9)
    assert decision.clauses == ("F1", "M2", "M3", "M4", "W1", "W2")


def test_serial_and_fault_in_one_message_skip_the_fault_question() -> None:
    state, templates, _, _ = run("CSP2402A0153 display shows E07 and shuts down under load")
    assert templates == ["units_received", "ask_cause"]
    assert state.fault == "display shows E07 and shuts down under load"


@pytest.mark.parametrize(
    ("vague", "with_serial", "said"),
    [
        (
            "hello, I have a problem with my unit",
            "my serial is CSP2402A0153, the display shows E07 and it shuts down",
            "E07",
        ),
        (
            "hola, tengo un problema con mi equipo",
            "el numero de serie es CSP2402A0153, la pantalla muestra E07 y se apaga",
            "E07",
        ),
        ("j'ai un problème avec mon appareil", "CSP2402A0153 : l'écran affiche E07 et il s'éteint", "E07"),
    ],
)
def test_a_vague_first_line_does_not_hide_the_fault_that_comes_with_the_serial(
    vague: str, with_serial: str, said: str
) -> None:
    _, templates, effects, _ = run(vague, with_serial, "cause:normal")
    assert "ask_fault" not in templates
    fault = opened(effects).fault
    assert fault.startswith(vague.split(", ")[-1]) and said in fault  # both lines, in the order written


def test_a_serial_with_the_same_problem_adds_nothing_to_the_fault() -> None:
    state, _, _, _ = run("The display shows E07 and it shuts down", "CSP2402A0153 has the same problem")
    assert state.fault == "The display shows E07 and it shuts down"


def test_expired_unit_is_refused_as_a_case_for_a_person_to_confirm() -> None:
    state, templates, effects, replies = run("CSP2402A0154", "It does not start any more", "cause:normal")
    assert templates[-2:] == ["decision", "refusal_case_opened"]
    assert state.name == "with_engineer"
    case = opened(effects)
    assert [u.decision.outcome for u in case.units] == [Outcome.not_covered]
    group = replies[-2].params["groups"][0]
    assert group["decision"].clauses == ("W1", "W2", "X1")


def test_serial_fallback_without_proof() -> None:
    _state, templates, effects, _ = run(
        "CSP2402A0999", "Fan noise and then it stops", "proof:none", "cause:normal", today=date(2026, 5, 28)
    )
    assert "ask_proof" in templates
    decision = opened(effects).units[0].decision
    assert decision.basis is not None and decision.basis.value == "serial_production"
    assert decision.warranty_start == date(2024, 3, 29)
    assert decision.clauses == ("F1", "M2", "M3", "M4", "W1", "W3")


def test_more_of_the_fault_while_the_invoice_is_asked_is_acknowledged_then_the_question_again() -> None:
    state, templates, _, replies = run(
        "mi número de serie es CSP2402A0999",
        "no funciona",
        "la pantalla muestra el error E07 y se apaga a los cinco minutos",
    )
    assert templates[-2:] == ["fault_added", "ask_proof"]
    assert replies[-2].params == {"added": True}
    assert state.name == "awaiting_proof" and "E07" in state.fault


def test_a_fault_told_before_the_serial_is_acknowledged_before_the_serial_is_asked() -> None:
    state, templates, _, replies = run("the screen shows error E07 and it shuts down")
    assert templates == ["fault_added", "ask_serial"] and replies[0].params == {"added": False}
    _, templates, _, _ = run("CSP2402A0999", state=state)
    assert templates == ["units_received", "ask_proof"]  # the fault is not asked for again


def test_the_asked_fault_and_a_repeated_one_are_not_acknowledged_apart() -> None:
    _, templates, _, _ = run("CSP2402A0999", "Display E07 shuts down")
    assert "fault_added" not in templates
    _, templates, _, _ = run("CSP2402A0999", "Display E07 shuts down", "Display E07 shuts down")
    assert templates[-1] == "proof_reask" and "fault_added" not in templates


def test_the_typed_answer_to_the_cause_question_is_the_cause_not_more_of_the_fault() -> None:
    state, templates, effects, _ = run(
        "CSP2402A0999",
        "Display E07 shuts down",
        "proof:none",
        "it was dropped from the roof during installation",
    )
    assert "fault_added" not in templates and templates[-1] == "refusal_case_opened"
    assert state.cause == "damage" and opened(effects).fault == "Display E07 shuts down"


def test_documents_sent_as_proof_are_kept() -> None:
    _state, templates, effects, _ = run(
        "CSP2402A0999", "Fan noise and then it stops", ("", (7,)), "cause:normal", today=date(2026, 5, 28)
    )
    assert "proof_received" in templates
    assert opened(effects).attachment_ids == (7,)


def test_cargo_compensation_order_is_refused_as_a_case_too() -> None:
    _state, templates, effects, replies = run("CSP2402A0160", "Display E07 shuts down", "cause:normal")
    assert templates[-1] == "refusal_case_opened"
    assert replies[-1].params["cargo"] is True
    assert replies[-2].params["groups"][0]["decision"].clauses == ("M1", "W1", "W2")
    assert opened(effects).units[0].decision.clauses == ("M1", "W1", "W2")


def test_distributor_with_40_units_chooses_discount() -> None:
    _state, templates, effects, replies = run(
        "CSP2402A0100-CSP2402A0139", "All of them show E07 after a week", "cause:normal", "pref:discount"
    )
    assert "ask_preference" in templates
    preference = next(r for r in replies if r.template == "ask_preference")
    assert preference.params["discounts"] == [
        {"order_id": "PO-40", "amount": Decimal("250.00"), "currency": "USD"}
    ]
    case = opened(effects)
    assert len(case.units) == 40
    assert case.prefers_discount
    decision = case.units[0].decision
    assert [m.value for m in decision.methods] == ["discount_compensation"]
    assert decision.discount_amount == Decimal("250.00")
    # The order's discount is counted once: on its first unit, the other 39 carry none.
    assert [u.decision.discount_amount for u in case.units[1:]] == [None] * 39
    groups = next(r for r in replies if r.template == "decision").params["groups"]
    assert [len(g["serials"]) for g in groups] == [1, 39]


def test_pasted_table_and_list_of_serials() -> None:
    state, _, _, _ = run("Serial\tFault\nCSP2402A0100\tE07\nCSP2402A0101\tE07\ncsp-2402-a0102\tE07")
    assert state.serials == ("CSP2402A0100", "CSP2402A0101", "CSP2402A0102")


def test_unreadable_serial_three_times_offers_a_person() -> None:
    state, templates, _, replies = run("hi", "ABC-123-XYZ", "my inverter", "I don't know where it is")
    assert templates[-3:] == ["serial_reask", "serial_reask", "serial_reask"]
    assert [r.params["offer_human"] for r in replies[-3:]] == [False, False, True]
    assert replies[-1].choices[-1].value == "cmd:human"
    run("3", state=state)  # a number past the offered options is just another try
    state, templates, effects, _ = run("cmd:human", state=state)
    assert templates == ["human_requested"]
    assert opened(effects).human_requested


def test_consequential_damages_are_answered_with_l1_and_the_question_repeated() -> None:
    state, templates, _, replies = run("CSP2402A0153", "I want compensation for lost profits and downtime")
    assert templates[-2:] == ["consequential_damages", "ask_fault"]
    assert replies[-2].params["clause"] == "L1"
    assert state.name == "awaiting_fault"


def test_restart_mid_claim_starts_over() -> None:
    state, templates, _, _ = run("CSP2402A0153", "restart")
    assert templates[-2:] == ["restarted", "ask_serial"]
    assert state.name == "awaiting_serial" and state.serials == ()


def test_after_hand_off_messages_go_to_the_case() -> None:
    state, _, _, _ = run("CSP2402A0153 display shows E07 and shuts down", "cause:normal")
    state, templates, effects, _ = run(("Here is another photo", (9,)), state=state, case_status="open")
    assert templates == ["relayed"]
    assert effects == [conv.RelayToCase(text="Here is another photo", attachment_ids=(9,))]
    # Acknowledged once: the next messages to the open case are added to it quietly.
    state, templates, effects, _ = run(
        "It also smells burnt", ("photo 2", (10,)), state=state, case_status="open"
    )
    assert templates == []
    assert effects == [
        conv.RelayToCase(text="It also smells burnt"),
        conv.RelayToCase(text="photo 2", attachment_ids=(10,)),
    ]
    state, templates, effects, _ = run("any news?", state=state, case_status="claimed")
    assert templates == ["status"] and effects == [conv.RelayToCase(text="any news?")]
    state, templates, effects, _ = run("The fan is loud as well", state=state, case_status="claimed")
    assert templates == [] and effects == [conv.RelayToCase(text="The fan is loud as well")]
    state, templates, _, _ = run("status", state=state, case_status="claimed")
    assert templates == ["status"]


def test_rating_after_close() -> None:
    state, _, _, _ = run("CSP2402A0153 display shows E07 and shuts down", "cause:normal")
    state = conv.on_case_closed(state, ask_rating=True)
    state, templates, effects, _ = run("5", state=state)
    assert effects == [conv.RecordRating(rating=5)]
    assert templates == ["rating_thanks"]


def test_numbered_answers_pick_the_offered_button() -> None:
    state, _, _, _ = run("CSP2402A0153 display shows E07 and shuts down")
    assert state.name == "screening"
    state, templates, _effects, _ = run("1", state=state)
    assert templates[-1] == "case_opened"


def test_language_command_offers_seven_languages() -> None:
    state, _, _, replies = run("language")
    assert len(replies[-1].choices) == 7
    state, _templates, effects, _ = run("lang:es", state=state)
    assert state.language == "es" and effects == [conv.SetLanguage(language="es")]


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\x00\x01\x02",
        "😀" * 50,
        "مرحبا بكم",
        "<script>alert(1)</script>",
        "{{ 7*7 }}",
        "'; DROP TABLE case; --",
        "A" * 100_000,
        "CSP2402A0100-CSP2402Z9999",
    ],
)
def test_odd_input_gets_a_polite_answer_in_every_state(text: str) -> None:
    for prefix in ((), ("CSP2402A0153",), ("CSP2402A0153 display shows E07 and shuts down",)):
        state, _, _, _ = run(*prefix)
        state, templates, _, _ = run(text, state=state)
        assert templates, f"no reply to {text[:20]!r} after {prefix}"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=60),
            st.sampled_from(
                [
                    "CSP2402A0153",
                    "cause:normal",
                    "proof:none",
                    "pref:discount",
                    "1",
                    "2",
                    "help",
                    "status",
                    "human",
                    "restart",
                    "lang:fr",
                    "5",
                    "CSP2402A0100-CSP2402A0139",
                    "display shows E07 and shuts down",
                ]
            ),
        ),
        max_size=12,
    )
)
def test_any_sequence_of_messages_keeps_a_valid_state(texts: list[str]) -> None:
    state, _, effects, _ = run(*texts)
    assert state.name in get_args(conv.StateName)
    assert conv.State.from_dict(state.to_dict()) == state
    assert sum(isinstance(e, conv.OpenCase) for e in effects) <= len(texts)


def test_another_language_is_offered_once_not_switched_silently() -> None:
    state, _, _, _ = run("CSP2402A0153")
    facts = conv.Facts(today=TODAY, policy=POLICY, registry=REGISTRY, detected_language="es")
    transition = conv.step(state, conv.Event(text="La pantalla muestra E07 y se apaga"), facts)
    offer = transition.replies[-1]
    assert (offer.template, offer.language) == ("language_offer", "es")
    assert [c.value for c in offer.choices] == ["lang:es", "lang:en"]
    assert transition.state.language == "en" and transition.state.name == "screening"
    again = conv.step(transition.state, conv.Event(text="no sé"), facts)
    assert "language_offer" not in [r.template for r in again.replies]
    chosen = conv.step(transition.state, conv.Event(text="1"), facts)
    assert chosen.state.language == "es"
    assert [r.template for r in chosen.replies] == ["language_set", "ask_cause"]
    assert chosen.effects == (conv.SetLanguage(language="es"),)


def test_files_sent_before_the_proof_question_can_be_the_proof() -> None:
    state, _, _, replies = run(("", (4,)), "CSP2402A0999", "Fan noise and then it stops")
    assert [c.value for c in replies[-1].choices] == ["proof:sent", "proof:none"]
    state, templates, _, _ = run("proof:sent", state=state, today=date(2026, 5, 28))
    assert templates == ["proof_received", "ask_cause"] and state.proof == "documents"


# --- free text (issue 13) ------------------------------------------------------------------------------


def test_a_pasted_table_keeps_each_units_fault() -> None:
    _state, _, effects, _ = run("CSP2402A0100\tE07 shuts down\nCSP2402A0101\tfan noise", "normal use")
    fault = opened(effects).fault
    assert "CSP2402A0100: E07 shuts down" in fault and "CSP2402A0101: fan noise" in fault


def test_l1_answer_keeps_the_serial_and_fault_of_the_same_message() -> None:
    state, templates, _, _ = run(
        "CSP2402A0153 shows E07 and shuts down, we want compensation for lost profits"
    )
    assert templates[0] == "consequential_damages" and "ask_cause" in templates
    assert state.serials == ("CSP2402A0153",) and "E07" in state.fault


def test_a_mistyped_serial_is_asked_about_and_corrected() -> None:
    facts = conv.Facts(
        today=TODAY, policy=POLICY, registry=REGISTRY, suggestions={"CSP2402A0135": "CSP2402A0153"}
    )
    asked = conv.step(conv.State(), conv.Event(text="CSP2402A0135 E07 and it shuts down"), facts)
    assert [r.template for r in asked.replies][-1] == "serial_suggestion"
    answered = conv.step(
        asked.state, conv.Event(text="yes"), conv.Facts(today=TODAY, policy=POLICY, registry=REGISTRY)
    )
    assert answered.state.serials == ("CSP2402A0153",)
    assert [r.template for r in answered.replies] == ["units_received", "ask_cause"]


def test_a_stated_count_that_disagrees_is_confirmed_before_deciding() -> None:
    state, templates, _, replies = run("three units: CSP2402A0153 and CSP2402A0154, E07 on both")
    assert templates[-1] == "confirm_serials" and replies[-1].params["stated"] == 3
    state, templates, _, _ = run("yes", state=state)
    assert templates == ["units_received", "ask_cause"] and len(state.serials) == 2


def test_a_person_at_once_from_free_text_with_what_was_said() -> None:
    state, templates, effects, _ = run(
        "CSP2402A0153 E07 shuts down", "I want to talk to a real person please"
    )
    assert templates[-1] == "human_requested" and state.name == "with_engineer"
    case = opened(effects)
    assert case.human_requested and [u.serial for u in case.units] == ["CSP2402A0153"]


def test_why_after_a_refusal_explains_and_reaches_the_case() -> None:
    state, _, _, _ = run("CSP2402A0154 does not start any more", "normal use")
    state, templates, effects, _ = run(
        "but it only worked 2 years, what can I do?", state=state, case_status="open"
    )
    assert templates == ["decision", "next_steps"]
    assert effects == [conv.RelayToCase(text="but it only worked 2 years, what can I do?")]


def test_a_follow_up_after_a_closed_case_reopens_it_and_a_rating_in_arabic_digits_counts() -> None:
    state, _, _, _ = run("CSP2402A0153 display shows E07 and shuts down", "normal use")
    closed = conv.on_case_closed(state, ask_rating=True)
    facts = conv.Facts(today=TODAY, policy=POLICY, registry=REGISTRY, last_case_ref="WR-2026-000001")
    rated = conv.step(closed, conv.Event(text="٥"), facts)
    assert rated.effects == (conv.RecordRating(rating=5),)
    follow = conv.step(rated.state, conv.Event(text="the fan is noisy too"), facts)
    assert [r.template for r in follow.replies] == ["case_reopened"]
    assert follow.effects == (conv.RelayToCase(text="the fan is noisy too", reopen=True),)
    assert follow.state.name == "with_engineer"


def test_too_many_units_in_one_claim_get_a_clear_answer() -> None:
    facts = conv.Facts(today=TODAY, policy=POLICY, registry=REGISTRY, max_units=10)
    t = conv.step(conv.State(), conv.Event(text="CSP2402A0100-CSP2402A0139 all E07"), facts)
    assert "too_many_units" in [r.template for r in t.replies] and t.state.serials == ()


# --- what the shell and the desk bring to the dialogue: events and effects --------------------------------


def test_a_file_the_shell_could_not_keep_is_said_first_with_the_size_limit() -> None:
    facts = conv.Facts(today=TODAY, policy=POLICY, attachment_max_mb=7)
    event = conv.Event(text="hello", rejected=(("big.zip", "too_large"),))
    transition = conv.step(conv.State(), event, facts)
    first, *rest = transition.replies
    assert first.template == "attachment_rejected"
    assert first.params == {"files": [{"name": "big.zip", "reason": "too_large"}], "max_mb": 7}
    assert [r.template for r in rest] == ["greeting", "ask_serial"]


def test_restarting_with_the_engineers_leaves_the_case_and_nothing_else_does() -> None:
    facts = conv.Facts(today=TODAY, policy=POLICY, case_ref="WR-2026-000042", case_status="open")
    with_engineer = conv.State(name="with_engineer", serials=("CSP2402A0153",), fault="E07")
    restarted = conv.step(with_engineer, conv.Event(text="restart"), facts)
    assert restarted.state.name == "awaiting_serial"
    assert restarted.effects == (conv.LeaveCase(),)
    relayed = conv.step(with_engineer, conv.Event(text="It still shows E07 after a reset"), facts)
    assert not any(isinstance(e, conv.LeaveCase) for e in relayed.effects)


def test_a_rating_asked_after_the_close_is_picked_by_its_number() -> None:
    closed = conv.on_rating_asked(conv.State(name="closed"))
    assert closed.awaiting_rating and closed.offered == tuple(f"rate:{n}" for n in range(1, 6))
    open_claim = conv.on_rating_asked(conv.State(name="with_engineer", offered=("cmd:human",)))
    assert open_claim.awaiting_rating and open_claim.offered == ("cmd:human",)
    state, templates, effects, _ = run("4", state=closed)
    assert effects == [conv.RecordRating(rating=4)] and templates == ["rating_thanks"]
    assert not state.awaiting_rating


def test_consequential_damages_are_answered_in_every_state_before_the_turn_goes_on() -> None:
    """The L1 check is a fallback (an aside): with the engineers the message is still relayed, and beside a
    request for a person the person is still asked for."""
    facts = conv.Facts(today=TODAY, policy=POLICY, case_ref="WR-2026-000042", case_status="open")
    with_engineer = conv.State(name="with_engineer", serials=("CSP2402A0153",), fault="E07")
    text = "We lost a week of production, we want compensation for lost profits"
    relayed = conv.step(with_engineer, conv.Event(text=text), facts)
    assert [r.template for r in relayed.replies][:1] == ["consequential_damages"]
    assert relayed.replies[0].params == {"clause": "L1"}
    assert any(isinstance(e, conv.RelayToCase) and e.text == text for e in relayed.effects)
    assert relayed.state.name == "with_engineer"

    screening = conv.State(name="screening", serials=("CSP2402A0153",), fault="E07 and shuts down")
    person = conv.step(
        screening, conv.Event(text="compensation for lost profits, let me talk to a person"), facts
    )
    templates = [r.template for r in person.replies]
    assert templates[0] == "consequential_damages" and "human_requested" in templates


def test_a_plain_message_gets_no_l1_answer() -> None:
    _state, templates, _, _ = run("CSP2402A0153 shows E07 and shuts down")
    assert "consequential_damages" not in templates
