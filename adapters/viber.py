"""Viber REST bot API channel: signed webhooks in (`X-Viber-Content-Signature`), `send_message` out with buttons
as a reply keyboard; a welcome answered in the webhook response to `conversation_started`; pictures and files
fetched from Viber's media hosts through bot/fetch.py. See docs/channels/viber.md.

A thin httpx client rather than viberbot (Viber's Python SDK): its last release is from 2021, it uses
`requests` (outside our fetch policy and blocking), and we use one endpoint of the API.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from adapters.base import WebhookChannel
from bot import channels
from bot.app import Bot
from bot.fetch import FetchPolicy
from bot.http import ApiError, decode_object, signed_body
from bot.messages import Attachment, Button, OutboundMessage
from bot.outbox import Delivered, DeliveryError

log = logging.getLogger(__name__)

CHANNEL = "viber"
WEBHOOK_PATH = "/viber/webhook"

# REST bot API limits (https://developers.viber.com/docs/api/rest-bot-api/).
TEXT_LIMIT = 7000
SENDER_NAME_LIMIT = 28
MAX_BUTTONS = 24  # buttons in one keyboard
BUTTON_TEXT_LIMIT = 250  # what we put on a button (labels are short; Viber renders a few words)
ACTION_BODY_LIMIT = 4096
MAX_ID = 255
MIN_API_VERSION = 1
# Events that are acknowledged and otherwise ignored.
ACKNOWLEDGED = frozenset(
    {"subscribed", "unsubscribed", "delivered", "seen", "failed", "webhook", "client_status"}
)
_MEDIA_KINDS = {"picture": "photo", "file": "document", "video": "document"}
_DEFAULT_MIME = {"picture": "image/jpeg", "video": "video/mp4"}
# Status codes of the API's JSON answers.
STATUS_OK = 0
STATUS_NOT_SUBSCRIBED = 6
STATUS_NOT_REGISTERED = 5
STATUS_NO_SUITABLE_DEVICE = 11
STATUS_TOO_MANY_REQUESTS = 12


def signature_valid(body: bytes, header: str | None, auth_token: str) -> bool:
    """Whether `X-Viber-Content-Signature` is the hex HMAC-SHA256 of the raw body under the auth token."""
    if not header or not auth_token:
        return False
    expected = hmac.new(auth_token.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header.strip().lower().encode(), expected.encode())


# --- parse ----------------------------------------------------------------------------------------------------


class MalformedPayload(ValueError):
    """The body is not a Viber callback."""


@dataclass(frozen=True, kw_only=True)
class Incoming:
    """One callback: a message the conversation can use, a conversation opened, or something only acknowledged."""

    event: str  # message | conversation_started | ignored
    event_id: str = ""  # the message token
    user_id: str = ""
    language: str = ""
    type: str = ""  # text | picture | file | video (messages)
    text: str = ""
    media_url: str | None = None
    file_name: str | None = None


def parse(body: bytes) -> Incoming:
    """The callback in `body`; MalformedPayload if it is not one."""
    document = decode_object(body, MalformedPayload)
    if not isinstance(document.get("event"), str):
        raise MalformedPayload("no event")
    event = document["event"]
    if event == "conversation_started":
        user = _dict(document.get("user"), "user")
        return Incoming(
            event=event,
            event_id=_token(document.get("message_token")),
            user_id=_id(user.get("id"), "user.id"),
            language=_language(user.get("language")),
        )
    if event != "message":
        return Incoming(event="ignored")  # subscribed, delivered, seen, failed, webhook, and any new event
    sender = _dict(document.get("sender"), "sender")
    message = _dict(document.get("message"), "message")
    base = {
        "event": event,
        "event_id": _token(document.get("message_token")),
        "user_id": _id(sender.get("id"), "sender.id"),
        "language": _language(sender.get("language")),
    }
    mtype = message.get("type")
    raw_text = message.get("text")
    text: str = raw_text if isinstance(raw_text, str) else ""
    if mtype == "text":
        return Incoming(**base, type="text", text=text)
    if mtype in _MEDIA_KINDS:
        media = message.get("media")
        if not isinstance(media, str) or not media:
            raise MalformedPayload("media message without a media URL")
        name = message.get("file_name") if isinstance(message.get("file_name"), str) else None
        return Incoming(**base, type=str(mtype), text=text, media_url=media, file_name=name)
    return Incoming(event="ignored")  # stickers, contacts, locations, URLs: nothing a claim can use


def _dict(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise MalformedPayload(f"{what} is missing")


def _id(value: Any, what: str) -> str:
    if channels.is_id(value, MAX_ID):
        return value
    raise MalformedPayload(f"{what} is missing or not an id")


def _token(value: Any) -> str:
    # A 64-bit integer in Viber's samples; accepted as a string of digits too.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        return value
    raise MalformedPayload("message_token is missing or not a number")


def _language(value: Any) -> str:
    return value if isinstance(value, str) and 0 < len(value) <= 16 and value.isprintable() else ""


# --- send -----------------------------------------------------------------------------------------------------


def render(text: str, buttons: Sequence[Button], *, receiver: str, sender_name: str) -> list[dict[str, Any]]:
    """`send_message` bodies for `text` and `buttons`: up to 24 buttons as a reply keyboard on the last message;
    more, or values too long for an ActionBody, as numbered options in the text. Long texts are split."""
    usable = len(buttons) <= MAX_BUTTONS and all(0 < len(b.value) <= ACTION_BODY_LIMIT for b in buttons)
    if buttons and not usable:
        text, buttons = channels.with_options(text, buttons), ()
    sender = {"name": sender_name[:SENDER_NAME_LIMIT]}
    bodies: list[dict[str, Any]] = [
        {
            "receiver": receiver,
            "min_api_version": MIN_API_VERSION,
            "sender": sender,
            "type": "text",
            "text": p or "…",
        }
        for p in channels.split_text(text, TEXT_LIMIT)
    ]
    if buttons:
        keyboard = {
            "Type": "keyboard",
            "DefaultHeight": False,
            "Buttons": [
                {
                    "ActionType": "reply",
                    "ActionBody": b.value,
                    "Text": channels.clip(b.label, BUTTON_TEXT_LIMIT),
                }
                for b in buttons
            ],
        }
        bodies[-1] = {**bodies[-1], "keyboard": keyboard}
    return bodies


class ViberError(Exception):
    """A refused request: an HTTP error (`status` the HTTP status) or a non-zero API status in the JSON answer."""

    def __init__(self, *, http_status: int = 200, api_status: int | None = None, message: str = "") -> None:
        what = f"HTTP {http_status}" if api_status is None else f"status {api_status}"
        super().__init__(f"{what}: {message}")
        self.http_status = http_status
        self.api_status = api_status
        self.message = message


def delivery_error(error: ViberError) -> DeliveryError:
    return channels.delivery_error(
        str(error),
        status=error.http_status if error.api_status is None else 200,
        passing=error.api_status == STATUS_TOO_MANY_REQUESTS,
        unreachable=error.api_status
        in (STATUS_NOT_SUBSCRIBED, STATUS_NOT_REGISTERED, STATUS_NO_SUITABLE_DEVICE),
    )


class ViberClient:
    """`POST {base}/pa/send_message` with the auth token header; the base URL is a setting (a fake in tests)."""

    def __init__(
        self, api_url: str, auth_token: str, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._http = channels.api_client(api_url, {"X-Viber-Auth-Token": auth_token}, transport=transport)

    async def send_message(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._http.post("pa/send_message", json=body)
        data = channels.json_answer(response)
        if response.status_code >= 300:
            raise ViberError(http_status=response.status_code, message=response.text[:200])
        if not isinstance(data, dict) or not isinstance(data.get("status"), int):
            raise ViberError(http_status=502, message="answer without a status")
        if data["status"] != STATUS_OK:
            raise ViberError(api_status=data["status"], message=str(data.get("status_message", ""))[:200])
        return data

    async def aclose(self) -> None:
        await self._http.aclose()


class ViberSender:
    def __init__(self, client: ViberClient, sender_name: str) -> None:
        self.client = client
        self.sender_name = sender_name

    async def send(self, message: OutboundMessage) -> Delivered:
        bodies = render(message.text, message.buttons, receiver=message.chat_id, sender_name=self.sender_name)
        first: Any = None
        with channels.sending(ViberError, delivery_error):
            for body in bodies:
                answer = await self.client.send_message(body)
                first = first or answer.get("message_token")
        return channels.delivered(first)


# --- the channel ------------------------------------------------------------------------------------------------


class ViberChannel(WebhookChannel):
    name = CHANNEL

    def __init__(self, bot: Bot, config: ViberConfig) -> None:
        client = ViberClient(config.api_url, config.auth_token)
        # Media URLs are public, signed links on Viber's media hosts: no token is ever sent with them.
        files = FetchPolicy.from_settings(bot.settings, hosts=config.media_hosts)
        super().__init__(bot, WEBHOOK_PATH, client, ViberSender(client, config.bot_name), files)
        self.config = config

    async def webhook(self, request: Request) -> Response:
        token = self.config.auth_token
        body = await signed_body(
            request, "x-viber-content-signature", lambda b, h: signature_valid(b, h, token)
        )
        try:
            incoming = parse(body)
        except MalformedPayload as error:
            raise ApiError(400, f"malformed callback: {error}") from None
        if incoming.event == "conversation_started":
            return JSONResponse(self.welcome(incoming))
        if incoming.event != "message":
            return JSONResponse({})
        await self._receive(incoming)  # not stored (bot.http.UNAVAILABLE): the 503 makes Viber send it again
        return JSONResponse({})

    def welcome(self, incoming: Incoming) -> dict[str, Any]:
        """The welcome message, sent as the answer to conversation_started (the user is not subscribed yet, so
        send_message would be refused; Viber shows this one)."""
        languages = self.bot.renderer.languages()
        base = incoming.language.replace("_", "-").split("-")[0].lower()
        language = base if base in languages else "en"
        text = self.bot.renderer.text("greeting", language=language)
        return {
            "sender": {"name": self.config.bot_name[:SENDER_NAME_LIMIT]},
            "type": "text",
            "text": text[:TEXT_LIMIT],
            "min_api_version": MIN_API_VERSION,
        }

    async def _receive(self, incoming: Incoming) -> None:
        if await asyncio.to_thread(self.bot.engine.seen, CHANNEL, incoming.event_id):
            return
        attachments = (await self._attachment(incoming),) if incoming.media_url else ()
        await self.accept(
            incoming.event_id, incoming.user_id, incoming.text, attachments, {"type": incoming.type}
        )

    async def _attachment(self, incoming: Incoming) -> Attachment:
        assert incoming.media_url is not None
        store = self.bot.attachments
        default_mime = _DEFAULT_MIME.get(incoming.type, "application/octet-stream")
        name, mime = channels.media_name(incoming.file_name, incoming.type, incoming.event_id, default_mime)
        if incoming.file_name and mime not in store.allowed_types:
            return store.rejected(name, "type")
        return await channels.download(
            self.fetcher,
            store,
            incoming.media_url,
            name=name,
            mime=mime,
            kind=_MEDIA_KINDS[incoming.type],
            channel=CHANNEL,
        )


# --- settings ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ViberConfig:
    auth_token: str
    bot_name: str
    api_url: str
    media_hosts: tuple[str, ...]


def from_settings(bot: Bot) -> ViberChannel | None:
    """The channel when VIBER_AUTH_TOKEN is set."""
    s = bot.settings
    if not s.viber_auth_token:
        return None
    return ViberChannel(
        bot,
        ViberConfig(
            auth_token=s.viber_auth_token.get_secret_value(),
            bot_name=s.viber_bot_name,
            api_url=s.viber_api_base_url,
            media_hosts=tuple(h.strip() for h in s.viber_media_hosts.split(",") if h.strip()),
        ),
    )
