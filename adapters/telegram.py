"""The Telegram channel: updates in by webhook or long polling, replies out, through python-telegram-bot."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import html
import json
import logging
import mimetypes
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

import aiohttp
import telegram
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import BaseRequest, RequestData
from telegram.warnings import PTBDeprecationWarning

from adapters.base import SendingChannel
from bot import channels
from bot.app import Bot
from bot.batching import Batcher
from bot.channels import kv_delete, kv_get, kv_put
from bot.fetch import Fetcher, FetchFailed, FetchPolicy
from bot.logs import mask
from bot.messages import Attachment, Button, InboundMessage, OutboundMessage
from bot.outbox import Delivered, DeliveryError, Limits, PermanentFailure, RetryLater, Unreachable
from bot.store.clock import utcnow

log = logging.getLogger(__name__)

CHANNEL = "telegram"
WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
# Edited messages are corrections (a mistyped serial); channel posts, reactions and the rest are not asked for.
ALLOWED_UPDATES = ("message", "edited_message", "callback_query")
PRIVATE = "private"  # claims are taken in private chats only: a group's members would share one claim
GROUP_TOLD_PREFIX = "telegram:group-told:"
PENDING_PREFIX = "telegram:pending:"  # webhook updates acknowledged before their files were fetched
PENDING_KEEP = timedelta(days=7)
GROUP_ANSWER = (
    "I take warranty claims in a private chat only, so that each claim stays yours. "
    "Please write to me directly: {link}"
)
MAX_MESSAGE_CHARS = 4096  # Telegram counts UTF-16 code units
MAX_CALLBACK_DATA_BYTES = 64
ALBUM_WAIT_SECONDS = 1.5
POLL_TIMEOUT_SECONDS = 30
MAX_BACKOFF_SECONDS = 60.0
_SECRET_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,256}")
MAX_MEDIA_GROUP_ID = 64  # Telegram's are about 18 digits; the album's key must fit in KeyValue.key (128)


# --- verify ---------------------------------------------------------------------------------------------


def check_secret(expected: str, presented: str | None) -> int | None:
    """None when the webhook's secret header matches (compared in constant time); else 401 or 403."""
    if not presented:
        return 401
    if not hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8")):
        return 403
    return None


# --- parse ----------------------------------------------------------------------------------------------


class BadUpdate(ValueError):
    """The body is not a Telegram Update."""


@dataclass(frozen=True, kw_only=True)
class FileRef:
    """A file the customer sent, still on Telegram's servers."""

    file_id: str
    unique_id: str
    kind: str  # photo | document | voice
    name: str
    mime: str
    size: int | None


@dataclass(frozen=True, kw_only=True)
class Incoming:
    """What the customer did in one update, before any file is downloaded."""

    update_id: int
    chat_id: str
    sender_id: str
    sender_name: str | None
    locale: str | None
    text: str = ""
    files: tuple[FileRef, ...] = ()
    media_group_id: str | None = None
    callback_id: str | None = None  # a pressed inline button: always answered
    chat_type: str = PRIVATE  # private | group | supergroup | channel
    thread_id: int | None = None  # the forum topic of a group message
    edited: bool = False  # a correction of an earlier message


Json = Mapping[str, Any]  # a Telegram object as the Bot API sends it: an Update, a Message, a User…


def read_update(body: bytes) -> Json:
    """The Update in a webhook body; raises BadUpdate for anything else."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadUpdate("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadUpdate("the body is not a JSON object")
    update_id = data.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool) or update_id < 0:
        raise BadUpdate("update_id is missing or not a number")
    return data


def parse_update(update: Json) -> Incoming | None:
    """What the customer did, or None for updates we ignore (edits without words, channel posts, and
    everything else). Read from the update's JSON, not python-telegram-bot's objects (building those was
    most of a webhook's CPU here): each field used is checked, so a malformed update raises BadUpdate
    (400) instead of failing later (500) or when it is stored (503, which Telegram answers by sending it
    again)."""
    update_id = update["update_id"]
    if (message := _object(update, "message")) is not None:
        return _from_message(update_id, message)
    if (edited_message := _object(update, "edited_message")) is not None:
        edited = _from_message(update_id, edited_message)
        # The corrected words are what matters; files seen with the first version are not fetched again.
        return replace(edited, files=(), media_group_id=None, edited=True) if edited.text else None
    if (query := _object(update, "callback_query")) is not None:
        return _from_callback(update_id, query)
    return None


def _from_message(update_id: int, message: Json) -> Incoming:
    _count(message.get("message_id"), "message_id")
    _count(message.get("date"), "message date")
    chat = _required(message, "chat")
    chat_id = _id(chat.get("id"), "chat id")
    user = _object(message, "from")
    files: list[FileRef] = []
    if photo := message.get("photo"):
        if not isinstance(photo, list) or not all(isinstance(size, dict) for size in photo):
            raise BadUpdate("photo is not a list of sizes")
        largest = max(
            photo,
            key=lambda size: (
                _count(size.get("width"), "photo width") * _count(size.get("height"), "photo height")
            ),
        )
        unique_id = _text(largest.get("file_unique_id"), "file_unique_id")
        files.append(
            FileRef(
                file_id=_text(largest.get("file_id"), "file_id"),
                unique_id=unique_id,
                kind="photo",
                name=f"photo-{unique_id}.jpg",
                mime="image/jpeg",
                size=_size(largest.get("file_size")),
            )
        )
    for field, kind in (
        ("document", "document"),
        ("voice", "voice"),
        ("audio", "document"),
        ("video", "document"),
        ("video_note", "document"),
    ):
        if (media := _object(message, field)) is not None:
            files.append(_file_ref(media, kind))
    media_group_id = _optional_text(message.get("media_group_id"), "media_group_id")
    if media_group_id is not None and not (
        len(media_group_id) <= MAX_MEDIA_GROUP_ID and media_group_id.isprintable()
    ):
        raise BadUpdate("media_group_id is not an id")  # it becomes part of a key and of the external id
    thread_id = message.get("message_thread_id") if message.get("is_topic_message") is True else None
    if thread_id is not None and not (isinstance(thread_id, int) and not isinstance(thread_id, bool)):
        raise BadUpdate("message_thread_id is not a number")
    return Incoming(
        update_id=update_id,
        chat_id=chat_id,
        chat_type=_chat_type(chat),
        thread_id=thread_id,
        sender_id=_id(user.get("id"), "sender id") if user is not None else chat_id,
        sender_name=_name(user),
        locale=_optional_text(user.get("language_code"), "language_code") if user is not None else None,
        text=_optional_text(message.get("text"), "text")
        or _optional_text(message.get("caption"), "caption")
        or "",
        files=tuple(files),
        media_group_id=media_group_id,
    )


def _file_ref(media: Json, kind: str) -> FileRef:
    unique_id = _text(media.get("file_unique_id"), "file_unique_id")
    name = _optional_text(media.get("file_name"), "file_name") or f"{kind}-{unique_id}"
    mime = (
        _optional_text(media.get("mime_type"), "mime_type")
        or mimetypes.guess_type(name)[0]
        or "application/octet-stream"
    )
    return FileRef(
        file_id=_text(media.get("file_id"), "file_id"),
        unique_id=unique_id,
        kind=kind,
        name=name,
        mime=mime,
        size=_size(media.get("file_size")),
    )


def _from_callback(update_id: int, query: Json) -> Incoming:
    user = _object(query, "from")
    if user is None:
        raise BadUpdate("a button press without a sender")
    _text(query.get("chat_instance"), "chat_instance")
    sender_id = _id(user.get("id"), "sender id")
    # The button's value comes back as its callback data; the chat is the one the keyboard was sent to.
    message = _object(query, "message")
    chat = _required(message, "chat") if message is not None else None
    return Incoming(
        update_id=update_id,
        chat_id=_id(chat.get("id"), "chat id") if chat is not None else sender_id,
        chat_type=_chat_type(chat) if chat is not None else PRIVATE,
        sender_id=sender_id,
        sender_name=_name(user),
        locale=_optional_text(user.get("language_code"), "language_code"),
        text=_optional_text(query.get("data"), "callback data") or "",
        callback_id=_text(query.get("id"), "callback query id"),
    )


def _object(parent: Json, field: str) -> Json | None:
    value = parent.get(field)
    if value is None or isinstance(value, dict):
        return value
    raise BadUpdate(f"{field} is not an object")


def _required(parent: Json, field: str) -> Json:
    value = _object(parent, field)
    if value is None:
        raise BadUpdate(f"{field} is missing")
    return value


def _chat_type(chat: Json) -> str:
    kind = chat.get("type")
    if not isinstance(kind, str) or not kind:
        raise BadUpdate("chat type is missing")
    return kind


def _name(user: Json | None) -> str | None:
    if user is None:
        return None
    parts = (
        _optional_text(user.get("first_name"), "first_name"),
        _optional_text(user.get("last_name"), "last_name"),
    )
    return " ".join(part for part in parts if part) or None


def _optional_text(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadUpdate(f"{what} is not text")


def _text(value: Any, what: str) -> str:
    if isinstance(value, str) and value:
        return value
    raise BadUpdate(f"{what} is missing or not text")


def _id(value: Any, what: str) -> str:
    """A chat or user id: Telegram's are integers of at most 52 bits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
        return str(value)
    raise BadUpdate(f"{what} is missing or not an id")


def _count(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise BadUpdate(f"{what} is not a number")


def _size(value: Any) -> int | None:
    return None if value is None else _count(value, "file_size")


# --- albums: one media_group_id = one message -----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AlbumBatch:
    """Album parts ready to become one inbound message."""

    key: str
    chat_id: str
    media_group_id: str
    generation: int
    parts: dict[str, dict[str, Any]]  # update_id -> part

    def message(self) -> InboundMessage:
        ordered = [self.parts[k] for k in sorted(self.parts, key=int)]
        first = ordered[0]
        # Parts that arrive after the album was accepted (a slow upload) become a follow-up message.
        suffix = f":{self.generation}" if self.generation else ""
        return InboundMessage(
            channel=CHANNEL,
            external_id=f"album:{self.media_group_id}{suffix}",
            sender_id=first["sender_id"],
            chat_id=self.chat_id,
            text="\n".join(p["caption"] for p in ordered if p["caption"]),
            attachments=tuple(Attachment(**a) for p in ordered for a in p["attachments"]),
            received_at=utcnow(),
            locale_hint=first["locale"],
            sender_name=first["sender_name"],
            raw={"media_group_id": self.media_group_id, "update_ids": sorted(int(k) for k in self.parts)},
        )


class AlbumStore:
    """Album parts staged in the database (shared by every worker, kept across restarts) until the album is
    quiet; what was accepted is remembered for a day, so that redelivered parts are recognised."""

    PREFIX = "telegram:album:"

    def __init__(self, db: Engine, *, keep: timedelta = timedelta(days=1)) -> None:
        self.db = db
        self.keep = keep

    @classmethod
    def key(cls, chat_id: str, media_group_id: str) -> str:
        return f"{cls.PREFIX}{chat_id}:{media_group_id}"

    def add(
        self, key: str, *, chat_id: str, media_group_id: str, update_id: int, part: dict[str, Any]
    ) -> bool:
        """Stage one part; False when it was seen before (a redelivery)."""
        now = utcnow()
        with channels.kv_change(self.db, key) as kept:
            value: dict[str, Any] = kept.value or {
                "chat_id": chat_id,
                "media_group_id": media_group_id,
                "generation": 0,
                "parts": {},
                "done": [],
            }
            if update_id in value["done"] or str(update_id) in value["parts"]:
                kept.leave()
                return False
            value["parts"] = {**value["parts"], str(update_id): part}
            value["last_at"] = now.isoformat()
            kept.value, kept.expires_at = value, now + self.keep
            return True

    def take(self, key: str, *, quiet: float, force: bool = False) -> AlbumBatch | float | None:
        """The waiting parts if the album has been quiet for `quiet` seconds (or `force`), else the seconds
        left to wait; None when nothing waits."""
        stored = kv_get(self.db, key)
        if stored is None or not stored[0].get("parts"):
            return None
        value = stored[0]
        waited = (utcnow() - datetime.fromisoformat(value["last_at"])).total_seconds()
        if not force and waited < quiet:
            return quiet - waited
        return AlbumBatch(
            key=key,
            chat_id=value["chat_id"],
            media_group_id=value["media_group_id"],
            generation=value["generation"],
            parts=dict(value["parts"]),
        )

    def done(self, batch: AlbumBatch) -> bool:
        """Mark the batch accepted; True when more parts arrived meanwhile and wait their turn."""
        with channels.kv_change(self.db, batch.key) as kept:
            value = kept.value
            if not value or value.get("generation") != batch.generation:
                kept.leave()
                return False  # another worker (or an earlier flush) already did
            value["parts"] = {k: p for k, p in value["parts"].items() if k not in batch.parts}
            value["done"] = [*value["done"], *(int(k) for k in batch.parts)]
            value["generation"] = batch.generation + 1
            return bool(value["parts"])

    def waiting(self, chat_id: str | None = None) -> list[str]:
        """Keys of albums with parts waiting (of one chat, or of all); forgets expired bookkeeping."""
        prefix = self.PREFIX if chat_id is None else f"{self.PREFIX}{chat_id}:"
        now = utcnow()
        # Read first: this runs for every update, and a write transaction would queue behind the one writer.
        rows = channels.kv_items(self.db, [prefix])
        keys = [key for key, value, _ in rows if value.get("parts")]
        channels.kv_remove(self.db, _expired_albums(rows, now))
        return keys


def _expired_albums(rows: list[tuple[str, dict[str, Any], datetime | None]], now: datetime) -> list[str]:
    """Albums whose parts are all accepted and whose bookkeeping (kept to recognise redeliveries) ran out."""
    return [
        key
        for key, value, expires_at in rows
        if key.startswith(AlbumStore.PREFIX)
        and not value.get("parts")
        and expires_at is not None
        and expires_at < now
    ]


# --- send -----------------------------------------------------------------------------------------------

_ATOMS = re.compile(r"<[^<>]*>|&(?:#\d+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);|.", re.DOTALL)
_TAG = re.compile(r"<\s*(/?)\s*([A-Za-z][A-Za-z0-9-]*)")


def split_html(text: str, limit: int = MAX_MESSAGE_CHARS) -> list[str]:
    """Telegram-HTML `text` in pieces of at most `limit` UTF-16 units of visible text (what Telegram counts,
    after parsing the entities: a tag counts nothing, `&amp;` one), cut at a paragraph, line or word
    boundary (only a word longer than a piece is cut inside), never inside a tag or an entity. Tags open at
    a cut are closed at the end of the piece and reopened at the start of the next."""
    if "<" not in text and _visible_units(text.strip()) <= limit:  # the usual case: escaped text that fits
        return [text.strip()] if text.strip() else []
    atoms: list[str] = _ATOMS.findall(text.strip())
    pieces: list[str] = []
    open_tags: list[tuple[str, str]] = []  # (name, opening tag) open where the current piece starts
    start = 0
    while start < len(atoms):
        prefix = "".join(tag for _, tag in open_tags)
        size = 0
        stack = open_tags
        breaks: dict[int, int] = {}  # priority -> the latest atom index a cut may happen before
        end = start
        while end < len(atoms):
            atom = atoms[end]
            after = _apply_tag(stack, atom)
            if size + _visible_units(atom) > limit:
                break
            size += _visible_units(atom)
            stack = after
            end += 1
            priority = _break_priority(atoms, end)
            if priority:
                breaks[priority] = end
        if end == start:
            end = start + 1  # one atom longer than the limit: it goes alone, Telegram will say what it thinks
        cut = end
        if end < len(atoms):
            halfway = start + (end - start) // 2
            # The best kind of break in the second half of the piece; else the last break at all; else hard.
            cut = next(
                (breaks[p] for p in (3, 2, 1) if breaks.get(p, start) > halfway),
                max(breaks.values(), default=end),
            )
        closing = open_tags
        for atom in atoms[start:cut]:
            closing = _apply_tag(closing, atom)
        body = "".join(atoms[start:cut]).rstrip()
        piece = prefix + body + "".join(f"</{name}>" for name, _ in reversed(closing))
        if _visible(piece).strip():
            pieces.append(piece)
        open_tags = closing
        start = cut
        while start < len(atoms) and atoms[start].isspace():
            start += 1  # whitespace at a cut is dropped
    return pieces


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _visible_units(html_text: str) -> int:
    """UTF-16 units of what Telegram shows for this HTML: tags removed, entities decoded."""
    return _units(html.unescape(_visible(html_text)))


def _apply_tag(stack: list[tuple[str, str]], atom: str) -> list[tuple[str, str]]:
    match = _TAG.match(atom) if atom.startswith("<") else None
    if match is None:
        return stack
    closing, name = match.group(1), match.group(2).lower()
    if not closing:
        return [*stack, (name, atom)]
    for index in range(len(stack) - 1, -1, -1):
        if stack[index][0] == name:
            return stack[:index] + stack[index + 1 :]
    return stack


def _break_priority(atoms: list[str], end: int) -> int:
    """How good a cut before atoms[end] is: 3 after a blank line, 2 after a line, 1 after a space, else 0."""
    last = atoms[end - 1]
    if last == "\n":
        return 3 if end >= 2 and atoms[end - 2] == "\n" else 2
    return 1 if last.isspace() else 0


def _visible(piece: str) -> str:
    return re.sub(r"<[^<>]*>", "", piece)


def keyboard(buttons: Sequence[Button]) -> Json | None:
    """An InlineKeyboardMarkup as the Bot API takes it, one button per row; None when there are none or a value
    does not fit in callback data."""
    if not buttons or any(len(b.value.encode("utf-8")) > MAX_CALLBACK_DATA_BYTES for b in buttons):
        return None
    return {"inline_keyboard": [[{"text": b.label, "callback_data": b.value}] for b in buttons]}


def render(message: OutboundMessage) -> tuple[list[str], Json | None]:
    """The message as escaped HTML pieces, and the keyboard for the last piece.

    The core's text is plain and may quote the customer: everything is escaped, so nothing in it is markup.
    Buttons whose values do not fit in callback data become numbered options (the customer types the number).
    """
    markup = keyboard(message.buttons)
    text = message.text
    if message.buttons and markup is None:
        text = f"{text}\n\n" + "\n".join(channels.numbered(message.buttons))
    return split_html(html.escape(text)), markup


def delivery_error(error: TelegramError) -> DeliveryError:
    """What the outbox should do about a failed Bot API call."""
    description = mask(str(error))
    if isinstance(error, RetryAfter):
        with warnings.catch_warnings():  # v22 warns that retry_after will become a timedelta
            warnings.simplefilter("ignore", PTBDeprecationWarning)
            wait = error.retry_after
        seconds = wait.total_seconds() if isinstance(wait, timedelta) else float(wait)
        # Telegram does not say which limit was hit (the chat's or the bot's): the whole bot waits.
        return RetryLater(f"telegram flood control: {description}", after=seconds, scope="channel")
    if isinstance(error, Forbidden):
        return Unreachable(f"telegram: {description}")  # blocked by the user, or the account is gone
    # BadRequest subclasses NetworkError in python-telegram-bot: it must be sorted out first.
    if isinstance(error, BadRequest | InvalidToken | Conflict | ChatMigrated):
        return PermanentFailure(
            f"telegram: {description}"
        )  # 400, 401/404, 409: sending again changes nothing
    return RetryLater(f"telegram: {description}")  # timeouts, connection errors, 5xx


# The Bot API FAQ: about 30 messages a second in all, about one a second to one chat (short bursts allowed).
# Faster than 30 a second in all takes paid broadcasts (Bot API 7.11): up to 1000 a second, for Stars.
FREE_MESSAGES_PER_SECOND = 30.0
CHAT_BURST = 3


class TelegramSender:
    """Delivers outbox rows to Telegram chats, paced by the outbox within `limits` (0 = unpaced)."""

    def __init__(
        self, client: telegram.Bot, *, per_second: float = 30.0, per_chat_per_second: float = 1.0
    ) -> None:
        self.client = client
        self.limits = Limits(
            per_second=per_second or None,
            per_chat_per_second=per_chat_per_second or None,
            chat_burst=CHAT_BURST,
        )
        # Above the free limit Telegram answers 429 unless each send asks (and pays) for a paid broadcast.
        self.paid_broadcast = per_second > FREE_MESSAGES_PER_SECOND
        # Pieces of a long message already sent, so that a retry after a failure halfway does not repeat
        # them (within this process; bounded).
        self._sent: OrderedDict[tuple[str, str], int] = OrderedDict()

    async def send(self, message: OutboundMessage) -> Delivered:
        pieces, markup = render(message)
        if not pieces:
            return Delivered()
        progress_key = (
            message.chat_id,
            hashlib.sha256(
                json.dumps([message.text, [asdict(b) for b in message.buttons]]).encode()
            ).hexdigest(),
        )
        done = self._sent.get(progress_key, 0)
        sent: telegram.Message | None = None
        for index in range(done, len(pieces)):
            last = index == len(pieces) - 1
            # The keyboard and the link options as the Bot API's JSON (api_kwargs), not python-telegram-bot's
            # objects: turning those back into JSON was a third of a send's CPU.
            params: dict[str, Any] = {"link_preview_options": {"is_disabled": True}}
            if last and markup is not None:
                params["reply_markup"] = markup
            try:
                sent = await self.client.send_message(
                    chat_id=message.chat_id,
                    text=pieces[index],
                    parse_mode=telegram.constants.ParseMode.HTML,
                    allow_paid_broadcast=True if self.paid_broadcast else None,  # None: not sent at all
                    api_kwargs=params,
                )
            except TelegramError as error:
                raise delivery_error(error) from None
            if not last:
                self._sent[progress_key] = index + 1
                self._sent.move_to_end(progress_key)
                while len(self._sent) > 1000:
                    self._sent.popitem(last=False)
        self._sent.pop(progress_key, None)
        return Delivered(external_id=str(sent.message_id) if sent is not None else None)


# --- the channel ----------------------------------------------------------------------------------------


class TryAgain(Exception):
    """The update could not be stored now (network, database); Telegram must deliver it again."""


class TelegramChannel(SendingChannel):
    """Telegram as a customer channel, by webhook (`/telegram/webhook`) or by long polling."""

    name = CHANNEL

    def __init__(
        self,
        bot: Bot,
        client: telegram.Bot,
        *,
        mode: str,
        secret: str | None,
        public_url: str,
        poll_timeout: int = POLL_TIMEOUT_SECONDS,
        album_wait: float = ALBUM_WAIT_SECONDS,
    ) -> None:
        self.bot = bot
        self.client = client
        self.mode = mode
        self.secret = secret
        self.public_url = public_url.rstrip("/")
        self.poll_timeout = poll_timeout
        self.album_wait = album_wait
        self.albums = AlbumStore(bot.db)
        # Files come from the Bot API's own host only (https, public addresses, size and time limits).
        self.fetcher = Fetcher(
            FetchPolicy.from_settings(bot.settings, hosts=[bot.settings.telegram_api_base_url])
        )
        self.outbox = TelegramSender(
            client,
            per_second=bot.settings.telegram_messages_per_second,
            per_chat_per_second=bot.settings.telegram_chat_messages_per_second,
        )
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.Task[None]] = set()
        self._chats: dict[str, asyncio.Task[None]] = {}  # chats whose kept updates are being taken
        self._arriving: collections.Counter[str] = collections.Counter()  # chats with an update being taken
        self._plain: Batcher[Incoming, str | None] = Batcher(self._store_plain_batch, name="telegram-accept")

    def routes(self) -> Sequence[BaseRoute]:
        if self.mode != "webhook":
            return []
        return [Route(WEBHOOK_PATH, self.webhook, methods=["POST"])]

    async def start(self) -> None:
        work = self._register_webhook() if self.mode == "webhook" else self._poll()
        self._task = asyncio.create_task(work, name=f"telegram-{self.mode}")
        for key in await asyncio.to_thread(self.albums.waiting):
            self._schedule(key, 0)  # albums a previous run left waiting
        with contextlib.suppress(TryAgain):
            for chat_id in {
                key.removeprefix(PENDING_PREFIX).rsplit(":", 1)[0] for key in await self._pending_in()
            }:
                self._drain(chat_id)  # updates a previous run acknowledged before their files were fetched

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._timers) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        self._timers.clear()
        self._chats.clear()
        with contextlib.suppress(Exception):
            await self.client.shutdown()
        with contextlib.suppress(Exception):
            await self.client.request.shutdown()  # used by the sender even if start-up never finished
        with contextlib.suppress(Exception):
            await self.fetcher.aclose()

    # --- webhook ----------------------------------------------------------------------------------------

    async def webhook(self, request: Request) -> Response:
        assert self.secret is not None  # from_settings refuses webhook mode without one
        status = check_secret(self.secret, request.headers.get(SECRET_HEADER))
        if status is not None:
            return JSONResponse({"error": "missing or wrong secret token"}, status_code=status)
        try:
            update = read_update(await request.body())
            incoming = parse_update(update)
        except BadUpdate as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        try:
            outcome, answer = await self.take(incoming, defer=True)
        except TryAgain as error:
            log.warning("telegram update %s not stored, Telegram will retry: %s", update["update_id"], error)
            return JSONResponse(
                {"error": "not stored; try again"}, status_code=503, headers={"Retry-After": "5"}
            )
        # Nothing goes to the Bot API before Telegram has its 2xx: a call that must follow this update (the
        # button's answer, the group's pointer to a private chat) rides in the response, which Telegram runs.
        return JSONResponse({**(answer or {}), "ok": True, "outcome": outcome})

    async def _register_webhook(self) -> None:
        assert self.secret is not None
        await _until_done("telegram getMe", self.client.initialize)
        if not self.public_url:
            log.info("telegram webhook mode without PUBLIC_URL: register the webhook by hand")
            return
        url = self.public_url + WEBHOOK_PATH
        await _until_done(
            "telegram setWebhook",
            lambda: self.client.set_webhook(
                url=url, secret_token=self.secret, allowed_updates=list(ALLOWED_UPDATES)
            ),
        )
        log.info("telegram webhook registered at %s", url)

    # --- polling ----------------------------------------------------------------------------------------

    async def _poll(self) -> None:
        await _until_done("telegram getMe", self.client.initialize)
        # A webhook left from an earlier set-up would make getUpdates fail with 409 Conflict.
        await _until_done(
            "telegram deleteWebhook", lambda: self.client.delete_webhook(drop_pending_updates=False)
        )
        offset: int | None = None
        fetch_failures = store_failures = 0
        while True:
            try:
                updates = await self.client.get_updates(
                    offset=offset, timeout=self.poll_timeout, allowed_updates=list(ALLOWED_UPDATES)
                )
            except TelegramError as error:
                fetch_failures += 1
                log.warning("telegram getUpdates failed: %s", mask(str(error)))
                await asyncio.sleep(_backoff(fetch_failures))
                continue
            fetch_failures = 0
            for update in updates:
                try:
                    _, answer = await self.handle(update)
                except TryAgain as error:
                    # Not confirmed: the next getUpdates (from `offset`) brings this update again.
                    store_failures += 1
                    log.warning("telegram update %s not stored, retrying: %s", update.update_id, error)
                    await asyncio.sleep(_backoff(store_failures))
                    break
                store_failures = 0
                offset = update.update_id + 1  # confirmed to Telegram by the next getUpdates call
                if answer is not None:
                    await self._call(answer)

    # --- dispatch ---------------------------------------------------------------------------------------

    async def handle(self, update: telegram.Update) -> tuple[str, dict[str, Any] | None]:
        """Store what a polled update says; the outcome and the Bot API call to make after it; raises TryAgain.
        A malformed update is skipped: fetching it again would not change it."""
        try:
            incoming = parse_update(update.to_dict())  # the library's objects back to the Bot API's JSON
        except BadUpdate as error:
            log.warning("telegram update %s skipped: %s", update.update_id, error)
            return "malformed", None
        return await self.take(incoming)

    async def take(
        self, incoming: Incoming | None, *, defer: bool = False
    ) -> tuple[str, dict[str, Any] | None]:
        """`_take`, with the chat marked as having an update on its way in meanwhile: an album of the chat
        does not close while one of its parts may still be between its arrival and its staging (its file
        being fetched, or the update being kept)."""
        if incoming is None:
            return await self._take(incoming, defer=defer)
        self._arriving[incoming.chat_id] += 1
        try:
            return await self._take(incoming, defer=defer)
        finally:
            self._arriving[incoming.chat_id] -= 1
            if not self._arriving[incoming.chat_id]:
                del self._arriving[incoming.chat_id]

    async def _take(
        self, incoming: Incoming | None, *, defer: bool = False
    ) -> tuple[str, dict[str, Any] | None]:
        """Store a private chat's update (a group is pointed to a private chat, once); the outcome, and the Bot
        API call (a method and its parameters) to make once Telegram has its answer; raises TryAgain.

        `defer` (webhook mode): an update with files is kept as it is and answered at once, its files fetched
        after Telegram has the 2xx; the chat's later updates wait behind it, so its order is kept."""
        if incoming is not None and incoming.chat_type != PRIVATE:
            outcome, answer = await self._group(incoming)
        elif (plain := await self._store_plain(incoming)) is not None:
            outcome, answer = plain, None
        elif (
            defer
            and incoming is not None
            and (
                incoming.files or incoming.chat_id in self._chats or await self._pending_in(incoming.chat_id)
            )
        ):
            outcome, answer = await self._queue(incoming), None
        else:
            outcome, answer = await self.store(incoming), None
        if incoming is not None and incoming.callback_id is not None:
            # Answered every time it arrives, so the customer's button never keeps spinning.
            answer = {"method": "answerCallbackQuery", "callback_query_id": incoming.callback_id}
        return outcome, answer

    # --- the common case: words or a button, from a chat with nothing waiting --------------------------

    async def _store_plain(self, incoming: Incoming | None) -> str | None:
        """Store words or a button press (no files) of a private chat that has nothing waiting before it (no
        update kept for its files, no album still open), with the other webhooks' updates of the moment:
        one read of what their chats hold and one transaction for all (bot/batching.py). The outcome, or
        None when the chat has something waiting (`take` goes the long way, which keeps the order).
        Raises TryAgain."""
        if incoming is None or incoming.files or not incoming.text or incoming.chat_id in self._chats:
            return None
        try:
            outcome = await self._plain.submit(incoming)
        except Exception as error:  # the database, most likely: nothing was acknowledged, nothing is lost
            log.warning("telegram update %s could not be stored: %s", incoming.update_id, _error(error))
            raise TryAgain(type(error).__name__) from None
        return outcome

    def _store_plain_batch(self, updates: list[Incoming]) -> list[str | Exception | None]:
        """`_store_plain` for a batch, in a thread: the chats' waiting keys in one query, then the updates of
        the chats with none in one inbox transaction (`Engine.accept_each`)."""
        chats = sorted({u.chat_id for u in updates})
        rows = channels.kv_items(
            self.bot.db,
            [f"{prefix}{chat}:" for chat in chats for prefix in (PENDING_PREFIX, AlbumStore.PREFIX)],
        )
        waiting = {
            key.split(":", 3)[2]  # telegram:pending:<chat>:<update> and telegram:album:<chat>:<group>
            for key, value, _ in rows
            if key.startswith(PENDING_PREFIX) or value.get("parts")
        }
        expired = _expired_albums(rows, utcnow())
        clear = [u for u in updates if u.chat_id not in waiting]
        accepted = iter(self.bot.engine.accept_each([_inbound(u, ()) for u in clear]))
        with contextlib.suppress(Exception):  # an album's bookkeeping, kept a day to recognise redeliveries
            channels.kv_remove(self.bot.db, expired)
        outcomes: list[str | Exception | None] = []
        for update in updates:
            if update.chat_id in waiting:
                outcomes.append(None)
                continue
            outcome = next(accepted)
            outcomes.append(
                outcome if isinstance(outcome, Exception) else "duplicate" if outcome.duplicate else "stored"
            )
        return outcomes

    # --- updates kept until their files are fetched (webhook mode) -------------------------------------

    @staticmethod
    def _pending_key(incoming: Incoming) -> str:
        return f"{PENDING_PREFIX}{incoming.chat_id}:{incoming.update_id:020d}"

    async def _pending_in(self, chat_id: str | None = None) -> list[str]:
        """Keys of kept updates (of one chat, or of all), oldest first."""
        prefix = PENDING_PREFIX if chat_id is None else f"{PENDING_PREFIX}{chat_id}:"

        try:
            return sorted(await asyncio.to_thread(channels.kv_keys, self.bot.db, prefix))
        except Exception as error:
            raise TryAgain(type(error).__name__) from None

    async def _queue(self, incoming: Incoming) -> str:
        key = self._pending_key(incoming)
        try:
            if await asyncio.to_thread(kv_get, self.bot.db, key) is not None:
                return "duplicate"
            if await asyncio.to_thread(self.bot.engine.seen, CHANNEL, str(incoming.update_id)):
                return "duplicate"
            await asyncio.to_thread(kv_put, self.bot.db, key, asdict(incoming), utcnow() + PENDING_KEEP)
        except Exception as error:
            log.exception("telegram update %s could not be kept", incoming.update_id)
            raise TryAgain(type(error).__name__) from None
        self._drain(incoming.chat_id)
        return "queued"

    def _drain(self, chat_id: str) -> None:
        """One task per chat takes its kept updates in order (started when none runs)."""
        if chat_id in self._chats:
            return
        task = asyncio.create_task(self._drain_chat(chat_id), name=f"telegram-files-{chat_id}")
        self._chats[chat_id] = task
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _drain_chat(self, chat_id: str) -> None:
        failures = 0
        try:
            while True:
                try:
                    keys = await self._pending_in(chat_id)
                    if not keys:
                        return  # nothing waits; the next kept update starts a new task
                    stored = await asyncio.to_thread(kv_get, self.bot.db, keys[0])
                    if stored is not None:
                        value = stored[0]
                        await self.store(
                            Incoming(**{**value, "files": tuple(FileRef(**f) for f in value["files"])})
                        )
                    await asyncio.to_thread(kv_delete, self.bot.db, keys[0])
                    failures = 0
                except Exception as error:  # TryAgain (the Bot API, the database): kept, tried again
                    failures += 1
                    log.warning(
                        "telegram kept update not stored yet (%s); trying again", type(error).__name__
                    )
                    await asyncio.sleep(_backoff(failures))
        finally:
            self._chats.pop(chat_id, None)

    async def store(self, incoming: Incoming | None) -> str:
        """Store what the customer did (stored, duplicate, album or ignored); raises TryAgain."""
        if incoming is None:
            return "ignored"
        try:
            attachments = tuple([await self._download(ref) for ref in incoming.files])
            if incoming.media_group_id and attachments:
                outcome = await self._stage_album_part(incoming, attachments)
            elif not incoming.text and not attachments:
                outcome = "ignored"  # a sticker, a location, a game button: nothing the core can use
            else:
                outcome = await self._accept(incoming, attachments)
        except TryAgain:
            raise
        except TelegramError as error:
            raise TryAgain(mask(str(error))) from None
        except Exception as error:  # the database, most likely: nothing was acknowledged, nothing is lost
            log.exception("telegram update %s could not be stored", incoming.update_id)
            raise TryAgain(type(error).__name__) from None
        return outcome

    async def _group(self, incoming: Incoming) -> tuple[str, dict[str, Any] | None]:
        """A group, supergroup or channel: nothing is stored (its members would feed one claim); the first
        message there is answered, in its topic, with a pointer to a private chat."""
        if incoming.callback_id is not None or incoming.edited or incoming.chat_type == "channel":
            return "group", None
        key = GROUP_TOLD_PREFIX + incoming.chat_id
        try:
            told = await asyncio.to_thread(kv_get, self.bot.db, key)
            if told is not None:
                return "group", None
            await asyncio.to_thread(kv_put, self.bot.db, key, {"told_at": utcnow().isoformat()})
        except Exception as error:
            log.exception("telegram group %s could not be recorded", incoming.update_id)
            raise TryAgain(type(error).__name__) from None
        answer: dict[str, Any] = {
            "method": "sendMessage",
            "chat_id": int(incoming.chat_id),
            "text": GROUP_ANSWER.format(link=self._private_link()),
        }
        if incoming.thread_id is not None:
            answer["message_thread_id"] = incoming.thread_id  # in the topic it was asked in
        return "group", answer

    def _private_link(self) -> str:
        try:
            return f"https://t.me/{self.client.username}"
        except RuntimeError:  # getMe not answered yet (start-up): the bot's name in Telegram finds it too
            return "open a private chat with this bot"

    async def _call(self, answer: Mapping[str, Any]) -> None:
        """Make a call that followed an update (polling mode); its failure loses nothing stored."""
        params = {k: v for k, v in answer.items() if k != "method"}
        try:
            if answer["method"] == "answerCallbackQuery":
                await self.client.answer_callback_query(params["callback_query_id"])
            else:
                await self.client.send_message(**params)
        except TelegramError as error:  # a redelivered query is too old to answer; the message is stored
            log.info("telegram %s failed: %s", answer["method"], mask(str(error)))

    async def _accept(self, incoming: Incoming, attachments: tuple[Attachment, ...]) -> str:
        # Telegram delivers one chat's updates one at a time: a new message means its albums are complete.
        await self._flush_chat(incoming.chat_id)
        accepted = await self.bot.engine.accept_soon(_inbound(incoming, attachments))
        return "duplicate" if accepted.duplicate else "stored"

    async def _download(self, ref: FileRef) -> Attachment:
        """The file, kept in attachment storage; a placeholder when it is refused. Raises TryAgain."""
        store = self.bot.attachments
        if ref.mime.split(";")[0].strip().lower() not in store.allowed_types:
            return store.rejected(ref.name, "type")  # refused before downloading anything
        if ref.size is not None and ref.size > store.max_bytes:
            return store.rejected(ref.name, "too_large")
        try:
            remote = await self.client.get_file(ref.file_id)
        except BadRequest as error:
            # The public Bot API serves files up to 20 MB; anything else wrong with the id is permanent too.
            reason = "too_large" if "too big" in str(error).lower() else "unavailable"
            return store.rejected(ref.name, reason)
        if remote.file_size is not None and remote.file_size > store.max_bytes:
            return store.rejected(ref.name, "too_large")
        try:
            # The file API's URL carries the bot's token in its path: only the Bot API's own host may be asked.
            return await channels.download(
                self.fetcher,
                store,
                str(remote.file_path),
                name=ref.name,
                mime=ref.mime,
                kind=ref.kind,
                channel=CHANNEL,
                server_type=False,
            )
        except FetchFailed as error:
            raise TryAgain(f"file download: {error}") from None  # kept, and tried again

    # --- albums -----------------------------------------------------------------------------------------

    async def _stage_album_part(self, incoming: Incoming, attachments: tuple[Attachment, ...]) -> str:
        assert incoming.media_group_id is not None
        key = AlbumStore.key(incoming.chat_id, incoming.media_group_id)
        await self._flush_chat(incoming.chat_id, keep=key)
        part = {
            "sender_id": incoming.sender_id,
            "sender_name": incoming.sender_name,
            "locale": incoming.locale,
            "caption": incoming.text,
            "attachments": [asdict(a) for a in attachments],
        }
        fresh = await asyncio.to_thread(
            self.albums.add,
            key,
            chat_id=incoming.chat_id,
            media_group_id=incoming.media_group_id,
            update_id=incoming.update_id,
            part=part,
        )
        if not fresh:
            return "duplicate"
        self._schedule(key, self.album_wait)
        return "album"

    def _schedule(self, key: str, delay: float) -> None:
        # One timer per part, not per album: a timer about to finish can never miss a part that just came.
        # The checks are idempotent, and a timer that finds the album not yet quiet sleeps for the rest.
        timer = asyncio.create_task(self._album_timer(key, delay), name=f"telegram-album-{key}")
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    async def _album_timer(self, key: str, delay: float) -> None:
        failures = 0
        while True:
            await asyncio.sleep(delay)
            try:
                wait = await self._flush(key)
                failures = 0
            except Exception:
                failures += 1
                log.exception("telegram album could not be stored yet")
                wait = _backoff(failures)
            if wait is None:
                return
            delay = wait

    async def _flush(self, key: str, *, force: bool = False) -> float | None:
        """Accept the album's waiting parts as one message once it is quiet; the seconds to wait otherwise.

        While the chat has an update on its way in (being taken, or kept for its files), more parts may be
        among them: the album waits, and the chat's next message (taken after them, in order) completes it."""
        if not force:
            chat_id = key.removeprefix(AlbumStore.PREFIX).split(":", 1)[0]  # chat ids have no colon
            if chat_id in self._chats or chat_id in self._arriving or await self._pending_in(chat_id):
                return self.album_wait
        taken = await asyncio.to_thread(self.albums.take, key, quiet=self.album_wait, force=force)
        if taken is None or isinstance(taken, float):
            return taken
        await self.bot.engine.accept_soon(taken.message())
        more = await asyncio.to_thread(self.albums.done, taken)
        return self.album_wait if more else None

    async def _flush_chat(self, chat_id: str, *, keep: str | None = None) -> None:
        for key in await asyncio.to_thread(self.albums.waiting, chat_id):
            if key != keep:
                await self._flush(key, force=True)


def _inbound(incoming: Incoming, attachments: tuple[Attachment, ...]) -> InboundMessage:
    return InboundMessage(
        channel=CHANNEL,
        external_id=str(incoming.update_id),
        sender_id=incoming.sender_id,
        chat_id=incoming.chat_id,
        text=incoming.text,
        attachments=attachments,
        received_at=utcnow(),
        locale_hint=incoming.locale,
        sender_name=incoming.sender_name,
        raw={"update_id": incoming.update_id, **({"edited": True} if incoming.edited else {})},
    )


def _error(error: BaseException) -> str:
    lines = str(error).splitlines()
    return mask(f"{type(error).__name__}: {lines[0] if lines else ''}")[:300]


async def _until_done(what: str, call: Any) -> None:
    """Run a start-up call until it succeeds, backing off; start() must not wait for Telegram."""
    failures = 0
    while True:
        try:
            await call()
            return
        except TelegramError as error:
            failures += 1
            log.warning("%s failed (attempt %s): %s", what, failures, mask(str(error)))
            await asyncio.sleep(_backoff(failures))


def _backoff(failures: int) -> float:
    return float(min(MAX_BACKOFF_SECONDS, 2 ** max(0, failures - 1)))


# --- settings -------------------------------------------------------------------------------------------


class AiohttpRequest(BaseRequest):
    """python-telegram-bot's networking on aiohttp instead of its default httpx (`BaseRequest` is the library's
    interface for that; the design follows ptbcontrib's `aiohttp_request`, which is not on PyPI).

    Why: httpcore's connection pool checks every pooled connection for every queued request, so with the
    outbox's concurrent sends most of the web front's CPU went to the pool (issue 15's profile: 28% of each
    send in `_assign_requests_to_connections`). aiohttp's connector hands out connections in O(1).
    Timeouts keep httpx's meaning: `pool_timeout` to get a connection, `connect_timeout` to open one,
    `read_timeout` between bytes of the answer; aiohttp has no write timeout (the total bounds it).
    """

    __slots__ = ("_connect", "_limit", "_loop", "_pool", "_read", "_session", "_write")

    def __init__(
        self,
        *,
        connection_pool_size: int,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
        pool_timeout: float,
    ) -> None:
        self._limit = connection_pool_size
        self._pool, self._connect, self._read, self._write = (
            pool_timeout,
            connect_timeout,
            read_timeout,
            write_timeout,
        )
        self._session: aiohttp.ClientSession | None = None  # made in the event loop that first sends
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def read_timeout(self) -> float:
        return self._read

    async def initialize(self) -> None:
        self._open()

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _open(self) -> aiohttp.ClientSession:
        """The session of the running event loop (a session serves only the loop it was made in)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._limit))
            self._loop = loop
        return self._session

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: object = BaseRequest.DEFAULT_NONE,
        write_timeout: object = BaseRequest.DEFAULT_NONE,
        connect_timeout: object = BaseRequest.DEFAULT_NONE,
        pool_timeout: object = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        def chosen(value: object, default: float) -> float | None:
            # DEFAULT_NONE: the method call set none, this request's own; None: no limit
            return default if value is BaseRequest.DEFAULT_NONE else cast(float | None, value)

        read = chosen(read_timeout, self._read)
        write = chosen(write_timeout, self._write)
        connect = chosen(connect_timeout, self._connect)
        pool = chosen(pool_timeout, self._pool)
        parts = [t for t in (read, write, connect, pool) if t is not None]
        timeout = aiohttp.ClientTimeout(
            total=sum(parts) if len(parts) == 4 else None,
            connect=pool,
            sock_connect=connect,
            sock_read=read,
        )
        data = aiohttp.FormData(request_data.json_parameters if request_data else {})
        if request_data and request_data.multipart_data:
            for name, (filename, content, *_) in request_data.multipart_data.items():
                data.add_field(name, content, filename=filename)
        try:
            async with self._open().request(
                method, url, data=data, timeout=timeout, headers={"User-Agent": self.USER_AGENT}
            ) as answer:
                return answer.status, await answer.read()
        except TimeoutError as error:
            raise TimedOut(f"aiohttp: {type(error).__name__}") from error
        except aiohttp.ClientError as error:
            raise NetworkError(f"aiohttp.{type(error).__name__}: {error}") from error


def client(token: str, api_base_url: str, timeout: float = 20.0) -> telegram.Bot:
    """A Bot API client for `api_base_url` (api.telegram.org, a self-hosted Bot API server, a test fake)."""
    base = api_base_url.rstrip("/")
    requests = AiohttpRequest(
        connection_pool_size=16,
        connect_timeout=min(10, timeout),
        read_timeout=timeout,
        write_timeout=timeout,
        pool_timeout=5,
    )
    # getUpdates adds its long-poll timeout to this read timeout.
    updates = AiohttpRequest(
        connection_pool_size=1, connect_timeout=10, read_timeout=10, write_timeout=10, pool_timeout=5
    )
    return telegram.Bot(
        token,
        base_url=f"{base}/bot",
        base_file_url=f"{base}/file/bot",
        request=requests,
        get_updates_request=updates,
    )


def resolve_mode(mode: str, public_url: str) -> str:
    """webhook or polling: `auto` is webhook when the server has a public URL."""
    if mode == "auto":
        return "webhook" if public_url else "polling"
    return mode


def from_settings(
    bot: Bot, *, poll_timeout: int = POLL_TIMEOUT_SECONDS, album_wait: float = ALBUM_WAIT_SECONDS
) -> TelegramChannel | None:
    """The channel when TELEGRAM_BOT_TOKEN is set; a webhook needs TELEGRAM_WEBHOOK_SECRET."""
    settings = bot.settings
    if settings.telegram_bot_token is None or not settings.telegram_bot_token.get_secret_value():
        return None
    mode = resolve_mode(settings.telegram_mode, settings.public_url)
    secret = settings.telegram_webhook_secret.get_secret_value() if settings.telegram_webhook_secret else None
    if mode == "webhook":
        if not secret:
            raise ValueError(
                "Telegram in webhook mode needs TELEGRAM_WEBHOOK_SECRET (or set TELEGRAM_MODE=polling)"
            )
        if not _SECRET_SHAPE.fullmatch(secret):
            raise ValueError("TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
    return TelegramChannel(
        bot,
        client(
            settings.telegram_bot_token.get_secret_value(),
            settings.telegram_api_base_url,
            settings.telegram_timeout_seconds,
        ),
        mode=mode,
        secret=secret,
        public_url=settings.public_url,
        poll_timeout=poll_timeout,
        album_wait=album_wait,
    )
