"""LINE channel: signature, parsing and rendering, then the bot's real server against a loopback fake of LINE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine

from adapters import line
from adapters.line import MalformedPayload, parse, render, signature_valid
from bot.app import Bot
from bot.config import Settings
from bot.messages import Button
from bot.outbox import PermanentFailure, RetryLater
from tests.fakes.line import PAYLOADS, SECRET, TOKEN, FakeLine, sign
from tests.fakes.server import serve
from tests.support import RunningChannel, channel_served, check_body_signature, choose

USER = "U206d25c2ea6bd87c17655609a1c37cb8"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n" + b"0" * 500


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def derived(number: int, **event: Any) -> bytes:
    """A later event of the same user, derived from the sample text message."""
    document = json.loads(payload("text.json"))
    original = document["events"][0]
    document["events"] = [
        {**original, "replyToken": f"token{number:04d}", "webhookEventId": f"01TEST{number:04d}", **event}
    ]
    return json.dumps(document, ensure_ascii=False, indent=2).encode()


def test_signature_is_base64_hmac_of_the_body() -> None:
    check_body_signature(signature_valid, sign, SECRET, payload("text.json"))


def test_samples_parse_to_what_the_conversation_can_use() -> None:
    (text,) = parse(payload("text.json"))
    assert (text.event_id, text.user_id, text.type, text.reply_token) == (
        "325708",
        USER,
        "text",
        "nHuyWiB7yP5Zw52FIkcQobQuGDXCTA",
    )
    assert "CSP2311B0872" in text.text
    (image,) = parse(payload("image.json"))
    assert (image.type, image.media_id, image.external_media) == ("image", "354718705033693861", False)
    assert parse(payload("image_external.json"))[0].external_media
    (file,) = parse(payload("file.json"))
    assert (file.type, file.file_name) == ("file", "invoice.pdf")
    (postback,) = parse(payload("postback.json"))
    assert (postback.type, postback.text, postback.event_id) == (
        "postback",
        "cause:normal",
        "postback:01FZ74CHP12XSZ5YT2VN0C5R0N",
    )
    for ignored in ("sticker.json", "follow.json", "group_text.json"):
        assert parse(payload(ignored)) == []


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"events": "x"}',
        b'{"events": [1]}',
        b'{"events": [{"type": "message", "source": {"type": "user", "userId": ""}}]}',
        b'{"events": [{"type": "message", "source": {"type": "user", "userId": "U1"}}]}',
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse(body)


def test_buttons_become_quick_replies_or_numbered_options() -> None:
    (message,) = render("Why?", (Button(label="Normal use of the product", value="cause:normal"),))
    item = message["quickReply"]["items"][0]["action"]
    assert item == {
        "type": "postback",
        "label": "Normal use of the p…",
        "data": "cause:normal",
        "displayText": "Normal use of the product",
    }
    many = tuple(Button(label=f"Unit {n}", value=f"u:{n}") for n in range(14))
    (plain,) = render("Which?", many)
    assert "quickReply" not in plain and plain["text"].endswith("14. Unit 13")
    long = render("word " * 2000, ())
    assert len(long) == 2 and all(len(m["text"]) <= line.TEXT_LIMIT for m in long)


def test_errors_map_to_outbox_outcomes() -> None:
    assert isinstance(line.delivery_error(line.LineError(500, "x")), RetryLater)
    assert isinstance(line.delivery_error(line.LineError(429, "x", 3)), RetryLater)
    assert isinstance(line.delivery_error(line.LineError(400, "x")), PermanentFailure)


def test_not_configured_without_credentials(bot: Bot) -> None:
    assert line.from_settings(bot) is None


# --- the bot's server against the fake -----------------------------------------------------------------------


@dataclass
class Running(RunningChannel):
    fake: FakeLine

    def post(self, body: bytes, *, signature: str | None = "valid") -> httpx.Response:
        # LINE issues the event's reply token; the fake honours it once.
        try:
            for event in json.loads(body).get("events", []):
                if isinstance(event, dict) and isinstance(event.get("replyToken"), str):
                    self.fake.reply_tokens[event["replyToken"]] = event.get("source", {}).get("userId", "")
        except (ValueError, AttributeError):
            pass
        return self.post_signed(line.WEBHOOK_PATH, body, "x-line-signature", signature, sign)

    def sent(self) -> list[dict[str, Any]]:
        return self.fake.to(USER)

    def texts(self) -> list[str]:
        return self.fake.texts(USER)


@pytest.fixture
def running(settings: Settings, db: Engine) -> Iterator[Running]:
    fake = FakeLine(access_token=TOKEN)
    with serve(fake.app()) as fake_url:
        update = {
            "line_channel_secret": SecretStr(SECRET),
            "line_channel_access_token": SecretStr(TOKEN),
            "line_api_base_url": fake_url,
            "line_data_api_base_url": fake_url,
            "fetch_insecure_hosts": "127.0.0.1",
            "outbox_poll_seconds": 0.1,
        }
        with channel_served(settings, db, update, line.from_settings) as (bot, url):
            yield Running(bot=bot, fake=fake, url=url)


def test_a_full_claim_over_line(running: Running) -> None:
    fake = running.fake
    fake.content["354718705033693861"] = (JPEG, "image/jpeg")
    fake.content["325710"] = (PDF, "application/pdf")

    assert running.post(payload("text.json")).status_code == 200
    first = running.settled(2, "the bot's answer to the serial and fault")
    assert any("CSP2311B0872" in m["text"] for m in first)
    assert "quickReply" in first[-1]
    hows = [how for how, _, _ in fake.sent]
    assert hows[0] == "reply" and set(hows[1:]) <= {"push"}  # the reply token once, then push

    assert running.post(payload("text.json")).status_code == 200  # a redelivery: stored once
    assert [i.external_id for i in running.inbox()] == ["325708"]

    before = len(fake.to(USER))
    assert running.post(payload("image.json")).status_code == 200
    running.settled(before + 1, "the answer to the photo")
    stored = running.stored_attachment()
    assert (stored.kind, stored.mime, stored.size) == ("photo", "image/jpeg", len(JPEG))

    def press(number: int) -> str:  # a quick reply: a postback carrying the button's value
        choice = choose([i["action"]["data"] for i in fake.to(USER)[-1]["quickReply"]["items"]])
        body_doc = json.loads(derived(number, type="postback", postback={"data": choice}))
        body_doc["events"][0].pop("message")
        assert running.post(json.dumps(body_doc).encode()).status_code == 200
        return choice

    assert "cause:normal" in running.press_until_a_case(press)
    running.claimed()


def test_a_used_up_reply_token_falls_back_to_push_and_failures_retry(running: Running) -> None:
    fake = running.fake
    fake.failures.append(500)
    body = payload("text.json")
    assert running.post(body).status_code == 200
    fake.reply_tokens.clear()  # the token expired before the (retried) reply went out
    running.settled(2, "the replies after a failure")
    assert [how for how, _, _ in fake.sent] == ["push"] * len(fake.sent)
    assert running.outbox()[0].attempts >= 2


def test_forged_and_malformed_requests_are_refused(running: Running) -> None:
    body = payload("text.json")
    assert running.post(body, signature=None).status_code == 401
    assert running.post(body, signature=sign(body, "guessed")).status_code == 401
    assert running.post(body.replace(b"E07", b"E08"), signature=sign(body)).status_code == 401
    assert running.post(b"{not json").status_code == 400
    assert running.inbox() == [] and running.fake.sent == []


def test_unavailable_and_external_content_is_refused_politely(running: Running) -> None:
    assert running.post(payload("image_external.json")).status_code == 200
    assert running.post(payload("file.json")).status_code == 200  # not in the fake: gone (404)
    kinds = [a["kind"] for i in running.inbox() for a in i.payload["attachments"]]
    assert kinds == ["rejected", "rejected"]
