"""Telegram channel: verify, parse, split and render, then the bot's real server (webhook and polling) with the
real python-telegram-bot client against a loopback fake of the Bot API."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import pytest
import telegram
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError
from sqlalchemy import Engine, select
from sqlmodel import Session
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, NetworkError, RetryAfter, TimedOut

from adapters import telegram as tg
from bot.app import build
from bot.config import Settings
from bot.messages import Button, OutboundMessage
from bot.outbox import Limits, PermanentFailure, RetryLater, Unreachable
from bot.server import load_channels
from bot.store import ChannelIdentity, StoredAttachment
from bot.store.kv import kv_put
from tests.fakes.telegram import PAYLOADS, PUBLIC_URL, SECRET, TOKEN, Running, bot_servers
from tests.support import wait_until

CHAT = "6021457893"
MEDIA_GROUP = "14029573316481206"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
JPEG_2 = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(255, -1, -1)) * 4
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def _dump(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode()


def second_photo() -> bytes:
    """The album's second photo, derived from the first as the payload README says."""
    document = json.loads(payload("photo.json"))
    document["update_id"] += 1
    message = document["message"]
    message["message_id"] += 1
    message.pop("caption")
    for number, size in enumerate(message["photo"]):
        size["file_id"] = f"AgACAgEAAxkBAAIEtDerivedSecondPhoto{number}"
        size["file_unique_id"] = f"AQADsecond{number}"
    return _dump(document)


def photo_file_id(body: bytes) -> str:
    return str(json.loads(body)["message"]["photo"][-1]["file_id"])


def press(value: str, number: int) -> bytes:
    """The customer pressing one of our inline buttons, derived from the sample callback query."""
    document = json.loads(payload("callback_query.json"))
    document["update_id"] += 100 + number
    document["callback_query"]["id"] = f"25873652129048{number:05d}"
    document["callback_query"]["data"] = value
    return _dump(document)


def text_update(text: str, number: int) -> bytes:
    document = json.loads(payload("text_serial.json"))
    document["update_id"] += 200 + number
    document["message"]["message_id"] += 200 + number
    document["message"]["text"] = text
    return _dump(document)


def parsed(body: bytes) -> tg.Incoming | None:
    return tg.parse_update(tg.read_update(body))


# --- verify and parse ---------------------------------------------------------------------------------------


def test_the_secret_header_is_required_and_compared_exactly() -> None:
    assert tg.check_secret(SECRET, SECRET) is None
    assert tg.check_secret(SECRET, None) == 401
    assert tg.check_secret(SECRET, "") == 401
    assert tg.check_secret(SECRET, SECRET + "x") == 403
    assert tg.check_secret(SECRET, SECRET.upper()) == 403
    assert tg.check_secret(SECRET, "ünïcode") == 403


def test_parse_text_command_photo_document_and_callback() -> None:
    start = parsed(payload("text_start.json"))
    assert start == tg.Incoming(
        update_id=281734501,
        chat_id=CHAT,
        sender_id=CHAT,
        sender_name="Mateo Rojas",
        locale="es",
        text="/start",
    )

    serial = parsed(payload("text_serial.json"))
    assert serial is not None and "CSP2403A0217" in serial.text and serial.files == ()

    photo = parsed(payload("photo.json"))
    assert photo is not None and photo.media_group_id == MEDIA_GROUP
    assert photo.text == "Placa de serie y pantalla con el error E07"
    (largest,) = photo.files
    assert largest.file_id == photo_file_id(payload("photo.json"))  # the 1280x960 size, not a thumbnail
    assert (largest.kind, largest.mime, largest.size) == ("photo", "image/jpeg", 184217)

    document = parsed(payload("document_invoice.json"))
    assert document is not None and document.text == "Factura de compra (SolarAndes, 16/04/2024)"
    (invoice,) = document.files
    assert (invoice.kind, invoice.name, invoice.mime, invoice.size) == (
        "document",
        "Factura_F001-000229.pdf",
        "application/pdf",
        96530,
    )

    button = parsed(payload("callback_query.json"))
    assert button is not None
    assert (button.text, button.callback_id, button.chat_id) == (
        "confirm_serial:CSP2403A0217",
        "2587365212904811532",
        CHAT,
    )
    assert button.sender_name == "Mateo Rojas" and button.locale == "es"


def test_an_edit_is_a_correction_and_other_updates_are_ignored() -> None:
    edited = parsed(payload("edited_message.json"))
    assert edited is not None and edited.edited and edited.files == ()
    assert "CSP2403A0217" in edited.text and edited.chat_type == "private"
    assert (
        parsed(
            b'{"update_id": 9, "channel_post": {"message_id": 1, "date": 1, '
            b'"chat": {"id": -100123, "type": "channel"}, "text": "news"}}'
        )
        is None
    )
    assert parsed(b'{"update_id": 10}') is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe{}",
        b"[]",
        b'"text"',
        b"{}",
        b'{"update_id": "281734501"}',
        b'{"update_id": true}',
        b'{"update_id": -1}',
        b'{"update_id": 5, "message": "hello"}',
        b'{"update_id": 5, "message": {"message_id": 1, "chat": {"id": 1, "type": "private"}}}',
        b'{"update_id": 6, "callback_query": {"id": "1"}}',
    ],
)
def test_what_is_not_an_update_is_refused(body: bytes) -> None:
    with pytest.raises(tg.BadUpdate):
        parsed(body)


@pytest.mark.parametrize("name", sorted(p.name for p in PAYLOADS.glob("*.json")))
def test_a_polled_update_reads_as_the_same_update_by_webhook(name: str) -> None:
    """Polling gets python-telegram-bot's objects and turns them back into the Bot API's JSON: the same
    update says the same thing either way."""
    body = payload(name)
    polled = telegram.Update.de_json(json.loads(body), telegram.Bot(TOKEN))
    assert tg.parse_update(polled.to_dict()) == parsed(body)


# --- split and render ---------------------------------------------------------------------------------------


def test_short_text_is_one_piece_and_long_text_splits_at_paragraphs() -> None:
    assert tg.split_html("Hello") == ["Hello"]
    paragraph = "The inverter reports E07 when the load is too high. " * 30  # about 1500 characters
    text = "\n\n".join(paragraph.strip() for _ in range(6))
    pieces = tg.split_html(text)
    assert len(pieces) == 3
    assert all(len(p) <= tg.MAX_MESSAGE_CHARS for p in pieces)
    assert all(p.endswith("load is too high.") and p.startswith("The inverter") for p in pieces)
    assert " ".join(pieces).split() == text.split()


def test_a_cut_falls_at_a_word_and_never_inside_an_entity() -> None:
    text = html.escape("word " * 3 + "x" * 90 + " <b>&amp;</b> " + "tail " * 20)
    for limit in range(20, 120):
        pieces = tg.split_html(text, limit)
        for piece in pieces:
            assert visible_units(piece) <= limit
            assert not re.search(r"&[#\w]*$", piece) and not re.match(r"^[#\w]*;", piece)
            assert all(re.fullmatch(r"&(lt|gt|amp|quot|#x27);", e) for e in re.findall(r"&[^&]*?;", piece))
        assert re.sub(r"\s", "", "".join(pieces)) == re.sub(r"\s", "", text)  # nothing lost or added
    assert tg.split_html(text, 60)[0] == "word word word"  # the long word does not fit: cut before it


def visible_units(piece: str) -> int:
    """What Telegram counts: the UTF-16 units of the text after its entities are parsed."""
    return len(html.unescape(re.sub(r"<[^>]+>", "", piece)).encode("utf-16-le")) // 2


def test_the_limit_counts_visible_text_not_markup() -> None:
    escaped = html.escape("&" * 4000)  # 20000 characters of HTML, 4000 that the customer sees
    assert tg.split_html(escaped) == [escaped]
    tagged = "<b>" + "x" * 4090 + "</b>"
    assert tg.split_html(tagged) == [tagged]
    assert [visible_units(p) for p in tg.split_html(html.escape("<>" * 2100))] == [4096, 104]


def test_a_cut_inside_a_tag_closes_and_reopens_it() -> None:
    text = "<b>" + "bold words here " * 10 + '</b> plain <a href="https://example.com/x">link text</a>'
    pieces = tg.split_html(text, 60)
    assert len(pieces) > 2
    for piece in pieces:
        assert visible_units(piece) <= 60
        assert piece.count("<b>") == piece.count("</b>") and piece.count("<a ") == piece.count("</a>")
        assert not re.search(r"<[^>]*$", piece) and not re.match(r"^[^<]*>", piece)
    assert pieces[0].startswith("<b>bold") and re.match(r"<b>\w", pieces[1])  # reopened
    visible = re.sub(r"<[^>]+>", "", " ".join(pieces))
    assert visible.split() == re.sub(r"<[^>]+>", "", text).split()


def test_no_break_at_all_cuts_hard_and_limits_count_utf16_units() -> None:
    assert tg.split_html("x" * 5000) == ["x" * 4096, "x" * 904]
    emoji = "🔧" * 3000  # two UTF-16 units each
    pieces = tg.split_html(emoji)
    assert [len(p) for p in pieces] == [2048, 952]


PLAIN = st.sampled_from(["E07", "&amp;", "&lt;b&gt;", "carga", "🔧", "\n", "\n\n", "x" * 30, "número"])
MARKED = st.one_of(
    PLAIN,
    PLAIN.map(lambda w: f"<b>{w}</b>"),
    st.tuples(PLAIN, PLAIN).map(lambda ws: f'<b>{ws[0]} <a href="https://e.x/?a=1&amp;b=2">{ws[1]}</a></b>'),
)


@hypothesis_settings(max_examples=150, deadline=None)
@given(words=st.lists(MARKED, min_size=1, max_size=120), limit=st.integers(min_value=80, max_value=300))
def test_pieces_respect_the_limit_and_keep_every_word(words: list[str], limit: int) -> None:
    text = " ".join(words)
    pieces = tg.split_html(text, limit)
    for piece in pieces:
        assert visible_units(piece) <= limit
        assert piece.strip() and re.sub(r"<[^>]+>", "", piece).strip()
        assert not re.search(r"&[#\w]*$", piece) and not re.search(r"<[^>]*$", piece)
        assert piece.count("<b>") == piece.count("</b>") and piece.count("<a ") == piece.count("</a>")

    def content(value: str) -> str:
        return re.sub(r"<[^>]+>|\s", "", value)

    assert content("".join(pieces)) == content(text)


def test_rendering_escapes_everything_and_buttons_become_a_keyboard() -> None:
    message = OutboundMessage(
        channel="telegram",
        chat_id=CHAT,
        text='Fault: <b>E07</b> & "smoke"',
        buttons=(Button(label="It failed in normal use", value="cause:normal"),),
    )
    pieces, markup = tg.render(message)
    assert pieces == ["Fault: &lt;b&gt;E07&lt;/b&gt; &amp; &quot;smoke&quot;"]
    assert markup == {
        "inline_keyboard": [[{"text": "It failed in normal use", "callback_data": "cause:normal"}]]
    }


def test_button_values_over_64_bytes_become_numbered_options() -> None:
    long_value = "unit:" + "CSP2403A0217," * 6
    message = OutboundMessage(
        channel="telegram",
        chat_id=CHAT,
        text="Which one?",
        buttons=(Button(label="All", value=long_value), Button(label="None", value="none")),
    )
    pieces, markup = tg.render(message)
    assert markup is None
    assert pieces == ["Which one?\n\n1. All\n2. None"]


def test_bot_api_errors_map_to_outbox_outcomes() -> None:
    flood = tg.delivery_error(RetryAfter(7))
    assert isinstance(flood, RetryLater) and flood.after == 7
    assert isinstance(tg.delivery_error(Forbidden("Forbidden: bot was blocked by the user")), Unreachable)
    refused = tg.delivery_error(BadRequest("Bad Request: chat not found"))
    assert isinstance(refused, PermanentFailure) and not isinstance(refused, Unreachable)
    assert str(refused) == "telegram: Chat not found"  # PTB drops the "Bad Request: " prefix
    assert type(tg.delivery_error(InvalidToken("Unauthorized"))) is PermanentFailure
    assert type(tg.delivery_error(Conflict("Conflict"))) is PermanentFailure
    assert type(tg.delivery_error(TimedOut())) is RetryLater
    assert type(tg.delivery_error(NetworkError("Internal Server Error (500)"))) is RetryLater


# --- settings -----------------------------------------------------------------------------------------------


def test_from_settings_chooses_the_mode_and_refuses_an_unsafe_webhook(settings: Settings, db: Engine) -> None:
    def channel(**changes: Any) -> tg.TelegramChannel | None:
        return tg.from_settings(build(settings.model_copy(update=changes), db=db))

    assert channel() is None  # no token: no channel
    token = SecretStr(TOKEN)
    polling = channel(telegram_bot_token=token)
    assert polling is not None and polling.mode == "polling" and polling.routes() == []
    webhook = channel(
        telegram_bot_token=token, public_url=PUBLIC_URL, telegram_webhook_secret=SecretStr(SECRET)
    )
    assert webhook is not None and webhook.mode == "webhook"
    assert [r.path for r in webhook.routes()] == [tg.WEBHOOK_PATH]  # type: ignore[attr-defined]
    forced = channel(telegram_bot_token=token, public_url=PUBLIC_URL, telegram_mode="polling")
    assert forced is not None and forced.mode == "polling"
    with pytest.raises(ValueError, match="TELEGRAM_WEBHOOK_SECRET"):
        channel(telegram_bot_token=token, public_url=PUBLIC_URL)
    with pytest.raises(ValueError, match="TELEGRAM_WEBHOOK_SECRET"):
        channel(
            telegram_bot_token=token, telegram_mode="webhook", telegram_webhook_secret=SecretStr("has space")
        )
    client = webhook.client
    assert client.base_url == f"https://api.telegram.org/bot{TOKEN}"
    assert client.base_file_url == f"https://api.telegram.org/file/bot{TOKEN}"


@pytest.mark.parametrize(
    "per_second, per_chat, limits, paid",
    [
        (
            30.0,
            1.0,
            Limits(per_second=30, per_chat_per_second=1, chat_burst=3),
            False,
        ),  # the defaults
        (31.0, 1.0, Limits(per_second=31, per_chat_per_second=1, chat_burst=3), True),
        (1000.0, 2.0, Limits(per_second=1000, per_chat_per_second=2, chat_burst=3), True),
        (0.0, 0.0, Limits(chat_burst=3), False),  # unpaced: a local Bot API server, a bench
    ],
)
def test_the_sending_pace_is_configured_and_over_30_a_second_is_a_paid_broadcast(
    start: Callable[..., Running], per_second: float, per_chat: float, limits: Limits, paid: bool
) -> None:
    running = start(telegram_messages_per_second=per_second, telegram_chat_messages_per_second=per_chat)
    sender = running.channel.outbox
    assert isinstance(sender, tg.TelegramSender)
    assert sender.limits == limits  # what the outbox paces this channel's sends by
    channel = tg.from_settings(running.bot)
    assert channel is not None

    async def deliver() -> None:
        try:
            await channel.sender().send(OutboundMessage(channel="telegram", chat_id=CHAT, text="Hello"))
        finally:
            await channel.stop()  # closes the clients it sent with

    asyncio.run(deliver())
    [sent] = running.fake.sent(CHAT)
    assert sent.get("allow_paid_broadcast") is (True if paid else None)  # at 30/s or less: not sent at all
    assert running.fake.paid == ([CHAT] if paid else [])


@pytest.mark.parametrize(
    "name, value",
    [
        ("TELEGRAM_MESSAGES_PER_SECOND", "-1"),
        ("TELEGRAM_MESSAGES_PER_SECOND", "1001"),  # paid broadcasts go up to 1000 a second
        ("TELEGRAM_CHAT_MESSAGES_PER_SECOND", "-0.5"),
        ("TELEGRAM_CHAT_MESSAGES_PER_SECOND", "fast"),
    ],
)
def test_a_sending_pace_out_of_range_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_the_server_loads_the_channel_when_configured(settings: Settings, db: Engine) -> None:
    bot = build(settings.model_copy(update={"telegram_bot_token": SecretStr(TOKEN)}), db=db)
    assert "telegram" in [c.name for c in load_channels(bot)]
    assert "telegram" not in [c.name for c in load_channels(build(settings, db=db))]


# --- the bot's server against the fake Bot API --------------------------------------------------------------


@pytest.fixture
def start(settings: Settings, db: Engine) -> Iterator[Callable[..., Running]]:
    """Starts the fake Bot API and the bot's server with the Telegram channel (webhook unless told)."""
    with bot_servers(settings, db) as run:
        yield run


def _claim(running: Running) -> str:
    """From /start to the case reference: serial, an album of two photos as proof, then buttons."""
    fake = running.fake
    second = second_photo()
    fake.add_file(photo_file_id(payload("photo.json")), JPEG, "photos/file_10.jpg")
    fake.add_file(photo_file_id(second), JPEG_2, "photos/file_11.jpg")

    running.deliver(payload("text_start.json"))
    wait_until(lambda: running.settled(1), what="the greeting")
    running.deliver(payload("text_serial.json"))
    wait_until(lambda: running.settled(2), what="the answer to the serial")
    assert any("CSP2403A0217" in m["text"] for m in fake.sent(CHAT))

    running.deliver(payload("photo.json"))
    running.deliver(second)
    wait_until(lambda: running.settled(3), what="the album, accepted as one message")
    album = running.inbox()[-1]
    assert album.external_id == f"album:{MEDIA_GROUP}"
    assert album.payload["text"] == "Placa de serie y pantalla con el error E07"
    assert [a["kind"] for a in album.payload["attachments"]] == ["photo", "photo"]
    with Session(running.bot.db) as session:
        stored = session.execute(select(StoredAttachment).order_by(StoredAttachment.id)).scalars().all()  # type: ignore[arg-type]
    assert [running.bot.attachments.path(s.path).read_bytes() for s in stored] == [JPEG, JPEG_2]

    pressed: list[str] = []
    in_responses: list[str] = []
    for number in range(1, 6):
        if running.case_ref():
            break
        offered = fake.last_buttons(CHAT)
        value = next(v for v in ("cause:normal", "pref:repair", "cmd:human", *offered) if v in offered)
        pressed.append(value)
        answer = running.deliver(press(value, number))
        if answer is not None:
            assert answer["method"] == "answerCallbackQuery"
            in_responses.append(answer["callback_query_id"])
        wait_until(lambda: running.settled(3 + len(pressed)), what=f"the answer to {value}")
    assert "cause:normal" in pressed
    expected = [f"25873652129048{n:05d}" for n in range(1, len(pressed) + 1)]
    if running.channel.mode == "webhook":
        # Answered in the webhook's response, so the 2xx never waits on the Bot API.
        assert in_responses == expected and fake.calls_to("answerCallbackQuery") == []
    else:
        answered = wait_until(
            lambda: (
                fake.calls_to("answerCallbackQuery")[len(expected) - 1 :]
                and fake.calls_to("answerCallbackQuery")
            ),
            what="the button answers",
        )
        assert [p["callback_query_id"] for p in answered] == expected

    ref = wait_until(running.case_ref, what="a case")
    assert ref is not None
    wait_until(lambda: any(ref in m["text"] for m in fake.sent(CHAT)), what="the case reference")
    assert all(m["parse_mode"] == "HTML" for m in fake.sent(CHAT))
    assert all(o.status == "sent" and o.last_error is None for o in running.outbox())
    return ref


def test_a_full_claim_by_webhook(start: Callable[..., Running]) -> None:
    running = start()
    ref = _claim(running)
    assert re.fullmatch(r"WR-\d{4}-\d{6}", ref)
    fake = running.fake
    (registration,) = fake.calls_to("setWebhook")
    assert registration["url"] == PUBLIC_URL + tg.WEBHOOK_PATH and registration["secret_token"] == SECRET
    assert registration["allowed_updates"] == ["message", "edited_message", "callback_query"]
    assert fake.calls_to("getMe") and not fake.calls_to("getUpdates")


def test_a_full_claim_by_polling(start: Callable[..., Running]) -> None:
    running = start(mode="polling")
    assert running.post(payload("text_start.json")).status_code == 404  # no webhook route in polling mode
    _claim(running)
    fake = running.fake
    assert fake.calls_to("deleteWebhook") and not fake.calls_to("setWebhook")
    offsets = [p.get("offset") for p in fake.calls_to("getUpdates")]
    confirmed = [o for o in offsets if o is not None]
    assert confirmed == sorted(confirmed) and confirmed[-1] > json.loads(second_photo())["update_id"]
    assert all(p["timeout"] == 1 for p in fake.calls_to("getUpdates"))

    task = running.channel._task
    assert task is not None and not task.done()
    running.server.close()
    assert task.done() and running.channel._task is None  # stopped with the server, mid long poll


def test_the_same_update_twice_is_stored_once_and_a_button_press_is_answered(
    start: Callable[..., Running],
) -> None:
    running = start()
    assert running.post(payload("text_start.json")).json()["outcome"] == "stored"
    assert running.post(payload("text_start.json")).json()["outcome"] == "duplicate"
    pressed = [running.post(payload("callback_query.json")).json() for _ in range(2)]
    assert [p["outcome"] for p in pressed] == ["stored", "duplicate"]
    items = running.inbox()
    assert [i.external_id for i in items] == ["281734501", "281734503"]
    assert items[1].payload["text"] == "confirm_serial:CSP2403A0217"
    assert (items[1].payload["sender_name"], items[1].payload["locale_hint"]) == ("Mateo Rojas", "es")
    # Answered every time it arrives, so the customer's button never keeps spinning: in the response body,
    # which Telegram runs once it has the 2xx; nothing reached the Bot API before.
    assert [(p["method"], p["callback_query_id"]) for p in pressed] == [
        ("answerCallbackQuery", "2587365212904811532")
    ] * 2
    assert running.fake.calls_to("answerCallbackQuery") == []


def test_forged_missing_and_malformed_requests_store_nothing(start: Callable[..., Running]) -> None:
    running = start()
    body = payload("text_start.json")
    assert running.post(body, secret=None).status_code == 401
    assert running.post(body, secret="guessed").status_code == 403
    assert running.post(body, secret=SECRET[:-1]).status_code == 403
    assert running.post(b"{not json").status_code == 400
    assert running.post(b'{"update_id": "x"}').status_code == 400
    assert running.post(b'{"update_id": 5, "message": {"message_id": 1}}').status_code == 400
    assert running.inbox() == []
    assert not running.fake.calls_to("getFile")


def test_documents_are_downloaded_and_oversized_files_refused_unread(start: Callable[..., Running]) -> None:
    running = start(attachment_max_bytes=100_000)
    fake = running.fake
    invoice = json.loads(payload("document_invoice.json"))["message"]["document"]
    fake.add_file(invoice["file_id"], PDF, "documents/file_3.pdf")
    fake.add_file(photo_file_id(payload("photo.json")), JPEG, "photos/file_10.jpg")

    # Answered before anything is asked of the Bot API: the file is fetched after the 2xx, and a failure of
    # Telegram's file server is tried again by the bot itself.
    release = fake.hold("getFile")
    fake.fail_next("getFile", 500, "Internal Server Error")
    try:
        answered = running.post(payload("document_invoice.json"))
        assert (answered.status_code, answered.json()["outcome"]) == (200, "queued")
        assert fake.calls_to("getFile") == [] and fake.calls_to("getFile", ok=False) == []
    finally:
        release.set()
    (item,) = wait_until(running.inbox, what="the invoice")
    assert len(fake.calls_to("getFile", ok=False)) == 1
    (attachment,) = item.payload["attachments"]
    assert (attachment["kind"], attachment["name"], attachment["mime"]) == (
        "document",
        "Factura_F001-000229.pdf",
        "application/pdf",
    )
    assert running.bot.attachments.path(attachment["ref"]).read_bytes() == PDF
    assert fake.downloads == ["documents/file_3.pdf"]
    assert running.post(payload("document_invoice.json")).json()["outcome"] == "duplicate"

    # The photo says 184217 bytes, over the limit: refused without asking Telegram for it.
    assert running.post(payload("photo.json")).json()["outcome"] == "queued"
    wait_until(lambda: len(running.inbox()) == 2, what="the album")
    refused = running.inbox()[-1].payload["attachments"]
    assert [(a["kind"], a["ref"]) for a in refused] == [("rejected", "too_large")]
    assert [p["file_id"] for p in fake.calls_to("getFile")] == [invoice["file_id"]]


def test_kept_updates_keep_their_order_and_survive_a_restart(start: Callable[..., Running]) -> None:
    first = start()
    invoice = json.loads(payload("document_invoice.json"))["message"]["document"]
    first.fake.hold("getFile")  # never released: this server stops before any file comes
    assert first.post(payload("document_invoice.json")).json()["outcome"] == "queued"
    # The customer writes on meanwhile: kept behind the file, so the order is the customer's.
    assert first.post(text_update("¿Llegó la factura?", 1)).json()["outcome"] == "queued"
    assert first.inbox() == []
    first.server.close()  # stopped while Telegram's file server still holds the request
    first.fake.held["getFile"].set()

    restarted = start(files={invoice["file_id"]: (PDF, "documents/file_3.pdf")})
    wait_until(lambda: len(restarted.inbox()) == 2, what="both updates, after the restart")
    document, text = restarted.inbox()
    assert (
        document.external_id == "281734505"
        and document.payload["attachments"][0]["mime"] == "application/pdf"
    )
    assert text.payload["text"] == "¿Llegó la factura?"
    wait_until(restarted.drained, what="nothing kept")


def test_an_update_kept_by_another_server_holds_the_chats_words_behind_it(
    start: Callable[..., Running],
) -> None:
    running = start()
    # Another server of the same bot acknowledged a text of this chat and keeps it (to fetch its files):
    # this server's memory knows nothing of it, only the database does.
    kept = parsed(text_update("Ahí va la factura", 1))
    assert kept is not None
    key = tg.TelegramChannel._pending_key(kept)
    kv_put(running.bot.db, key, asdict(kept))
    assert running.post(text_update("¿Llegó la factura?", 2)).json()["outcome"] == "queued"
    wait_until(lambda: len(running.inbox()) == 2, what="both updates")
    assert [i.payload["text"] for i in running.inbox()] == ["Ahí va la factura", "¿Llegó la factura?"]
    # With nothing kept any more, the chat's words are stored at once again.
    wait_until(lambda: running.drained() and not running.channel._chats, what="nothing kept")
    assert running.post(text_update("¿Y?", 3)).json()["outcome"] == "stored"


def test_album_parts_redelivered_or_late_are_handled(start: Callable[..., Running]) -> None:
    running = start(album_wait=30)  # only a following message can complete this album within the test
    fake = running.fake
    second = second_photo()
    fake.add_file(photo_file_id(payload("photo.json")), JPEG, "photos/file_10.jpg")
    fake.add_file(photo_file_id(second), JPEG_2, "photos/file_11.jpg")
    assert running.post(payload("photo.json")).json()["outcome"] == "queued"
    assert running.post(second).json()["outcome"] == "queued"
    wait_until(running.drained, what="the parts fetched")
    assert running.post(second).json()["outcome"] == "queued"  # redelivered before the album is complete
    wait_until(running.drained, what="the redelivered part")
    assert running.inbox() == []

    # The customer writes again: Telegram sends one chat's updates in order, so the album is complete.
    assert running.post(text_update("¿Lo recibieron?", 1)).json()["outcome"] == "stored"
    assert [i.external_id for i in running.inbox()] == [f"album:{MEDIA_GROUP}", str(281734502 + 201)]
    assert len(running.inbox()[0].payload["attachments"]) == 2

    # A part redelivered after the album was accepted changes nothing.
    assert running.post(payload("photo.json")).json()["outcome"] == "queued"
    wait_until(running.drained, what="the redelivered first part")
    assert len(running.inbox()) == 2

    # A part that arrives after the album was accepted (a slow upload) follows as a message of its own.
    late = json.loads(second)
    late["update_id"] += 1
    late["message"]["message_id"] += 1
    late["message"]["photo"] = late["message"]["photo"][-1:]
    fake.add_file(late["message"]["photo"][0]["file_id"] + "late", JPEG, "photos/file_12.jpg")
    late["message"]["photo"][0]["file_id"] += "late"
    assert running.post(_dump(late)).json()["outcome"] == "queued"
    wait_until(running.drained, what="the late part")
    assert running.post(text_update("¿Y ahora?", 2)).json()["outcome"] == "stored"
    assert [i.external_id for i in running.inbox()][2:] == [f"album:{MEDIA_GROUP}:1", str(281734502 + 202)]
    assert len(running.inbox()[2].payload["attachments"]) == 1


def test_an_album_waits_for_a_part_whose_file_is_still_being_fetched(start: Callable[..., Running]) -> None:
    # By polling, a part is taken (its file fetched, then staged) while the album's quiet time runs: a slow
    # fetch longer than that time split the album in two messages (seen under load in CI).
    running = start(mode="polling", album_wait=0.2)
    fake = running.fake
    second = second_photo()
    fake.add_file(photo_file_id(payload("photo.json")), JPEG, "photos/file_10.jpg")
    fake.add_file(photo_file_id(second), JPEG_2, "photos/file_11.jpg")
    running.deliver(payload("photo.json"))
    wait_until(lambda: running.channel.albums.waiting(CHAT), what="the first part staged")
    release = fake.hold("getFile")
    running.deliver(second)
    wait_until(lambda: fake.holding == ["getFile"], what="the second part's file asked for")
    time.sleep(1.0)  # five times the album's quiet time, with its second part still on its way
    assert running.inbox() == []
    release.set()
    wait_until(lambda: running.settled(1), what="the album, as one message")
    (album,) = running.inbox()
    assert album.external_id == f"album:{MEDIA_GROUP}" and len(album.payload["attachments"]) == 2


def test_an_album_left_waiting_by_a_stopped_server_is_stored_by_the_next(
    start: Callable[..., Running],
) -> None:
    first = start(album_wait=30)
    second = second_photo()
    first.fake.add_file(photo_file_id(payload("photo.json")), JPEG, "photos/file_10.jpg")
    first.fake.add_file(photo_file_id(second), JPEG_2, "photos/file_11.jpg")
    assert first.post(payload("photo.json")).json()["outcome"] == "queued"
    assert first.post(second).json()["outcome"] == "queued"
    wait_until(first.drained, what="the parts fetched")
    first.server.close()  # acknowledged to Telegram, not yet a message: kept in the database
    assert first.inbox() == []

    restarted = start(album_wait=0.2)
    wait_until(lambda: restarted.settled(1), what="the album, after the restart")
    (album,) = restarted.inbox()
    assert album.external_id == f"album:{MEDIA_GROUP}" and len(album.payload["attachments"]) == 2
    assert restarted.fake.calls_to("getFile") == []  # the parts were downloaded before they were kept


def test_flood_control_is_waited_out_and_the_reply_arrives_once(start: Callable[..., Running]) -> None:
    running = start()
    running.fake.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
    assert running.post(payload("text_start.json")).status_code == 200
    wait_until(lambda: running.settled(1), what="the greeting, after the flood wait")
    refused = running.fake.calls_to("sendMessage", ok=False)
    sent = running.fake.sent(CHAT)
    assert len(refused) == 1 and refused[0]["text"] == sent[0]["text"]
    assert len([m for m in sent if m["text"] == refused[0]["text"]]) == 1
    first = running.outbox()[0]
    assert (first.status, first.attempts) == ("sent", 2)


def test_a_blocked_bot_marks_the_customer_unreachable(start: Callable[..., Running]) -> None:
    running = start()
    running.fake.block(CHAT)
    assert running.post(payload("text_start.json")).status_code == 200
    wait_until(
        lambda: running.outbox() and all(o.status == "dead" for o in running.outbox()), what="dead letters"
    )
    assert "blocked by the user" in (running.outbox()[0].last_error or "")
    with Session(running.bot.db) as session:
        identity = session.execute(select(ChannelIdentity)).scalars().one()
    assert identity.unreachable and running.fake.sent(CHAT) == []


def test_a_long_reply_is_split_and_a_retry_does_not_repeat_pieces(start: Callable[..., Running]) -> None:
    running = start()
    customer_text = "<b>E07</b> & <script>x</script> "
    text = "\n\n".join(f"Part {n}: " + (customer_text + "carga " * 60) * 4 for n in range(6))
    message = OutboundMessage(
        channel="telegram",
        chat_id=CHAT,
        text=text,
        buttons=(Button(label="Talk to an engineer", value="cmd:human"),),
    )
    channel = tg.from_settings(running.bot)
    assert channel is not None
    running.fake.fail_next("sendMessage", 502, "Bad Gateway", after=1)  # the second piece fails once

    async def deliver() -> None:
        try:
            with pytest.raises(RetryLater):
                await channel.sender().send(message)
            await channel.sender().send(message)
        finally:
            await channel.client.shutdown()

    asyncio.run(deliver())
    sent = running.fake.sent(CHAT)
    assert len(sent) > 2 and len({m["text"] for m in sent}) == len(sent)  # no piece twice
    assert all(len(m["text"]) <= tg.MAX_MESSAGE_CHARS for m in sent)
    assert [bool(m.get("reply_markup")) for m in sent] == [False] * (len(sent) - 1) + [True]
    assert "<b>" not in "".join(m["text"] for m in sent)  # the customer's markup stayed text
    assert html.unescape(" ".join(m["text"] for m in sent)).split() == text.split()


def test_a_reply_of_many_escaped_characters_goes_as_one_message(start: Callable[..., Running]) -> None:
    running = start()
    text = "R&D: " + "&<>" * 1300  # 3905 visible characters, over 15000 once escaped
    channel = tg.from_settings(running.bot)
    assert channel is not None

    async def deliver() -> None:
        try:
            await channel.sender().send(OutboundMessage(channel="telegram", chat_id=CHAT, text=text))
        finally:
            await channel.stop()  # closes the clients it sent with

    asyncio.run(deliver())
    [sent] = running.fake.sent(CHAT)
    assert html.unescape(sent["text"]) == text


def group_update(name: str, number: int = 0, text: str | None = None) -> bytes:
    document = json.loads(payload(name))
    document["update_id"] += number
    document["message"]["message_id"] += number
    if text is not None:
        document["message"]["text"] = text
    return _dump(document)


def test_a_group_is_pointed_to_a_private_chat_once_and_nothing_is_stored(
    start: Callable[..., Running],
) -> None:
    running = start()
    group = json.loads(payload("group_message.json"))["message"]["chat"]["id"]
    first = running.post(payload("group_message.json")).json()
    assert (first["outcome"], first["method"], first["chat_id"]) == ("group", "sendMessage", group)
    assert "private chat" in first["text"] and "message_thread_id" not in first
    again = running.post(group_update("group_message.json", 1, "CSP2403A0218 también")).json()
    assert again == {"ok": True, "outcome": "group"}  # told once, not at every message

    topic = json.loads(payload("forum_topic_message.json"))["message"]
    answer = running.post(payload("forum_topic_message.json")).json()
    assert (answer["chat_id"], answer["message_thread_id"]) == (
        topic["chat"]["id"],
        topic["message_thread_id"],
    )
    assert running.inbox() == [] and running.fake.calls_to("sendMessage") == []


def test_by_polling_the_group_answer_goes_to_its_topic(start: Callable[..., Running]) -> None:
    running = start(mode="polling")
    fake = running.fake
    topic = json.loads(payload("forum_topic_message.json"))["message"]
    group = json.loads(payload("group_message.json"))["message"]["chat"]["id"]
    fake.join(topic["chat"]["id"], forum=True)
    fake.join(group, "group")  # not a forum: a message_thread_id there is refused
    fake.queue(json.loads(payload("forum_topic_message.json")))
    fake.queue(json.loads(payload("group_message.json")))
    fake.queue(json.loads(payload("text_start.json")))
    wait_until(lambda: running.settled(1), what="the private chat's greeting")
    wait_until(lambda: len(fake.calls_to("sendMessage")) >= 3, what="the answers")
    to_groups = [p for p in fake.calls_to("sendMessage") if int(p["chat_id"]) < 0]
    assert [(int(p["chat_id"]), p.get("message_thread_id")) for p in to_groups] == [
        (topic["chat"]["id"], str(topic["message_thread_id"])),
        (group, None),
    ]
    assert "https://t.me/csp_warranty_bot" in to_groups[0]["text"]
    assert fake.calls_to("sendMessage", ok=False) == []
    assert [i.chat_id for i in running.inbox()] == [CHAT]


def test_an_edited_message_is_stored_as_a_correction(start: Callable[..., Running]) -> None:
    running = start()
    assert running.post(payload("text_serial.json")).json()["outcome"] == "stored"
    assert running.post(payload("edited_message.json")).json()["outcome"] == "stored"
    assert running.post(payload("edited_message.json")).json()["outcome"] == "duplicate"
    _, edit = running.inbox()
    assert edit.external_id == "281734506" and edit.payload["raw"]["edited"] is True
    assert "CSP2403A0218" in edit.payload["text"]


def test_files_come_only_through_the_fetch_policy(start: Callable[..., Running]) -> None:
    # Without FETCH_INSECURE_HOSTS the loopback file API is plain http on a private address: refused, so the
    # download goes through the policy (https, public addresses, the Bot API's host only).
    invoice = json.loads(payload("document_invoice.json"))["message"]["document"]
    running = start(fetch_insecure_hosts="", files={invoice["file_id"]: (PDF, "documents/file_3.pdf")})
    assert running.post(payload("document_invoice.json")).json()["outcome"] == "queued"
    (item,) = wait_until(running.inbox, what="the invoice, refused")
    assert [(a["kind"], a["ref"]) for a in item.payload["attachments"]] == [("rejected", "unavailable")]
    assert running.fake.downloads == [] and len(running.fake.calls_to("getFile")) == 1
    policy = running.channel.fetcher.policy
    assert (
        policy.allows_host("127.0.0.1")
        and not policy.allows_host("files.slack.com")
        and not policy.token_hosts
    )
