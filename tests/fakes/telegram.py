"""A loopback fake of the Telegram Bot API: the methods the bot uses and file downloads, checked like the real
one (token, HTML entities, message length counted on the visible text, callback data size, chat types: a
group the bot is not in, a topic in a chat that has none), with every call recorded. Below it, the bot's server
with the Telegram channel against it, for the tests that drive both (`bot_servers`)."""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import Engine, select
from sqlmodel import Session, col
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters import telegram as tg
from bot.app import Bot, build
from bot.config import Settings
from bot.server import create_app
from bot.store import Case, InboxItem, KeyValue, OutboxItem
from tests.fakes.server import serve

# The bot's token and webhook secret in every test that talks to the fake (tests/adapters/test_telegram.py and others).
TOKEN = "7391046285:AAHfakeTokenForLoopbackTests_0123456789"
SECRET = "tg-hook_secret-5f2a9c"
PAYLOADS = Path(__file__).parent.parent / "payloads" / "telegram"


def update(chat: str, number: int, text: str) -> bytes:
    """A text message update from chat `chat` (a number), the `number`th of that chat, as Telegram posts it."""
    document = json.loads((PAYLOADS / "text_serial.json").read_bytes())
    document["update_id"] = int(chat) * 100 + number
    message = document["message"]
    message["message_id"] = number
    message["chat"]["id"] = int(chat)
    message["from"]["id"] = int(chat)
    message["text"] = text
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode()


BOT_USER = {
    "id": 7391046285,
    "is_bot": True,
    "first_name": "CSP Warranty",
    "username": "csp_warranty_bot",
    "can_join_groups": False,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
# Parameters PTB sends JSON-encoded in its form bodies; the rest are plain strings.
_JSON_PARAMS = {
    "reply_markup",
    "allowed_updates",
    "link_preview_options",
    "offset",
    "timeout",
    "limit",
    "drop_pending_updates",
    "max_connections",
    "show_alert",
    "reply_parameters",
    "allow_paid_broadcast",
}
_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "span",
    "tg-spoiler",
    "a",
    "code",
    "pre",
    "blockquote",
    "tg-emoji",
}
_HTML_TOKEN = re.compile(r"<(/?)([a-zA-Z-]*)[^<>]*>|&(#\d+|#[xX][0-9a-fA-F]+|lt|gt|amp|quot);|([<>&])")


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    status: int = 200


@dataclass
class FakeTelegram:
    """Answers `/bot<token>/<method>` and `/file/bot<token>/<path>` like api.telegram.org."""

    token: str
    calls: list[Call] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)  # served by getUpdates
    last_update_id: int = 0  # the highest update_id queued so far
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # file_id -> (file_path, bytes)
    downloads: list[str] = field(default_factory=list)  # file paths fetched
    failures: list[tuple[str, int, int, dict[str, Any]]] = field(
        default_factory=list
    )  # method, after, status, body
    blocked: set[str] = field(default_factory=set)  # chat ids that blocked the bot
    # Groups, supergroups and channels the bot is a member of: chat id -> (type, is_forum). A chat id below
    # zero that is not here is a group the bot is not in; above zero, a private chat.
    groups: dict[str, tuple[str, bool]] = field(default_factory=dict)
    held: dict[str, threading.Event] = field(default_factory=dict)  # methods that wait until released
    holding: list[str] = field(default_factory=list)  # the methods of the calls that waited (or wait) there
    # While set, every sendMessage fails this way: "5xx" (502), "429" (flood control) or "timeout" (no answer
    # within `hang_seconds`, then 502 — longer than the client waits).
    outage: str | None = None
    hang_seconds: float = 3.0
    # Flood control like Telegram's: after a 429 with retry_after, a sendMessage before the wait is over is
    # refused again and recorded: in `early` when it is to the chat that was told to wait (a client that
    # honours retry_after never does it), in `early_bot` for another chat inside a bot-wide window. With
    # `rate_limits`, sending faster than the published limits (about 30 a second in all, about one a second
    # to one chat, short bursts allowed) is answered 429 too (recorded in `limited`). A send with
    # allow_paid_broadcast (Bot API 7.11) may go up to 1000 a second in all, as the real service allows for a
    # fee (recorded in `paid`); the per-chat limit still holds.
    rate_limits: bool = False
    flood_until: dict[str, float] = field(default_factory=dict)  # chat id, or "*" for the whole bot
    told: dict[str, float] = field(default_factory=dict)  # chat id -> the end of the wait it was told
    early: list[str] = field(default_factory=list)
    early_bot: list[str] = field(default_factory=list)
    limited: list[str] = field(default_factory=list)
    paid: list[str] = field(default_factory=list)  # chats sent to as paid broadcasts (0.1 Stars each)
    _recent: dict[str, list[float]] = field(default_factory=dict)  # sendMessage times, per chat and "*"
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(5001))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/bot{token}/{method}", self._method, methods=["GET", "POST"]),
                Route("/file/bot{token}/{path:path}", self._file, methods=["GET"]),
            ]
        )

    # --- what tests set up ------------------------------------------------------------------------------

    def add_file(self, file_id: str, data: bytes, path: str) -> None:
        with self.lock:
            self.files[file_id] = (path, data)

    def queue(self, update: dict[str, Any]) -> None:
        """An update for getUpdates. Telegram numbers updates in the order they arrive, so one queued after a
        higher-numbered update is renumbered after it (a sample payload's id may be lower)."""
        with self.lock:
            if update["update_id"] <= self.last_update_id:
                update = {**update, "update_id": self.last_update_id + 1}
            self.last_update_id = update["update_id"]
            self.updates.append(update)

    def fail_next(
        self,
        method: str,
        status: int,
        description: str,
        *,
        retry_after: int | None = None,
        after: int = 0,
        bot_wide: bool = False,
    ) -> None:
        """A coming call of `method` (the next, or the one after `after` more) is refused like this; a 429
        with `retry_after` opens a flood-control window for its chat (for every chat when `bot_wide`)."""
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
            if bot_wide:
                body["bot_wide"] = True
        with self.lock:
            self.failures.append((method, after, status, body))

    def hold(self, method: str) -> threading.Event:
        """Calls of `method` wait until the returned event is set (at most 30 s)."""
        event = threading.Event()
        with self.lock:
            self.held[method] = event
        return event

    def join(self, chat_id: str | int, kind: str = "supergroup", *, forum: bool = False) -> None:
        with self.lock:
            self.groups[str(chat_id)] = (kind, forum)

    def block(self, chat_id: str) -> None:
        with self.lock:
            self.blocked.add(str(chat_id))

    # --- what tests read --------------------------------------------------------------------------------

    def calls_to(self, method: str, *, ok: bool = True) -> list[dict[str, Any]]:
        with self.lock:
            return [c.params for c in self.calls if c.method == method and (c.status == 200) == ok]

    def sent(self, chat_id: str) -> list[dict[str, Any]]:
        """The sendMessage calls Telegram accepted for a chat, in order."""
        return [p for p in self.calls_to("sendMessage") if str(p.get("chat_id")) == str(chat_id)]

    def last_buttons(self, chat_id: str) -> list[str]:
        """The callback data of the inline buttons under the last message sent to a chat."""
        sent = self.sent(chat_id)
        rows = sent[-1].get("reply_markup", {}).get("inline_keyboard", []) if sent else []
        return [button["callback_data"] for row in rows for button in row]

    # --- handlers ---------------------------------------------------------------------------------------

    async def _method(self, request: Request) -> Response:
        method = request.path_params["method"]
        params = await _params(request)
        with self.lock:
            held = self.held.get(method)
        if held is not None:
            with self.lock:
                self.holding.append(method)
            await asyncio.to_thread(held.wait, 30)
        if request.path_params["token"] != self.token:
            return self._answer(
                method, params, 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
            )
        if method == "sendMessage":
            paid = params.get("allow_paid_broadcast") is True
            flooded = self._flood_control(str(params.get("chat_id", "")), paid=paid)
            if flooded is not None:
                return self._answer(method, params, 429, flooded)
        if method == "sendMessage" and self.outage is not None:
            return await self._outage(method, params)
        with self.lock:
            failure = next((f for f in self.failures if f[0] == method), None)
            if failure is not None:
                self.failures.remove(failure)
                if failure[1] > 0:  # not yet: let this call through, fail a later one
                    self.failures.insert(0, (method, failure[1] - 1, failure[2], failure[3]))
                    failure = None
        if failure is not None:
            return self._answer(method, params, failure[2], failure[3])
        handler = getattr(self, f"_{method}", None)
        if handler is None:
            return self._answer(
                method, params, 404, {"ok": False, "error_code": 404, "description": "Not Found"}
            )
        try:
            result = await handler(params, request)
        except _ApiError as error:
            return self._answer(
                method,
                params,
                error.status,
                {"ok": False, "error_code": error.status, "description": error.description},
            )
        return self._answer(method, params, 200, {"ok": True, "result": result})

    def _flood_control(self, chat_id: str, *, paid: bool = False) -> dict[str, Any] | None:
        """The 429 body when this send comes inside a window or over the limits; None when it may go. A paid
        broadcast counts against the bot's paid limit (1000 a second) instead of its free one."""
        now = time.monotonic()
        with self.lock:
            until = max(self.flood_until.get(chat_id, 0.0), self.flood_until.get("*", 0.0))
            if now < until:
                (self.early if now < self.told.get(chat_id, 0.0) else self.early_bot).append(chat_id)
                return _too_many(max(1, int(until - now + 0.999)))
            if not self.rate_limits:
                return None
            for key, limit in ((chat_id, _CHAT_LIMIT), ("*", _PAID_BOT_LIMIT if paid else _BOT_LIMIT)):
                times = [t for t in self._recent.get(key, []) if t > now - _WINDOW]
                self._recent[key] = times
                if len(times) >= limit:
                    self.limited.append(chat_id)
                    self.flood_until[key] = now + 1.0
                    return _too_many(1)
            for key in (chat_id, "*"):
                self._recent[key].append(now)
        return None

    async def _outage(self, method: str, params: dict[str, Any]) -> Response:
        if self.outage == "429":
            return self._answer(
                method,
                params,
                429,
                {
                    "ok": False,
                    "error_code": 429,
                    "description": "Too Many Requests: retry after 1",
                    "parameters": {"retry_after": 1},
                },
            )
        if self.outage == "timeout":
            await asyncio.sleep(self.hang_seconds)
        return self._answer(
            method, params, 502, {"ok": False, "error_code": 502, "description": "Bad Gateway"}
        )

    def _answer(self, method: str, params: dict[str, Any], status: int, body: dict[str, Any]) -> Response:
        with self.lock:
            self.calls.append(Call(method, params, status))
            wait = body.get("parameters", {}).get("retry_after")
            if method == "sendMessage" and status == 429 and wait:
                chat_id, until = str(params.get("chat_id")), time.monotonic() + wait
                scope = "*" if body.pop("bot_wide", False) or self.outage == "429" else chat_id
                self.flood_until[scope] = max(self.flood_until.get(scope, 0.0), until)
                self.told[chat_id] = max(self.told.get(chat_id, 0.0), until)
        return JSONResponse(body, status_code=status)

    async def _file(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            return Response(status_code=401)
        path = request.path_params["path"]
        with self.lock:
            self.downloads.append(path)
            found = next((data for file_path, data in self.files.values() if file_path == path), None)
        if found is None:
            return Response(status_code=404)
        return Response(found, media_type="application/octet-stream")

    # --- methods ----------------------------------------------------------------------------------------

    async def _getMe(self, params: dict[str, Any], request: Request) -> Any:
        return BOT_USER

    async def _setWebhook(self, params: dict[str, Any], request: Request) -> Any:
        secret = params.get("secret_token", "")
        if not str(params.get("url", "")).startswith("https://"):
            raise _ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        if secret and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
            raise _ApiError(400, "Bad Request: secret token contains unallowed characters")
        return True

    async def _deleteWebhook(self, params: dict[str, Any], request: Request) -> Any:
        return True

    async def _getUpdates(self, params: dict[str, Any], request: Request) -> Any:
        offset = int(params.get("offset") or 0)
        deadline = time.monotonic() + min(float(params.get("timeout") or 0), 5.0)
        while True:
            with self.lock:
                # Like Telegram: asking from `offset` confirms, and forgets, every earlier update.
                self.updates = [u for u in self.updates if u["update_id"] >= offset]
                ready = self.updates[: int(params.get("limit") or 100)]
            if ready or time.monotonic() >= deadline or await request.is_disconnected():
                return ready
            await asyncio.sleep(0.02)

    async def _sendMessage(self, params: dict[str, Any], request: Request) -> Any:
        chat_id = str(params.get("chat_id", ""))
        if chat_id in self.blocked:
            raise _ApiError(403, "Forbidden: bot was blocked by the user")
        with self.lock:
            kind, forum = self.groups.get(chat_id, ("private", False))
        if not chat_id.lstrip("-").isdigit():
            raise _ApiError(400, "Bad Request: chat not found")
        if int(chat_id) < 0 and chat_id not in self.groups:
            raise _ApiError(403, "Forbidden: bot is not a member of the group chat")
        thread = params.get("message_thread_id")
        if thread not in (None, "") and not forum:
            raise _ApiError(400, "Bad Request: message thread not found")
        text = str(params.get("text", ""))
        visible = _parse_html(text) if params.get("parse_mode") == "HTML" else text
        if not visible.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if len(visible.encode("utf-16-le")) // 2 > 4096:
            raise _ApiError(400, "Bad Request: message is too long")
        for row in params.get("reply_markup", {}).get("inline_keyboard", []):
            for button in row:
                if not 1 <= len(button.get("callback_data", "").encode()) <= 64:
                    raise _ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
        if params.get("allow_paid_broadcast") is True:
            with self.lock:
                self.paid.append(chat_id)
        return {
            "message_id": next(self._ids),
            "from": BOT_USER,
            "date": int(time.time()),
            "chat": {"id": int(chat_id), "type": kind},
            "text": visible,
        }

    async def _answerCallbackQuery(self, params: dict[str, Any], request: Request) -> Any:
        if not params.get("callback_query_id"):
            raise _ApiError(
                400, "Bad Request: query is too old and response timeout expired or query ID is invalid"
            )
        return True

    async def _getFile(self, params: dict[str, Any], request: Request) -> Any:
        file_id = str(params.get("file_id", ""))
        with self.lock:
            found = self.files.get(file_id)
        if found is None:
            raise _ApiError(400, "Bad Request: invalid file_id")
        path, data = found
        return {
            "file_id": file_id,
            "file_unique_id": f"u{abs(hash(file_id)) % 10**8}",
            "file_size": len(data),
            "file_path": path,
        }


# Telegram allows short bursts over its published limits (about 30 a second per bot, about one a second
# per chat); here, more sendMessage calls than these in any 3 seconds are answered with 429. (A window of
# some seconds: this fake shares its process with the bot, so the arrival times it sees can bunch up.)
_WINDOW = 3.0
_CHAT_LIMIT = 7
_BOT_LIMIT = 100
_PAID_BOT_LIMIT = 3000  # paid broadcasts: up to 1000 a second


def _too_many(seconds: int) -> dict[str, Any]:
    return {
        "ok": False,
        "error_code": 429,
        "description": f"Too Many Requests: retry after {seconds}",
        "parameters": {"retry_after": seconds},
    }


class _ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


async def _params(request: Request) -> dict[str, Any]:
    """The call's parameters, from a query string, a JSON body or a form (PTB sends forms)."""
    params: dict[str, Any] = dict(request.query_params)
    if request.method == "POST":
        if request.headers.get("content-type", "").startswith("application/json"):
            params.update(json.loads(await request.body() or b"{}"))
        else:
            form = await request.form()
            for key, value in form.items():
                if isinstance(value, str):
                    params[key] = json.loads(value) if key in _JSON_PARAMS else value
    return params


def _parse_html(text: str) -> str:
    """The visible text of Telegram HTML; raises like Telegram on what it cannot parse."""
    stack: list[str] = []
    visible: list[str] = []
    position = 0
    for match in _HTML_TOKEN.finditer(text):
        visible.append(text[position : match.start()])
        position = match.end()
        closing, tag, entity, bare = match.groups()
        if bare is not None:
            raise _ApiError(400, f"Bad Request: can't parse entities: unexpected {bare!r} at {match.start()}")
        if entity is not None:
            visible.append(html.unescape(f"&{entity};"))  # one character: one or two UTF-16 units
            continue
        tag = tag.lower()
        if tag not in _TAGS:
            raise _ApiError(400, f"Bad Request: can't parse entities: unsupported start tag {tag!r}")
        if not closing:
            stack.append(tag)
        elif not stack or stack.pop() != tag:
            raise _ApiError(400, f"Bad Request: can't parse entities: unmatched end tag {tag!r}")
    if stack:
        raise _ApiError(
            400, f"Bad Request: can't parse entities: can't find end tag corresponding to {stack[-1]!r}"
        )
    visible.append(text[position:])
    return "".join(visible)


# --- the bot's server with the Telegram channel against this fake (tests/adapters/test_telegram.py, test_outbox) --

PUBLIC_URL = "https://warranty.example.com"


@dataclass
class Running:
    bot: Bot
    fake: FakeTelegram
    url: str
    channel: tg.TelegramChannel
    server: ExitStack  # closing it stops the bot's server (lifespan included)

    def post(self, body: bytes, *, secret: str | None = SECRET) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if secret is not None:
            headers[tg.SECRET_HEADER] = secret
        return httpx.post(f"{self.url}{tg.WEBHOOK_PATH}", content=body, headers=headers, timeout=10)

    def deliver(self, body: bytes) -> dict[str, Any] | None:
        """Hand an update to the bot the way this channel's mode receives it; the webhook's answer."""
        if self.channel.mode == "webhook":
            response = self.post(body)
            assert response.status_code == 200, response.text
            return dict(response.json())
        self.fake.queue(json.loads(body))
        return None

    def inbox(self) -> list[InboxItem]:
        with Session(self.bot.db) as session:
            return list(session.execute(select(InboxItem).order_by(InboxItem.id)).scalars())  # type: ignore[arg-type]

    def outbox(self) -> list[OutboxItem]:
        with Session(self.bot.db) as session:
            return list(session.execute(select(OutboxItem).order_by(OutboxItem.id)).scalars())  # type: ignore[arg-type]

    def drained(self) -> bool:
        """No webhook update is kept waiting for its files."""
        with Session(self.bot.db) as session:
            return (
                session.execute(
                    select(KeyValue).where(col(KeyValue.key).startswith(tg.PENDING_PREFIX))
                ).first()
                is None
            )

    def settled(self, inbox: int) -> bool:
        """`inbox` messages stored and processed, and every reply out."""
        items = self.inbox()
        return (
            len(items) == inbox
            and all(i.status == "done" for i in items)
            and all(o.status != "pending" for o in self.outbox())
        )

    def case_ref(self) -> str | None:
        with Session(self.bot.db) as session:
            case = session.execute(select(Case)).scalars().first()
            return case.ref if case else None


@contextmanager
def bot_servers(settings: Settings, db: Engine) -> Iterator[Callable[..., Running]]:
    """`start(**changes)` starts a fake Bot API and the bot's server with the Telegram channel against it
    (webhook unless told), `changes` over `settings`; each is stopped on leaving."""
    with ExitStack() as stack:

        def run(
            *,
            mode: str = "webhook",
            album_wait: float = 1.0,  # the quiet time after an album's last part (1.5 s by default)
            files: dict[str, tuple[bytes, str]] | None = None,
            **changes: Any,
        ) -> Running:
            fake = FakeTelegram(token=TOKEN)
            for file_id, (data, path) in (files or {}).items():
                fake.add_file(file_id, data, path)  # there before the bot starts
            fake_url = stack.enter_context(serve(fake.app()))
            configured = settings.model_copy(
                update={
                    "telegram_bot_token": SecretStr(TOKEN),
                    "telegram_api_base_url": fake_url,
                    "telegram_webhook_secret": SecretStr(SECRET),
                    "public_url": PUBLIC_URL if mode == "webhook" else "",
                    "outbox_poll_seconds": 0.1,
                    "fetch_insecure_hosts": "127.0.0.1",
                    **changes,
                }
            )  # the fake file API is on loopback, over http
            bot = build(configured, db=db)
            channel = tg.from_settings(bot, poll_timeout=1, album_wait=album_wait)
            assert channel is not None and channel.mode == mode
            server = stack.enter_context(ExitStack())
            url = server.enter_context(serve(create_app(bot, channels=[channel])))
            return Running(bot=bot, fake=fake, url=url, channel=channel, server=server)

        yield run
