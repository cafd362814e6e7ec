"""WeChat Official Account channel: signed (optionally AES-encrypted) XML pushes in, customer-service messages out."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import mimetypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn
from xml.etree.ElementTree import ParseError

import httpx
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute

from adapters.base import HoldingChannel, verified_webhook
from bot import channels
from bot.app import Bot
from bot.fetch import FetchTooLarge
from bot.messages import Attachment, Button, OutboundMessage
from bot.outbox import (
    CONFIG_HOLD,
    Delivered,
    DeliveryError,
    Hold,
    RetryLater,
    waiting_count,
)
from bot.render import Renderer
from bot.store.clock import utcnow

log = logging.getLogger(__name__)

CHANNEL = "wechat"
WEBHOOK_PATH = "/wechat/webhook"
MAX_BODY_BYTES = 64 * 1024  # pushes are a few hundred bytes; anything near this is not WeChat
TEXT_LIMIT_BYTES = 2048  # per customer-service text message (UTF-8); conservative
MEDIA_SECONDS = 3.0  # WeChat wants an answer within 5 s, media download included

# Customer-service quotas since June 2023: a customer's message allows 5 messages within 48 hours; following
# the account (and menu clicks, QR scans) 3 within one minute. Each new interaction starts a new quota.
QUOTAS = {"message": (timedelta(hours=48), 5), "event": (timedelta(minutes=1), 3)}
MARGINS = {"message": timedelta(minutes=10), "event": timedelta(seconds=10)}
HOLD = timedelta(days=30)  # how long a customer's quota record is kept after its window

TOKEN_ERRORS = frozenset({40001, 40014, 42001})
RETRYABLE_ERRORS = frozenset({-1, 45009, 45011})
WINDOW_CLOSED = 45015  # response out of time limit
QUOTA_EXHAUSTED = 45047  # out of response count limit
UNREACHABLE_ERRORS = frozenset({43004})  # the customer unfollowed
# The account's set-up, not the message: the server's IP is not whitelisted (40164), the AppSecret is wrong or
# was reset (40125, 40013 the AppID), the API is not granted to the account (48001). Every send would fail the
# same way until an administrator fixes it: replies are held, not dead-lettered, and the cause is on /healthz.
CONFIG_ERRORS = frozenset({40013, 40125, 40164, 48001})

# --- verify -----------------------------------------------------------------------------------------------------


def sha1_signature(*parts: str) -> str:
    """WeChat's signature: SHA-1 of the parts sorted and joined."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()  # noqa: S324 - WeChat's scheme


def signature_valid(token: str, params: Mapping[str, str]) -> bool:
    """The query's `signature` over the token, `timestamp` and `nonce` (sent with every request)."""
    given, timestamp, nonce = (
        params.get("signature", ""),
        params.get("timestamp", ""),
        params.get("nonce", ""),
    )
    if not token or not given or not timestamp or not nonce:
        return False
    return hmac.compare_digest(given.encode(), sha1_signature(token, timestamp, nonce).encode())


def msg_signature_valid(token: str, params: Mapping[str, str], encrypted: str) -> bool:
    """Safe mode's `msg_signature`, which also covers the encrypted body."""
    given = params.get("msg_signature", "")
    if not given:
        return False
    expected = sha1_signature(token, params.get("timestamp", ""), params.get("nonce", ""), encrypted)
    return hmac.compare_digest(given.encode(), expected.encode())


# WeChat signs the query (token, timestamp, nonce), not a plaintext body, and retries a push 3 times within about
# 15 s with the same query. A signed query older than this, or one whose nonce came with another body, is refused.
REPLAY_WINDOW = timedelta(minutes=5)


def timestamp_fresh(params: Mapping[str, str], now: datetime) -> bool:
    """Whether the signed `timestamp` is within REPLAY_WINDOW of now (either way: clocks differ a little)."""
    signed_at = channels.unix_time(params.get("timestamp"))
    return signed_at is not None and abs(now - signed_at) <= REPLAY_WINDOW


NONCE_PREFIX = "wechat:nonce:"


def nonce_first_use(db: Engine, params: Mapping[str, str], body: bytes, now: datetime) -> bool:
    """Record the query's (timestamp, nonce); False if it was seen with another body (a replay, not a retry)."""
    seen = hashlib.sha256(f"{params.get('timestamp', '')}:{params.get('nonce', '')}".encode()).hexdigest()[
        :48
    ]
    key, digest = f"{NONCE_PREFIX}{seen}", hashlib.sha256(body).hexdigest()
    # Old nonces go before a new one is kept: the table never holds more than a window's pushes.
    channels.kv_purge(db, NONCE_PREFIX)
    if channels.kv_add(db, key, {"body": digest}, now + 2 * REPLAY_WINDOW):
        return True
    stored = channels.kv_get(db, key)
    return stored is None or stored[0].get("body") == digest  # WeChat's own retry carries the same bytes


class DecryptError(ValueError):
    """An encrypted body that does not decrypt to a message for our account."""


class Crypto:
    """Safe mode: AES-256-CBC with the key from EncodingAESKey, the IV its first 16 bytes, PKCS#7 to 32 bytes."""

    def __init__(self, encoding_aes_key: str, app_id: str) -> None:
        try:
            self.key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except binascii.Error as error:
            raise ValueError("WECHAT_ENCODING_AES_KEY is not 43 characters of base64") from error
        if len(self.key) != 32:
            raise ValueError("WECHAT_ENCODING_AES_KEY must decode to 32 bytes (43 characters)")
        self.app_id = app_id.encode()

    def decrypt(self, encrypted: str) -> bytes:
        """The XML inside `Encrypt`: random(16) + length(4, big-endian) + xml + app id, padded."""
        try:
            data = base64.b64decode(encrypted, validate=True)
        except binascii.Error as error:
            raise DecryptError("Encrypt is not base64") from error
        if not data or len(data) % 16:
            raise DecryptError("ciphertext is not whole AES blocks")
        decryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16])).decryptor()
        plain = decryptor.update(data) + decryptor.finalize()
        pad = plain[-1]
        if not 1 <= pad <= 32 or plain[-pad:] != bytes([pad]) * pad:
            raise DecryptError("bad padding")
        content = plain[16:-pad]
        if len(content) < 4:
            raise DecryptError("too short")
        length = int.from_bytes(content[:4], "big")
        xml, app_id = content[4 : 4 + length], content[4 + length :]
        if len(xml) != length or not hmac.compare_digest(app_id, self.app_id):
            raise DecryptError("not for this account")
        return xml


# --- parse -------------------------------------------------------------------------------------------------------


class MalformedPayload(ValueError):
    """The body is not a WeChat push we can read (bad XML, a DTD or entities, too large, fields missing)."""


def parse_xml(body: bytes) -> dict[str, str]:
    """The child elements of `<xml>` as text; DTDs, entities and oversized bodies are refused."""
    if len(body) > MAX_BODY_BYTES:
        raise MalformedPayload("body too large")
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ParseError, DefusedXmlException, UnicodeDecodeError, ValueError) as error:
        raise MalformedPayload(f"not acceptable XML: {type(error).__name__}") from error
    if root.tag != "xml":
        raise MalformedPayload("root element is not <xml>")
    return {child.tag: (child.text or "").strip() for child in root}


@dataclass(frozen=True, kw_only=True)
class Push:
    """One message or event pushed by WeChat."""

    openid: str
    account: str
    msg_type: str
    create_time: str
    msg_id: str = ""
    event: str = ""
    content: str = ""
    media_id: str = ""
    format: str = ""
    recognition: str = ""  # a voice message's speech-to-text, when the account has it on
    event_key: str = ""  # a menu button's key (CLICK), a QR code's scene (SCAN)
    label: str = ""  # a location message's address

    @property
    def external_id(self) -> str:
        # Events carry no MsgId: the sender and the time identify a redelivery.
        return self.msg_id or f"event:{self.openid}:{self.create_time}"


# An OpenID is 28 characters; the limit leaves room and keeps the chat id and the quota's key (KeyValue.key,
# 128 characters) inside their database columns.
MAX_OPENID = 64


def parse_push(fields: Mapping[str, str]) -> Push:
    openid, msg_type, create_time = (
        fields.get("FromUserName"),
        fields.get("MsgType"),
        fields.get("CreateTime"),
    )
    if not openid or not msg_type or not create_time or not create_time.isdigit():
        raise MalformedPayload("FromUserName, MsgType and CreateTime are required")
    if len(openid) > MAX_OPENID:
        raise MalformedPayload("FromUserName is too long for an OpenID")
    if msg_type != "event" and not fields.get("MsgId"):
        raise MalformedPayload("a message without MsgId")
    return Push(
        openid=openid,
        account=fields.get("ToUserName", ""),
        msg_type=msg_type,
        create_time=create_time,
        msg_id=fields.get("MsgId", ""),
        event=fields.get("Event", ""),
        content=fields.get("Content", ""),
        media_id=fields.get("MediaId", ""),
        format=fields.get("Format", ""),
        recognition=fields.get("Recognition", ""),
        event_key=fields.get("EventKey", ""),
        label=fields.get("Label", ""),
    )


# --- send: rendering -----------------------------------------------------------------------------------------------


def render(text: str, buttons: Sequence[Button]) -> str:
    """The text with the buttons as numbered options, which the customer answers with the number."""
    return channels.with_options(text, buttons)


# --- send: the API client and the shared access token --------------------------------------------------------------


class WeChatError(Exception):
    """The API refused a call; `errcode` is WeChat's error code."""

    def __init__(self, errcode: int, errmsg: str, status: int = 200) -> None:
        super().__init__(f"errcode {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg
        self.status = status


class AccessTokens:
    """The access token, kept in the database so that every worker uses one, refreshed before it expires."""

    MARGIN = timedelta(minutes=5)

    def __init__(self, db: Engine, http: httpx.AsyncClient, app_id: str, app_secret: str) -> None:
        self.db = db
        self.http = http
        self.app_id = app_id
        self.app_secret = app_secret
        self.cache = channels.TokenCache(db, f"wechat:access_token:{app_id}", margin=self.MARGIN)

    async def get(self, *, rejected: str | None = None) -> str:
        """A valid token; `rejected` is one the API just refused, which is then replaced."""
        cached = await self.cache.cached()
        if cached is not None and cached != rejected:
            return cached
        # The stable token endpoint gives every worker the same token, so refreshing in parallel is harmless.
        # A refused token is usually one another worker or client has replaced: a normal request gets the new
        # one. Only if it answers with the refused token again is it forced, which WeChat allows 20 times a
        # day and which voids the token every other worker holds.
        token = await self._fetch(force=False)
        if rejected is not None and token == rejected:
            log.warning("wechat access token refused but still current; forcing a new one")
            token = await self._fetch(force=True)
        return token

    async def _fetch(self, *, force: bool) -> str:
        answer = await self.http.post(
            "cgi-bin/stable_token",
            json={
                "grant_type": "client_credential",
                "appid": self.app_id,
                "secret": self.app_secret,
                "force_refresh": force,
            },
        )
        data = _json(answer)
        token, expires_in = data.get("access_token"), data.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int):
            raise WeChatError(-2, "token answer without access_token", answer.status_code)
        await self.cache.put(token, utcnow() + timedelta(seconds=expires_in))
        return token


def _json(response: httpx.Response) -> dict[str, Any]:
    data = channels.json_answer(response)
    if not isinstance(data, dict):
        raise WeChatError(-2, f"HTTP {response.status_code}, not JSON", response.status_code)
    errcode = data.get("errcode", 0)
    if errcode not in (0, None) or response.status_code >= 400:
        raise WeChatError(
            int(errcode) if isinstance(errcode, int) else -2,
            str(data.get("errmsg", "")),
            response.status_code,
        )
    return data


class WeChatClient:
    """A thin async client for the calls we make; the base URL is a setting (WECHAT_API_BASE_URL)."""

    def __init__(
        self,
        db: Engine,
        base_url: str,
        app_id: str,
        app_secret: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/", timeout=timeout, transport=transport
        )
        self.tokens = AccessTokens(db, self.http, app_id, app_secret)

    async def send_text(self, openid: str, text: str) -> None:
        body = {"touser": openid, "msgtype": "text", "text": {"content": text}}
        # Escaped \\uXXXX would show as such in the chat: send the UTF-8 itself.
        content = json.dumps(body, ensure_ascii=False).encode()
        rejected = None
        for _ in range(2):
            token = await self.tokens.get(rejected=rejected)
            response = await self.http.post(
                "cgi-bin/message/custom/send",
                params={"access_token": token},
                content=content,
                headers={"content-type": "application/json"},
            )
            try:
                _json(response)
                return
            except WeChatError as error:
                if error.errcode not in TOKEN_ERRORS or rejected is not None:
                    raise
                rejected = token

    async def media(self, media_id: str, *, max_bytes: int) -> tuple[bytes, str]:
        """A customer's image or voice file and its MIME type (temporary media, kept 3 days by WeChat)."""
        rejected = None
        for _ in range(2):
            token = await self.tokens.get(rejected=rejected)
            async with self.http.stream(
                "GET", "cgi-bin/media/get", params={"access_token": token, "media_id": media_id}
            ) as response:
                mime = response.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
                if response.status_code >= 400 or mime in ("application/json", "text/plain"):
                    await response.aread()
                    try:
                        _json(response)
                    except WeChatError as error:
                        if error.errcode not in TOKEN_ERRORS or rejected is not None:
                            raise
                        rejected = token
                        continue
                    raise WeChatError(-2, "media answer is JSON without an error", response.status_code)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchTooLarge(media_id, max_bytes)
                    chunks.append(chunk)
                return b"".join(chunks), mime
        raise WeChatError(-2, "access token refused twice")

    async def aclose(self) -> None:
        await self.http.aclose()


def delivery_error(error: WeChatError) -> DeliveryError:
    return channels.delivery_error(
        str(error),
        status=error.status,
        passing=error.errcode in RETRYABLE_ERRORS | TOKEN_ERRORS | {-2},
        unreachable=error.errcode in UNREACHABLE_ERRORS,
    )


# --- send: quotas and held messages --------------------------------------------------------------------------------


def _window_key(openid: str) -> str:
    return f"wechat:window:{openid}"


@dataclass(frozen=True, kw_only=True)
class Quota:
    left: int  # messages we may still send now
    done: int  # pieces of this message already sent (a message cut in pieces may go out over two windows)
    notice_sent: bool
    waiting: int  # other messages queued for this customer


def read_quota(db: Engine, openid: str, digest: str, now: datetime) -> Quota:
    stored = channels.kv_get(db, _window_key(openid))
    state = stored[0] if stored is not None else {}
    waiting = waiting_count(db, CHANNEL, openid)
    left = 0
    since = channels.parse_time(state.get("since"))
    kind = state.get("kind", "message")
    if since is not None and kind in QUOTAS:
        duration, limit = QUOTAS[kind]
        if now < since + duration - MARGINS[kind]:
            left = max(0, limit - int(state.get("sent", 0)))
    partial = state.get("partial") or {}
    done = int(partial.get("done", 0)) if partial.get("digest") == digest else 0
    return Quota(
        left=left, done=done, notice_sent=bool(state.get("notice_sent")), waiting=max(0, waiting - 1)
    )


KEEP = "keep"  # record_sent: leave the progress of a message cut in pieces as it is


def record_sent(
    db: Engine,
    openid: str,
    *,
    progress: dict[str, Any] | str | None = KEEP,
    notice: bool = False,
    exhausted: bool = False,
) -> None:
    """Count one message sent (or, `exhausted`, note that WeChat says the quota or window is used up)."""
    with channels.kv_change(db, _window_key(openid)) as window:
        state = window.value
        if exhausted:
            state["sent"] = QUOTAS.get(state.get("kind", "message"), QUOTAS["message"])[1]
        else:
            state["sent"] = int(state.get("sent", 0)) + 1
        if progress != KEEP:
            state["partial"] = progress
        state["notice_sent"] = bool(state.get("notice_sent")) or notice


def note_interaction(db: Engine, openid: str, kind: str, now: datetime) -> int:
    """The customer wrote (or followed): a new quota starts and their held messages go out. Returns how many."""
    with channels.kv_change(db, _window_key(openid)) as window:
        window.value.update(since=now.isoformat(), kind=kind, sent=0, notice_sent=False)
        window.expires_at = now + QUOTAS[kind][0] + HOLD
        return window.release_held(CHANNEL, openid)


class WeChatSender:
    """Delivers outbox rows as customer-service messages within the quota; the rest waits for the customer."""

    def __init__(self, db: Engine, client: WeChatClient, renderer: Renderer) -> None:
        self.db = db
        self.client = client
        self.renderer = renderer
        # A configuration error that holds every reply; also in the database, for /healthz (note_problem).
        self.problem: str | None = None

    def _notice(self, language: str | None) -> str:
        """'More messages are waiting: reply to receive them', in the customer's language."""
        return self.renderer.text("messages_waiting", language=language or "zh")

    async def send(self, message: OutboundMessage) -> Delivered:
        pieces = channels.split_text(render(message.text, message.buttons), TEXT_LIMIT_BYTES, unit="bytes")
        digest = hashlib.sha256("\x00".join(pieces).encode()).hexdigest()[:32]
        openid = message.chat_id
        quota = await asyncio.to_thread(read_quota, self.db, openid, digest, utcnow())
        remaining = pieces[quota.done :]
        # Keep the last message of a quota to tell the customer that more is waiting for them.
        fits = len(remaining) < quota.left or (len(remaining) == quota.left and quota.waiting == 0)
        sendable = remaining if fits else remaining[: max(0, quota.left - 1)]
        done = quota.done
        for piece in sendable:
            await self._send(openid, piece)
            if self.problem is not None:
                await self._recovered()
            done += 1
            progress = {"digest": digest, "done": done} if done < len(pieces) else None
            await asyncio.to_thread(record_sent, self.db, openid, progress=progress)
        if fits:
            return Delivered()
        if quota.left >= 1 and not quota.notice_sent:
            await self._send(openid, self._notice(message.language))
            await asyncio.to_thread(record_sent, self.db, openid, notice=True)
        await self._hold(
            openid, "the customer-service quota is used up" if quota.left else "outside the window"
        )

    async def _send(self, openid: str, text: str) -> None:
        try:
            await self.client.send_text(openid, text)
        except WeChatError as error:
            if error.errcode in (WINDOW_CLOSED, QUOTA_EXHAUSTED):
                await asyncio.to_thread(record_sent, self.db, openid, exhausted=True)
                await self._hold(openid, f"WeChat says {error}")
            if error.errcode in CONFIG_ERRORS:
                if self.problem is None:
                    log.error(
                        "wechat refuses the account's set-up (%s); replies are held until it is fixed", error
                    )
                self.problem = f"WeChat refuses the account's set-up: {error}"
                await asyncio.to_thread(channels.note_problem, self.db, CHANNEL, self.problem)
                raise Hold(f"{CONFIG_HOLD}{error}") from error
            raise delivery_error(error) from error
        except httpx.HTTPError as error:
            raise channels.no_answer(error) from error

    async def _recovered(self) -> None:
        """A send went through again: the set-up is fixed, so every reply it held goes out (and /healthz no
        longer shows the problem: release_config_holds_of)."""
        self.problem = None
        released = await asyncio.to_thread(channels.release_config_holds_of, self.db, CHANNEL)
        log.info("wechat set-up works again; %s held replies released", released)

    async def _hold(self, openid: str, why: str) -> NoReturn:
        if (await asyncio.to_thread(read_quota, self.db, openid, "", utcnow())).left:
            raise RetryLater("the customer wrote while we held the message", after=0)
        raise Hold(f"{why}; waiting for the customer's next message")


# --- the channel ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WeChatConfig:
    app_id: str
    app_secret: str
    token: str
    encoding_aes_key: str
    api_base_url: str


class WeChatChannel(HoldingChannel):
    """The push URL (verification, messages, events) and the sender."""

    name = CHANNEL
    one_reply_per_turn = True

    def __init__(
        self, bot: Bot, config: WeChatConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.client = WeChatClient(
            bot.db, config.api_base_url, config.app_id, config.app_secret, transport=transport
        )
        super().__init__(bot, self.client, WeChatSender(bot.db, self.client, bot.renderer))
        self.config = config
        self.crypto = Crypto(config.encoding_aes_key, config.app_id) if config.encoding_aes_key else None

    def routes(self) -> Sequence[BaseRoute]:
        return verified_webhook(WEBHOOK_PATH, self.challenge, self.webhook)

    def challenge(self, params: Mapping[str, str]) -> str | None:
        """The `echostr` of a verification signed with our token, to echo."""
        return params.get("echostr") if signature_valid(self.config.token, params) else None

    async def webhook(self, request: Request) -> Response:
        params = request.query_params
        if not signature_valid(self.config.token, params):
            return JSONResponse({"error": "invalid signature"}, status_code=401)
        if not timestamp_fresh(params, utcnow()):
            return JSONResponse({"error": "stale or missing timestamp"}, status_code=401)
        body = await request.body()
        # A storage failure here or below is answered 503 (bot.http.UNAVAILABLE): WeChat pushes it again.
        if not await asyncio.to_thread(nonce_first_use, self.bot.db, params, body, utcnow()):
            return JSONResponse({"error": "nonce already used"}, status_code=401)
        encrypted = params.get("encrypt_type") == "aes"
        if self.crypto is not None and not encrypted:
            # With a key configured the account is in safe (or compatible) mode: a plain body is not WeChat's.
            return JSONResponse({"error": "encrypted push expected"}, status_code=401)
        try:
            fields = parse_xml(body)
            if encrypted:
                if self.crypto is None:
                    raise MalformedPayload("encrypted push, but WECHAT_ENCODING_AES_KEY is not set")
                if not msg_signature_valid(self.config.token, params, fields.get("Encrypt", "")):
                    return JSONResponse({"error": "invalid msg_signature"}, status_code=401)
                fields = parse_xml(self.crypto.decrypt(fields.get("Encrypt", "")))
            push = parse_push(fields)
        except (MalformedPayload, DecryptError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        await self._receive(push)
        return PlainTextResponse("success")

    async def _receive(self, push: Push) -> None:
        if push.msg_type == "event":
            if push.event == "subscribe":
                text, kind = "/start", "event"
            elif push.event in ("CLICK", "SCAN"):
                # A menu button ("报修") or a scanned QR code: the customer wants us, and WeChat grants a reply
                # quota for it. An empty text greets a new customer and re-asks where a conversation stands.
                text, kind = "", "event"
            else:
                return  # unfollow, VIEW (a link) and reported locations start nothing
        elif push.msg_type == "text":
            text, kind = push.content, "message"
        elif push.msg_type == "voice":
            text, kind = push.recognition, "message"  # WeChat's speech-to-text, with the recording kept
        elif push.msg_type == "location":
            text, kind = push.label, "message"
        else:
            # image (a file), video and anything new: the customer is answered, not ignored
            text, kind = "", "message"
        if await asyncio.to_thread(self.bot.engine.seen, CHANNEL, push.external_id):
            return
        # The new quota is noted before the message is stored, so that the replies to it find it.
        if await asyncio.to_thread(note_interaction, self.bot.db, push.openid, kind, utcnow()):
            self.bot.engine.outbox_signal.set()
        attachments: tuple[Attachment, ...] = ()
        if push.msg_type in ("image", "voice"):
            attachments = (await self._attachment(push),)
        elif push.msg_type in ("video", "shortvideo"):
            attachments = (
                self.bot.attachments.rejected(f"video-{push.msg_id}.mp4", "type"),
            )  # not downloaded
        message = channels.inbound(
            CHANNEL,
            push.external_id,
            push.openid,
            text=text,
            attachments=attachments,
            raw={"msg_type": push.msg_type, "event": push.event, "create_time": push.create_time},
        )
        await self.bot.engine.accept_soon(message)

    async def _attachment(self, push: Push) -> Attachment:
        store = self.bot.attachments
        kind = "photo" if push.msg_type == "image" else "voice"
        default_mime = "image/jpeg" if kind == "photo" else _VOICE_TYPES.get(push.format.lower(), "audio/amr")
        name = f"{push.msg_type}-{push.msg_id}{mimetypes.guess_extension(default_mime) or '.' + push.format}"
        if not push.media_id:
            return store.rejected(name, "unavailable")
        try:
            async with asyncio.timeout(MEDIA_SECONDS):
                data, mime = await self.client.media(push.media_id, max_bytes=store.max_bytes)
        except FetchTooLarge:
            return store.rejected(name, "too_large")
        except (TimeoutError, WeChatError, httpx.HTTPError) as error:
            # WeChat's 5 seconds leave no time for retries: the customer is told to send it again.
            log.warning("wechat %s could not be fetched: %s", push.msg_type, type(error).__name__)
            return store.rejected(name, "unavailable")
        if mime in ("application/octet-stream", "") or (kind == "voice" and not mime.startswith("audio/")):
            mime = default_mime
        return await channels.save_or_reject(store, data, name=name, mime=mime, kind=kind)


_VOICE_TYPES = {"amr": "audio/amr", "speex": "audio/speex", "mp3": "audio/mpeg"}


# --- settings ------------------------------------------------------------------------------------------------------


def from_settings(bot: Bot) -> WeChatChannel | None:
    """The channel when WECHAT_APP_ID, WECHAT_APP_SECRET and WECHAT_TOKEN are set (safe mode: the AES key too)."""
    s = bot.settings
    if not (s.wechat_app_id and s.wechat_app_secret and s.wechat_token):
        return None
    config = WeChatConfig(
        app_id=s.wechat_app_id,
        app_secret=s.wechat_app_secret.get_secret_value(),
        token=s.wechat_token.get_secret_value(),
        encoding_aes_key=s.wechat_encoding_aes_key.get_secret_value() if s.wechat_encoding_aes_key else "",
        api_base_url=s.wechat_api_base_url,
    )
    return WeChatChannel(bot, config)
