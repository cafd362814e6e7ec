"""The engine against real databases: inbox dedupe, order, the transactional outbox, retries, restarts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, update
from sqlmodel import Session, col

from adapters import mail, wechat
from bot.app import Bot, build
from bot.config import Settings
from bot.messages import InboundMessage
from bot.outbox import Deliverer, PermanentFailure, RetryLater, Unreachable
from bot.store import Case, CaseUnit, ChannelIdentity, Conversation, InboxItem, Message, OutboxItem
from bot.store.clock import utcnow
from tests.support import CLAIM, CLAIM_AS_READ, SERIAL, ChannelApi, bot_texts, deliver, inbound, say


def test_a_claim_opens_a_case_and_every_reply_is_in_the_outbox(bot: Bot) -> None:
    say(bot, *CLAIM)
    texts = bot_texts(bot)
    assert any("WR-" in t for t in texts), texts
    with Session(bot.db) as session:
        case = session.execute(select(Case)).scalar_one()
        units = session.execute(select(CaseUnit)).scalars().all()
        outbox = session.execute(select(OutboxItem).order_by(OutboxItem.id)).scalars().all()  # type: ignore[arg-type]
    assert case.ref == f"WR-{case.created_at.year}-{case.id:06d}"
    assert case.status == "open" and case.fault.startswith("the display shows E07")
    assert [(u.serial, u.outcome, u.clauses) for u in units] == [
        (SERIAL, "covered", ["F1", "M2", "M3", "M4", "W1", "W3"])
    ]
    assert [o.payload["text"] for o in outbox] == texts
    api = ChannelApi()
    deliver(bot, api)
    assert [m.text for m in api.sent] == texts


def test_a_redelivered_message_is_stored_once(bot: Bot) -> None:
    first = bot.engine.accept(inbound("hello", external_id="same"))
    again = bot.engine.accept(inbound("hello", external_id="same"))
    assert not first.duplicate and again.duplicate and again.inbox_id is None
    bot.engine.process_pending()
    with Session(bot.db) as session:
        assert len(session.execute(select(InboxItem)).scalars().all()) == 1
        assert len(session.execute(select(Message).where(Message.author == "customer")).scalars().all()) == 1  # type: ignore[arg-type]


def test_messages_of_a_chat_are_processed_in_arrival_order(bot: Bot) -> None:
    for text in CLAIM:
        bot.engine.accept(inbound(text, chat="a"))
        bot.engine.accept(inbound("hello", chat="b"))
    assert bot.engine.process_pending() == 6
    customer = [m["text"] for m in bot.engine.transcript("test", "a") if m["author"] == "customer"]
    assert customer == CLAIM_AS_READ
    assert any("WR-" in t for t in bot_texts(bot, "a"))


def test_accepted_messages_survive_a_restart(settings: Settings, bot: Bot) -> None:
    for text in CLAIM:
        bot.engine.accept(inbound(text))
    bot.db.dispose()  # the process dies before processing anything
    restarted = build(settings)
    assert restarted.engine.process_pending() == 3
    assert any("WR-" in t for t in bot_texts(restarted))


def test_a_send_interrupted_by_a_crash_is_sent_after_its_lease(bot: Bot) -> None:
    say(bot, "hello")
    deliverer = Deliverer(bot.db, {"test": ChannelApi()}, owner="another-worker")
    assert len(deliverer._lease_due(1)) == 1  # taken for sending ... and the process dies here
    api = ChannelApi()
    deliver(bot, api)
    assert api.sent == []  # the lease keeps the chat's head (and so the chat) waiting
    with Session(bot.db) as session, session.begin():
        session.execute(update(OutboxItem).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    deliver(bot, api)
    assert len(api.sent) == 2  # greeting and the serial question, once each


def test_passing_failures_are_retried_in_order_and_permanent_ones_dead_lettered(bot: Bot) -> None:
    say(bot, "hello")
    api = ChannelApi([RetryLater("503", after=0), RetryLater("timeout", after=0)])
    deliver(bot, api)
    assert [m.text for m in api.sent] == bot_texts(bot)
    say(bot, "status")
    deliver(bot, ChannelApi([PermanentFailure("400 Bad Request: chat not found")]))
    with Session(bot.db) as session:
        dead = session.execute(select(OutboxItem).where(OutboxItem.status == "dead")).scalars().all()  # type: ignore[arg-type]
    assert [d.last_error for d in dead] == ["400 Bad Request: chat not found"]


def test_a_chats_replies_go_out_in_one_round_in_order(bot: Bot) -> None:
    say(bot, *CLAIM)  # several replies queued for one chat
    texts = bot_texts(bot)
    assert len(texts) > 2
    api = ChannelApi()
    deliverer = Deliverer(bot.db, {"test": api})
    assert asyncio.run(deliverer.deliver_due()) == len(texts)  # one lease, one record, for the whole run
    assert [m.text for m in api.sent] == texts
    one_at_a_time = ChannelApi()
    say(bot, "status")
    waiting = len(bot_texts(bot)) - len(texts)
    rounds = 0
    while asyncio.run(Deliverer(bot.db, {"test": one_at_a_time}, run_rows=1).deliver_due()):
        rounds += 1
    assert rounds == waiting and len(one_at_a_time.sent) == waiting


def test_a_failure_inside_a_run_gives_the_rest_back_untried(bot: Bot) -> None:
    say(bot, "hello")
    texts = bot_texts(bot)
    assert len(texts) == 2
    api = ChannelApi([RetryLater("503", after=0)])
    assert asyncio.run(Deliverer(bot.db, {"test": api}).deliver_due()) == 1  # the second was not tried
    with Session(bot.db) as session:
        rows = session.execute(select(OutboxItem).order_by(col(OutboxItem.id))).scalars().all()
    assert [(r.status, r.attempts, r.lease_owner) for r in rows] == [
        ("pending", 1, None),
        ("pending", 0, None),
    ]
    deliver(bot, api)
    assert [m.text for m in api.sent] == texts  # in order, once each


def test_a_held_row_ends_its_chats_run(bot: Bot) -> None:
    say(bot, *CLAIM)
    with Session(bot.db) as session, session.begin():
        ids = list(session.execute(select(col(OutboxItem.id)).order_by(col(OutboxItem.id))).scalars())
        session.execute(update(OutboxItem).where(col(OutboxItem.id) == ids[2]).values(status="held"))
    api = ChannelApi()
    deliver(bot, api)
    assert [m.text for m in api.sent] == bot_texts(bot)[:2]  # the held third keeps the rest behind it


def test_a_blocked_bot_marks_the_customer_unreachable(bot: Bot) -> None:
    say(bot, "hello")
    deliver(bot, ChannelApi([Unreachable("403 Forbidden: bot was blocked by the user")]))
    with Session(bot.db) as session:
        identity = session.execute(select(ChannelIdentity)).scalar_one()
        statuses = {o.status for o in session.execute(select(OutboxItem)).scalars()}
    assert identity.unreachable and statuses == {"dead"}


def test_a_conversation_whose_identity_was_removed_by_hand_goes_on(bot: Bot) -> None:
    say(bot, "hello")
    with Session(bot.db) as session, session.begin():
        before = session.execute(select(Conversation)).scalar_one()
        kept = (before.id, before.customer_id)
        session.execute(delete(ChannelIdentity))
    say(bot, "it shuts down under load")
    with Session(bot.db) as session:
        after = session.execute(select(Conversation)).scalar_one()  # the same one, not a second
        identity = session.execute(select(ChannelIdentity)).scalar_one()  # a new identity
        texts = list(
            session.execute(
                select(col(Message.text)).where(
                    col(Message.conversation_id) == after.id, col(Message.author) == "customer"
                )
            ).scalars()
        )
    assert (after.id, after.customer_id) == kept
    assert identity.chat_id == "chat-1" and after.state != "new"
    assert texts == ["hello", "it shuts down under load"]
    assert len(bot_texts(bot)) >= 3  # answered both


@pytest.mark.parametrize("quiet", [False, True], ids=["answered", "taken quietly"])
def test_a_customer_who_writes_again_is_reachable_again(bot: Bot, quiet: bool) -> None:
    say(bot, "hello")
    deliver(bot, ChannelApi([Unreachable("403 Forbidden: bot was blocked by the user")]))
    bot.engine.accept(inbound("I unblocked you", raw={"quiet": "auto-submitted"} if quiet else {}))
    bot.engine.process_pending()
    with Session(bot.db) as session:
        identity = session.execute(select(ChannelIdentity)).scalar_one()
    assert not identity.unreachable


@pytest.mark.parametrize(
    "text",
    [
        "",
        "A" * 100_000,
        "\x00\x07\x1b[31m",
        "😀🔧⚡",
        "عندي مشكلة في الجهاز",
        "<script>alert(1)</script>",
        "{{ 7*191 }} {% for x in y %}",
        "CSP'; DROP TABLE case;--",
    ],
)
def test_bad_input_gets_a_clear_reply_and_is_kept_literally(bot: Bot, text: str) -> None:
    say(bot, "hello", text)
    transcript = bot.engine.transcript("test", "chat-1")
    kept = text.replace("\x00", "\ufffd").replace("\x07", "\ufffd").replace("\x1b", "\ufffd")
    assert [m["text"] for m in transcript if m["author"] == "customer"] == ["hello", kept]
    replies = [m["text"] for m in transcript if m["author"] == "bot"]
    assert len(replies) >= 3  # greeting, question, and an answer to the odd message
    assert not any("1337" in r for r in replies)  # template syntax is never evaluated
    with Session(bot.db) as session:
        assert {i.status for i in session.execute(select(InboxItem)).scalars()} == {"done"}


def test_desk_actions_reach_the_customer_and_are_audited(bot: Bot) -> None:
    say(bot, *CLAIM)
    ref = bot.desk.list_cases()[0]["ref"]
    bot.desk.claim(ref, engineer="Li Wei")
    bot.desk.note(ref, engineer="Li Wei", text="check the fan first")
    bot.desk.reply(ref, engineer="Li Wei", text="Please send a photo of the display.")
    say(bot, "Here it is")
    bot.desk.choose_method(ref, engineer="Li Wei", method="factory_repair")
    bot.desk.close(ref, engineer="Li Wei")
    say(bot, "4")
    case = bot.desk.get_case(ref)
    assert case["status"] == "closed" and case["method"] == "factory_repair" and case["rating"] == 4
    texts = bot_texts(bot)
    assert any("Li Wei, one of our after-sales engineers" in t for t in texts)
    assert "check the fan first" not in "\n".join(texts)
    assert any("Please send a photo of the display." in t and "Li Wei" in t for t in texts)
    assert any("freight is borne by the customer" in t and "F1" in t for t in texts)
    assert any("rate" in t for t in texts)
    assert [a["action"] for a in case["audit"]] == [
        "opened",
        "claimed",
        "noted",
        "replied",
        "method_chosen",
        "fulfilment",  # the factory repair's first step: the RMA and where to ship (issue 19)
        "closed",
        "rated",
    ]
    assert [m["author"] for m in case["messages"]].count("note") == 1


@pytest.mark.parametrize(
    ("language", "hint", "texts", "expected"),
    [
        (
            "es",
            None,
            ["Hola, mi inversor CSP2604D0007 muestra E07 y se apaga", "proof:none", "cause:normal"],
            "Abrí el caso WR-",
        ),
        (
            "zh",
            "zh_CN",
            ["你好", "CSP2604D0007", "显示屏显示E07，然后就关机了", "proof:none", "cause:normal"],
            "已为您创建工单 WR-",
        ),
    ],
)
def test_a_whole_claim_in_the_customers_language(
    bot: Bot, language: str, hint: str | None, texts: list[str], expected: str
) -> None:
    for text in texts:
        bot.engine.accept(inbound(text, chat=language, locale_hint=hint))
    bot.engine.process_pending()
    replies = bot_texts(bot, language)
    assert any(expected in t for t in replies), replies
    assert not any("Please" in t or "Thank you" in t for t in replies), replies
    assert bot.desk.list_cases()[0]["language"] == language


def test_mail_and_wechat_get_one_reply_per_customer_message(bot: Bot) -> None:
    # What the server tells the engine of the mail and WeChat channels (bot.server.configure_core).
    bot.engine.config.one_message_per_turn = frozenset(
        c.name for c in (mail.MailChannel, wechat.WeChatChannel) if c.one_reply_per_turn
    )
    for channel in ("email", "wechat", "test"):
        message = inbound("hello", chat=f"{channel}-chat")
        bot.engine.accept(InboundMessage(**{**message.__dict__, "channel": channel}))
    bot.engine.process_pending()
    with Session(bot.db) as session:
        rows = session.execute(select(col(OutboxItem.channel))).scalars().all()
    assert sorted(rows) == ["email", "test", "test", "wechat"]  # greeting and question: together, or apart
    (one,) = bot.engine.transcript("email", "email-chat")[1:]
    assert "Hello!" in one["text"] and "serial number" in one["text"]


def test_a_portuguese_customer_of_portugal_is_answered_in_european_portuguese(bot: Bot) -> None:
    bot.engine.accept(inbound("Olá, bom dia", chat="pt-pt", locale_hint="pt-PT"))
    bot.engine.accept(inbound("Olá, bom dia", chat="pt-br", locale_hint="pt-BR"))
    assert bot.engine.process_pending() == 2
    portugal = [m["text"] for m in bot.engine.transcript("test", "pt-pt") if m["author"] == "bot"]
    brazil = [m["text"] for m in bot.engine.transcript("test", "pt-br") if m["author"] == "bot"]
    assert portugal[0] == bot.renderer.text("greeting", language="pt_PT")
    assert brazil[0] == bot.renderer.text("greeting", language="pt")
    assert portugal[0] != brazil[0]
    # Detection says "pt" for both: no offer to switch a pt-PT customer to Portuguese.
    assert not any("language_offer" in t for t in portugal)
    bot.engine.accept(inbound("O ecrã mostra E07 e desliga-se", chat="pt-pt", locale_hint="pt-PT"))
    bot.engine.process_pending()
    later = [m for m in bot.engine.transcript("test", "pt-pt") if m["author"] == "bot"][len(portugal) :]
    assert later and all(
        not m["buttons"] or all(b["value"] != "lang:pt" for b in m["buttons"]) for m in later
    )
