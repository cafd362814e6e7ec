"""WhatsApp Business Cloud API channel: signed webhooks in, Graph API messages out, within the 24-hour window."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

import httpx
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from adapters.base import HoldingChannel, verified_webhook
from bot import channels
from bot.app import Bot
from bot.fetch import Fetcher, FetchFailed, FetchPolicy, FetchRefused, FetchTooLarge, host_of
from bot.http import Redeliver, decode_object
from bot.messages import Attachment, Button, OutboundMessage
from bot.outbox import (
    CONFIG_HOLD,
    Delivered,
    DeliveryError,
    Hold,
    RetryLater,
)
from bot.store.clock import utcnow

log = logging.getLogger(__name__)

CHANNEL = "whatsapp"
WEBHOOK_PATH = "/whatsapp/webhook"

# Cloud API limits (https://developers.facebook.com/docs/whatsapp/cloud-api/messages/interactive-messages).
TEXT_LIMIT = 4096
INTERACTIVE_BODY_LIMIT = 1024
MAX_REPLY_BUTTONS = 3
BUTTON_TITLE_LIMIT = 20
MAX_LIST_ROWS = 10
ROW_TITLE_LIMIT = 24
ROW_DESCRIPTION_LIMIT = 72

# The customer-service window. We time it from when we received the customer's message, a little after they
# sent it, so we stop a few minutes early; a send that still lands outside it fails with 131047 and is held.
WINDOW = timedelta(hours=24)
WINDOW_MARGIN = timedelta(minutes=10)

REENGAGEMENT = 131047
# The access token is revoked or expired (190), the app lost a permission (10, 200), the account is locked
# (131031): every send fails the same way until an administrator acts. Replies are held, not dead-lettered.
CONFIG_CODES = frozenset({10, 190, 200, 131031})
RETRYABLE_CODES = frozenset({1, 2, 4, 17, 341, 613, 80007, 130429, 131000, 131016, 131048, 131056, 133004})
UNREACHABLE_CODES = frozenset({131026})

LIST_BUTTON = {
    "en": "Choose",
    "zh": "选择",
    "es": "Elegir",
    "ru": "Выбрать",
    "pt": "Escolher",
    "fr": "Choisir",
    "ar": "اختر",
}
# Country calling code of the wa_id → a first guess at the customer's language (longest prefix wins).
CALLING_CODES = {
    "1": "en",
    "44": "en",
    "61": "en",
    "64": "en",
    "353": "en",
    "27": "en",
    "234": "en",
    "254": "en",
    "86": "zh",
    "852": "zh",
    "853": "zh",
    "886": "zh",
    "65": "en",
    "34": "es",
    "52": "es",
    "54": "es",
    "56": "es",
    "57": "es",
    "51": "es",
    "58": "es",
    "53": "es",
    "502": "es",
    "503": "es",
    "504": "es",
    "505": "es",
    "506": "es",
    "507": "es",
    "591": "es",
    "593": "es",
    "595": "es",
    "598": "es",
    "7": "ru",
    "375": "ru",
    "55": "pt",
    "351": "pt",
    "244": "pt",
    "258": "pt",
    "33": "fr",
    "221": "fr",
    "225": "fr",
    "237": "fr",
    "20": "ar",
    "212": "ar",
    "213": "ar",
    "216": "ar",
    "218": "ar",
    "249": "ar",
    "961": "ar",
    "962": "ar",
    "964": "ar",
    "965": "ar",
    "966": "ar",
    "967": "ar",
    "968": "ar",
    "971": "ar",
    "973": "ar",
    "974": "ar",
}

# --- verify ---------------------------------------------------------------------------------------------------


def verify_subscription(params: Mapping[str, str], verify_token: str) -> str | None:
    """The challenge to echo for a valid `hub.*` verification request, else None."""
    if not verify_token or params.get("hub.mode") != "subscribe":
        return None
    given = params.get("hub.verify_token", "")
    if not hmac.compare_digest(given.encode(), verify_token.encode()):
        return None
    return params.get("hub.challenge")


def signature_valid(body: bytes, header: str | None, app_secret: str) -> bool:
    """Whether `X-Hub-Signature-256` is the HMAC-SHA256 of the raw body under the app secret."""
    if not header or not app_secret:
        return False
    expected = "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header.strip().encode(), expected.encode())


# --- parse ----------------------------------------------------------------------------------------------------


class MalformedPayload(ValueError):
    """The body is not a WhatsApp webhook notification."""


@dataclass(frozen=True, kw_only=True)
class Media:
    id: str
    mime: str
    name: str
    kind: str  # photo | document | voice


@dataclass(frozen=True, kw_only=True)
class Incoming:
    """One customer message from a notification.

    `sender` is who wrote it: their phone number (wa_id) when WhatsApp shares it, else their business-scoped
    user id (BSUID, "US.13491208655302741918"), which a customer with a username may be known by alone.
    """

    wamid: str
    phone_number_id: str
    type: str
    wa_id: str | None = None
    user_id: str | None = None
    text: str = ""
    media: Media | None = None
    name: str | None = None
    timestamp: str = ""
    context_id: str | None = None

    def __post_init__(self) -> None:
        if self.wa_id is None and self.user_id is None:
            raise ValueError("a message without wa_id or user_id")

    @property
    def sender(self) -> str:
        return self.wa_id or self.user_id or ""  # one of them is there (__post_init__)


@dataclass(frozen=True, kw_only=True)
class IdChange:
    """A customer's identifier changed (`user_changed_number`, `user_changed_user_id`): `old` is now `new`."""

    old: str
    new: str
    kind: str  # number | user_id


@dataclass(frozen=True, kw_only=True)
class StatusUpdate:
    """What became of a message we sent (`wamid`)."""

    wamid: str
    status: str  # sent | delivered | read | failed
    phone_number_id: str
    error_code: int | None = None
    error: str | None = None
    at: datetime | None = None  # when it happened, by WhatsApp's clock


@dataclass(frozen=True, kw_only=True)
class Notification:
    messages: tuple[Incoming, ...] = ()
    statuses: tuple[StatusUpdate, ...] = ()
    id_changes: tuple[IdChange, ...] = ()
    skipped: tuple[str, ...] = ()  # why each unreadable part was left out; the rest is still taken


# A wa_id is a phone number of at most 15 digits; a BSUID is a country code, a dot and up to 128 characters
# (with ".ENT." for a parent BSUID). The limit keeps the chat id well inside its database column.
MAX_SENDER_ID = 160
MAX_MESSAGE_ID = 255  # a wamid is about 60 characters
# Graph media ids are digits; nothing else is joined to the Graph URL (a "/", "." or ":" could leave it).
MEDIA_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")
MEDIA_HOSTS = frozenset({"lookaside.fbsbx.com"})  # where Graph's media URLs point
BSUID = re.compile(r"[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}")
_MEDIA_KINDS = {"image": "photo", "document": "document", "audio": "voice", "video": "document"}
# Not something a warranty claim can use; acknowledged and dropped.
_IGNORED_TYPES = frozenset({"reaction", "system", "ephemeral", "request_welcome"})
# Something the customer sent that we cannot read: they are told so, in their language, by the conversation.
_UNREADABLE_TYPES = frozenset({"sticker", "location", "contacts", "unsupported", "unknown"})


def is_bsuid(value: str) -> bool:
    return BSUID.fullmatch(value) is not None


def parse(body: bytes) -> Notification:
    """The customer messages, statuses and id changes in a webhook body, each read on its own.

    MalformedPayload only if the body is not a notification at all; an unreadable message, status or change is
    skipped (with its reason in `skipped`) so the good ones beside it are still taken.
    """
    document = decode_object(body, MalformedPayload)
    if not isinstance(document.get("entry"), list):
        raise MalformedPayload("no entry list")
    messages: list[Incoming] = []
    statuses: list[StatusUpdate] = []
    changes_: list[IdChange] = []
    skipped: list[str] = []
    for entry in document["entry"]:
        try:
            changes = _list(_dict(entry, "entry").get("changes"), "changes")
        except MalformedPayload as error:
            skipped.append(str(error))
            continue
        for change in changes:
            try:
                value, phone_number_id, names = _change(change)
            except MalformedPayload as error:
                skipped.append(str(error))
                continue
            if value is None:
                continue
            for raw in _items(value, "messages", skipped):
                try:
                    read = _message(_dict(raw, "message"), phone_number_id, names)
                except MalformedPayload as error:
                    skipped.append(str(error))
                    continue
                if isinstance(read, Incoming):
                    messages.append(read)
                elif isinstance(read, IdChange):
                    changes_.append(read)
            for raw in _items(value, "statuses", skipped):
                try:
                    statuses.append(_status(_dict(raw, "status"), phone_number_id))
                except MalformedPayload as error:
                    skipped.append(str(error))
    return Notification(
        messages=tuple(messages), statuses=tuple(statuses), id_changes=tuple(changes_), skipped=tuple(skipped)
    )


def _change(change: Any) -> tuple[dict[str, Any] | None, str, dict[str, str]]:
    """A `messages` change's value, the business number it is for, and the senders' profile names."""
    change = _dict(change, "change")
    if change.get("field") != "messages":
        return None, "", {}
    value = _dict(change.get("value"), "value")
    phone_number_id = str(_dict(value.get("metadata", {}), "metadata").get("phone_number_id", ""))
    names: dict[str, str] = {}
    contacts = value.get("contacts", [])
    for contact in contacts if isinstance(contacts, list) else ():
        if not isinstance(contact, dict):
            continue
        profile = contact.get("profile")
        name = profile.get("name") if isinstance(profile, dict) else None
        if not isinstance(name, str):
            continue
        for key in ("wa_id", "user_id"):
            if isinstance(contact.get(key), str):
                names[contact[key]] = name
    return value, phone_number_id, names


def _items(value: dict[str, Any], key: str, skipped: list[str]) -> list[Any]:
    items = value.get(key, [])
    if isinstance(items, list):
        return items
    skipped.append(f"{key} is not a list")
    return []


def _message(
    raw: dict[str, Any], phone_number_id: str, names: Mapping[str, str]
) -> Incoming | IdChange | None:
    wamid = _id(raw.get("id"), "message id")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise MalformedPayload("message without type")
    wa_id = _optional_id(raw.get("from"), "from")
    user_id = _optional_id(raw.get("from_user_id"), "from_user_id")
    if user_id is not None and not is_bsuid(user_id):
        raise MalformedPayload("from_user_id is not a business-scoped user id")
    if kind == "system":  # a user_changed_user_id notice names no sender, only the old and new ids
        return _id_change(_dict(raw.get("system"), "system"), wa_id=wa_id)
    if wa_id is None and user_id is None:
        raise MalformedPayload("message without from or from_user_id")
    if raw.get("errors") or (kind == "interactive" and not isinstance(raw.get("interactive"), dict)):
        # WhatsApp could not give us the message whole (an unknown type; an interactive reply without its body
        # when WhatsApp Web reconnects): the customer is asked again rather than ignored.
        kind = "unsupported"
    if kind in _IGNORED_TYPES:
        return None
    text = ""
    media: Media | None = None
    if kind == "text":
        text = str(_dict(raw.get("text"), "text").get("body", ""))
    elif kind == "interactive":
        interactive = _dict(raw.get("interactive"), "interactive")
        reply = interactive.get("button_reply") or interactive.get("list_reply")
        if not isinstance(reply, dict):
            return None  # e.g. a Flow's nfm_reply: we send no flows
        text = str(reply.get("id", ""))  # our button value
    elif kind == "button":  # quick-reply button of a template message
        button = _dict(raw.get("button"), "button")
        text = str(button.get("payload") or button.get("text") or "")
    elif kind in _MEDIA_KINDS:
        content = _dict(raw.get(kind), kind)
        media_id = content.get("id")
        if not isinstance(media_id, str) or not MEDIA_ID.fullmatch(media_id):
            raise MalformedPayload(f"{kind} without a media id")
        mime = str(content.get("mime_type", "application/octet-stream"))
        name = str(content.get("filename") or f"{kind}-{media_id}{_extension(mime)}")
        text = str(content.get("caption", ""))
        media = Media(id=media_id, mime=mime, name=name, kind=_MEDIA_KINDS[kind])
    elif kind in _UNREADABLE_TYPES:
        kind = "unreadable"
    else:
        log.info("whatsapp message of type %s taken as unreadable", kind[:40])
        kind = "unreadable"
    context = raw.get("context")
    profile_name = names.get(wa_id or "") or names.get(user_id or "")
    return Incoming(
        wamid=wamid,
        wa_id=wa_id,
        user_id=user_id,
        phone_number_id=phone_number_id,
        type=kind,
        text=text,
        media=media,
        name=profile_name,
        timestamp=str(raw.get("timestamp", "")),
        context_id=context.get("id") if isinstance(context, dict) else None,
    )


def _id_change(system: dict[str, Any], *, wa_id: str | None) -> IdChange | None:
    kind = system.get("type")
    if kind == "user_changed_number" and wa_id is not None:
        new = _id(system.get("wa_id") or system.get("new_wa_id"), "system.wa_id", MAX_SENDER_ID)
        return IdChange(old=wa_id, new=new, kind="number")
    if kind == "user_changed_user_id":
        old = _id(system.get("previous_user_id"), "system.previous_user_id", MAX_SENDER_ID)
        new = _id(system.get("user_id"), "system.user_id", MAX_SENDER_ID)
        if not (is_bsuid(old) and is_bsuid(new)):
            raise MalformedPayload("user id change without business-scoped user ids")
        return IdChange(old=old, new=new, kind="user_id")
    return None


def _status(raw: dict[str, Any], phone_number_id: str) -> StatusUpdate:
    wamid, status = _id(raw.get("id"), "status id"), raw.get("status")
    if not isinstance(status, str):
        raise MalformedPayload("status without status")
    code: int | None = None
    error: str | None = None
    errors = raw.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        code = first.get("code") if isinstance(first.get("code"), int) else None
        details = (
            first.get("error_data", {}).get("details") if isinstance(first.get("error_data"), dict) else None
        )
        error = f"{code} {first.get('title') or first.get('message') or ''}".strip()
        if details:
            error += f": {details}"
    return StatusUpdate(
        wamid=wamid,
        status=status,
        phone_number_id=phone_number_id,
        error_code=code,
        error=error,
        at=channels.unix_time(str(raw.get("timestamp", ""))),
    )


def _optional_id(value: Any, what: str) -> str | None:
    return None if value is None or value == "" else _id(value, what, MAX_SENDER_ID)


def _id(value: Any, what: str, limit: int = MAX_MESSAGE_ID) -> str:
    """An id we store or look up: PostgreSQL cannot hold NUL or lone surrogates, nor more than the column."""
    if channels.is_id(value, limit):
        return value
    raise MalformedPayload(f"{what} is missing or not an id")


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedPayload(f"{what} is not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedPayload(f"{what} is not a list")
    return value


def _extension(mime: str) -> str:
    return mimetypes.guess_extension(mime.split(";")[0].strip()) or ""


def locale_hint(wa_id: str) -> str | None:
    """A first guess at the language from the country calling code of the phone number."""
    for length in (3, 2, 1):
        language = CALLING_CODES.get(wa_id[:length])
        if language:
            return language
    return None


# --- send: rendering ------------------------------------------------------------------------------------------


def _titles(buttons: Sequence[Button], limit: int) -> list[str]:
    titles = [channels.clip(b.label, limit) for b in buttons]
    if len(set(titles)) < len(titles):  # WhatsApp refuses equal titles: clipping made some equal
        titles = [channels.clip(option, limit) for option in channels.numbered(buttons)]
    return titles


def render(text: str, buttons: Sequence[Button], *, language: str | None = None) -> list[dict[str, Any]]:
    """The Graph API message bodies (without recipient) that show `text` and `buttons`, in order.

    Up to three buttons become reply buttons, up to ten a list; more become numbered text options, which the
    customer answers with the number.
    """
    if len(buttons) > MAX_LIST_ROWS:
        text, buttons = channels.with_options(text, buttons), ()
    parts = channels.split_text(text, TEXT_LIMIT)
    if not buttons:
        return [{"type": "text", "text": {"body": part, "preview_url": False}} for part in parts]
    # The buttons travel with the last piece, whose body has a lower limit.
    parts = parts[:-1] + channels.split_text(parts[-1], INTERACTIVE_BODY_LIMIT)
    bodies: list[dict[str, Any]] = [
        {"type": "text", "text": {"body": p, "preview_url": False}} for p in parts[:-1]
    ]
    body = {"text": parts[-1] or "…"}
    if len(buttons) <= MAX_REPLY_BUTTONS:
        titles = _titles(buttons, BUTTON_TITLE_LIMIT)
        action: dict[str, Any] = {
            "buttons": [
                {"type": "reply", "reply": {"id": b.value, "title": t}}
                for b, t in zip(buttons, titles, strict=True)
            ]
        }
        bodies.append(
            {"type": "interactive", "interactive": {"type": "button", "body": body, "action": action}}
        )
        return bodies
    rows: list[dict[str, Any]] = []
    for button, title in zip(buttons, _titles(buttons, ROW_TITLE_LIMIT), strict=True):
        row = {"id": button.value, "title": title}
        if title != " ".join(button.label.split()):
            row["description"] = channels.clip(button.label, ROW_DESCRIPTION_LIMIT)
        rows.append(row)
    label = LIST_BUTTON.get(language or "en", LIST_BUTTON["en"])
    action = {"button": label, "sections": [{"rows": rows}]}
    bodies.append({"type": "interactive", "interactive": {"type": "list", "body": body, "action": action}})
    return bodies


# --- send: Graph API client -------------------------------------------------------------------------------------


class GraphError(Exception):
    """The Graph API refused a request; `code` is its error code when it gave one."""

    def __init__(self, status: int, code: int | None, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}" + (f", error {code}" if code is not None else "") + f": {message}")
        self.status = status
        self.code = code
        self.retry_after = retry_after


class GraphClient:
    """A thin async client for the Cloud API calls we make; the base URL (version included) is a setting."""

    def __init__(
        self,
        base_url: str,
        access_token: str,
        phone_number_id: str,
        *,
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        fetch_policy: FetchPolicy | None = None,
    ) -> None:
        self.phone_number_id = phone_number_id
        self._token = access_token
        hosts = frozenset({host_of(base_url), *MEDIA_HOSTS})
        self._fetcher = Fetcher(
            fetch_policy or FetchPolicy(hosts=hosts, token_hosts=hosts, max_bytes=10 << 20)
        )
        self._auth = {"Authorization": f"Bearer {access_token}"}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/", headers=self._auth, timeout=timeout, transport=transport
        )

    async def send_message(self, to: str, body: Mapping[str, Any]) -> str:
        """Send one message to a phone number or a business-scoped user id (`recipient`); returns its wamid."""
        who = {"recipient": to} if is_bsuid(to) else {"to": to}
        payload = {"messaging_product": "whatsapp", "recipient_type": "individual", **who, **body}
        response = await self._http.post(f"{self.phone_number_id}/messages", json=payload)
        data = _checked(response)
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
            raise GraphError(response.status_code, None, "answer without messages[].id")
        return str(messages[0].get("id", ""))

    async def media_info(self, media_id: str) -> dict[str, Any]:
        """The media's download URL, MIME type and size."""
        if not MEDIA_ID.fullmatch(media_id):  # joined to the Graph URL: it must stay a path segment
            raise GraphError(400, None, "not a media id")
        return _checked(await self._http.get(media_id))

    async def download(self, url: str, *, max_bytes: int) -> bytes:
        """The media's bytes (the URL needs the same bearer token); FetchTooLarge past `max_bytes`.

        Through the bot's one download policy (bot/fetch.py): the Graph host and Meta's media host only,
        https, public addresses, redirects within the same host, the token to those hosts alone.
        """
        try:
            fetched = await self._fetcher.get(
                str(self._http.base_url.join(url)), bearer=self._token, max_bytes=max_bytes
            )
        except FetchRefused as error:
            raise GraphError(400, None, f"media download {error}") from None  # the URL may hold a token
        except FetchFailed as error:
            raise GraphError(error.status or 503, None, f"media download failed: {error}") from None
        return fetched.data

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._fetcher.aclose()


def _checked(response: httpx.Response) -> dict[str, Any]:
    data = channels.json_answer(response)
    if response.status_code < 400 and isinstance(data, dict):
        return data
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) and isinstance(error.get("code"), int) else None
    message = "unexpected answer"
    if isinstance(error, dict):
        details = (
            error.get("error_data", {}).get("details") if isinstance(error.get("error_data"), dict) else None
        )
        message = str(details or error.get("message") or message)
    raise GraphError(
        response.status_code, code, message, channels.retry_after(response.headers.get("retry-after"))
    )


def delivery_error(error: GraphError) -> DeliveryError:
    """What the outbox should do about a refused send."""
    return channels.delivery_error(
        str(error),
        status=error.status,
        passing=error.code in RETRYABLE_CODES,
        unreachable=error.code in UNREACHABLE_CODES,
        after=error.retry_after,
    )


# --- send: the window and held messages ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Window:
    open: bool
    template_sent: bool
    partial: str = ""  # "digest:count" of a message cut in pieces whose first pieces went out


def _last_inbound(state: channels.ChatState) -> datetime | None:
    noted = channels.parse_time(state.data.get("last_inbound_at"))
    engine = state.last_inbound_at
    return max((t for t in (noted, engine) if t is not None), default=None)


def read_window(db: Engine, chat_id: str, now: datetime) -> Window:
    """Whether the customer's 24-hour window is open, with what a template needs if it is not."""
    chat = channels.chat_state(db, CHANNEL, chat_id)
    if chat is None:
        return Window(open=False, template_sent=False)
    state = chat.data
    last = _last_inbound(chat)
    closed_at = channels.parse_time(state.get("window_closed_at"))
    template_at = channels.parse_time(state.get("template_sent_at"))
    is_open = (
        last is not None
        and now - last < WINDOW - WINDOW_MARGIN
        and not (closed_at is not None and closed_at >= last)
    )
    return Window(
        open=is_open,
        template_sent=template_at is not None and (last is None or template_at > last),
        partial=str(state.get("partial") or ""),
    )


def _note(db: Engine, chat_id: str, **changes: str | None) -> None:
    """Merge `changes` into this channel's part of the identity's data (None removes a key)."""
    with channels.chat_work(db, CHANNEL) as work:
        chat = work.state(chat_id)
        if chat is None:
            return
        for key, value in changes.items():
            if value is None:
                chat.data.pop(key, None)
            else:
                chat.data[key] = value


def note_inbound(db: Engine, chat_id: str, now: datetime) -> int:
    """The customer wrote: the window is open again and their held messages go out. Returns how many."""
    with channels.chat_work(db, CHANNEL) as work:
        chat = work.state(chat_id)
        if chat is not None:
            chat.data["last_inbound_at"] = now.isoformat()
            chat.data.pop("window_closed_at", None)
        return work.release_held(chat_id)


def apply_status(db: Engine, update_: StatusUpdate, now: datetime) -> bool:
    """Record a delivery status on the outbox row that sent `wamid`; False if no row has it."""
    with channels.chat_work(db, CHANNEL) as work:
        resend = None
        if update_.status == "failed" and update_.error_code == REENGAGEMENT:
            # Sent after the window closed: hold it for the template instead of losing it.
            resend = f"{update_.error}; resent after the customer answers a template"
        reported = work.report_status(
            update_.wamid, update_.status, error=update_.error, resend=resend, now=now
        )
        if reported is None:
            return _template_status(work, update_)
        if resend is not None:
            chat = work.state(reported.chat_id)
            # When it failed, not now: a message the customer wrote since then opened the window again.
            if chat is not None:
                chat.data["window_closed_at"] = min(update_.at or now, now).isoformat()
        return True


# --- who is who: phone numbers, business-scoped user ids and their changes -----------------------------------


def _key(kind: str, value: str) -> str:
    return f"whatsapp:{kind}:" + hashlib.sha256(value.encode()).hexdigest()[:48]


def chat_of(db: Engine, incoming: Incoming) -> str:
    """The chat an incoming message belongs to, noting how to reach its customer now.

    A chat is named by the customer's phone number when WhatsApp gave it on first contact, else by their
    business-scoped user id; each id seen for it (and each id it changed to) leads back to the same chat, so a
    customer who hides their number behind a username, or changes it, keeps their conversation.
    """
    chat_id = None
    for known in (incoming.wa_id, incoming.user_id):
        stored = channels.kv_get(db, _key("alias", known)) if known else None
        if stored is not None and isinstance(stored[0].get("chat"), str):
            chat_id = stored[0]["chat"]
            break
    chat_id = chat_id or incoming.sender
    for known in (incoming.wa_id, incoming.user_id):
        if known and known != chat_id and channels.kv_get(db, _key("alias", known)) is None:
            channels.kv_put(db, _key("alias", known), {"chat": chat_id})
    # Replies go to the phone number while WhatsApp shares it, else to the business-scoped user id.
    address = incoming.wa_id or incoming.user_id or chat_id
    stored = channels.kv_get(db, _key("address", chat_id))
    if (stored[0].get("to") if stored else chat_id) != address:
        channels.kv_put(db, _key("address", chat_id), {"to": address})
    return chat_id


def address_of(db: Engine, chat_id: str) -> str:
    """Where a reply to `chat_id` goes: its latest phone number or business-scoped user id."""
    stored = channels.kv_get(db, _key("address", chat_id))
    to = stored[0].get("to") if stored else None
    return to if isinstance(to, str) and to else chat_id


def note_id_change(db: Engine, change: IdChange) -> None:
    """`user_changed_number` / `user_changed_user_id`: the new id leads to the old one's chat and gets the replies."""
    stored = channels.kv_get(db, _key("alias", change.old))
    chat_id = stored[0]["chat"] if stored and isinstance(stored[0].get("chat"), str) else change.old
    channels.kv_put(db, _key("alias", change.new), {"chat": chat_id})
    channels.kv_put(db, _key("address", chat_id), {"to": change.new})
    log.info("whatsapp customer changed their %s; replies follow the new one", change.kind.replace("_", " "))


def _note_template(db: Engine, chat_id: str, wamid: str) -> None:
    """Remember which template went to whom, so that its later failure can reach the held rows."""
    _note(db, chat_id, template_sent_at=utcnow().isoformat())
    if wamid:
        channels.kv_put(db, _key("template", wamid), {"chat": chat_id}, utcnow() + timedelta(days=7))


def _template_status(work: channels.ChatWork, update_: StatusUpdate) -> bool:
    """A template's status: failed (132xxx: wrong parameters, paused, not in this language) is told to the rows
    it was meant to announce, and the next hold sends it again; True if it was one of ours."""
    stored = work.kv_get(_key("template", update_.wamid))
    chat_id = stored.get("chat") if stored is not None else None
    if not isinstance(chat_id, str):
        return False
    if update_.status != "failed":
        return True
    reason = f"outside the 24-hour window; the template failed: {update_.error or 'failed'}"
    log.error("whatsapp template failed after it was accepted: %s", (update_.error or "")[:200])
    work.note_held(chat_id, reason)
    chat = work.state(chat_id)
    if chat is not None:
        chat.data.pop("template_sent_at", None)
    return True


class WhatsAppSender:
    """Delivers outbox rows: within the window as messages, outside it as a template while the row waits."""

    def __init__(
        self, db: Engine, client: GraphClient, *, template_name: str, template_language: str
    ) -> None:
        self.db = db
        self.client = client
        self.template_name = template_name
        # "en,es,zh_CN": the languages the template is approved in; the first is used when none fits.
        self.template_languages = [code.strip() for code in template_language.split(",") if code.strip()] or [
            "en"
        ]
        # What holds every reply (a revoked token, a refused template), kept for /healthz (_note_problem).
        self.problem: str | None = None

    def template_language(self, language: str | None) -> str:
        """The approved template language for a customer's language ("zh" → "zh_CN"), else the first one."""
        if language:
            for code in self.template_languages:
                if (
                    code.lower() == language.lower()
                    or code.lower().split("_")[0] == language.lower().split("-")[0]
                ):
                    return code
        return self.template_languages[0]

    async def _note_problem(self, problem: str | None) -> None:
        """The problem, here and in the database, where /healthz reads it whichever process serves it."""
        self.problem = problem
        await asyncio.to_thread(channels.note_problem, self.db, CHANNEL, problem)

    async def _config_problem(self, error: GraphError) -> NoReturn:
        if self.problem is None:
            log.error("whatsapp refuses the account's set-up (%s); replies are held until it is fixed", error)
        await self._note_problem(f"WhatsApp refuses the account's set-up: {error}")
        raise Hold(f"{CONFIG_HOLD}{error}") from error

    async def send(self, message: OutboundMessage) -> Delivered:
        window = await asyncio.to_thread(read_window, self.db, message.chat_id, utcnow())
        if not window.open:
            await self._hold(message, window)
        to = await asyncio.to_thread(address_of, self.db, message.chat_id)
        bodies = render(message.text, message.buttons, language=message.language)
        if message.reply_to and message.reply_to.startswith("wamid."):
            bodies[0] = {**bodies[0], "context": {"message_id": message.reply_to}}
        # Pieces already sent before a failure are not sent again when the row is retried.
        digest = hashlib.sha256(json.dumps(bodies, sort_keys=True).encode()).hexdigest()[:32]
        prefix, _, count = window.partial.partition(":")
        done = int(count) if prefix == digest and count.isdigit() else 0
        wamid = ""
        try:
            for index in range(done, len(bodies)):
                wamid = await self.client.send_message(to, bodies[index])
                if len(bodies) > 1:
                    partial = f"{digest}:{index + 1}" if index + 1 < len(bodies) else None
                    await asyncio.to_thread(_note, self.db, message.chat_id, partial=partial)
        except GraphError as error:
            if error.code == REENGAGEMENT:
                await asyncio.to_thread(
                    _note, self.db, message.chat_id, window_closed_at=utcnow().isoformat()
                )
                await self._hold(message, window)
            if error.code in CONFIG_CODES:
                await self._config_problem(error)
            raise delivery_error(error) from error
        except httpx.HTTPError as error:
            raise channels.no_answer(error) from error
        if self.problem is not None and self.problem.startswith("WhatsApp refuses the account"):
            self.problem = None  # and no longer in the database either (release_config_holds_of)
            released = await asyncio.to_thread(channels.release_config_holds_of, self.db, CHANNEL)
            log.info("whatsapp set-up works again; %s held replies released", released)
        return Delivered(external_id=wamid)

    async def _template_problem(self, error: str) -> None:
        if self.problem is None:
            log.error(
                "whatsapp template %s refused (%s): customers outside the window are not told",
                self.template_name,
                error,
            )
        await self._note_problem(f"template {self.template_name} refused: {error}")

    async def _hold(self, message: OutboundMessage, window: Window) -> NoReturn:
        """Keep the row for when the customer writes, asking them to once with the approved template."""
        chat_id = message.chat_id
        reason = "outside the 24-hour window, waiting for the customer"
        if not self.template_name:
            reason += " (no WHATSAPP_TEMPLATE_NAME: the customer is not told)"
        elif not window.template_sent:
            language = self.template_language(message.language)
            template: dict[str, Any] = {
                "name": self.template_name,
                "language": {"code": language},
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": message.case_ref or "-"}]}
                ],
            }
            try:
                to = await asyncio.to_thread(address_of, self.db, chat_id)
                template_wamid = await self.client.send_message(
                    to, {"type": "template", "template": template}
                )
            except GraphError as error:
                if error.code in CONFIG_CODES:
                    await self._config_problem(error)
                failure = delivery_error(error)
                if isinstance(failure, RetryLater):
                    raise failure from error
                reason += f"; the template was refused: {error}"
                await self._template_problem(f"{error}")
            except httpx.HTTPError as error:
                raise RetryLater(f"template: {type(error).__name__}: {error}") from error
            else:
                await asyncio.to_thread(_note_template, self.db, chat_id, template_wamid)
                reason += f"; template sent ({language})"
                if self.problem is not None and self.problem.startswith("template"):
                    await self._note_problem(None)
        if (await asyncio.to_thread(read_window, self.db, chat_id, utcnow())).open:
            raise RetryLater("the customer wrote while we held the message", after=0)
        raise Hold(reason)


# --- the channel ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WhatsAppConfig:
    access_token: str
    app_secret: str
    verify_token: str
    phone_number_id: str
    graph_url: str
    template_name: str
    template_language: str


class WhatsAppChannel(HoldingChannel):
    """The webhook (verification, messages, statuses) and the sender."""

    name = CHANNEL

    def __init__(
        self, bot: Bot, config: WhatsAppConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        media = [config.graph_url, *MEDIA_HOSTS]  # the token goes to these hosts alone
        policy = FetchPolicy.from_settings(
            bot.settings, hosts=media, token_hosts=media, max_bytes=bot.attachments.max_bytes
        )
        self.client = GraphClient(
            config.graph_url,
            config.access_token,
            config.phone_number_id,
            transport=transport,
            fetch_policy=policy,
        )
        sender = WhatsAppSender(
            bot.db,
            self.client,
            template_name=config.template_name,
            template_language=config.template_language,
        )
        super().__init__(bot, self.client, sender)
        self.config = config

    def routes(self) -> Sequence[BaseRoute]:
        return verified_webhook(WEBHOOK_PATH, self.challenge, self.webhook)

    def challenge(self, params: Mapping[str, str]) -> str | None:
        return verify_subscription(params, self.config.verify_token)

    async def webhook(self, request: Request) -> Response:
        body = await request.body()
        if not signature_valid(body, request.headers.get("x-hub-signature-256"), self.config.app_secret):
            return JSONResponse({"error": "invalid signature"}, status_code=401)
        try:
            notification = parse(body)
        except MalformedPayload as error:
            # Signed by Meta, so answered 200: any other answer only makes it redeliver the same bytes for days.
            log.warning("whatsapp notification unreadable, acknowledged and dropped: %s", error)
            return JSONResponse({"ok": True, "skipped": 1})
        for reason in notification.skipped:
            log.warning("whatsapp notification part skipped: %s", reason[:200])
        try:
            now = utcnow()
            for status in notification.statuses:
                if status.phone_number_id in ("", self.config.phone_number_id):
                    await asyncio.to_thread(apply_status, self.bot.db, status, now)
            for change in notification.id_changes:
                await asyncio.to_thread(note_id_change, self.bot.db, change)
            for incoming in notification.messages:
                if incoming.phone_number_id in ("", self.config.phone_number_id):
                    await self._receive(incoming)
        except (httpx.HTTPError, GraphError) as error:
            # Not stored (a media lookup failed; storage failures likewise, bot.http.UNAVAILABLE): the 503 makes
            # WhatsApp deliver the notification again later.
            raise Redeliver(f"whatsapp media: {type(error).__name__}") from error
        return JSONResponse({"ok": True, "skipped": len(notification.skipped)})

    async def _receive(self, incoming: Incoming) -> None:
        if await asyncio.to_thread(self.bot.engine.seen, CHANNEL, incoming.wamid):
            return
        chat_id = await asyncio.to_thread(chat_of, self.bot.db, incoming)
        # The window is noted open before the message is stored, so that the replies to it find it open.
        if await asyncio.to_thread(note_inbound, self.bot.db, chat_id, utcnow()):
            self.bot.engine.outbox_signal.set()
        attachments = (await self._attachment(incoming.media),) if incoming.media else ()
        message = channels.inbound(
            CHANNEL,
            incoming.wamid,
            incoming.sender,
            chat_id=chat_id,
            text=incoming.text,
            attachments=attachments,
            locale_hint=locale_hint(incoming.wa_id) if incoming.wa_id else None,
            sender_name=incoming.name,
            raw={
                "type": incoming.type,
                "timestamp": incoming.timestamp,
                "context_id": incoming.context_id,
                "user_id": incoming.user_id,
            },
        )
        await self.bot.engine.accept_soon(message)

    async def _attachment(self, media: Media) -> Attachment:
        store = self.bot.attachments
        mime = media.mime.split(";")[0].strip().lower()
        if mime not in store.allowed_types:
            return store.rejected(media.name, "type")  # not worth downloading
        try:
            info = await self.client.media_info(media.id)
            size = info.get("file_size")
            if isinstance(size, int) and size > store.max_bytes:
                return store.rejected(media.name, "too_large")
            url = info.get("url")
            if not isinstance(url, str) or not url:
                raise GraphError(200, None, "media answer without url")
            data = await self.client.download(url, max_bytes=store.max_bytes)
        except FetchTooLarge:
            return store.rejected(media.name, "too_large")
        except GraphError as error:
            if error.status == 429 or error.status >= 500:
                raise
            log.warning("whatsapp media %s could not be fetched: %s", media.kind, error)
            return store.rejected(media.name, "unavailable")  # expired or deleted: it will not come back
        return await channels.save_or_reject(
            store, data, name=media.name, mime=str(info.get("mime_type") or mime), kind=media.kind
        )


# --- settings ---------------------------------------------------------------------------------------------------


def from_settings(bot: Bot) -> WhatsAppChannel | None:
    """The channel when WHATSAPP_ACCESS_TOKEN, WHATSAPP_APP_SECRET and WHATSAPP_PHONE_NUMBER_ID are set."""
    s = bot.settings
    if not (s.whatsapp_access_token and s.whatsapp_app_secret and s.whatsapp_phone_number_id):
        return None
    config = WhatsAppConfig(
        access_token=s.whatsapp_access_token.get_secret_value(),
        app_secret=s.whatsapp_app_secret.get_secret_value(),
        verify_token=s.whatsapp_verify_token.get_secret_value() if s.whatsapp_verify_token else "",
        phone_number_id=s.whatsapp_phone_number_id,
        graph_url=s.whatsapp_graph_url,
        template_name=s.whatsapp_template_name,
        template_language=s.whatsapp_template_language,
    )
    return WhatsAppChannel(bot, config)
