"""Fulfilment after the chosen method (issue 19), end to end on SQLite and PostgreSQL: a factory repair from
the decision to the unit shipped back, with the tracking number typed by the customer in Spanish; a door-to-door
visit picked in Chinese and reminded the day before; a discount credit shown on the customer's next lookup;
remote guidance closed by the customer's "yes"; reminders by an injected clock."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlmodel import Session, col

from bot import fulfilment
from bot.app import Bot, build
from bot.config import Settings
from bot.desk import InvalidAction
from bot.registry import import_registry
from bot.store import Conversation, Fulfilment
from bot.store.clock import utcnow
from tests.support import FAULT, HEADER, ROWS, bot_texts, claim_to_the_end, cli, say

ADDRESS = "Warranty returns, Building 3\\n88 Chuangye Road, Ningbo 315000, China"


@pytest.fixture
def service_bot(settings: Settings, db: Any, tmp_path: Path) -> Bot:
    csv = tmp_path / "registry.csv"
    csv.write_text("\n".join([HEADER, *ROWS]) + "\n", encoding="utf-8")
    bot = build(
        settings.model_copy(
            update={
                "desk_token": SecretStr("desk-secret"),
                "return_address": ADDRESS,
                "packing_note": "Pallets must be shrink-wrapped.",
            }
        ),
        db=db,
    )
    import_registry(db, csv, policy=bot.policy)
    return bot


def actions(bot: Bot, ref: str) -> list[str]:
    return [a["detail"].get("task") for a in bot.desk.get_case(ref)["audit"] if a["action"] == "fulfilment"]


def test_factory_repair_from_the_decision_to_shipped_back_in_spanish(service_bot: Bot) -> None:
    bot = service_bot
    ref = claim_to_the_end(
        bot,
        "Hola, el equipo CSP2402A0100 se apaga solo y muestra el error E07 desde hace una semana",
        "cause:normal",
    )
    assert bot.desk.get_case(ref)["language"] == "es"
    bot.desk.choose_method(ref, engineer="Li Wei", method="factory_repair")
    case = bot.desk.get_case(ref)
    rma = case["fulfilment"]["rma"]
    assert rma == "RMA-" + ref.split("-", 1)[1]
    assert case["fulfilment"]["step"] == "awaiting_shipment"
    instruction = bot_texts(bot)[-1]
    # The RMA, the return address and the packing from the settings, and the freight (F1), in Spanish.
    assert rma in instruction and "88 Chuangye Road, Ningbo" in instruction
    assert "Embalaje" in instruction and "Pallets must be shrink-wrapped." in instruction
    assert ("(F1)" in instruction and "flete" in instruction.lower()) or "transporte" in instruction.lower()

    # The customer types the carrier and the tracking number in free Spanish text.
    say(bot, "lo envié por DHL, número de seguimiento 1234567890")
    case = bot.desk.get_case(ref)
    assert case["fulfilment"]["step"] == "in_transit"
    assert case["fulfilment"]["data"]["inbound"] == {"carrier": "DHL", "tracking": "1234567890"}
    assert "hemos registrado su envío por DHL, número de seguimiento 1234567890" in bot_texts(bot)[-1]
    assert [m["text"] for m in case["messages"] if m["author"] == "customer"][-1].startswith(
        "lo envié por DHL"
    )

    with pytest.raises(InvalidAction, match="does not follow"):
        bot.desk.fulfil(ref, engineer="Li Wei", action="repaired")
    bot.desk.fulfil(ref, engineer="Li Wei", action="received")
    assert "ha llegado a nuestra fábrica" in bot_texts(bot)[-1]
    bot.desk.fulfil(ref, engineer="Li Wei", action="diagnosed", text="Condensador C12 dañado.")
    assert "Condensador C12 dañado." in bot_texts(bot)[-1]
    bot.desk.fulfil(ref, engineer="Li Wei", action="repaired")
    assert "reparado y probado" in bot_texts(bot)[-1]
    with pytest.raises(InvalidAction, match="tracking"):
        bot.desk.fulfil(ref, engineer="Li Wei", action="shipped_back", text="   ")
    bot.desk.fulfil(ref, engineer="Li Wei", action="shipped_back", text="DHL 9876543210")

    case = bot.desk.get_case(ref)
    assert case["status"] == "closed"  # closes after shipped back
    assert case["fulfilment"]["step"] == "shipped_back"
    assert case["fulfilment"]["data"]["return"] == {"carrier": "DHL", "tracking": "9876543210"}
    texts = bot_texts(bot)
    assert any("9876543210" in t and "de camino" in t for t in texts)
    assert actions(bot, ref) == ["started", "shipped_in", "received", "diagnosed", "repaired", "shipped_back"]
    shipped = [
        a for a in case["audit"] if a["action"] == "fulfilment" and a["detail"]["task"] == "shipped_in"
    ]
    assert shipped[0]["actor"] == "customer" and shipped[0]["detail"]["by"] == "customer"
    assert [a["action"] for a in case["audit"]][-1] == "closed"


def test_a_door_to_door_visit_picked_in_chinese_and_reminded_the_day_before(service_bot: Bot) -> None:
    bot = service_bot
    ref = claim_to_the_end(
        bot, "你好，设备 CSP2402A0101 坏了，开机后显示 E07 然后关机", "cause:normal", chat="zh-1"
    )
    assert bot.desk.get_case(ref)["language"] == "zh"
    bot.desk.choose_method(ref, engineer="Li Wei", method="door_to_door")
    with pytest.raises(InvalidAction, match="YYYY-MM-DD HH:MM"):
        bot.desk.fulfil(ref, engineer="Li Wei", action="slots", text="next Tuesday")
    bot.desk.fulfil(
        ref, engineer="Li Wei", action="slots", text="2030-01-08 09:00\n2030-01-09 14:00\n2030-01-10 09:30"
    )
    offer = bot_texts(bot, "zh-1")[-1]
    assert "2030年1月9日" in offer and "星期三" in offer
    say(bot, "我不确定", chat="zh-1")  # no slot in it: asked again, politely
    assert "没看明白" in bot_texts(bot, "zh-1")[-1]
    asked = len(bot_texts(bot, "zh-1"))
    say(
        bot,
        "技术人员来的时候需要我们准备梯子吗？另外我们工厂的门卫需要提前登记访客的身份证号码。",
        chat="zh-1",
    )
    assert len(bot_texts(bot, "zh-1")) == asked  # a question for the engineers, not a failed pick
    say(bot, "第二个", chat="zh-1")
    case = bot.desk.get_case(ref)
    assert case["fulfilment"]["step"] == "visit_booked"
    assert case["fulfilment"]["data"]["booked"] == "2030-01-09T14:00"
    assert "2030年1月9日（星期三）14:00" in bot_texts(bot, "zh-1")[-1]

    # The reminder: a periodic job with the clock given; not two days before, once the day before.
    before = len(bot_texts(bot, "zh-1"))
    assert bot.engine.remind_fulfilment(datetime(2030, 1, 7, 8, 0, tzinfo=utcnow().tzinfo)) == 0
    assert bot.engine.remind_fulfilment(datetime(2030, 1, 8, 8, 0, tzinfo=utcnow().tzinfo)) == 1
    assert bot.engine.remind_fulfilment(datetime(2030, 1, 8, 9, 0, tzinfo=utcnow().tzinfo)) == 0
    reminders = bot_texts(bot, "zh-1")[before:]
    assert len(reminders) == 1 and "温馨提醒" in reminders[0] and "2030年1月9日" in reminders[0]

    bot.desk.fulfil(ref, engineer="Li Wei", action="visit_report", text="Replaced the DC fuse; tested 2 h.")
    case = bot.desk.get_case(ref)
    assert case["status"] == "closed"
    assert case["fulfilment"]["data"]["report"] == "Replaced the DC fuse; tested 2 h."
    assert actions(bot, ref) == ["started", "slots", "slot_picked", "visit_report"]


@pytest.mark.parametrize("typed", ["第二个", "周四下午", "2", "slot:2"])
def test_a_slot_is_picked_by_number_ordinal_weekday_or_button(typed: str) -> None:
    slots = ["2030-01-08T09:00", "2030-01-10T14:00", "2030-01-10T09:00"]  # Tue morning, Thu pm, Thu am
    assert fulfilment.pick_slot(typed, slots) == 1


@pytest.mark.parametrize("typed", ["周四", "hola", "", "7"])
def test_an_unclear_slot_is_not_guessed(typed: str) -> None:
    assert fulfilment.pick_slot(typed, ["2030-01-08T09:00", "2030-01-10T14:00", "2030-01-10T09:00"]) is None


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("lo envié por DHL, número de seguimiento 1234567890", ("DHL", "1234567890")),
        ("已通过顺丰寄出，运单号 SF1234567890123", ("SF Express", "SF1234567890123")),
        ("Отправил СДЭК, трек-номер 1098765432", ("CDEK", "1098765432")),
        ("Enviei pelos Correios, código de rastreio AA123456789BR", ("Correios", "AA123456789BR")),
        ("Envoyé par Chronopost, numéro de suivi XY12345678FR", ("Chronopost", "XY12345678FR")),
        ("شحنت الجهاز عبر Aramex رقم التتبع 44556677889", ("Aramex", "44556677889")),
        ("Shipped today, tracking 1Z999AA10123456784", (None, "1Z999AA10123456784")),
    ],
)
def test_the_carrier_and_tracking_number_are_read_in_every_language(text: str, found: Any) -> None:
    assert fulfilment.read_tracking(text) == found


@pytest.mark.parametrize(
    "text", ["CSP2402A0153 still shows E07", "my case WR-2026-000042 please", "DHL is slow"]
)
def test_serials_references_and_words_alone_are_no_tracking_number(text: str) -> None:
    assert fulfilment.read_tracking(text) is None


def test_a_discount_credit_is_shown_on_the_customers_next_lookup(service_bot: Bot, tmp_path: Path) -> None:
    bot = service_bot
    # 12 covered units of PO-12 (1,012.50 USD): 1% is 10.13, credited against the order.
    ref = claim_to_the_end(bot, f"CSP2402A0100-CSP2402A0111 {FAULT}", "cause:normal", "pref:discount")
    bot.desk.choose_method(ref, engineer="Li Wei", method="discount_compensation")
    credits = bot.desk.credits()
    assert [(c["order_id"], c["amount"], c["currency"], c["company"], c["case_ref"]) for c in credits] == [
        ("PO-12", "10.13", "USD", "Acme Fleet Ltd.", ref)
    ]
    assert bot.desk.get_case(ref)["credits"][0]["amount"] == "10.13"
    assert bot.desk.credits(company="acme")[0]["order_id"] == "PO-12"
    assert bot.desk.credits(company="nobody") == []
    # Choosing again grants nothing twice.
    bot.desk.choose_method(ref, engineer="Li Wei", method="discount_compensation")
    assert len(bot.desk.credits()) == 1
    bot.desk.close(ref, engineer="Li Wei")
    # `warranty-bot credits` lists it for the sales team.
    listed = cli("credits", "--csv", cwd=tmp_path, env={"DATABASE_URL": bot.settings.database_url})
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].startswith("created_at,company,order_id,amount,currency,case_ref")
    assert f"Acme Fleet Ltd.,PO-12,10.13,USD,{ref},False,Li Wei" in listed.stdout
    assert (
        cli(
            "credits", "--company", " ", cwd=tmp_path, env={"DATABASE_URL": bot.settings.database_url}
        ).returncode
        == 2
    )

    # The same company's next claim, from another chat: the bot says the credit waits, the desk shows it.
    say(bot, f"CSP2402C0100 {FAULT}", "cause:normal", chat="chat-2")
    texts = bot_texts(bot, "chat-2")
    assert any("$10.13" in t and "PO-12" in t and "next order" in t for t in texts), texts
    second = next(c["ref"] for c in bot.desk.list_cases() if c["ref"] != ref)
    available = bot.desk.get_case(second)["credits_available"]
    assert [(c["order_id"], c["amount"], c["case_ref"]) for c in available] == [("PO-12", "10.13", ref)]


def test_remote_guidance_asks_fixed_and_a_no_goes_back_to_the_engineer(service_bot: Bot) -> None:
    bot = service_bot
    ref = claim_to_the_end(bot, f"CSP2402A0102 {FAULT}", "cause:normal", chat="rg")
    bot.desk.choose_method(ref, engineer="Li Wei", method="remote_guidance")
    bot.desk.fulfil(ref, engineer="Li Wei", action="parts", text="Control board CB-7\nDC fuse 20 A")
    assert (
        "Control board CB-7, DC fuse 20 A" in bot_texts(bot, "rg")[-1] and "(F1)" in bot_texts(bot, "rg")[-1]
    )
    bot.desk.fulfil(ref, engineer="Li Wei", action="parts_shipped", text="FedEx 771234567890")
    assert "771234567890" in bot_texts(bot, "rg")[-1]
    bot.desk.fulfil(ref, engineer="Li Wei", action="guide", text="Open the cover and replace the fuse F2.")
    bot.desk.fulfil(ref, engineer="Li Wei", action="ask_fixed")
    assert bot_texts(bot, "rg")[-1].endswith("is the unit working again now?")
    say(bot, "no, it still shows E07", chat="rg")
    case = bot.desk.get_case(ref)
    assert case["status"] != "closed" and case["fulfilment"]["step"] == "guiding"
    bot.desk.fulfil(ref, engineer="Li Wei", action="guide", text="Check the DC breaker too.")
    bot.desk.fulfil(ref, engineer="Li Wei", action="ask_fixed")
    say(bot, "1", chat="rg")  # the first button: yes, it works
    case = bot.desk.get_case(ref)
    assert case["status"] == "closed" and case["fulfilment"]["step"] == "done"
    assert actions(bot, ref) == ["started", "parts", "parts_shipped", "guide", "ask_fixed", "not_fixed", "guide",
                                 "ask_fixed", "fixed"]  # fmt: skip


def test_reminders_to_a_customer_who_has_not_shipped_and_to_engineers_past_the_sla(service_bot: Bot) -> None:
    bot = service_bot
    ref = claim_to_the_end(bot, f"CSP2402A0103 {FAULT}", "cause:normal", chat="rm")
    bot.desk.choose_method(ref, engineer="Li Wei", method="factory_repair")
    now = utcnow()
    assert bot.engine.remind_fulfilment(now + timedelta(days=6)) == 0
    assert bot.engine.remind_fulfilment(now + timedelta(days=8)) == 1
    assert bot.engine.remind_fulfilment(now + timedelta(days=9)) == 0  # once
    assert "not had the shipping details" in bot_texts(bot, "rm")[-1]
    bot.desk.fulfil(ref, engineer="Li Wei", action="received")
    # received=48 hours by default: the engineers are alerted once after that.
    assert bot.engine.remind_fulfilment(utcnow() + timedelta(hours=47)) == 0
    assert bot.engine.remind_fulfilment(utcnow() + timedelta(hours=49)) == 1
    assert bot.engine.remind_fulfilment(utcnow() + timedelta(hours=60)) == 0
    audit = [a["action"] for a in bot.desk.get_case(ref)["audit"]]
    assert audit.count("fulfilment_reminded") == 1 and audit.count("fulfilment_overdue") == 1


def test_the_steps_and_transitions_are_consistent() -> None:
    for method, first in fulfilment.FIRST_STEP.items():
        assert method in fulfilment.TRANSITIONS
        assert first in fulfilment.Step
    for rules in fulfilment.TRANSITIONS.values():
        for action, (sources, target) in rules.items():
            assert action in fulfilment.INPUTS and action in fulfilment.ACTION_LABELS
            assert sources and target in fulfilment.Step
    assert set(fulfilment.STEP_LABELS) == set(fulfilment.Step.__members__)


def test_a_state_with_offered_slots_survives_the_conversation(service_bot: Bot) -> None:
    bot = service_bot
    ref = claim_to_the_end(bot, f"CSP2402A0104 {FAULT}", "cause:normal", chat="of")
    bot.desk.choose_method(ref, engineer="Li Wei", method="door_to_door")
    bot.desk.fulfil(ref, engineer="Li Wei", action="slots", text="2030-01-08 09:00\n2030-01-09 14:00")
    with Session(bot.db) as session:
        conversation = session.execute(
            select(Conversation).where(col(Conversation.chat_id) == "of")
        ).scalar_one()
        assert conversation.data["offered"] == ["slot:1", "slot:2"]
        assert session.execute(select(Fulfilment)).scalar_one().step == "slots_proposed"


def test_the_desk_api_runs_the_steps_and_refuses_bad_requests_with_a_4xx(service_bot: Bot) -> None:
    import asyncio

    import httpx

    from bot.server import create_app

    bot = service_bot
    ref = claim_to_the_end(bot, f"CSP2402A0105 {FAULT}", "cause:normal", chat="api")
    auth = {"Authorization": "Bearer desk-secret", "X-Engineer": "Li Wei"}
    path = f"/api/desk/cases/{ref}"

    async def requests() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(bot))
        async with httpx.AsyncClient(transport=transport, base_url="http://desk.test", headers=auth) as http:
            return [
                await http.post(f"{path}/fulfil", json={"action": "received"}),  # no method yet: 409
                await http.post(f"{path}/method", json={"method": "factory_repair"}),
                await http.post(f"{path}/fulfil", json={}),  # 422
                await http.post(f"{path}/fulfil", json={"action": "received", "text": 5}),  # 422
                await http.post(f"{path}/fulfil", json={"action": "teleport"}),  # 409
                await http.post(
                    f"{path}/fulfil", json={"action": "shipped_in", "text": "UPS 1Z999AA10123456784"}
                ),
                await http.get(path),
                await http.get("/api/desk/credits"),
            ]

    early, chosen, missing, wrong, unknown, shipped, shown, credits = asyncio.run(requests())
    assert early.status_code == 409 and "error" in early.json()
    assert chosen.status_code == 200
    assert missing.status_code == 422 and wrong.status_code == 422
    assert unknown.status_code == 409 and "not a step" in unknown.json()["error"]
    assert shipped.status_code == 200, shipped.text
    record = shown.json()["fulfilment"]
    assert record["step"] == "in_transit" and record["data"]["inbound"]["tracking"] == "1Z999AA10123456784"
    assert [a["action"] for a in record["actions"]] == ["received"]
    assert credits.status_code == 200 and credits.json() == {"credits": []}


def test_a_cargo_compensation_order_is_told_once_why_no_service_applies(service_bot: Bot) -> None:
    bot = service_bot
    ref = claim_to_the_end(bot, f"CSP2403D0100 {FAULT}", "cause:normal", chat="m1")
    assert bot.desk.get_case(ref)["status"] == "to_confirm"
    bot.desk.choose_method(ref, engineer="Li Wei", method="not_covered", reason="PO-CARGO took the 1% extra.")
    told = [t for t in bot_texts(bot, "m1") if "no after-sales service applies" in t]
    assert len(told) == 1
    assert "Order PO-CARGO chose cargo compensation" in told[0] and "10 extra pieces" in told[0]
    assert "1,000 pieces" in told[0] and "(M1)" in told[0] and "PO-CARGO took the 1% extra." in told[0]
    # Not the generic refusal, whose invoices and certificates cannot change M1.
    assert not any("purchase invoice, warranty certificate" in t for t in bot_texts(bot, "m1"))
    case = bot.desk.get_case(ref)
    assert case["fulfilment"]["step"] == "no_service" and case["status"] == "resolved"
    # Confirmed again: nothing new is told.
    bot.desk.choose_method(ref, engineer="Li Wei", method="not_covered", reason="Checked again.")
    assert len([t for t in bot_texts(bot, "m1") if "no after-sales service applies" in t]) == 1
    assert actions(bot, ref) == ["no_service"]


def test_the_migration_matches_the_tables_and_goes_down_and_up(db: Any) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect
    from sqlmodel import SQLModel

    from bot.store.db import alembic_config, upgrade

    with db.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    names = ("'fulfilment'", "'credit'", "<fulfilment>", "<credit>")  # a table's name, or a column's table
    ours = [d for d in diffs if any(name in repr(d) for name in names)]
    assert ours == []
    if db.dialect.name != "sqlite":
        return  # down and up once is enough; PostgreSQL's schema is the fixture's
    command.downgrade(alembic_config(db), "0002")
    assert not {"fulfilment", "credit"} & set(inspect(db).get_table_names())
    upgrade(db)
    assert {"fulfilment", "credit"} <= set(inspect(db).get_table_names())


def test_guidance_files_reach_the_web_chat_customer_and_stay_on_the_case(service_bot: Bot) -> None:
    """M2's guided repair with files: the engineer attaches a PDF to a guidance step from the desk API; the web
    chat customer receives it (listed with the message, downloadable from their chat only), and the case keeps
    it (its attachments, the audit row of the step)."""
    import asyncio

    import httpx

    from bot.server import create_app

    bot = service_bot
    manual = b"%PDF-1.7\n% fuse replacement, step by step\n" + b"0" * 2000
    auth = {"Authorization": "Bearer desk-secret", "X-Engineer": "Li Wei"}

    async def run() -> tuple[httpx.Response, list[dict[str, Any]], httpx.Response, httpx.Response, str]:
        transport = httpx.ASGITransport(app=create_app(bot))
        async with httpx.AsyncClient(transport=transport, base_url="http://bot.test") as http:
            session = (await http.post("/api/webchat/sessions", json={"language": "en"})).json()["session_id"]
            chat = f"/api/webchat/sessions/{session}"
            for text in (f"CSP2402A0102 {FAULT}", "cause:normal"):
                assert (await http.post(f"{chat}/messages", json={"text": text})).status_code == 202
                await asyncio.to_thread(bot.engine.process_pending)
            ref = str(bot.desk.list_cases()[0]["ref"])
            assert (
                await http.post(
                    f"/api/desk/cases/{ref}/method", json={"method": "remote_guidance"}, headers=auth
                )
            ).status_code == 200
            step = await http.post(
                f"/api/desk/cases/{ref}/fulfil/files",
                data={"action": "guide", "text": "Replace the fuse F2 as in the manual."},
                files={"file": ("fuse-manual.pdf", manual, "application/pdf")},
                headers=auth,
            )
            messages = (await http.get(f"{chat}/messages")).json()["messages"]
            sent = [f for m in messages if m["author"] != "customer" for f in m["attachments"]]
            got = await http.get(sent[0]["url"]) if sent else step
            other = (await http.post("/api/webchat/sessions", json={})).json()["session_id"]
            stranger = await http.get(sent[0]["url"].replace(session, other)) if sent else step
            return step, messages, got, stranger, ref

    step, messages, got, stranger, ref = asyncio.run(run())
    assert step.status_code == 200, step.text
    guidance = [m for m in messages if m["attachments"] and m["author"] != "customer"]
    assert len(guidance) == 1 and "Replace the fuse F2" in guidance[0]["text"]
    assert [(f["name"], f["mime"]) for f in guidance[0]["attachments"]] == [
        ("fuse-manual.pdf", "application/pdf")
    ]
    assert got.status_code == 200 and got.content == manual
    assert "attachment" in got.headers["content-disposition"]
    assert stranger.status_code == 404  # another chat cannot fetch it
    case = bot.desk.get_case(ref)
    assert [a["name"] for a in case["attachments"]] == ["fuse-manual.pdf"]
    step_rows = [
        a for a in case["audit"] if a["action"] == "fulfilment" and a["detail"].get("task") == "guide"
    ]
    assert [f["name"] for f in step_rows[0]["detail"]["files"]] == ["fuse-manual.pdf"]


def test_the_desk_refuses_a_guidance_file_of_a_wrong_type_or_too_large_with_a_clear_4xx(
    service_bot: Bot,
) -> None:
    import asyncio

    import httpx

    from bot.server import create_app

    bot = service_bot
    ref = claim_to_the_end(bot, f"CSP2402A0103 {FAULT}", "cause:normal", chat="files")
    bot.desk.choose_method(ref, engineer="Li Wei", method="remote_guidance")
    auth = {"Authorization": "Bearer desk-secret", "X-Engineer": "Li Wei"}
    path = f"/api/desk/cases/{ref}/fulfil/files"
    big = b"%PDF-1.7\n" + b"0" * bot.settings.attachment_max_bytes  # over the store's limit, not the server's

    async def requests() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(bot))
        async with httpx.AsyncClient(transport=transport, base_url="http://desk.test", headers=auth) as http:
            guide = {"action": "guide", "text": "See the file."}
            return [
                await http.post(
                    path,
                    data=guide,
                    files={"file": ("setup.exe", b"MZ\x90\x00" * 64, "application/x-msdownload")},
                ),
                await http.post(
                    path, data=guide, files={"file": ("fake.pdf", b"MZ\x90\x00" * 64, "application/pdf")}
                ),
                await http.post(path, data=guide, files={"file": ("huge.pdf", big, "application/pdf")}),
                await http.post(
                    path,
                    data={"action": "parts", "text": "Fuse"},
                    files={"file": ("a.pdf", b"%PDF-1.7\n0", "application/pdf")},
                ),
                await http.post(path, json=guide),  # not multipart
            ]

    exe, fake, huge, not_guidance, not_multipart = asyncio.run(requests())
    assert (
        exe.status_code == 415
        and "setup.exe" in exe.json()["error"]
        and "application/pdf" in exe.json()["error"]
    )
    assert fake.status_code == 415 and "fake.pdf" in fake.json()["error"]
    assert huge.status_code == 413 and "huge.pdf" in huge.json()["error"] and "MB" in huge.json()["error"]
    assert not_guidance.status_code == 422 and "guidance" in not_guidance.json()["error"]
    assert not_multipart.status_code == 422 and "multipart" in not_multipart.json()["error"]
    case = bot.desk.get_case(ref)
    assert case["attachments"] == [] and "guide" not in actions(bot, ref)
    assert not any("See the file" in t for t in bot_texts(bot, "files"))


def test_a_guidance_file_goes_as_a_link_to_a_channel_that_cannot_take_files(service_bot: Bot) -> None:
    """The test channel carries no files: the guidance message gets a line "📎 name: link" per file, with
    PUBLIC_URL as its base and an unguessable token; without PUBLIC_URL the desk refuses (nothing is lost)."""
    import asyncio

    import httpx

    from bot.server import create_app

    bot = service_bot
    ref = claim_to_the_end(bot, f"CSP2402A0104 {FAULT}", "cause:normal", chat="links")
    bot.desk.choose_method(ref, engineer="Li Wei", method="remote_guidance")
    wiring = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    picture = bot.attachments.save(wiring, name="wiring.png", mime="image/png", kind="photo")
    with pytest.raises(InvalidAction, match="PUBLIC_URL"):
        bot.desk.fulfil(ref, engineer="Li Wei", action="guide", text="As in the picture.", files=[picture])
    assert bot.desk.get_case(ref)["attachments"] == []

    bot.engine.config.public_url = "https://support.example.com/"
    bot.desk.fulfil(ref, engineer="Li Wei", action="guide", text="As in the picture.", files=[picture])
    last = bot_texts(bot, "links")[-1]
    assert "As in the picture." in last
    link = last.splitlines()[-1]
    assert link.startswith("📎 wiring.png: https://support.example.com/files/")
    path = link.split("https://support.example.com", 1)[1]

    async def fetch() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(bot))
        async with httpx.AsyncClient(transport=transport, base_url="http://bot.test") as http:
            return await http.get(path), await http.get(path[:-4] + "AAAA")

    got, wrong = asyncio.run(fetch())
    assert got.status_code == 200 and got.content == wiring
    assert wrong.status_code == 404 and "error" in wrong.json()
    assert [a["name"] for a in bot.desk.get_case(ref)["attachments"]] == ["wiring.png"]
