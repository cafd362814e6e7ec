"""The generic API channel: signing and parsing, then the bot's real server with a client that signs as
docs/channels/api.md says, a loopback callback receiver and a media host; requests and answers are checked
against docs/channels/api.openapi.yaml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from pydantic import SecretStr
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters import api
from adapters.api import BadRequest, delivery_error, parse, render, verify
from bot.app import Bot
from bot.config import ApiChannelSettings, Settings
from bot.messages import Button, OutboundMessage
from bot.outbox import PermanentFailure, RetryLater, Unreachable
from tests.fakes.api_callback import SECRET, SPEC, FakeCallback, sign
from tests.fakes.server import serve
from tests.support import RunningChannel, channel_served, choose, wait_until

CHAT = "customer-7781"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
OPENAPI = OpenAPI.from_dict(yaml.safe_load(SPEC.read_text(encoding="utf-8")))


def message(number: int, text: str = "", **extra: Any) -> bytes:
    document = {
        "message_id": f"m-{number}",
        "chat_id": CHAT,
        "sender": {"id": "u-42", "name": "Somchai"},
        "text": text,
        "locale": "en",
        **extra,
    }
    return json.dumps(document, ensure_ascii=False).encode()


# --- signing, parsing, rendering ------------------------------------------------------------------------------


def test_a_signature_made_as_documented_verifies_and_anything_else_does_not() -> None:
    body = message(1, "hello")
    now = time.time()
    headers = {k.lower(): v for k, v in sign(body, timestamp=int(now)).items()}
    assert verify(SECRET, headers, body, tolerance=300, now=now) is None
    assert verify(SECRET, headers, body + b" ", tolerance=300, now=now) == "invalid signature"
    assert verify("another-secret-0123456789", headers, body, tolerance=300, now=now) == "invalid signature"
    assert (
        verify(SECRET, headers, body, tolerance=300, now=now + 301) == "timestamp outside the allowed window"
    )
    assert (
        verify(SECRET, headers, body, tolerance=300, now=now - 301) == "timestamp outside the allowed window"
    )
    assert verify(SECRET, {}, body, tolerance=300, now=now) == "missing signature"
    assert verify(SECRET, {**headers, "x-warranty-timestamp": "１２"}, body, tolerance=300) == "bad timestamp"
    # While a secret is rotated, the gateway may send both signatures.
    old = sign(body, "old-secret-0123456789abc", timestamp=int(now))["X-Warranty-Signature"]
    rotated = {**headers, "x-warranty-signature": f"{old}, {headers['x-warranty-signature']}"}
    assert verify(SECRET, rotated, body, tolerance=300, now=now) is None


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"message_id": "m", "chat_id": "c"}',
        b'{"message_id": "", "chat_id": "c", "sender": {"id": "u"}, "text": "x"}',
        b'{"message_id": "m", "chat_id": "c", "sender": {"id": "u"}, "text": "   "}',
        b'{"message_id": "m\\u0000", "chat_id": "c", "sender": {"id": "u"}, "text": "x"}',
        b'{"message_id": "m", "chat_id": "c", "sender": {"id": "u"}, "attachments": [{"url": "https://x/a"}]}',
        json.dumps(
            {
                "message_id": "m",
                "chat_id": "c",
                "sender": {"id": "u"},
                "attachments": [{"url": "https://x/a", "mime": "image/png"}] * 11,
            }
        ).encode(),
    ],
)
def test_bodies_outside_the_contract_are_refused(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse(body)


def test_buttons_become_options_and_a_numbered_fallback() -> None:
    out = OutboundMessage(
        channel="api",
        chat_id="portal:c1",
        text="Why did it fail?",
        buttons=(
            Button(label="Normal use", value="cause:normal"),
            Button(label="Lightning", value="cause:lightning"),
        ),
    )
    body = render("portal", "c1", out)
    assert body["options"] == [
        {"label": "Normal use", "value": "cause:normal"},
        {"label": "Lightning", "value": "cause:lightning"},
    ]
    assert body["fallback_text"] == "Why did it fail?\n\n1. Normal use\n2. Lightning"
    assert (
        render("portal", "c1", OutboundMessage(channel="api", chat_id="x", text="Hi"))["fallback_text"]
        == "Hi"
    )


def test_callback_statuses_map_to_outbox_outcomes() -> None:
    assert isinstance(delivery_error(503, "", None), RetryLater)
    assert delivery_error(429, "", "7").after == 7.0  # type: ignore[attr-defined]
    assert isinstance(delivery_error(410, "gone", None), Unreachable)
    refused = delivery_error(400, "bad", None)
    assert isinstance(refused, PermanentFailure) and not isinstance(refused, Unreachable)


def test_channel_names_are_checked_in_the_settings() -> None:
    with pytest.raises(ValueError, match="channel name"):
        Settings(
            api_channels={
                "Bad Name": ApiChannelSettings(secret=SecretStr(SECRET), callback_url="https://x.example")
            }
        )


def test_channels_are_read_from_the_json_setting_as_env_example_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    document = {
        "portal": {"secret": SECRET, "callback_url": "https://gw.example/cb", "media_hosts": ["f.example"]}
    }
    monkeypatch.setenv("API_CHANNELS", json.dumps(document))
    channels = Settings(_env_file=None).api_channels  # type: ignore[call-arg]
    assert channels["portal"].secret.get_secret_value() == SECRET
    assert channels["portal"].media_hosts == ["f.example"]
    monkeypatch.setenv("API_CHANNELS", json.dumps({"portal": {**document["portal"], "secret": "short"}}))
    with pytest.raises(ValueError, match="secret"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_not_configured_without_channels(bot: Bot) -> None:
    assert api.from_settings(bot) is None


# --- the bot's server -----------------------------------------------------------------------------------------


@dataclass
class Running(RunningChannel):
    callback: FakeCallback
    media_url: str

    def post(
        self, body: bytes, *, headers: dict[str, str] | None = None, name: str = "portal"
    ) -> httpx.Response:
        sent = {"content-type": "application/json", **(sign(body) if headers is None else headers)}
        path = api.INBOUND_PATH.format(name=name)
        response = httpx.post(f"{self.url}{path}", content=body, headers=sent, timeout=10)
        _check_against_spec(self.url, path, body, sent, response)
        return response

    def sent(self) -> list[dict[str, Any]]:
        return self.callback.to(CHAT)

    def texts(self) -> list[str]:
        return self.callback.texts(CHAT)


def _check_against_spec(
    base: str, path: str, body: bytes, headers: dict[str, str], response: httpx.Response
) -> None:
    """The request we sent and the server's answer, validated against the OpenAPI description."""
    request = MockRequest(
        base,
        "post",
        path,
        headers={k.lower(): v for k, v in headers.items()},
        data=body,
        content_type="application/json",
    )
    if response.status_code not in (400, 401, 404):  # refused before (or for) the body's schema
        OPENAPI.validate_request(request)
    answer = MockResponse(
        response.content,
        status_code=response.status_code,
        content_type=response.headers.get("content-type", "").split(";")[0],
    )
    OPENAPI.validate_response(request, answer)


def _media_app() -> Starlette:
    async def photo(request: Request) -> Response:
        return Response(JPEG, media_type="image/jpeg")

    async def broken(request: Request) -> Response:
        return Response(b"busy", status_code=503)

    return Starlette(routes=[Route("/files/display.jpg", photo), Route("/files/broken.jpg", broken)])


@pytest.fixture
def running(settings: Settings, db: Engine) -> Iterator[Running]:
    callback = FakeCallback(secret=SECRET)
    with serve(callback.app()) as callback_url, serve(_media_app()) as media_url:
        update = {
            "api_channels": {
                "portal": ApiChannelSettings(
                    secret=SecretStr(SECRET),
                    callback_url=f"{callback_url}/callback",
                    media_hosts=["127.0.0.1"],
                )
            },
            "fetch_insecure_hosts": "127.0.0.1",
            "outbox_poll_seconds": 0.1,
            "retry_backoff_max_seconds": 0.2,
        }
        with channel_served(settings, db, update, api.from_settings) as (bot, url):
            yield Running(bot=bot, callback=callback, url=url, media_url=media_url)


def _press(running: Running, number: int) -> str:
    last = running.callback.to(CHAT)[-1]
    values: list[str] = [o["value"] for o in last["options"]]
    assert values, last
    choice = choose(values)
    assert running.post(message(number, choice)).status_code == 200
    return choice


def test_a_full_claim_over_the_api(running: Running) -> None:
    callback = running.callback
    first = message(
        1, "Hello, our inverter CSP2311B0872 shows error E07 and shuts down when the pump starts."
    )
    answer = running.post(first)
    assert (answer.status_code, answer.json()) == (200, {"ok": True, "duplicate": False})
    replies = running.settled(2, "the bot's answer to the serial and fault")
    assert any("CSP2311B0872" in r["text"] for r in replies)
    assert replies[-1]["options"]  # asks for proof, with a "no proof" option

    # The gateway sends the same message again: answered, stored once.
    assert running.post(first).json() == {"ok": True, "duplicate": True}
    assert [i.external_id for i in running.inbox()] == ["portal:m-1"]

    # A photo by URL, downloaded through the fetch policy from the channel's media host.
    before = len(callback.to(CHAT))
    photo = message(
        2,
        "",
        attachments=[
            {"url": f"{running.media_url}/files/display.jpg", "mime": "image/jpeg", "name": "display.jpg"}
        ],
    )
    assert running.post(photo).status_code == 200
    running.settled(before + 1, "the bot's answer to the photo")
    stored = running.stored_attachment()
    assert (stored.kind, stored.mime, stored.size) == ("photo", "image/jpeg", len(JPEG))
    assert running.bot.attachments.path(stored.path).read_bytes() == JPEG

    # Options until the case is opened; the customer answers with an option's value.
    assert "cause:normal" in running.press_until_a_case(lambda number: _press(running, number))
    running.claimed()
    assert all(i.external_id and i.external_id.startswith("cb-") for i in running.outbox())
    assert callback.refused == []  # every callback was signed and matched the schema
    assert all(r["channel"] == "portal" and r["fallback_text"] for r in callback.received)


def test_forged_replayed_and_malformed_requests_are_refused(running: Running) -> None:
    body = message(1, "Hello, CSP2311B0872 shows E07")
    assert running.post(body, headers={}).status_code == 401
    assert running.post(body, headers=sign(body, "guessed-secret-0123456789")).status_code == 401
    tampered = body.replace(b"E07", b"E08")
    assert running.post(tampered, headers=sign(body)).status_code == 401
    # A genuine request captured and replayed ten minutes later.
    stale = sign(body, timestamp=int(time.time()) - 600)
    answer = running.post(body, headers=stale)
    assert (answer.status_code, answer.json()["error"]) == (401, "timestamp outside the allowed window")
    assert running.post(body, headers=sign(body, timestamp=int(time.time()) + 600)).status_code == 401
    assert running.post(body, name="other").status_code == 404
    assert running.post(b"{not json").status_code == 400
    assert running.post(message(2, "")).status_code == 400
    off_host = message(3, "", attachments=[{"url": "https://evil.example/x.jpg", "mime": "image/jpeg"}])
    assert running.post(off_host).status_code == 400
    plain = message(4, "", attachments=[{"url": "http://files.example/x.jpg", "mime": "image/jpeg"}])
    assert running.post(plain).status_code == 400
    assert running.inbox() == [] and running.callback.received == []


def test_an_unavailable_media_host_asks_for_redelivery_and_stores_nothing(running: Running) -> None:
    body = message(
        1, "", attachments=[{"url": f"{running.media_url}/files/broken.jpg", "mime": "image/jpeg"}]
    )
    assert running.post(body).status_code == 503
    assert running.inbox() == []
    text = message(
        2,
        "x",
        attachments=[
            {"url": f"{running.media_url}/files/none.jpg", "mime": "image/jpeg"},
            {"url": f"{running.media_url}/files/display.jpg", "mime": "text/html"},
        ],
    )
    assert running.post(text).status_code == 200  # gone for good, and a refused type: the customer is told
    payload = running.inbox()[0].payload
    assert [a["kind"] for a in payload["attachments"]] == ["rejected", "rejected"]


def test_callback_failures_are_retried_in_order_or_dead_lettered(running: Running) -> None:
    callback = running.callback
    callback.fail_next(503, 503)
    assert running.post(message(1, "Hello, CSP2311B0872 shows E07")).status_code == 200
    replies = running.settled(2, "the replies after two failures")
    assert "CSP2311B0872" in replies[0]["text"]
    rows = running.outbox()
    assert rows[0].attempts == 3 and all(i.status == "sent" for i in rows)

    callback.fail_next(400)
    before = len(running.outbox())
    assert running.post(message(2, "human")).status_code == 200
    dead = wait_until(
        lambda: [i for i in running.outbox()[before:] if i.status == "dead"], what="a dead letter"
    )
    assert dead[0].last_error is not None and dead[0].last_error.startswith("callback HTTP 400")


def _snippet(language: str, url: str) -> str:
    text = (SPEC.parent / "api.md").read_text(encoding="utf-8")
    match = re.search(rf"```{language}\n(.*?)```", text, re.S)
    assert match, f"no {language} example in docs/channels/api.md"
    return match.group(1).replace("https://bot.example.com", url)


def test_the_documented_examples_sign_requests_the_server_accepts(running: Running) -> None:
    if shutil.which("openssl") is None or shutil.which("curl") is None:
        pytest.fail("the shell example needs openssl and curl on this machine")
    shell = re.sub(r"(?m)^SECRET=.*$", f"SECRET='{SECRET}'", _snippet("sh", running.url))
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ok": True, "duplicate": False}
    assert [i.external_id for i in running.inbox()] == ["portal:m-1"]

    python = re.sub(r'(?m)^secret = b".*"$', f'secret = b"{SECRET}"', _snippet("python", running.url))
    namespace: dict[str, Any] = {}
    exec(compile(python, "docs/channels/api.md", "exec"), namespace)  # noqa: S102 (our own documentation)
    assert namespace["response"].json() == {"ok": True, "duplicate": True}  # the same message_id: stored once

    forged = shell.replace(f"SECRET='{SECRET}'", "SECRET='not-the-secret-at-all'")
    result = subprocess.run(["bash", "-c", forged], capture_output=True, text=True, timeout=30, check=False)
    assert json.loads(result.stdout) == {"error": "invalid signature"}
