"""The generic API channel: any other tool (an SMS gateway, a portal, LINE or Viber through a bridge) connects
through signed JSON over HTTPS. The contract is docs/channels/api.md (OpenAPI: docs/channels/api.openapi.yaml).

In:  POST /api/channels/{name}/messages, signed; 200 once the message is stored (a redelivery of the same
     `message_id` is answered 200 with `duplicate: true` and processed once).
Out: the outbox POSTs each reply to the channel's callback URL, signed the same way; 2xx = delivered,
     410 = the customer is gone, other 4xx = refused for good, 429/5xx/network = retried later.

Signature: `X-Warranty-Timestamp: <unix seconds>` and `X-Warranty-Signature: v1=<hex>`, where the hex is
HMAC-SHA256 under the channel's secret of `<timestamp>.` followed by the raw body bytes. A timestamp further
than API_SIGNATURE_TOLERANCE_SECONDS from our clock is refused, so a captured request cannot be replayed later.

Every configured channel is served by this one `ApiChannel` (outbox channel "api"); a chat is `<name>:<chat_id>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import mimetypes
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapters.base import SendingChannel
from bot import channels
from bot.app import Bot
from bot.fetch import Fetcher, FetchPolicy
from bot.http import ApiError, decode_object
from bot.messages import Attachment, OutboundMessage
from bot.outbox import Delivered, DeliveryError, PermanentFailure, RetryLater

log = logging.getLogger(__name__)

CHANNEL = "api"
INBOUND_PATH = "/api/channels/{name}/messages"
TIMESTAMP_HEADER = "X-Warranty-Timestamp"
SIGNATURE_HEADER = "X-Warranty-Signature"
SIGNATURE_VERSION = "v1"
MAX_ATTACHMENTS = 10
MAX_TEXT = 20_000  # the conversation reads MAX_TEXT_CHARS of it; the rest is kept

# --- signing ------------------------------------------------------------------------------------------------


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Warranty-Signature` value for `body` sent at `timestamp` (unix seconds, as a string)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def signed_headers(secret: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The headers that sign `body` now."""
    timestamp = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, tolerance: float, now: float | None = None
) -> str | None:
    """Why a signed request is refused (missing, stale or forged), or None when it is genuine."""
    timestamp = headers.get(TIMESTAMP_HEADER.lower()) or headers.get(TIMESTAMP_HEADER) or ""
    given = headers.get(SIGNATURE_HEADER.lower()) or headers.get(SIGNATURE_HEADER) or ""
    if not timestamp or not given:
        return "missing signature"
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return "bad timestamp"
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        return "timestamp outside the allowed window"
    expected = signature(secret, timestamp, body)
    # Several signatures may be sent while a secret is rotated: "v1=…, v1=…".
    candidates = [part.strip() for part in given.split(",")]
    if not any(hmac.compare_digest(c.encode(), expected.encode()) for c in candidates if c.isascii()):
        return "invalid signature"
    return None


# --- the inbound body ---------------------------------------------------------------------------------------

Id = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class SenderIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: Id
    name: Annotated[str, StringConstraints(max_length=200)] | None = None


class AttachmentIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    name: Annotated[str, StringConstraints(max_length=255)] | None = None
    mime: Annotated[str, StringConstraints(min_length=3, max_length=100)]
    kind: Literal["photo", "document", "voice"] | None = None


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    message_id: Id
    chat_id: Id
    sender: SenderIn
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT)] = ""
    attachments: list[AttachmentIn] = Field(default=[], max_length=MAX_ATTACHMENTS)
    locale: Annotated[str, StringConstraints(max_length=35)] | None = None


def _printable(value: str) -> bool:
    # PostgreSQL cannot hold NUL or lone surrogates; ids are looked up and shown.
    return value.isprintable()


class BadRequest(ValueError):
    """The body is not a message of the contract."""


def parse(body: bytes) -> MessageIn:
    """The message in an inbound body; BadRequest saying why it is not one."""
    try:
        message = MessageIn.model_validate(decode_object(body, lambda why: BadRequest(f"body: {why}")))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise BadRequest(f"{where}: {first.get('msg', 'invalid')}") from None
    for what, value in (
        ("message_id", message.message_id),
        ("chat_id", message.chat_id),
        ("sender.id", message.sender.id),
    ):
        if not _printable(value):
            raise BadRequest(f"{what}: not printable")
    if not message.text.strip() and not message.attachments:
        raise BadRequest("text or attachments required")
    return message


# --- outbound -----------------------------------------------------------------------------------------------


def render(name: str, chat_id: str, message: OutboundMessage) -> dict[str, Any]:
    """The callback body for one reply: text, the buttons as options, and a plain-text fallback."""
    options = [{"label": b.label, "value": b.value} for b in message.buttons]
    fallback = message.text
    if options:
        numbered = "\n".join(channels.numbered(message.buttons))
        fallback = f"{message.text}\n\n{numbered}" if message.text.strip() else numbered
    return {
        "channel": name,
        "chat_id": chat_id,
        "text": message.text,
        "options": options,
        "fallback_text": fallback,
        "reply_to": message.reply_to,
    }


def split_chat(chat: str) -> tuple[str, str]:
    name, _, chat_id = chat.partition(":")
    return name, chat_id


def delivery_error(status: int, detail: str, after: str | None) -> DeliveryError:
    """What the outbox does about a callback's error status."""
    passing = status == 429 or status >= 500
    summary = f"callback HTTP {status}" if passing else f"callback HTTP {status}: {detail}"
    after_seconds = channels.retry_after(after)
    return channels.delivery_error(summary, status=status, unreachable=status == 410, after=after_seconds)


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    name: str
    secret: str
    callback_url: str
    media: FetchPolicy


class ApiSender:
    """Delivers outbox rows to the callback URL of the chat's channel."""

    def __init__(self, endpoints: Mapping[str, Endpoint], client: httpx.AsyncClient) -> None:
        self.endpoints = endpoints
        self.client = client

    async def send(self, message: OutboundMessage) -> Delivered:
        name, chat_id = split_chat(message.chat_id)
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise PermanentFailure(f"API channel {name!r} is no longer configured")
        body = json.dumps(render(name, chat_id, message), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", **signed_headers(endpoint.secret, body)}
        try:
            response = await self.client.post(endpoint.callback_url, content=body, headers=headers)
        except httpx.HTTPError as error:
            raise RetryLater(f"callback: {type(error).__name__}") from error
        if response.status_code >= 300:
            raise delivery_error(
                response.status_code, response.text[:200], response.headers.get("retry-after")
            )
        external_id: str | None = None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("message_id"), str):
            external_id = answer["message_id"][:255]
        return Delivered(external_id=external_id)


# --- the channel --------------------------------------------------------------------------------------------


class ApiChannel(SendingChannel):
    """The signed inbound route of every configured API channel and the sender of their replies."""

    name = CHANNEL

    def __init__(
        self, bot: Bot, endpoints: Mapping[str, Endpoint], *, tolerance: float, timeout: float
    ) -> None:
        self.bot = bot
        self.endpoints = dict(endpoints)
        self.tolerance = tolerance
        # trust_env=False: the callback URL is the operator's, not a proxy's from the environment.
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)
        self.outbox = ApiSender(self.endpoints, self._client)
        self._fetchers = {name: Fetcher(e.media) for name, e in self.endpoints.items()}
        self.clients = (self._client, *self._fetchers.values())

    def routes(self) -> Sequence[BaseRoute]:
        return [Route(INBOUND_PATH, self.inbound, methods=["POST"])]

    async def inbound(self, request: Request) -> Response:
        name = request.path_params["name"]
        endpoint = self.endpoints.get(name)
        body = await request.body()
        if endpoint is None:
            raise ApiError(404, "no such channel")
        problem = verify(endpoint.secret, request.headers, body, tolerance=self.tolerance)
        if problem is not None:
            raise ApiError(401, problem)
        try:
            message = parse(body)
        except BadRequest as error:
            raise ApiError(400, str(error)) from None
        for attachment in message.attachments:
            if not _allowed_url(endpoint.media, attachment.url):
                raise ApiError(400, "attachments.url: not an https URL on this channel's media hosts")
        external_id = f"{name}:{message.message_id}"
        # Not stored (bot.http.UNAVAILABLE): the 503 makes the gateway send it again later.
        if await asyncio.to_thread(self.bot.engine.seen, CHANNEL, external_id):
            return JSONResponse({"ok": True, "duplicate": True})
        attachments = tuple([await self._attachment(name, a) for a in message.attachments])
        inbound = channels.inbound(
            CHANNEL,
            external_id,
            message.sender.id,
            chat_id=f"{name}:{message.chat_id}",
            text=message.text,
            attachments=attachments,
            locale_hint=message.locale,
            sender_name=message.sender.name,
            raw={"api_channel": name},
        )
        accepted = await self.bot.engine.accept_soon(inbound)
        return JSONResponse({"ok": True, "duplicate": accepted.duplicate})

    async def _attachment(self, name: str, attachment: AttachmentIn) -> Attachment:
        store = self.bot.attachments
        mime = attachment.mime.split(";")[0].strip().lower()
        filename = attachment.name or f"file{mimetypes.guess_extension(mime) or ''}"
        kind = attachment.kind or (
            "photo" if mime.startswith("image/") else "voice" if mime.startswith("audio/") else "document"
        )
        if mime not in store.allowed_types:
            return store.rejected(filename, "type")  # not worth downloading
        # A passing failure asks the gateway to send the message again; a file that is gone will not come back.
        return await channels.download(
            self._fetchers[name],
            store,
            attachment.url,
            name=filename,
            mime=mime,
            kind=kind,
            channel=f"api {name}",
            server_type=False,
        )


def _allowed_url(policy: FetchPolicy, url: str) -> bool:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        return False
    secure = parsed.scheme == "https" or (parsed.scheme == "http" and policy.is_insecure(parsed.host))
    return bool(parsed.host) and secure and policy.allows_host(parsed.host)


# --- settings -----------------------------------------------------------------------------------------------


def from_settings(bot: Bot) -> ApiChannel | None:
    """The channel when API_CHANNELS names at least one channel."""
    s = bot.settings
    if not s.api_channels:
        return None
    endpoints = {
        name: Endpoint(
            name=name,
            secret=c.secret.get_secret_value(),
            callback_url=c.callback_url,
            media=FetchPolicy.from_settings(s, hosts=c.media_hosts),
        )
        for name, c in s.api_channels.items()
    }
    return ApiChannel(
        bot, endpoints, tolerance=s.api_signature_tolerance_seconds, timeout=s.api_callback_timeout_seconds
    )
