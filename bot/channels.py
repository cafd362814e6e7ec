"""What channel adapters share: numbered options, text pieces, an API client, building an inbound message,
storing a customer's file, Retry-After, sorting a delivery error, a shared access token, and the state a
channel keeps in the database (KeyValue entries, its part of a chat's identity), so that no adapter opens a
session or names a table. One module per channel lives in adapters/; what two of them would write again
lives here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import mimetypes
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeGuard, TypeVar

import httpx
from sqlalchemy import CompoundSelect, Engine, bindparam, delete, select, union_all
from sqlmodel import Session, col

from bot.attachments import AttachmentRejected, AttachmentStore
from bot.fetch import Fetcher, FetchFailed, FetchRefused, FetchTooLarge
from bot.messages import Attachment, Button, InboundMessage
from bot.outbox import (
    Delivered,
    DeliveryError,
    PermanentFailure,
    Reported,
    RetryLater,
    Unreachable,
    note_held,
    release_config_holds,
    release_held,
    report_status,
)
from bot.registry import lookup
from bot.store import ChannelIdentity, KeyValue, lock_chat, session_scope
from bot.store.clock import utcnow
from bot.store.db import after_prefix, insert_for
from bot.store.kv import kv_delete as kv_delete
from bot.store.kv import kv_get as kv_get
from bot.store.kv import kv_put as kv_put
from bot.store.kv import kv_upsert
from policy import UnitFacts

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Exception)

# --- text -----------------------------------------------------------------------------------------------------


def numbered(buttons: Sequence[Button]) -> list[str]:
    """The buttons as numbered options ("1. Yes"), which the customer answers with the number."""
    return [f"{n}. {b.label}" for n, b in enumerate(buttons, start=1)]


def with_options(text: str, buttons: Sequence[Button]) -> str:
    """The text followed by the buttons as numbered options (the text alone when there are none)."""
    if not buttons:
        return text
    options = "\n".join(numbered(buttons))
    return f"{text}\n\n{options}" if text.strip() else options


def clip(text: str, limit: int) -> str:
    """One line of at most `limit` characters (a button's label), cut with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# Where a long text may be cut: a line, a word, or after Chinese and Japanese punctuation.
_BREAKS = ("\n", " ", "。", "，")


def split_text(text: str, limit: int, *, unit: Literal["chars", "bytes"] = "chars") -> list[str]:
    """`text` in pieces of at most `limit` characters (or UTF-8 bytes), cut at a line or word break where one
    lies in the second half of the piece, else hard."""
    size: Callable[[str], int] = len if unit == "chars" else (lambda s: len(s.encode()))
    pieces: list[str] = []
    rest = text.strip()
    while size(rest) > limit:
        window = rest[:limit] if unit == "chars" else rest.encode()[:limit].decode(errors="ignore")
        cut = max(window.rfind(mark) for mark in _BREAKS)
        cut = len(window) if cut < len(window) // 2 else cut + 1
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not pieces:
        pieces.append(rest)
    return pieces


# --- the channels' APIs ----------------------------------------------------------------------------------------


def api_client(
    base_url: str, headers: dict[str, str], *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """A client of a channel's API at `base_url` (a setting: a loopback fake in tests), authenticated by
    `headers`; no proxy from the environment."""
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/",
        timeout=15.0,
        transport=transport,
        headers=headers,
        trust_env=False,
    )


def json_answer(response: httpx.Response) -> Any:
    """The answer's JSON document, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def is_id(value: Any, limit: int) -> TypeGuard[str]:
    """Whether `value` is an id we may store and look up: a printable string of 1 to `limit` characters
    (PostgreSQL cannot hold NUL or lone surrogates, nor more than the column)."""
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()


# --- inbound ------------------------------------------------------------------------------------------------


def inbound(
    channel: str,
    external_id: str,
    customer: str,
    *,
    chat_id: str | None = None,
    text: str = "",
    attachments: tuple[Attachment, ...] = (),
    locale_hint: str | None = None,
    sender_name: str | None = None,
    raw: dict[str, Any] | None = None,
) -> InboundMessage:
    """A customer's message, received now, in their one-to-one chat with us: the chat is known by the
    customer's id unless the channel gives it another (`chat_id`)."""
    return InboundMessage(
        channel=channel,
        external_id=external_id,
        sender_id=customer,
        chat_id=customer if chat_id is None else chat_id,
        text=text,
        attachments=attachments,
        received_at=utcnow(),
        locale_hint=locale_hint,
        sender_name=sender_name,
        raw=raw if raw is not None else {},
    )


# --- files ----------------------------------------------------------------------------------------------------


async def save_or_reject(
    store: AttachmentStore, data: bytes, *, name: str, mime: str, kind: str
) -> Attachment:
    """Store the file, or record it as rejected (a type the store refuses, too large) for the customer's reply."""
    try:
        return await asyncio.to_thread(store.save, data, name=name, mime=mime, kind=kind)
    except AttachmentRejected as error:
        return store.rejected(name, error.reason)


def passing(error: FetchFailed) -> bool:
    """Whether a failed download may work later (no answer, 429, 5xx): then the whole update is redelivered."""
    return error.status == 0 or error.status == 429 or error.status >= 500


async def download(
    fetcher: Fetcher,
    store: AttachmentStore,
    url: str,
    *,
    name: str,
    mime: str,
    kind: str,
    channel: str,
    bearer: str | None = None,
    accept: Callable[[int], bool] | None = None,
    server_type: bool = True,
) -> Attachment:
    """Download a customer's file within the store's size limit and store it, or record why not.

    A passing failure raises FetchFailed, so that the channel redelivers the update; anything else becomes a
    rejected attachment the customer is told about. `accept(status)` may refuse an answer that came (LINE's
    202 for a video not ready yet). The file's type is the one the server gave (with `server_type`), else `mime`.
    """
    try:
        fetched = await fetcher.get(url, bearer=bearer, max_bytes=store.max_bytes)
    except FetchTooLarge:
        return store.rejected(name, "too_large")
    except FetchRefused as error:
        log.warning("%s file refused by the fetch policy: %s", channel, error.reason)
        return store.rejected(name, "unavailable")
    except FetchFailed as error:
        if passing(error):
            raise
        return store.rejected(name, "unavailable")
    if accept is not None and not accept(fetched.status):
        return store.rejected(name, "unavailable")
    mime = (fetched.content_type if server_type else "") or mime
    return await save_or_reject(store, fetched.data, name=name, mime=mime, kind=kind)


def media_name(file_name: str | None, type_: str, media_id: str, default_mime: str) -> tuple[str, str]:
    """A received file's name and type: the sender's name and the type it implies, else `<type>-<id>.<ext>`."""
    guessed = mimetypes.guess_type(file_name)[0] if file_name else None
    mime = guessed or default_mime
    return file_name or f"{type_}-{media_id}{mimetypes.guess_extension(mime) or ''}", mime


# --- delivery errors ------------------------------------------------------------------------------------------


def retry_after(value: str | None) -> float | None:
    """A Retry-After header's seconds (the date form is not used by the services we call), else None."""
    value = (value or "").strip()
    return float(value) if value.isascii() and value.isdigit() else None


def delivery_error(
    summary: str,
    *,
    status: int = 200,
    passing: bool = False,
    unreachable: bool = False,
    after: float | None = None,
    scope: str = "chat",
) -> DeliveryError:
    """What the outbox does about a refused send: a 429, a 5xx or an error the channel calls `passing` is tried
    again (after `after` seconds when it said so); a recipient who blocked us or left is `unreachable`; any
    other refusal is a dead letter."""
    if status == 429 or status >= 500 or passing:
        return RetryLater(summary, after=after, scope=scope)
    if unreachable:
        return Unreachable(summary)
    return PermanentFailure(summary)


def no_answer(error: httpx.HTTPError) -> RetryLater:
    """A call to the channel that got no answer (a timeout, a refused connection): tried again later."""
    return RetryLater(f"{type(error).__name__}: {error}")


@contextmanager
def sending(refused: type[E], classify: Callable[[E], DeliveryError]) -> Iterator[None]:
    """Around a send: the channel's refusal (`refused`) becomes what `classify` says the outbox does with it,
    and no answer from the channel is tried again later."""
    try:
        yield
    except refused as error:
        raise classify(error) from error
    except httpx.HTTPError as error:
        raise no_answer(error) from error


def delivered(external_id: object) -> Delivered:
    """Delivered, with the channel's id of the (first) message sent when it gave one."""
    return Delivered(external_id=str(external_id) if external_id else None)


def release_config_holds_of(db: Engine, channel: str) -> int:
    """The channel's set-up works again (or a restart may have fixed it): its problem is no longer shown
    (`note_problem`) and the replies it held for that go out. Returns how many."""
    note_problem(db, channel, None)
    with session_scope(db) as session:
        return release_config_holds(session, channel)


# --- what keeps a channel from working, for /healthz ----------------------------------------------------------
# Kept in the database, not in the channel's object: the process whose sender found the problem need not be the
# one that answers /healthz.

PROBLEM_PREFIX = "problem:"


def note_problem(db: Engine, channel: str, problem: str | None) -> None:
    """What keeps `channel` from working now (a refused set-up, a revoked token), or None when nothing does;
    written only when it changes, so that each send that finds the same problem only reads."""
    key = PROBLEM_PREFIX + channel
    stored = kv_get(db, key)
    if problem is None:
        if stored is not None:
            kv_delete(db, key)
    elif stored is None or stored[0].get("text") != problem:
        kv_put(db, key, {"text": problem})


def channel_problems(db: Engine) -> dict[str, str]:
    """Each channel's problem that `note_problem` keeps, by channel name."""
    return {
        key.removeprefix(PROBLEM_PREFIX): str(value.get("text"))
        for key, value, _ in kv_items(db, [PROBLEM_PREFIX])
    }


# --- times ----------------------------------------------------------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    """An ISO time kept in a JSON value, as aware UTC; None when it is missing or not a time."""
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def unix_time(value: Any) -> datetime | None:
    """Seconds since 1970 as a string of ASCII digits (a service's timestamp), as aware UTC; None when it is
    missing or not one (or beyond what a datetime holds)."""
    if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12):
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (OverflowError, OSError, ValueError):
        return None


# --- a shared access token ------------------------------------------------------------------------------------


class TokenCache:
    """An access token kept in the database, so that every worker uses the same one until it is about to expire
    (`margin` before), and in memory, so that a send does not read the database for it."""

    def __init__(self, db: Engine, key: str, *, margin: timedelta) -> None:
        self.db = db
        self.key = key
        self.margin = margin
        self._token: str | None = None
        self._expires_at: datetime | None = None

    def _fresh(self, expires_at: datetime | None) -> bool:
        return expires_at is not None and expires_at - self.margin > utcnow()

    async def get(
        self, fetch: Callable[[], Awaitable[tuple[str, timedelta]]], *, rejected: str | None = None
    ) -> str:
        """The cached token, else the one `fetch()` returns (with its lifetime), which is then kept. `rejected`
        is a token the service just refused: it is not given out again."""
        token = await self.cached()
        if token is not None and token != rejected:
            return token
        token, lifetime = await fetch()
        await self.put(token, utcnow() + lifetime)
        return token

    async def cached(self) -> str | None:
        if self._token is not None and self._fresh(self._expires_at):
            return self._token
        stored = await asyncio.to_thread(kv_get, self.db, self.key)
        token = stored[0].get("access_token") if stored is not None else None
        if stored is None or not isinstance(token, str) or not token or not self._fresh(stored[1]):
            return None
        self._token, self._expires_at = token, stored[1]
        return token

    async def put(self, token: str, expires_at: datetime) -> None:
        self._token, self._expires_at = token, expires_at
        await asyncio.to_thread(kv_put, self.db, self.key, {"access_token": token}, expires_at)

    async def forget(self) -> None:
        self._token = None
        await asyncio.to_thread(kv_delete, self.db, self.key)


# --- what a channel keeps in the database ---------------------------------------------------------------------
# Small state of the channels (tokens, references, sessions, ids already handled) in the KeyValue table, so that
# no adapter touches a table: kv_get, kv_put and kv_delete (bot.store.kv) and these.


def kv_add(db: Engine, key: str, value: dict[str, Any], expires_at: datetime | None = None) -> bool:
    """Store `value` under `key` unless the key is there already; whether it was stored (a first time)."""
    with session_scope(db) as session:
        statement = insert_for(session.get_bind().dialect.name)(KeyValue).values(
            key=key, value=value, expires_at=expires_at
        )
        inserted = session.execute(
            statement.on_conflict_do_nothing(index_elements=["key"]).returning(col(KeyValue.key))
        ).scalar()
    return inserted is not None


class Kept:
    """A channel's value under one key while `kv_change` holds it: change `value` and `expires_at` in place."""

    def __init__(self, session: Session, value: dict[str, Any], expires_at: datetime | None) -> None:
        self._session = session
        self.value = value
        self.expires_at = expires_at
        self.store = True

    def leave(self) -> None:
        """Nothing to store: the key stays as it was (and absent if it was)."""
        self.store = False

    def release_held(self, channel: str, chat_id: str) -> int:
        """The customer wrote: their held replies go out, in the same transaction. Returns how many."""
        return release_held(self._session, channel, chat_id)


@contextmanager
def kv_change(db: Engine, key: str) -> Iterator[Kept]:
    """The value under `key` ({} when there is none), locked until the block ends and then stored as the block
    left it, in one transaction: two workers changing it take turns."""
    with session_scope(db) as session:
        lock_chat(session, "keyvalue", key)  # a key not there yet is locked too (PostgreSQL)
        row = session.get(KeyValue, key, with_for_update=True)
        kept = Kept(session, dict(row.value) if row is not None else {}, row.expires_at if row else None)
        yield kept
        if kept.store:
            kv_upsert(session, key, kept.value, kept.expires_at)


def kv_take(db: Engine, key: str) -> tuple[dict[str, Any], datetime | None] | None:
    """The value under `key` and when it expires, removed in the same transaction (two takers never both get
    it); None when there is none."""
    with session_scope(db) as session:
        row = session.execute(
            select(KeyValue).where(col(KeyValue.key) == key).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            return None
        taken = (dict(row.value), row.expires_at)
        session.delete(row)
    return taken


PREFIXES_A_QUERY = 250


@functools.lru_cache(maxsize=PREFIXES_A_QUERY)
def _prefixed(count: int) -> CompoundSelect[tuple[str, Any, datetime | None]]:
    """The query of the keys that start with one of `count` prefixes, each a range of the key's index (bound as
    lo<i> and hi<i>), built once: building 80 comparisons cost more than running them. Not LIKE 'prefix%':
    SQLite's is case-insensitive and PostgreSQL's outside the C locale cannot use the index, so both read
    every key. The keys compare byte by byte (models.KeyValue), so a range is exactly a prefix. One SELECT a
    range, not the ranges OR-ed in one: SQLite's planner scans the whole table for more than a few of those."""
    key = col(KeyValue.key)
    return union_all(
        *(
            select(key, col(KeyValue.value), col(KeyValue.expires_at)).where(
                key >= bindparam(f"lo{i}"), key < bindparam(f"hi{i}")
            )
            for i in range(count)
        )
    )


def kv_items(db: Engine, prefixes: Sequence[str]) -> list[tuple[str, dict[str, Any], datetime | None]]:
    """Every key that starts with one of `prefixes`, with its value and when it expires: one query for up to
    PREFIXES_A_QUERY prefixes (SQLite allows 500 SELECTs in a compound one)."""
    rows: list[tuple[str, dict[str, Any], datetime | None]] = []
    with db.connect() as connection:
        for start in range(0, len(prefixes), PREFIXES_A_QUERY):
            bounds: dict[str, str] = {}
            for i, prefix in enumerate(prefixes[start : start + PREFIXES_A_QUERY]):
                bounds[f"lo{i}"], bounds[f"hi{i}"] = prefix, after_prefix(prefix)
            found = connection.execute(_prefixed(len(bounds) // 2), bounds)
            rows.extend((key, dict(value), expires_at) for key, value, expires_at in found)
    return rows


def kv_remove(db: Engine, keys: Sequence[str]) -> None:
    """Remove these keys (those that are there)."""
    if keys:
        with session_scope(db) as session:
            session.execute(delete(KeyValue).where(col(KeyValue.key).in_(list(keys))))


def kv_keys(db: Engine, prefix: str) -> list[str]:
    """The keys that start with `prefix`."""
    return [key for key, _, _ in kv_items(db, [prefix])]


def kv_purge(db: Engine, prefix: str) -> None:
    """Remove the expired values whose keys start with `prefix`."""
    with session_scope(db) as session:
        session.execute(
            delete(KeyValue).where(
                col(KeyValue.key) >= prefix,
                col(KeyValue.key) < after_prefix(prefix),
                col(KeyValue.expires_at) < utcnow(),
            )
        )


def registry_record(db: Engine, serial: str) -> UnitFacts | None:
    """The shipment registry's record of one (normalised) serial, or None (Slack's /warranty)."""
    with Session(db) as session:
        return lookup(session, [serial]).get(serial)


# --- a chat's channel state on the customer's identity -----------------------------------------------------------


class ChatState:
    """A channel's own part of a chat's identity data (`data`, changed in place inside `ChatWork`), and when the
    engine last stored a message of the chat."""

    def __init__(self, data: dict[str, Any], last_inbound_at: datetime | None) -> None:
        self.data = data
        self.last_inbound_at = last_inbound_at


def chat_state(db: Engine, channel: str, chat_id: str) -> ChatState | None:
    """The channel's state of the chat, to read; None when the chat has no identity yet."""
    with Session(db) as session:
        identity = _identity(session, channel, chat_id)
        return ChatState(dict(identity.data.get(channel, {})), identity.last_inbound_at) if identity else None


class ChatWork:
    """One transaction on a channel's chats: their state (locked, and stored when the transaction ends) and
    their outbox rows, changed together."""

    def __init__(self, session: Session, channel: str) -> None:
        self._session = session
        self._channel = channel
        self._changed: list[tuple[ChannelIdentity, ChatState]] = []

    def state(self, chat_id: str) -> ChatState | None:
        """The chat's state, locked until the transaction ends; None when the chat has no identity."""
        identity = _identity(self._session, self._channel, chat_id, lock=True)
        if identity is None:
            return None
        state = ChatState(dict(identity.data.get(self._channel, {})), identity.last_inbound_at)
        self._changed.append((identity, state))
        return state

    def release_held(self, chat_id: str) -> int:
        """The customer wrote: their held replies go out. Returns how many."""
        return release_held(self._session, self._channel, chat_id)

    def note_held(self, chat_id: str, reason: str) -> None:
        note_held(self._session, self._channel, chat_id, reason)

    def report_status(
        self, external_id: str, status: str, *, error: str | None, resend: str | None, now: datetime
    ) -> Reported | None:
        """bot.outbox.report_status, in this transaction."""
        return report_status(
            self._session, self._channel, external_id, status, error=error, resend=resend, now=now
        )

    def kv_get(self, key: str) -> dict[str, Any] | None:
        row = self._session.get(KeyValue, key)
        return dict(row.value) if row is not None else None

    def _store(self) -> None:
        for identity, state in self._changed:
            identity.data = {**identity.data, self._channel: state.data}


@contextmanager
def chat_work(db: Engine, channel: str) -> Iterator[ChatWork]:
    """A transaction on the channel's chats (ChatWork), committed when the block ends normally."""
    with session_scope(db) as session:
        work = ChatWork(session, channel)
        yield work
        work._store()


def _identity(session: Session, channel: str, chat_id: str, *, lock: bool = False) -> ChannelIdentity | None:
    query = select(ChannelIdentity).where(
        col(ChannelIdentity.channel) == channel, col(ChannelIdentity.chat_id) == chat_id
    )
    return session.execute(query.with_for_update() if lock else query).scalar_one_or_none()
