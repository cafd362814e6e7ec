"""Decisions a person stands behind (issue 14), end to end on SQLite and PostgreSQL: every refusal reaches
the desk to be confirmed, several units are decided in two passes, one rounding rule, X2 only without proof,
engineers' corrections re-decide and are audited, and a method outside the decision is goodwill or chargeable.
"""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlalchemy import select
from sqlmodel import Session

from bot.app import Bot, build
from bot.config import Settings
from bot.desk import DeskError, InvalidAction
from bot.messages import Attachment
from bot.registry import import_registry
from bot.server import create_app
from bot.store import CaseUnit
from tests.support import FAULT, HEADER, ROWS, bot_texts, claim_to_the_end, days_ago, inbound, say

# Made January 2020 and not in the registry: by its serial the warranty ended in 2022.
OLD_UNREGISTERED = "CSP2001A0001"


@pytest.fixture
def desk_bot(settings: Settings, db: Any, tmp_path: Path) -> Bot:
    csv = tmp_path / "registry.csv"
    csv.write_text("\n".join([HEADER, *ROWS]) + "\n", encoding="utf-8")
    bot = build(settings.model_copy(update={"desk_token": SecretStr("desk-secret")}), db=db)
    import_registry(db, csv, policy=bot.policy)
    return bot


def send_file(bot: Bot, name: str = "invoice.pdf", text: str = "", chat: str = "chat-1") -> None:
    document = Attachment(kind="document", name=name, mime="application/pdf", size=2048, ref=f"ab/{'c' * 64}")
    bot.engine.accept(inbound(text, chat=chat, attachments=(document,)))
    bot.engine.process_pending()


def units_of(bot: Bot) -> list[CaseUnit]:
    with Session(bot.db) as session:
        return list(session.execute(select(CaseUnit).order_by(CaseUnit.id)).scalars())  # type: ignore[arg-type]


# --- every refusal to a person -------------------------------------------------------------------------------


@pytest.mark.parametrize(("serial", "clause"), [("CSP2402B0100", "X1"), ("CSP2403D0100", "M1")])
def test_a_firm_refusal_is_a_case_for_a_person_to_confirm(desk_bot: Bot, serial: str, clause: str) -> None:
    ref = claim_to_the_end(desk_bot, f"{serial} {FAULT}", "cause:normal")
    case = desk_bot.desk.get_case(ref)
    assert case["status"] == "to_confirm"
    assert clause in case["units"][0]["clauses"]
    assert case["allowed_methods"] == []
    assert [c["ref"] for c in desk_bot.desk.list_cases(status="to_confirm")] == [ref]
    # The customer can still send documents: they reach the case, for the engineer who confirms.
    send_file(desk_bot)
    assert [f["name"] for f in desk_bot.desk.get_case(ref)["attachments"]] == ["invoice.pdf"]
    # Claiming and asking keep it a refusal to confirm; only a person's decision ends that.
    desk_bot.desk.claim(ref, engineer="Li Wei")
    desk_bot.desk.ask_customer(ref, engineer="Li Wei", question="Do you have the bill of lading?")
    assert desk_bot.desk.get_case(ref)["status"] == "to_confirm"
    desk_bot.desk.choose_method(ref, engineer="Li Wei", method="not_covered", reason="Checked the records.")
    confirmed = desk_bot.desk.get_case(ref)
    assert confirmed["status"] == "resolved"
    refused = [a for a in confirmed["audit"] if a["action"] == "refused"]
    assert refused[0]["detail"]["refusal_confirmed"] is True


def test_a_case_with_a_covered_unit_is_open(desk_bot: Bot) -> None:
    ref = claim_to_the_end(desk_bot, f"CSP2402A0100 CSP2402B0100 {FAULT}", "cause:normal")
    case = desk_bot.desk.get_case(ref)
    assert case["status"] == "open"
    assert [u["outcome"] for u in case["units"]] == ["covered", "not_covered"]


# --- several units: two passes -------------------------------------------------------------------------------


def test_five_covered_and_35_expired_units_are_not_offered_the_discount(desk_bot: Bot) -> None:
    ref = claim_to_the_end(desk_bot, f"CSP2402C0100-CSP2402C0104 and CSP2402B0100-CSP2402B0134 {FAULT}",
                           "cause:normal")  # fmt: skip
    texts = "\n".join(bot_texts(desk_bot))
    assert "discount compensation instead of repair" not in texts
    assert "Would you like the units repaired, or the discount?" not in texts
    case = desk_bot.desk.get_case(ref)
    outcomes = [u["outcome"] for u in case["units"]]
    assert outcomes.count("covered") == 5 and outcomes.count("not_covered") == 35
    assert all(u["decision"]["discount_amount"] is None for u in case["units"])
    assert all("discount_compensation" not in u["decision"]["methods"] for u in case["units"])
    assert case["allowed_methods"] == ["remote_guidance", "factory_repair", "door_to_door"]
    with pytest.raises(InvalidAction, match="does not allow discount_compensation"):
        desk_bot.desk.choose_method(ref, engineer="Li Wei", method="discount_compensation")


def test_one_rounding_rule_from_the_prompt_to_the_desk(desk_bot: Bot) -> None:
    # 12 units of an order of 1,012.50 USD: 1% is 10.125, half-up 10.13, in every message and page.
    ref = claim_to_the_end(desk_bot, f"CSP2402A0100-CSP2402A0111 {FAULT}", "cause:normal", "pref:discount")
    texts = bot_texts(desk_bot)
    prompt = next(t for t in texts if "repaired, or the discount" in t)
    assert "$10.13" in prompt
    decision = next(t for t in texts if t.startswith("Here is what the warranty policy says"))
    assert "$10.13" in decision
    assert not any("10.12" in t for t in texts)
    case = desk_bot.desk.get_case(ref)
    amounts = [u["decision"]["discount_amount"] for u in case["units"]]
    assert amounts == ["10.13", *[None] * 11]  # counted once for the order
    assert case["orders"][0]["discount_amount"] == "10.13"
    desk_bot.desk.choose_method(ref, engineer="Li Wei", method="discount_compensation")
    assert "$10.13" in bot_texts(desk_bot)[-1]


def test_a_customer_who_chose_repair_is_not_told_a_discount(desk_bot: Bot) -> None:
    say(desk_bot, f"CSP2402A0100-CSP2402A0111 {FAULT}", "cause:normal")
    before = len(bot_texts(desk_bot))
    claim_to_the_end(desk_bot, "pref:repair")
    after = bot_texts(desk_bot)[before:]
    # The discount stays an option the engineer may still take (no amount), never told as granted.
    assert after and not any("10.13" in t or "Discount compensation:" in t for t in after), after


# --- X2 only without proof -----------------------------------------------------------------------------------


def test_documents_shown_never_cite_x2(desk_bot: Bot) -> None:
    say(desk_bot, f"{OLD_UNREGISTERED} {FAULT}")
    send_file(desk_bot)
    ref = claim_to_the_end(desk_bot, "cause:normal")
    decision = next(t for t in bot_texts(desk_bot) if t.startswith("Here is what the warranty policy says"))
    assert "without the purchase invoice" not in decision and "X2" not in decision, decision
    unit = desk_bot.desk.get_case(ref)["units"][0]
    assert (unit["outcome"], unit["clauses"]) == ("not_covered", ["W1", "W3", "X1"])
    assert unit["facts"]["proof"] == "documents"


def test_no_proof_still_cites_x2(desk_bot: Bot) -> None:
    ref = claim_to_the_end(desk_bot, f"{OLD_UNREGISTERED} {FAULT}", "proof:none", "cause:normal")
    assert desk_bot.desk.get_case(ref)["units"][0]["clauses"] == ["W1", "W3", "X1", "X2"]


# --- engineers' corrections ---------------------------------------------------------------------------------


def test_an_engineer_corrects_a_unit_and_it_is_decided_again(desk_bot: Bot) -> None:
    say(desk_bot, f"{OLD_UNREGISTERED} {FAULT}")
    send_file(desk_bot)
    ref = claim_to_the_end(desk_bot, "cause:normal")
    assert desk_bot.desk.get_case(ref)["status"] == "to_confirm"
    desk_bot.desk.claim(ref, engineer="Li Wei")
    # The bill of lading the customer sent shows the port arrival: the warranty runs from it (W2).
    arrival = days_ago(100)
    case = desk_bot.desk.correct_unit(
        ref, engineer="Li Wei", serial=OLD_UNREGISTERED.lower(), changes={"port_arrival_date": arrival},
        note="Arrival read from the bill of lading.",
    )  # fmt: skip
    unit = case["units"][0]
    assert (unit["outcome"], unit["basis"], unit["port_arrival_date"]) == ("covered", "port_arrival", arrival)
    assert unit["clauses"] == ["F1", "M2", "M3", "M4", "W1", "W2"]
    assert unit["facts"]["port_arrival_date"] == arrival
    assert case["status"] == "claimed"  # no longer a refusal to confirm
    audit = [a for a in case["audit"] if a["action"] == "unit_corrected"]
    assert audit[0]["actor"] == "Li Wei"
    assert audit[0]["detail"]["changes"] == {"port_arrival_date": [None, arrival]}
    assert audit[0]["detail"]["outcome"] == ["not_covered", "covered"]
    assert audit[0]["detail"]["status"] == ["to_confirm", "claimed"]
    assert audit[0]["detail"]["note"] == "Arrival read from the bill of lading."
    # Stored: the page reads the same decision after a reload.
    assert units_of(desk_bot)[0].outcome == "covered"
    # Found altered on inspection: not covered again (X3), and to confirm again.
    altered = desk_bot.desk.correct_unit(ref, engineer="Li Wei", serial=OLD_UNREGISTERED,
                                         changes={"proof": "altered"})  # fmt: skip
    assert (altered["units"][0]["outcome"], altered["status"]) == ("not_covered", "to_confirm")
    assert "X3" in altered["units"][0]["clauses"]


def test_a_correction_redecides_every_unit_of_the_claim(desk_bot: Bot) -> None:
    # 5 covered units and 5 expired of another order: below 10, no M5. Correcting the expired ones' arrival
    # one by one brings the covered count to 10, and then every covered unit allows discount compensation.
    ref = claim_to_the_end(desk_bot, f"CSP2402C0100-CSP2402C0104 and CSP2402B0100-CSP2402B0104 {FAULT}",
                           "cause:normal")  # fmt: skip
    for n in range(5):
        case = desk_bot.desk.correct_unit(ref, engineer="Li Wei", serial=f"CSP2402B010{n}",
                                          changes={"port_arrival_date": days_ago(300)})  # fmt: skip
    assert all(u["outcome"] == "covered" for u in case["units"])
    assert "discount_compensation" in case["allowed_methods"]
    last = [a for a in case["audit"] if a["action"] == "unit_corrected"][-1]
    assert len(last["detail"]["redecided"]) == 10  # M5 now among every unit's methods


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "give at least one of"),
        ({"warranty_end": "2030-01-01"}, "cannot correct warranty_end"),
        ({"proof": "registry"}, "proof must be one of"),
        ({"port_arrival_date": "10/03/2024"}, "must be a date"),
        ({"production_date": "2024-02-30"}, "must be a date"),
        ({"port_arrival_date": 20240310}, "must be a date"),
    ],
)
def test_bad_corrections_are_refused_and_change_nothing(
    desk_bot: Bot, changes: dict[str, Any], message: str
) -> None:
    ref = claim_to_the_end(desk_bot, f"CSP2402B0100 {FAULT}", "cause:normal")
    before = desk_bot.desk.get_case(ref)
    with pytest.raises(DeskError, match=message):
        desk_bot.desk.correct_unit(ref, engineer="Li Wei", serial="CSP2402B0100", changes=changes)
    assert desk_bot.desk.get_case(ref)["units"] == before["units"]


# --- methods outside the decision ---------------------------------------------------------------------------


def test_a_method_the_decision_does_not_allow_needs_goodwill_and_a_reason(desk_bot: Bot) -> None:
    ref = claim_to_the_end(desk_bot, f"CSP2402B0100 {FAULT}", "cause:normal")
    with pytest.raises(InvalidAction, match="give it as goodwill or chargeable"):
        desk_bot.desk.choose_method(ref, engineer="Li Wei", method="remote_guidance")
    with pytest.raises(DeskError, match="reason must not be empty"):
        desk_bot.desk.choose_method(ref, engineer="Li Wei", method="remote_guidance", goodwill="goodwill")
    assert desk_bot.desk.get_case(ref)["method"] is None  # nothing was set by the refused attempts
    desk_bot.desk.choose_method(ref, engineer="Li Wei", method="remote_guidance", goodwill="goodwill",
                                reason="A long-standing customer; two months past the term.")  # fmt: skip
    told = bot_texts(desk_bot)[-1]
    assert "goodwill" in told and "not a warranty service" in told
    assert "As the warranty provides" not in told and "maintenance is free" not in told
    case = desk_bot.desk.get_case(ref)
    chosen = [a for a in case["audit"] if a["action"] == "method_chosen"][-1]["detail"]
    assert (chosen["method"], chosen["goodwill"]) == ("remote_guidance", "goodwill")
    assert (case["status"], case["method"]) == ("in_service", "remote_guidance")


def test_a_chargeable_service_is_told_as_chargeable(desk_bot: Bot) -> None:
    ref = claim_to_the_end(desk_bot, f"CSP2402B0100 {FAULT}", "cause:normal")
    desk_bot.desk.choose_method(ref, engineer="Li Wei", method="factory_repair", goodwill="chargeable",
                                reason="The warranty ended 10 months ago.")  # fmt: skip
    told, instruction = bot_texts(desk_bot)[-2:]  # the method, then where to ship the unit (issue 19)
    assert "chargeable" in told and "at your cost" in told and "free" not in told
    assert (
        "freight is at your cost" in instruction
        and "warranty" not in instruction
        and "free" not in instruction
    )
    with pytest.raises(DeskError, match="cannot be chargeable"):
        desk_bot.desk.choose_method(ref, engineer="Li Wei", method="discount_compensation",
                                    goodwill="chargeable", reason="x")  # fmt: skip


def test_the_warrantys_own_method_is_not_goodwill(desk_bot: Bot) -> None:
    ref = claim_to_the_end(desk_bot, f"CSP2402C0100 {FAULT}", "cause:normal")
    with pytest.raises(DeskError, match="it is the warranty's"):
        desk_bot.desk.choose_method(ref, engineer="Li Wei", method="factory_repair", goodwill="goodwill",
                                    reason="x")  # fmt: skip
    desk_bot.desk.choose_method(ref, engineer="Li Wei", method="factory_repair")
    assert "freight is borne by the customer" in bot_texts(desk_bot)[-2]


# --- the registry on the case -------------------------------------------------------------------------------


def test_the_case_shows_the_registrys_order_company_and_cargo_choice(desk_bot: Bot) -> None:
    ref = claim_to_the_end(desk_bot, f"CSP2402A0100 CSP2403D0100 {FAULT}", "cause:normal")
    case = desk_bot.desk.get_case(ref)
    assert case["customer"] == "Ana"  # the chat's name, beside the registry's company
    assert case["company"] == "Acme Fleet Ltd., Cargo Parts Co"
    orders = {o["order_id"]: o for o in case["orders"]}
    assert orders["PO-12"] == {"order_id": "PO-12", "customer": "Acme Fleet Ltd.", "order_total": "1012.50",
                                    "currency": "USD", "order_pieces": 1000, "cargo_compensation": False,
                                    "units": 1, "discount_amount": "10.13"}  # fmt: skip
    assert orders["PO-CARGO"]["cargo_compensation"] is True
    first, cargo = case["units"]
    assert first["registry"] == {"order_id": "PO-12", "production_date": days_ago(200), "port_arrival_date": days_ago(100),
                                 "cargo_compensation": False}  # fmt: skip
    assert (cargo["order_id"], cargo["registry"]["cargo_compensation"]) == ("PO-CARGO", True)
    assert "M1" in cargo["clauses"]


# --- the local desk API -------------------------------------------------------------------------------------


def test_the_desk_api_corrects_units_and_refuses_bad_requests_with_a_4xx(desk_bot: Bot) -> None:
    ref = claim_to_the_end(desk_bot, f"CSP2402B0100 {FAULT}", "cause:normal")
    auth = {"Authorization": "Bearer desk-secret", "X-Engineer": "Li Wei"}
    path = f"/api/desk/cases/{ref}"
    bad = [
        (f"{path}/units/CSP2402B0100/correct", {"port_arrival_date": "yesterday"}, 400),
        (f"{path}/units/CSP2402B0100/correct", {"colour": "red"}, 400),
        (f"{path}/units/CSP2402B0100/correct", {"proof": "altered", "note": 5}, 422),
        (f"{path}/units/CSP9999Z0000/correct", {"proof": "documents"}, 404),
        (f"{path}/method", {"method": "factory_repair"}, 409),
        (f"{path}/method", {"method": "factory_repair", "goodwill": "maybe", "reason": "x"}, 422),
    ]

    async def requests() -> list[httpx.Response]:
        # The real application in-process (no socket): the same routes, guard and handlers as `serve`.
        transport = httpx.ASGITransport(app=create_app(desk_bot))
        async with httpx.AsyncClient(transport=transport, base_url="http://desk.test", headers=auth) as http:
            answers = [await http.post(url, json=body) for url, body, _ in bad]
            answers.append(await http.post(f"{path}/units/CSP2402B0100/correct",
                                           json={"port_arrival_date": days_ago(30)}))  # fmt: skip
            answers.append(await http.post(f"{path}/method", json={"method": "factory_repair"}))
            answers.append(await http.get(path))
            return answers

    *refused, corrected, chosen, shown = asyncio.run(requests())
    for (url, body, status), answer in zip(bad, refused, strict=True):
        assert answer.status_code == status, (url, body, answer.text)
        assert "error" in answer.json()
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["units"][0]["outcome"] == "covered"
    assert chosen.status_code == 200, chosen.text
    assert shown.json()["method"] == "factory_repair"


VALUE = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12),
                  st.dates().map(date.isoformat), st.sampled_from(["documents", "altered", "none", "registry"]),
                  st.lists(st.integers(), max_size=2))  # fmt: skip
CHANGES = st.dictionaries(st.sampled_from(["port_arrival_date", "production_date", "proof", "colour"]), VALUE,
                          max_size=3)  # fmt: skip


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=CHANGES)
def test_any_correction_is_decided_or_refused_never_an_error(desk_bot: Bot, changes: dict[str, Any]) -> None:
    ref = (
        desk_bot.desk.list_cases()[0]["ref"]
        if desk_bot.desk.list_cases()
        else claim_to_the_end(desk_bot, f"CSP2402B0100 CSP2402A0100 {FAULT}", "cause:normal")
    )
    try:
        case = desk_bot.desk.correct_unit(ref, engineer="Li Wei", serial="CSP2402B0100", changes=changes)
    except DeskError:
        return
    # Whatever was accepted is stored, decided and consistent with the case's status.
    outcomes = [u["outcome"] for u in case["units"]]
    assert set(outcomes) <= {"covered", "not_covered", "review"}
    assert (case["status"] == "to_confirm") == all(o == "not_covered" for o in outcomes)
    assert [a for a in case["audit"] if a["action"] == "unit_corrected"]
