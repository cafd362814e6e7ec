"""The desk's case list on real databases: activity order, unread customer messages, search, filters, and the
canned replies; and the desk API's answers to actions that cannot work."""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from bot.app import Bot, build
from bot.canned import CannedRepliesError, load
from bot.config import Settings
from bot.conversation import LANGUAGES
from bot.messages import InboundMessage
from bot.registry import import_registry
from bot.server import create_app
from bot.store.clock import utcnow
from tests.fakes.server import serve

SERIAL = "CSP2604D0007"  # made April 2026: in warranty without proof until 2028-07-30
OTHER = "CSP2605B0101"
_ids = itertools.count(1)


def say(bot: Bot, chat: str, *texts: str, channel: str = "test", name: str = "Ana Souza") -> None:
    for text in texts:
        bot.engine.accept(
            InboundMessage(
                channel=channel,
                external_id=f"m{next(_ids)}",
                sender_id=chat,
                chat_id=chat,
                text=text,
                received_at=utcnow(),
                sender_name=name,
            )
        )
    bot.engine.process_pending()


def claim(bot: Bot, chat: str, serial: str, fault: str, **extra: str) -> str:
    say(bot, chat, f"{serial} {fault}", "proof:none", "cause:normal", **extra)
    refs = [c["ref"] for c in bot.desk.list_cases() if c["customer"] == extra.get("name", "Ana Souza")]
    return str(refs[0])


def test_a_customer_message_moves_its_case_up_and_stays_unread_until_the_desk_shows_it(bot: Bot) -> None:
    first = claim(bot, "+34600111222", SERIAL, "display shows E07 and shuts down")
    second = claim(bot, "chat-2", OTHER, "fan is loud", name="Li Wei")
    cases = bot.desk.list_cases()
    assert [c["ref"] for c in cases] == [second, first]  # the newest activity first
    # A new case is new to the desk: its customer messages are unread.
    assert all(c["unread"] > 0 for c in cases)
    assert bot.desk.list_facets()["unread_cases"] == 2
    for ref in (first, second):
        bot.desk.mark_seen(ref, bot.desk.get_case(ref)["messages"][-1]["id"])
    assert [c["unread"] for c in bot.desk.list_cases()] == [0, 0]
    assert bot.desk.list_facets()["unread_cases"] == 0
    before = bot.desk.get_case(first)["updated_at"]

    say(bot, "+34600111222", "Any news? It failed again this morning")
    say(bot, "+34600111222", "Here is the error log")
    cases = bot.desk.list_cases()
    assert [c["ref"] for c in cases] == [first, second]
    assert cases[0]["unread"] == 2 and cases[1]["unread"] == 0
    assert cases[0]["updated_at"] > before
    # The last activity: the bot's acknowledgement of the customer's message, shortened to one line.
    assert cases[0]["last_message"]["author"] == "bot" and first in cases[0]["last_message"]["text"]
    assert bot.desk.list_facets()["unread_cases"] == 1
    # An engineer's note, reply or a bot message is no unread customer message.
    bot.desk.note(first, engineer="Amira", text="checking")
    assert bot.desk.list_cases()[0]["unread"] == 2
    assert bot.desk.list_cases()[0]["last_message"] == {
        **bot.desk.list_cases()[0]["last_message"],
        "author": "note",
        "author_name": "Amira",
        "text": "checking",
    }

    shown = bot.desk.get_case(first)["messages"][-1]["id"]
    assert bot.desk.mark_seen(first, shown)["seen_id"] == shown
    assert bot.desk.list_cases()[0]["unread"] == 0
    # Seen never moves back, nor past the case's last message.
    assert bot.desk.mark_seen(first, 1)["seen_id"] == shown
    assert bot.desk.mark_seen(first, shown + 1000)["seen_id"] == shown
    assert bot.desk.get_case(first)["seen_id"] == shown
    # Marking seen is no action on the case: no audit row, the activity time stays.
    after = bot.desk.get_case(first)
    assert after["audit"][-1]["action"] == "noted"

    # A follow-up after the case closed reopens it: the message is in the case's thread, and unread.
    bot.desk.close(first, engineer="Amira")
    bot.desk.mark_seen(first, bot.desk.get_case(first)["messages"][-1]["id"])
    say(bot, "+34600111222", "It broke again, the same E07")
    reopened = bot.desk.get_case(first)
    assert reopened["status"] == "open"
    assert "It broke again, the same E07" in [
        m["text"] for m in reopened["messages"] if m["author"] == "customer"
    ]
    assert bot.desk.list_cases()[0]["ref"] == first and bot.desk.list_cases()[0]["unread"] == 1


def test_the_list_shows_outcomes_and_finds_cases_by_what_engineers_know(bot: Bot, tmp_path: Path) -> None:
    registry = tmp_path / "registry.csv"
    registry.write_text(
        "order_id,customer,serial,serial_to,production_date,port_arrival_date,cargo_compensation,"
        "order_pieces,order_total,currency\n"
        f"PO-7781,Sol Energia Ltda,{SERIAL},,2026-04-10,2026-05-20,false,10,25000.00,USD\n",
        encoding="utf-8",
    )
    import_registry(bot.db, registry, policy=bot.policy)
    first = claim(bot, "+34600111222", SERIAL, "display shows E07 and shuts down")
    second = claim(bot, "chat-2", OTHER, "fan is loud 100% of the time", name="Li Wei")
    by_ref = {c["ref"]: c for c in bot.desk.list_cases()}
    assert by_ref[first]["outcomes"] == {"covered": 1} and by_ref[first]["units"] == 1
    assert by_ref[first]["customer"] == "Ana Souza"

    def found(**filters: object) -> list[str]:
        return [c["ref"] for c in bot.desk.list_cases(**filters)]  # type: ignore[arg-type]

    assert found(query=first.lower()) == [first]  # reference
    assert found(query=SERIAL[-6:].lower()) == [first]  # serial
    assert found(query="ana sou") == [first]  # customer's name
    assert found(query="600111") == [first]  # contact (a WhatsApp-like number as the chat id)
    assert found(query="po-7781") == [first]  # order number
    assert found(query="sol energia") == [first]  # the registry's company
    assert found(query="E07") == [first]  # fault text
    assert found(query="LOUD") == [second]
    assert found(query="100%") == [second]  # % is literal, not a wildcard
    assert found(query="0%") == [second]
    assert found(query="_") == []
    assert found(query="'; DROP TABLE case; --") == []
    assert set(found()) == {first, second}

    bot.desk.claim(first, engineer="Amira")
    assert found(assignee="Amira") == [first]
    assert found(unassigned=True) == [second]
    assert found(channel="test") == [second, first] or found(channel="test") == [first, second]
    assert found(channel="telegram") == []
    assert found(status="claimed", query="e07") == [first]
    facets = bot.desk.list_facets()
    assert facets["assignees"] == ["Amira"] and facets["channels"] == ["test"]


def test_the_shipped_canned_replies_exist_in_every_language() -> None:
    replies = load()
    assert {r.id for r in replies.replies} >= {"factory_address", "photo_request", "invoice_request"}
    for reply in replies.replies:
        assert set(LANGUAGES) | {"pt_PT"} <= set(reply.texts), reply.id
    for language in (*LANGUAGES, "pt_PT", "pt-PT", "de"):
        offered = replies.for_case(language, case_ref="WR-2026-000042", customer="Ana")
        assert [r["id"] for r in offered] == [r.id for r in replies.replies]
        address = next(r for r in offered if r["id"] == "factory_address")
        assert "WR-2026-000042" in address["text"] and "{" not in address["text"]
    assert replies.for_case("pt_PT")[0]["language"] == "pt_PT"
    assert replies.for_case("de")[0]["language"] == "en"
    assert replies.for_case("zh")[1]["text"].startswith("能否")


def test_canned_replies_keep_case_values_as_data_and_refuse_a_bad_file(tmp_path: Path) -> None:
    good = tmp_path / "replies.toml"
    good.write_text(
        '[values]\naddress = "Rua 1"\n[[reply]]\nid = "a"\ntitle = "A"\n[reply.text]\n'
        'en = "Case {case_ref} for {customer} to {address}; {unknown} {0} {customer.__class__}"\n',
        encoding="utf-8",
    )
    offered = load(good).for_case("fr", case_ref="WR-1", customer="{address} {{ 7*7 }}")
    assert (
        offered[0]["text"] == "Case WR-1 for {address} {{ 7*7 }} to Rua 1; {unknown} {0} {customer.__class__}"
    )
    for body, problem in (
        ("[[reply]]\nid = 'a'\n", "title"),
        ("[[reply]]\nid = 'a'\ntitle = 'A'\n[reply.text]\nen = ''\n", "text per language"),
        ("reply = [", "not valid TOML"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(body, encoding="utf-8")
        with pytest.raises(CannedRepliesError, match=problem):
            load(bad)
    with pytest.raises(CannedRepliesError, match="cannot read"):
        load(tmp_path / "missing.toml")


TOKEN = "desk-token-for-the-list-test"


def test_the_desk_api_says_why_an_action_cannot_work(settings: Settings) -> None:
    bot = build(settings.model_copy(update={"desk_token": SecretStr(TOKEN)}))
    ref = claim(bot, "chat-1", SERIAL, "display shows E07")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve(create_app(bot)) as base, httpx.Client(base_url=base, timeout=10) as client:
        listed = client.get("/api/desk/cases", params={"q": "e07", "unassigned": "1"}, headers=auth)
        assert listed.status_code == 200
        body = listed.json()
        assert [c["ref"] for c in body["cases"]] == [ref] and body["unread_cases"] == 1
        assert body["channels"] == ["test"] and body["assignees"] == []
        bad = client.get("/api/desk/cases", params={"channel": "tele gram"}, headers=auth)
        assert bad.status_code == 422 and "channel" in bad.json()["error"]
        for value in ("7", -1, True, None, 2**64):
            seen = client.post(f"/api/desk/cases/{ref}/seen", json={"message_id": value}, headers=auth)
            assert seen.status_code == 422, value
        last = bot.desk.get_case(ref)["messages"][-1]["id"]
        assert client.post(f"/api/desk/cases/{ref}/seen", json={"message_id": last}, headers=auth).json() == {
            "ref": ref,
            "seen_id": last,
        }
        assert client.get("/api/desk/cases", headers=auth).json()["unread_cases"] == 0
        missing = client.post("/api/desk/cases/WR-1999-000001/seen", json={"message_id": 1}, headers=auth)
        assert missing.status_code == 404
        replies = client.get(f"/api/desk/cases/{ref}/replies", headers=auth).json()
        assert replies["language"] == "en" and ref in replies["replies"][0]["text"]

        assert client.post(f"/api/desk/cases/{ref}/close", json={}, headers=auth).status_code == 200
        asked = client.post(f"/api/desk/cases/{ref}/ask", json={"question": "Photo?"}, headers=auth)
        assert asked.status_code == 409
        assert "closed" in asked.json()["error"] and "writes again" in asked.json()["error"]
        replied = client.post(f"/api/desk/cases/{ref}/messages", json={"text": "Hi"}, headers=auth)
        assert replied.status_code == 409 and "closed" in replied.json()["error"]
