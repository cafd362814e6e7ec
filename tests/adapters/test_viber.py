"""Viber channel: signature, parsing and rendering, then the bot's real server against a loopback fake of Viber."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine

from adapters import viber
from adapters.viber import MalformedPayload, parse, render, signature_valid
from bot.app import Bot
from bot.config import Settings
from bot.messages import Button
from bot.outbox import PermanentFailure, RetryLater, Unreachable
from tests.fakes.server import serve
from tests.fakes.viber import PAYLOADS, TOKEN, FakeViber, refusal, sign
from tests.support import RunningChannel, channel_served, check_body_signature, choose, wait_until

USER = "01234567890A="
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n" + b"0" * 500


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def derived(number: int, text: str) -> bytes:
    """A later text message of the same user, derived from the sample."""
    document = json.loads(payload("text.json"))
    document["message_token"] = 4912661846655239000 + number
    document["message"] = {"type": "text", "text": text}
    return json.dumps(document, ensure_ascii=False).encode()


def with_media(name: str, base_url: str) -> bytes:
    """A media sample whose URL points at the fake's media host (loopback) instead of Viber's."""
    document = json.loads(payload(name))
    document["message"]["media"] = f"{base_url}/media/{document['message']['file_name']}"
    return json.dumps(document).encode()


def test_signature_is_hex_hmac_of_the_body() -> None:
    check_body_signature(signature_valid, sign, TOKEN, payload("text.json"))


def test_samples_parse_to_what_the_conversation_can_use() -> None:
    text = parse(payload("text.json"))
    assert (text.event, text.event_id, text.user_id, text.type, text.language) == (
        "message",
        "4912661846655238145",
        USER,
        "text",
        "en",
    )
    assert "CSP2311B0872" in text.text
    picture = parse(payload("picture.json"))
    assert (picture.type, picture.file_name) == ("picture", "img.jpg")
    assert picture.media_url and picture.media_url.startswith("https://dl-media.viber.com/")
    file = parse(payload("file.json"))
    assert (file.type, file.file_name) == ("file", "invoice.pdf")
    started = parse(payload("conversation_started.json"))
    assert (started.event, started.user_id) == ("conversation_started", USER)
    for ignored in ("sticker", "subscribed", "unsubscribed", "delivered", "seen", "failed", "webhook"):
        assert parse(payload(f"{ignored}.json")).event == "ignored", ignored


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"event": 1}',
        b'{"event": "message", "message_token": 1, "sender": {"id": ""}, "message": {"type": "text"}}',
        b'{"event": "message", "message_token": "x", "sender": {"id": "a"}, "message": {"type": "text"}}',
        b'{"event": "message", "message_token": 1, "sender": {"id": "a"}, "message": {"type": "picture"}}',
        b'{"event": "conversation_started", "message_token": 1}',
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse(body)


def test_buttons_become_a_keyboard_or_numbered_options() -> None:
    (message,) = render(
        "Why?",
        (Button(label="Normal use of the product", value="cause:normal"),),
        receiver=USER,
        sender_name="W",
    )
    assert message["keyboard"] == {
        "Type": "keyboard",
        "DefaultHeight": False,
        "Buttons": [
            {"ActionType": "reply", "ActionBody": "cause:normal", "Text": "Normal use of the product"}
        ],
    }
    assert (message["receiver"], message["type"], message["sender"]) == (USER, "text", {"name": "W"})
    many = tuple(Button(label=f"Unit {n}", value=f"u:{n}") for n in range(25))
    (plain,) = render("Which?", many, receiver=USER, sender_name="W")
    assert "keyboard" not in plain and plain["text"].endswith("25. Unit 24")
    long = render("word " * 2000, (Button(label="OK", value="ok"),), receiver=USER, sender_name="W")
    assert len(long) == 2 and all(len(m["text"]) <= viber.TEXT_LIMIT for m in long)
    assert "keyboard" not in long[0] and "keyboard" in long[1]


def test_errors_map_to_outbox_outcomes() -> None:
    assert isinstance(viber.delivery_error(viber.ViberError(http_status=503)), RetryLater)
    assert isinstance(viber.delivery_error(viber.ViberError(api_status=12)), RetryLater)
    assert isinstance(viber.delivery_error(viber.ViberError(api_status=6)), Unreachable)
    assert isinstance(viber.delivery_error(viber.ViberError(api_status=3)), PermanentFailure)
    assert not isinstance(viber.delivery_error(viber.ViberError(api_status=3)), Unreachable)


def test_not_configured_without_a_token(bot: Bot) -> None:
    assert viber.from_settings(bot) is None


# --- the bot's server against the fake -----------------------------------------------------------------------


@dataclass
class Running(RunningChannel):
    fake: FakeViber
    fake_url: str

    def post(self, body: bytes, *, signature: str | None = "valid") -> httpx.Response:
        return self.post_signed(viber.WEBHOOK_PATH, body, "x-viber-content-signature", signature, sign)

    def sent(self) -> list[dict[str, Any]]:
        return self.fake.to(USER)

    def texts(self) -> list[str]:
        return self.fake.texts(USER)


@pytest.fixture
def running(settings: Settings, db: Engine) -> Iterator[Running]:
    fake = FakeViber(auth_token=TOKEN, subscribed={USER})
    with serve(fake.app()) as fake_url:
        update = {
            "viber_auth_token": SecretStr(TOKEN),
            "viber_api_base_url": fake_url,
            "viber_media_hosts": "127.0.0.1",
            "fetch_insecure_hosts": "127.0.0.1",
            "outbox_poll_seconds": 0.1,
        }
        with channel_served(settings, db, update, viber.from_settings) as (bot, url):
            yield Running(bot=bot, fake=fake, url=url, fake_url=fake_url)


def test_a_full_claim_over_viber(running: Running) -> None:
    fake = running.fake
    fake.media["img.jpg"] = (JPEG, "image/jpeg")

    assert running.post(payload("text.json")).status_code == 200
    first = running.settled(2, "the bot's answer to the serial and fault")
    assert any("CSP2311B0872" in m["text"] for m in first)
    assert "keyboard" in first[-1]
    assert all(m["sender"] == {"name": "Warranty support"} for m in first)

    assert running.post(payload("text.json")).status_code == 200  # a redelivery: stored once
    assert [i.external_id for i in running.inbox()] == ["4912661846655238145"]

    before = len(fake.to(USER))
    assert running.post(with_media("picture.json", running.fake_url)).status_code == 200
    running.settled(before + 1, "the answer to the photo")
    stored = running.stored_attachment()
    assert (stored.kind, stored.mime, stored.size) == ("photo", "image/jpeg", len(JPEG))

    def press(number: int) -> str:  # a reply button sends its ActionBody
        choice = choose([b["ActionBody"] for b in fake.to(USER)[-1]["keyboard"]["Buttons"]])
        assert running.post(derived(number, choice)).status_code == 200
        return choice

    assert "cause:normal" in running.press_until_a_case(press)
    running.claimed()


def test_conversation_started_is_answered_with_a_welcome(running: Running) -> None:
    response = running.post(payload("conversation_started.json"))
    assert response.status_code == 200
    welcome = response.json()
    assert welcome["type"] == "text" and welcome["sender"] == {"name": "Warranty support"}
    assert "warranty" in welcome["text"].lower()
    assert refusal({**welcome, "receiver": USER}) is None  # a message Viber would accept
    assert running.inbox() == [] and running.fake.sent == []


def test_other_events_are_acknowledged(running: Running) -> None:
    for name in ("subscribed", "unsubscribed", "delivered", "seen", "failed", "webhook", "sticker"):
        assert running.post(payload(f"{name}.json")).status_code == 200, name
    assert running.inbox() == [] and running.fake.sent == []


def test_failures_retry_and_an_unsubscribed_user_is_unreachable(running: Running) -> None:
    fake = running.fake
    fake.failures.extend([12, 503])
    assert running.post(payload("text.json")).status_code == 200
    running.settled(2, "the replies after a rate limit and a 5xx")
    assert running.outbox()[0].attempts >= 3

    fake.subscribed.clear()  # the user unsubscribed before the next answer went out
    assert running.post(derived(1, "cause:normal")).status_code == 200
    wait_until(lambda: any(i.status == "dead" for i in running.outbox()), what="an undeliverable answer")
    dead = [i for i in running.outbox() if i.status == "dead"]
    assert "status 6" in (dead[0].last_error or "")


def test_forged_and_malformed_requests_are_refused(running: Running) -> None:
    body = payload("text.json")
    assert running.post(body, signature=None).status_code == 401
    assert running.post(body, signature=sign(body, "guessed")).status_code == 401
    assert running.post(body.replace(b"E07", b"E08"), signature=sign(body)).status_code == 401
    assert running.post(payload("conversation_started.json"), signature="00" * 32).status_code == 401
    assert running.post(b"{not json").status_code == 400
    assert running.inbox() == [] and running.fake.sent == []


def test_media_off_viber_hosts_or_gone_is_refused_politely(running: Running) -> None:
    assert running.post(payload("picture.json")).status_code == 200  # dl-media.viber.com: not the fake's host
    assert running.post(with_media("file.json", running.fake_url)).status_code == 200  # not in the fake: 404
    kinds = [a["kind"] for i in running.inbox() for a in i.payload["attachments"]]
    assert kinds == ["rejected", "rejected"]
