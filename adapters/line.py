"""LINE Messaging API channel: signed webhooks in; reply (while the reply token is fresh) or push messages out,
buttons as quick replies; files downloaded from the content endpoint through bot/fetch.py. See docs/channels/line.md.

A thin httpx client rather than line-bot-sdk: the SDK's generated clients pull in their own HTTP stack
(urllib3/aiohttp) outside our fetch policy, and we use four endpoints of it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from adapters.base import WebhookChannel
from bot import channels
from bot.app import Bot
from bot.fetch import FetchPolicy
from bot.http import ApiError, decode_object, signed_body
from bot.messages import Attachment, Button, OutboundMessage
from bot.outbox import Delivered, DeliveryError
from bot.store.clock import utcnow

log = logging.getLogger(__name__)

CHANNEL = "line"
WEBHOOK_PATH = "/line/webhook"

# Messaging API limits (https://developers.line.biz/en/reference/messaging-api/).
TEXT_LIMIT = 5000
MAX_MESSAGES = 5  # message objects per reply or push request
MAX_QUICK_REPLIES = 13
LABEL_LIMIT = 20
DATA_LIMIT = 300  # postback data and displayText
# A reply token may be used once, shortly after the event; we use it only while it is this young.
REPLY_TOKEN_AGE = timedelta(seconds=50)
MAX_ID = 255
_MEDIA_KINDS = {"image": "photo", "file": "document", "audio": "voice", "video": "document"}
_DEFAULT_MIME = {"image": "image/jpeg", "audio": "audio/mp4", "video": "video/mp4"}


def signature_valid(body: bytes, header: str | None, channel_secret: str) -> bool:
    """Whether `X-Line-Signature` is the base64 HMAC-SHA256 of the raw body under the channel secret."""
    if not header or not channel_secret:
        return False
    expected = base64.b64encode(hmac.new(channel_secret.encode(), body, hashlib.sha256).digest())
    return hmac.compare_digest(header.strip().encode(), expected)


# --- parse ----------------------------------------------------------------------------------------------------


class MalformedPayload(ValueError):
    """The body is not a LINE webhook."""


@dataclass(frozen=True, kw_only=True)
class Incoming:
    """One thing a user did in a one-to-one chat with the bot that the conversation can use."""

    event_id: str  # the message id, or the webhook event id of a postback
    user_id: str
    reply_token: str | None
    type: str  # text | postback | image | file | audio | video
    text: str = ""
    media_id: str | None = None  # content at the data API (contentProvider "line")
    file_name: str | None = None
    external_media: bool = False  # contentProvider "external": a URL we do not fetch


def parse(body: bytes) -> list[Incoming]:
    """The usable events of a webhook body (others are acknowledged and dropped); MalformedPayload if not one."""
    document = decode_object(body, MalformedPayload)
    if not isinstance(document.get("events"), list):
        raise MalformedPayload("no events list")
    found: list[Incoming] = []
    for event in document["events"]:
        if not isinstance(event, dict):
            raise MalformedPayload("event is not an object")
        incoming = _event(event)
        if incoming is not None:
            found.append(incoming)
    return found


def _event(event: dict[str, Any]) -> Incoming | None:
    source = event.get("source")
    if (
        not isinstance(source, dict)
        or source.get("type") != "user"
        or event.get("mode", "active") != "active"
    ):
        return None  # groups, rooms and standby mode: not a customer's one-to-one chat with us
    user_id = _id(source.get("userId"), "source.userId")
    token = event.get("replyToken") if isinstance(event.get("replyToken"), str) else None
    kind = event.get("type")
    if kind == "postback":
        postback = event.get("postback")
        if not isinstance(postback, dict) or not isinstance(postback.get("data"), str):
            raise MalformedPayload("postback without data")
        return Incoming(
            event_id="postback:" + _id(event.get("webhookEventId"), "webhookEventId"),
            user_id=user_id,
            reply_token=token,
            type="postback",
            text=postback["data"],
        )
    if kind != "message":
        return None  # follow, unfollow, unsend, beacon, …
    message = event.get("message")
    if not isinstance(message, dict):
        raise MalformedPayload("message event without message")
    message_id = _id(message.get("id"), "message.id")
    mtype = message.get("type")
    if mtype == "text":
        return Incoming(
            event_id=message_id,
            user_id=user_id,
            reply_token=token,
            type="text",
            text=str(message.get("text", "")),
        )
    if mtype in _MEDIA_KINDS:
        provider = message.get("contentProvider")
        external = isinstance(provider, dict) and provider.get("type") == "external"
        name = message.get("fileName") if isinstance(message.get("fileName"), str) else None
        return Incoming(
            event_id=message_id,
            user_id=user_id,
            reply_token=token,
            type=str(mtype),
            media_id=message_id,
            file_name=name,
            external_media=external,
        )
    return None  # stickers, locations: nothing a claim can use


def _id(value: Any, what: str) -> str:
    if channels.is_id(value, MAX_ID):
        return value
    raise MalformedPayload(f"{what} is missing or not an id")


# --- send -----------------------------------------------------------------------------------------------------


def render(text: str, buttons: Sequence[Button]) -> list[dict[str, Any]]:
    """LINE message objects for `text` and `buttons`: up to 13 buttons as quick replies (postbacks carrying the
    value) on the last text; more, or values too long for a postback, as numbered options in the text."""
    usable = len(buttons) <= MAX_QUICK_REPLIES and all(0 < len(b.value) <= DATA_LIMIT for b in buttons)
    if buttons and not usable:
        text, buttons = channels.with_options(text, buttons), ()
    messages: list[dict[str, Any]] = [
        {"type": "text", "text": p or "…"} for p in channels.split_text(text, TEXT_LIMIT)
    ]
    if buttons:
        items = [
            {
                "type": "action",
                "action": {
                    "type": "postback",
                    "label": channels.clip(b.label, LABEL_LIMIT),
                    "data": b.value,
                    "displayText": channels.clip(b.label, DATA_LIMIT),
                },
            }
            for b in buttons
        ]
        messages[-1] = {**messages[-1], "quickReply": {"items": items}}
    return messages


class LineError(Exception):
    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


def delivery_error(error: LineError) -> DeliveryError:
    return channels.delivery_error(str(error), status=error.status, after=error.retry_after)


class LineClient:
    """The Messaging API calls we make; both base URLs are settings (a loopback fake in tests)."""

    def __init__(
        self, api_url: str, access_token: str, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._http = channels.api_client(
            api_url, {"Authorization": f"Bearer {access_token}"}, transport=transport
        )

    async def reply(self, token: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return await self._post("v2/bot/message/reply", {"replyToken": token, "messages": messages})

    async def push(self, to: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return await self._post("v2/bot/message/push", {"to": to, "messages": messages})

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._http.post(path, json=body)
        data = channels.json_answer(response)
        if response.status_code < 300:
            return data if isinstance(data, dict) else {}
        message = str(data.get("message", "")) if isinstance(data, dict) else response.text[:200]
        after = channels.retry_after(response.headers.get("retry-after"))
        raise LineError(response.status_code, message, after)

    async def aclose(self) -> None:
        await self._http.aclose()


def _token_key(user_id: str) -> str:
    return f"line:reply:{user_id}"[:128]


def note_reply_token(db: Engine, user_id: str, token: str) -> None:
    value = {"token": token, "at": utcnow().isoformat()}
    channels.kv_put(db, _token_key(user_id), value, utcnow() + REPLY_TOKEN_AGE)


def take_reply_token(db: Engine, user_id: str) -> str | None:
    """The user's reply token if still fresh; it is used up either way (a token works once)."""
    taken = channels.kv_take(db, _token_key(user_id))
    if taken is None:
        return None
    value, expires_at = taken
    token = value.get("token") if expires_at is not None and expires_at > utcnow() else None
    return token if isinstance(token, str) else None


class LineSender:
    def __init__(self, db: Engine, client: LineClient) -> None:
        self.db = db
        self.client = client

    async def send(self, message: OutboundMessage) -> Delivered:
        messages = render(message.text, message.buttons)
        if len(messages) > MAX_MESSAGES:  # an extremely long text: the rest is cut, with a mark
            messages = messages[:MAX_MESSAGES]
            messages[-1] = {**messages[-1], "text": messages[-1]["text"][: TEXT_LIMIT - 1] + "…"}
        with channels.sending(LineError, delivery_error):
            token = await asyncio.to_thread(take_reply_token, self.db, message.chat_id)
            answer: dict[str, Any] | None = None
            if token:
                try:
                    answer = await self.client.reply(token, messages)
                except LineError as error:
                    if error.status != 400:
                        raise
                    log.info("line reply token refused (%s); pushing instead", error.message)
            if answer is None:
                answer = await self.client.push(message.chat_id, messages)
        sent = answer.get("sentMessages")
        first = sent[0].get("id") if isinstance(sent, list) and sent and isinstance(sent[0], dict) else None
        return channels.delivered(first)


# --- the channel ------------------------------------------------------------------------------------------------


class LineChannel(WebhookChannel):
    name = CHANNEL

    def __init__(self, bot: Bot, config: LineConfig) -> None:
        client = LineClient(config.api_url, config.access_token)
        data_host = [config.data_api_url]  # files come from the data API, with the token
        files = FetchPolicy.from_settings(bot.settings, hosts=data_host, token_hosts=data_host)
        super().__init__(bot, WEBHOOK_PATH, client, LineSender(bot.db, client), files)
        self.config = config

    async def webhook(self, request: Request) -> Response:
        secret = self.config.channel_secret
        body = await signed_body(request, "x-line-signature", lambda b, h: signature_valid(b, h, secret))
        try:
            events = parse(body)
        except MalformedPayload as error:
            raise ApiError(400, f"malformed webhook: {error}") from None
        # Not stored (bot.http.UNAVAILABLE): the 503 makes LINE redeliver (when redelivery is on in the console).
        for incoming in events:
            await self._receive(incoming)
        return JSONResponse({})

    async def _receive(self, incoming: Incoming) -> None:
        external_id = incoming.event_id
        if await asyncio.to_thread(self.bot.engine.seen, CHANNEL, external_id):
            return
        if incoming.reply_token:
            await asyncio.to_thread(note_reply_token, self.bot.db, incoming.user_id, incoming.reply_token)
        attachments = (await self._attachment(incoming),) if incoming.media_id else ()
        await self.accept(external_id, incoming.user_id, incoming.text, attachments, {"type": incoming.type})

    async def _attachment(self, incoming: Incoming) -> Attachment:
        store = self.bot.attachments
        default_mime = _DEFAULT_MIME.get(incoming.type, "application/octet-stream")
        name, mime = channels.media_name(
            incoming.file_name, incoming.type, incoming.media_id or "", default_mime
        )
        if incoming.external_media:
            return store.rejected(name, "unavailable")  # a URL the sender chose: not fetched
        if incoming.file_name and mime not in store.allowed_types:
            return store.rejected(name, "type")
        url = f"{self.config.data_api_url.rstrip('/')}/v2/bot/message/{incoming.media_id}/content"
        # A 202 is a video still being prepared: LINE redelivers nothing, so it is lost.
        return await channels.download(
            self.fetcher,
            store,
            url,
            name=name,
            mime=mime,
            kind=_MEDIA_KINDS[incoming.type],
            channel=CHANNEL,
            bearer=self.config.access_token,
            accept=lambda status: status != 202,
        )


# --- settings ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LineConfig:
    channel_secret: str
    access_token: str
    api_url: str
    data_api_url: str


def from_settings(bot: Bot) -> LineChannel | None:
    """The channel when LINE_CHANNEL_SECRET and LINE_CHANNEL_ACCESS_TOKEN are set."""
    s = bot.settings
    if not (s.line_channel_secret and s.line_channel_access_token):
        return None
    return LineChannel(
        bot,
        LineConfig(
            channel_secret=s.line_channel_secret.get_secret_value(),
            access_token=s.line_channel_access_token.get_secret_value(),
            api_url=s.line_api_base_url,
            data_api_url=s.line_data_api_base_url,
        ),
    )
