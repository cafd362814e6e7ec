"""The Microsoft Teams channel (and legacy Skype): Bot Framework activities in, Bot Connector API calls out.

Built on httpx and PyJWT rather than Microsoft's Agents SDK (microsoft-agents-hosting-core 1.9): the SDK
answers inside the request's turn and owns the HTTP handling, takes its signing keys from fixed Microsoft
URLs (no OpenID metadata setting, so no loopback fake) and brings aiohttp, OpenTelemetry and MSAL with it;
this bot stores every activity before acknowledging it and answers later from the outbox, proactively.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import mimetypes
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import jwt
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapters.base import SendingChannel
from bot import channels
from bot.app import Bot
from bot.attachments import AttachmentRejected, sniff
from bot.engine import inbound_from_payload, inbound_to_payload
from bot.fetch import Fetcher, FetchFailed, FetchPolicy, FetchRefused, FetchTooLarge
from bot.http import decode_object
from bot.messages import Attachment, Button, InboundMessage, OutboundMessage
from bot.outbox import Delivered, PermanentFailure, RetryLater
from bot.store.clock import utcnow

CHANNEL = "teams"
CHANNEL_IDS = frozenset({"msteams", "skype"})  # Skype was retired in May 2025; its users moved to Teams
PATH = "/teams/messages"
BOT_FRAMEWORK_SCOPE = "https://api.botframework.com/.default"
CLOCK_SKEW_SECONDS = 300  # the Bot Framework's own tolerance
KEYS_TTL_SECONDS = 24 * 3600
KEYS_REFRESH_MIN_SECONDS = 300  # an unknown key id refetches the keys, but not more often than this
TOKEN_MARGIN_SECONDS = 300  # renew the connector token this long before it expires
HTTP_TIMEOUT_SECONDS = 20.0
# The connector refuses an activity over about 40 KB (413): replies are split into pieces of at most this many
# characters, which stay under 28 KB of JSON even in four-byte characters (docs/channels/teams.md).
MAX_TEXT_CHARS = 6000
PENDING_PREFIX = "teams:pending:"  # messages with files, acknowledged and waiting for their downloads
PENDING_KEEP = timedelta(days=2)
MAX_DOWNLOAD_TRIES = 5
BUTTONS_PER_CARD = 6  # Teams shows at most six buttons on a hero card
HTML_DUPLICATE = "text/html"  # Teams repeats the message text as an HTML attachment: not a customer file
FILE_DOWNLOAD = "application/vnd.microsoft.teams.file.download.info"
# Where Teams' pre-signed file downloads live: the customer's OneDrive / SharePoint (commercial, US government,
# Germany, China). Nothing else named in an activity is fetched (docs/channels/teams.md).
FILE_HOSTS = ("*.sharepoint.com", "*.sharepoint.us", "*.sharepoint.de", "*.sharepoint.cn")

log = logging.getLogger(__name__)


class Unauthorized(Exception):
    """The request does not carry a valid Bot Framework token."""


@dataclass(frozen=True, kw_only=True)
class TeamsSettings:
    app_id: str
    app_password: str
    openid_metadata_url: str
    token_url: str
    issuer: str


# --- verify: the Bot Framework's bearer token ---------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    key: jwt.PyJWK
    endorsements: frozenset[str] | None


class TokenValidator:
    """Checks the JWT the Bot Connector sends: signed by a key from the OpenID metadata's `jwks_uri`, our app
    id as audience, the configured issuer, not expired; keys are cached for a day."""

    def __init__(self, config: TeamsSettings, http: Callable[[], httpx.AsyncClient]) -> None:
        self.config = config
        self.http = http
        self.keys: dict[str, _Key] = {}
        self.fetched_at = float("-inf")
        self.lock = asyncio.Lock()

    async def validate(self, authorization: str | None) -> tuple[dict[str, Any], frozenset[str] | None]:
        """The token's claims and its key's endorsements (channel ids), or Unauthorized."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("no bearer token")
        try:
            header = jwt.get_unverified_header(token.strip())
        except jwt.PyJWTError:
            raise Unauthorized("not a JWT") from None
        if header.get("alg") != "RS256" or not isinstance(header.get("kid"), str):
            raise Unauthorized("unexpected token algorithm or key id")
        key = await self._key(header["kid"])
        try:
            claims = jwt.decode(
                token.strip(),
                key.key.key,
                algorithms=["RS256"],
                audience=self.config.app_id,
                issuer=self.config.issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as error:
            raise Unauthorized(f"token rejected: {type(error).__name__}") from None
        return claims, key.endorsements

    async def _key(self, kid: str) -> _Key:
        async with self.lock:
            age = time.monotonic() - self.fetched_at
            if age > KEYS_TTL_SECONDS or (kid not in self.keys and age > KEYS_REFRESH_MIN_SECONDS):
                await self._refresh()
        found = self.keys.get(kid)
        if found is None:
            raise Unauthorized("unknown signing key")
        return found

    async def _refresh(self) -> None:
        try:
            metadata = await self._json(self.config.openid_metadata_url)
            jwks = await self._json(str(metadata["jwks_uri"]))
        except (httpx.HTTPError, KeyError, ValueError, TypeError) as error:
            # Keep the keys we had: a metadata outage must not lock every customer out.
            log.warning("could not fetch the Bot Framework signing keys: %s", type(error).__name__)
            if not self.keys:
                raise Unauthorized("signing keys unavailable") from None
            return
        keys: dict[str, _Key] = {}
        for entry in jwks.get("keys", []) if isinstance(jwks, dict) else []:
            try:
                parsed = jwt.PyJWK(entry, algorithm="RS256")
            except (jwt.PyJWTError, KeyError, ValueError, TypeError):
                continue
            endorsements = entry.get("endorsements")
            if parsed.key_id:
                keys[parsed.key_id] = _Key(
                    parsed, frozenset(endorsements) if isinstance(endorsements, list) else None
                )
        self.keys = keys
        self.fetched_at = time.monotonic()

    async def _json(self, url: str) -> Any:
        response = await self.http().get(url)
        response.raise_for_status()
        return response.json()


def check_activity(
    claims: Mapping[str, Any], endorsements: frozenset[str] | None, activity: Mapping[str, Any]
) -> str:
    """What the token says must match the activity: its channel endorsed by the key, its serviceUrl equal to
    the token's `serviceurl` claim (required). Returns the claim, normalised: what the reference is bound to."""
    channel_id = activity.get("channelId")
    if endorsements is not None and channel_id not in endorsements:
        raise Unauthorized("the signing key is not endorsed for this channel")
    claim = claims.get("serviceurl")
    if not isinstance(claim, str) or not claim:
        # We later send our own token to serviceUrl: without Microsoft's word for it, anyone could name one.
        raise Unauthorized("the token has no serviceurl claim")
    bound = normal_service_url(claim)
    if bound is None or bound != normal_service_url(str(activity.get("serviceUrl") or "")):
        raise Unauthorized("serviceUrl differs from the token's")
    return bound


def normal_service_url(url: str) -> str | None:
    """A service URL compared as a URL: scheme and host in lower case, the default port and the trailing slash
    dropped; None when it is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("https", "http") or not host or parts.query or parts.fragment or parts.username:
        return None
    default = {"https": 443, "http": 80}[scheme]
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


# --- parse ----------------------------------------------------------------------------------------------


class Malformed(Exception):
    """The body is not an activity we can read."""


@dataclass(frozen=True, kw_only=True)
class Reference:
    """Enough to write into a conversation later, without an activity to answer (a proactive message)."""

    service_url: str
    conversation_id: str
    channel_id: str
    bot_id: str
    bot_name: str | None = None
    user_id: str | None = None
    user_name: str | None = None
    tenant_id: str | None = None
    bound_to: str | None = None  # the token's serviceurl claim, normalised: a reference never moves elsewhere


@dataclass(frozen=True, kw_only=True)
class FileRef:
    name: str
    url: str
    mime: str
    authenticated: bool  # the connector's own attachment URLs need our token; pre-signed download URLs do not


# The parts of an activity read below, with the JSON type the Bot Framework sends. Anything else is a
# malformed activity (400): checked once here, so that the functions after this one can trust the shape.
Where = tuple[str, ...]  # a path of keys into the activity
_REQUIRED_TEXT: tuple[Where, ...] = (("type",), ("serviceUrl",), ("conversation", "id"), ("recipient", "id"))
_OPTIONAL_TEXT: tuple[Where, ...] = (
    ("id",),
    ("channelId",),
    ("from", "id"),
    ("from", "name"),
    ("recipient", "name"),
    ("conversation", "tenantId"),
    ("channelData", "tenant", "id"),
)
_OPTIONAL_OBJECTS: tuple[Where, ...] = (("from",), ("channelData",), ("channelData", "tenant"))
_OPTIONAL_LISTS: tuple[Where, ...] = (("entities",), ("attachments",), ("membersAdded",))
_STORED_IDS: tuple[Where, ...] = (("id",), ("conversation", "id"), ("from", "id"))
MAX_ID = 255  # conversation and user ids are kept in columns of 255 characters


def read_activity(body: bytes) -> dict[str, Any]:
    """The activity in the body; Malformed unless the fields this channel reads have the documented types."""
    activity = decode_object(body, Malformed)
    for path in _OPTIONAL_OBJECTS:
        if not isinstance(_at(activity, path), dict | None):
            raise Malformed(f"{'.'.join(path)} is not an object")
    for path in _REQUIRED_TEXT:
        value = _at(activity, path)
        if not isinstance(value, str) or not value:
            raise Malformed(f"{'.'.join(path)} is missing")
    for path in _OPTIONAL_TEXT:
        if not isinstance(_at(activity, path), str | None):
            raise Malformed(f"{'.'.join(path)} is not text")
    for path in _OPTIONAL_LISTS:
        if not isinstance(_at(activity, path), list | None):
            raise Malformed(f"{'.'.join(path)} is not a list")
    for path in _STORED_IDS:
        value = _at(activity, path)
        # Keys in the database: PostgreSQL holds neither NUL nor lone surrogates, nor more than the column.
        if value is not None and not (len(value) <= MAX_ID and value.isprintable()):
            raise Malformed(f"{'.'.join(path)} is not an id")
    if urlsplit(activity["serviceUrl"]).scheme not in ("https", "http"):
        raise Malformed("serviceUrl is not an http(s) URL")
    return activity


def _at(activity: Mapping[str, Any], path: Where) -> Any:
    """The value at `path`, None where it is missing (or where an object on the way is not one)."""
    value: Any = activity
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def reference_of(activity: Mapping[str, Any]) -> Reference:
    sender = _dict(activity.get("from"))
    recipient = activity["recipient"]
    conversation = activity["conversation"]
    tenant = _dict(_dict(activity.get("channelData")).get("tenant")).get("id")
    return Reference(
        service_url=activity["serviceUrl"],
        conversation_id=conversation["id"],
        channel_id=activity.get("channelId") or "",
        bot_id=recipient["id"],
        bot_name=recipient.get("name"),
        user_id=sender.get("id"),
        user_name=sender.get("name"),
        tenant_id=tenant or conversation.get("tenantId"),
    )


def is_greeting(activity: Mapping[str, Any]) -> bool:
    """A conversationUpdate that adds the bot: the user installed it or opened a chat with it."""
    if activity.get("type") != "conversationUpdate":
        return False
    added = activity.get("membersAdded")
    bot_id = activity["recipient"]["id"]
    return isinstance(added, list) and any(isinstance(m, dict) and m.get("id") == bot_id for m in added)


def is_edit(activity: Mapping[str, Any]) -> bool:
    """A messageUpdate that is the customer editing a message (not an undelete or a reaction)."""
    event = _dict(activity.get("channelData")).get("eventType")
    return activity.get("type") == "messageUpdate" and event in ("editMessage", None)


def message_text(activity: Mapping[str, Any]) -> str:
    """The customer's words: a button's value for our messageBack cards, else the text without @mentions."""
    value = activity.get("value")
    if isinstance(value, dict) and isinstance(value.get("value"), str):
        return str(value["value"])
    text = _str(activity.get("text"))
    bot_id = activity["recipient"]["id"]
    for entity in activity.get("entities") or ():
        if (
            isinstance(entity, dict)
            and entity.get("type") == "mention"
            and isinstance(entity.get("text"), str)
            and _dict(entity.get("mentioned")).get("id") == bot_id
        ):
            text = text.replace(entity["text"], " ")
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def file_refs(activity: Mapping[str, Any]) -> list[FileRef]:
    """The files the customer sent: Teams file downloads and images; the HTML copy of the text and cards are not."""
    files = []
    for attachment in activity.get("attachments") or ():
        if not isinstance(attachment, dict):
            continue
        kind = _str(attachment.get("contentType"))
        content = _dict(attachment.get("content"))
        name = _str(attachment.get("name"))
        if kind == FILE_DOWNLOAD and isinstance(content.get("downloadUrl"), str):
            mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
            files.append(
                FileRef(name=name or "file", url=content["downloadUrl"], mime=mime, authenticated=False)
            )
        elif kind == HTML_DUPLICATE or kind.startswith("application/vnd.microsoft."):
            continue
        elif isinstance(attachment.get("contentUrl"), str) and "/" in kind:
            extension = mimetypes.guess_extension(kind) or ""
            files.append(
                FileRef(
                    name=name or f"picture{extension}",
                    url=attachment["contentUrl"],
                    mime=kind,
                    authenticated=True,
                )
            )
    return files


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def to_inbound(
    activity: Mapping[str, Any], *, text: str, attachments: tuple[Attachment, ...] = (), body: bytes = b""
) -> InboundMessage:
    reference = reference_of(activity)
    entities = [
        e for e in activity.get("entities") or () if isinstance(e, dict) and e.get("type") == "clientInfo"
    ]
    locale = activity.get("locale") or (entities[0].get("locale") if entities else None)
    external_id = activity.get("id") or f"sha256:{hashlib.sha256(body).hexdigest()}"
    edited = activity.get("type") == "messageUpdate"
    if edited:
        # An edit keeps the message's id: each version of the text is a message of its own (a correction).
        external_id = f"{external_id}:edit:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    return InboundMessage(
        channel=CHANNEL,
        external_id=f"{reference.channel_id}:{external_id}",
        sender_id=reference.user_id or "",
        chat_id=reference.conversation_id,
        text=text,
        attachments=attachments,
        received_at=utcnow(),
        locale_hint=locale if isinstance(locale, str) else None,
        sender_name=reference.user_name,
        raw={
            "activity_type": activity.get("type"),
            "channel_id": reference.channel_id,
            "tenant_id": reference.tenant_id,
            **({"edited": True} if edited else {}),
        },
    )


# --- send -----------------------------------------------------------------------------------------------


def to_activities(message: OutboundMessage, reference: Reference) -> list[dict[str, Any]]:
    """Our message as Bot Framework activities: the text in pieces the connector takes, buttons on the last
    piece as hero cards whose presses come back as text."""
    pieces = channels.split_text(message.text, MAX_TEXT_CHARS) if message.text.strip() else [message.text]
    activities = []
    for index, piece in enumerate(pieces):
        activity: dict[str, Any] = {
            "type": "message",
            "from": {"id": reference.bot_id, "name": reference.bot_name},
            "conversation": {"id": reference.conversation_id},
            "recipient": {"id": reference.user_id, "name": reference.user_name},
            "text": piece,
            "textFormat": "plain",  # customer words quoted in our text must not turn into markup
        }
        if message.buttons and index == len(pieces) - 1:
            chunks = [
                message.buttons[i : i + BUTTONS_PER_CARD]
                for i in range(0, len(message.buttons), BUTTONS_PER_CARD)
            ]
            activity["attachments"] = [_hero_card(chunk, reference.channel_id) for chunk in chunks]
            activity["attachmentLayout"] = "list"
        activities.append(activity)
    return activities


def _hero_card(buttons: Sequence[Button], channel_id: str) -> dict[str, Any]:
    if channel_id == "msteams":
        # messageBack shows the label in the chat and hands us the value; Skype only knew imBack.
        actions = [
            {
                "type": "messageBack",
                "title": b.label,
                "text": b.value,
                "displayText": b.label,
                "value": {"value": b.value},
            }
            for b in buttons
        ]
    else:
        actions = [{"type": "imBack", "title": b.label, "value": b.value} for b in buttons]
    return {"contentType": "application/vnd.microsoft.card.hero", "content": {"buttons": actions}}


class ConnectorTokens:
    """Client-credentials tokens for the Bot Connector, cached in memory and in the database until expiry."""

    def __init__(self, config: TeamsSettings, http: Callable[[], httpx.AsyncClient], db: Engine) -> None:
        self.config = config
        self.http = http
        self.db = db
        self.cache = channels.TokenCache(
            db,
            "teams:token:" + hashlib.sha256(config.app_id.encode()).hexdigest()[:48],
            margin=timedelta(seconds=TOKEN_MARGIN_SECONDS),
        )
        self.lock = asyncio.Lock()

    async def get(self) -> str:
        async with self.lock:  # one fetch at a time: the others wait for its token
            return await self.cache.get(self._fetch)

    async def forget(self) -> None:
        async with self.lock:
            await self.cache.forget()

    async def _fetch(self) -> tuple[str, timedelta]:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.config.app_id,
            "client_secret": self.config.app_password,
            "scope": BOT_FRAMEWORK_SCOPE,
        }
        try:
            response = await self.http().post(self.config.token_url, data=form)
        except httpx.HTTPError as error:
            raise RetryLater(f"token endpoint unreachable: {type(error).__name__}") from None
        if response.status_code != 200:
            # Wrong credentials are an operator's fix: keep retrying so nothing is lost meanwhile.
            raise RetryLater(
                f"token endpoint answered {response.status_code}",
                after=channels.retry_after(response.headers.get("Retry-After")),
            )
        try:
            data = response.json()
            return str(data["access_token"]), timedelta(seconds=int(data.get("expires_in", 3600)))
        except (ValueError, KeyError, TypeError):
            raise RetryLater("token endpoint answered without a token") from None


class TeamsSender:
    """Posts replies to the conversation's connector (serviceUrl), proactively, with the bot's token."""

    def __init__(self, channel: TeamsChannel) -> None:
        self.channel = channel
        self._sent: OrderedDict[tuple[str, str], int] = OrderedDict()

    async def send(self, message: OutboundMessage) -> Delivered:
        stored = await asyncio.to_thread(
            channels.kv_get, self.channel.bot.db, _reference_key(message.chat_id)
        )
        if stored is None:
            raise PermanentFailure("no conversation reference for this Teams chat")
        reference = Reference(**stored[0])
        activities = to_activities(message, reference)
        # Pieces of a long message already posted, so that a retry after a failure halfway does not repeat them.
        progress = (
            message.chat_id,
            hashlib.sha256(json.dumps(activities, sort_keys=True).encode()).hexdigest(),
        )
        delivered = Delivered()
        for index in range(self._sent.get(progress, 0), len(activities)):
            delivered = await self._post(reference, activities[index])
            self._sent[progress] = index + 1
            self._sent.move_to_end(progress)
            while len(self._sent) > 1000:
                self._sent.popitem(last=False)
        self._sent.pop(progress, None)
        return delivered

    async def _post(self, reference: Reference, activity: dict[str, Any]) -> Delivered:
        token = await self.channel.tokens.get()
        url = (
            f"{reference.service_url.rstrip('/')}/v3/conversations/"
            f"{quote(reference.conversation_id, safe='')}/activities"
        )
        try:
            response = await self.channel.http().post(
                url, json=activity, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as error:
            raise RetryLater(f"connector unreachable: {type(error).__name__}") from None
        status = response.status_code
        if status in (200, 201, 202):
            try:
                answer = response.json()
            except ValueError:
                answer = {}
            return Delivered(
                external_id=str(answer.get("id")) if isinstance(answer, dict) and answer.get("id") else None
            )
        summary = f"connector answered {status}: {response.text[:200]}"
        if status == 401:
            await self.channel.tokens.forget()  # revoked or rotated: the next try fetches a new one
            raise RetryLater(summary)
        # 403, 404: the bot was removed or blocked, or the conversation is gone: nothing will reach this customer.
        raise channels.delivery_error(
            summary,
            status=status,
            unreachable=status in (403, 404),
            after=channels.retry_after(response.headers.get("Retry-After")),
        )


# --- shared state ---------------------------------------------------------------------------------------


def _reference_key(conversation_id: str) -> str:
    return "teams:conversation:" + hashlib.sha256(conversation_id.encode()).hexdigest()[:48]


# --- the channel and its settings -----------------------------------------------------------------------


class TeamsChannel(SendingChannel):
    """Teams (and legacy Skype): the activity endpoint, and a sender that writes into stored conversations."""

    name = CHANNEL

    def __init__(self, bot: Bot, config: TeamsSettings) -> None:
        self.bot = bot
        self.config = config
        self._client: httpx.AsyncClient | None = None
        self.validator = TokenValidator(config, self.http)
        self.tokens = ConnectorTokens(config, self.http, bot.db)
        self._tasks: set[asyncio.Task[None]] = set()
        self.outbox = TeamsSender(self)

    def http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False)
        return self._client

    def routes(self) -> Sequence[BaseRoute]:
        return [Route(PATH, self.activities, methods=["POST"])]

    async def start(self) -> None:
        for key in await asyncio.to_thread(self._waiting):
            self._spawn(key)  # messages a previous run acknowledged before their files were fetched

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def activities(self, request: Request) -> Response:
        try:
            claims, endorsements = await self.validator.validate(request.headers.get("authorization"))
        except Unauthorized as error:
            log.info("Teams activity refused: %s", error)
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        body = await request.body()
        try:
            activity = read_activity(body)
        except Malformed as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        try:
            bound = check_activity(claims, endorsements, activity)
        except Unauthorized as error:
            log.info("Teams activity refused: %s", error)
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        if activity.get("channelId") not in CHANNEL_IDS:
            return JSONResponse({"error": "unsupported channelId"}, status_code=400)

        reference = replace(reference_of(activity), bound_to=bound)
        files: list[FileRef] = []
        if activity["type"] in ("message", "messageUpdate"):
            if activity["type"] == "messageUpdate" and not is_edit(activity):
                return Response(status_code=200)  # undelete, reactions on the message: nothing to say
            text = message_text(activity)
            files = file_refs(activity) if activity["type"] == "message" else []
            if not text and not files:
                return Response(status_code=200)
            inbound = to_inbound(activity, text=text, body=body)
        elif is_greeting(activity):
            inbound = to_inbound(activity, text="/start", body=body)
        else:
            return Response(status_code=200)  # typing, reactions, deletions, installs: nothing to say
        if files:
            # Acknowledged first, fetched after: the files wait in the database, so a restart still fetches them.
            key = await asyncio.to_thread(self._stage, reference, inbound, files)
            if key is not None:
                self._spawn(key)
        else:
            await asyncio.to_thread(self._accept, reference, inbound)
        return Response(status_code=200)

    def _keep_reference(self, reference: Reference) -> None:
        """Store the conversation's reference; one bound to another service URL or tenant is never replaced."""
        key = _reference_key(reference.conversation_id)
        stored = channels.kv_get(self.bot.db, key)
        if stored is not None:
            before = Reference(**stored[0])
            same_place = (before.bound_to or normal_service_url(before.service_url)) == reference.bound_to
            if not same_place or (before.tenant_id and before.tenant_id != reference.tenant_id):
                log.warning(
                    "Teams activity for a known conversation names another service URL or tenant; "
                    "the stored reference is kept"
                )
                return
            if before == reference:
                return
        channels.kv_put(self.bot.db, key, asdict(reference))

    def _accept(self, reference: Reference, inbound: InboundMessage) -> None:
        # The reference first: the reply to this message needs it, and so does an engineer days later.
        self._keep_reference(reference)
        self.bot.engine.accept(inbound)

    # --- files: fetched after the 200 ------------------------------------------------------------------

    def _stage(self, reference: Reference, inbound: InboundMessage, files: Sequence[FileRef]) -> str | None:
        """Keep the message and its file references until the files are fetched; None for a redelivery."""
        self._keep_reference(reference)
        if self.bot.engine.seen(inbound.channel, inbound.external_id):
            return None
        key = PENDING_PREFIX + hashlib.sha256(inbound.external_id.encode()).hexdigest()[:48]
        if channels.kv_get(self.bot.db, key) is not None:
            return None  # already waiting: the task that stored it fetches it
        message = inbound_to_payload(inbound)
        channels.kv_put(
            self.bot.db,
            key,
            {
                "message": message,
                "files": [asdict(f) for f in files],
                "service_url": reference.service_url,
                "tries": 0,
            },
            utcnow() + PENDING_KEEP,
        )
        return key

    def _spawn(self, key: str) -> None:
        task = asyncio.create_task(self._complete(key), name=f"teams-files-{key[-8:]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _complete(self, key: str) -> None:
        """Fetch a waiting message's files and accept it; a failure is tried again a few times, then the
        message goes in with the files it could get (the customer hears which were missing)."""
        while True:
            stored = await asyncio.to_thread(channels.kv_get, self.bot.db, key)
            if stored is None:
                return
            value = stored[0]
            try:
                attachments = await self._download(
                    [FileRef(**f) for f in value["files"]],
                    value["service_url"],
                    final=value["tries"] + 1 >= MAX_DOWNLOAD_TRIES,
                )
                inbound = replace(inbound_from_payload(value["message"]), attachments=attachments)
                await self.bot.engine.accept_soon(inbound)
                await asyncio.to_thread(channels.kv_delete, self.bot.db, key)
                return
            except _TryLater:
                value = {**value, "tries": value["tries"] + 1}
                await asyncio.to_thread(channels.kv_put, self.bot.db, key, value, utcnow() + PENDING_KEEP)
                await asyncio.sleep(min(60.0, 2.0 ** value["tries"]))
            except Exception:
                log.exception("a Teams message with files could not be stored yet")
                await asyncio.sleep(5.0)

    def _waiting(self) -> list[str]:
        return channels.kv_keys(self.bot.db, PENDING_PREFIX)

    def fetch_policy(self, service_url: str) -> FetchPolicy:
        """Where this conversation's files may come from: the connector (the only host our token goes to)
        and the file hosts of Teams' pre-signed downloads; https, public addresses, size and time limits."""
        return FetchPolicy.from_settings(
            self.bot.settings, hosts=[service_url, *FILE_HOSTS], token_hosts=[service_url]
        )

    async def _download(
        self, refs: Sequence[FileRef], service_url: str, *, final: bool
    ) -> tuple[Attachment, ...]:
        """The files, each through the fetch policy; _TryLater when one failed in a way that may pass (unless
        this is the last try)."""
        found = []
        async with Fetcher(self.fetch_policy(service_url)) as fetcher:
            for ref in refs:
                try:
                    token = await self.tokens.get() if ref.authenticated else None
                    fetched = await fetcher.get(ref.url, bearer=token)
                except RetryLater:  # no connector token now
                    if not final:
                        raise _TryLater from None
                    found.append(self.bot.attachments.rejected(ref.name, "unavailable"))
                    continue
                except FetchTooLarge:
                    found.append(self.bot.attachments.rejected(ref.name, "too_large"))
                    continue
                except FetchRefused as error:
                    # Never fetched: a host, address, scheme or redirect the policy does not allow.
                    log.warning("Teams attachment refused by the fetch policy: %s", error.reason)
                    found.append(self.bot.attachments.rejected(ref.name, "unavailable"))
                    continue
                except FetchFailed as error:
                    log.warning("Teams attachment download failed: %s", error)
                    if channels.passing(error) and not final:
                        raise _TryLater from None
                    found.append(self.bot.attachments.rejected(ref.name, "unavailable"))
                    continue
                data = fetched.data
                # Teams declares pasted pictures only as `image/*`: the bytes say which.
                mime = (
                    ref.mime
                    if not (ref.mime.endswith("/*") or ref.mime == "application/octet-stream")
                    else sniff(data) or ref.mime
                )
                name = ref.name if "." in ref.name else ref.name + (mimetypes.guess_extension(mime) or "")
                kind = (
                    "photo"
                    if mime.startswith("image/")
                    else "voice"
                    if mime.startswith("audio/")
                    else "document"
                )
                try:
                    found.append(
                        await asyncio.to_thread(
                            self.bot.attachments.save, data, name=name, mime=mime, kind=kind
                        )
                    )
                except AttachmentRejected as error:
                    found.append(self.bot.attachments.rejected(ref.name, error.reason))
        return tuple(found)


class _TryLater(Exception):
    """A download failed in a way that may pass: the waiting message is tried again."""


def teams_settings(bot: Bot) -> TeamsSettings:
    s = bot.settings
    return TeamsSettings(
        app_id=s.teams_app_id,
        app_password=s.teams_app_password.get_secret_value() if s.teams_app_password else "",
        openid_metadata_url=s.teams_openid_metadata_url,
        token_url=token_url(s.teams_token_url, s.teams_tenant_id),
        issuer=s.teams_issuer,
    )


def token_url(template: str, tenant: str) -> str:
    """The token endpoint of the app's own tenant: `{tenant}` filled in; the old fixed multi-tenant URL
    (botframework.com) moves to the configured tenant too, since a single-tenant app is unknown there."""
    tenant = tenant.strip() or "botframework.com"
    if "{tenant}" in template:
        return template.replace("{tenant}", quote(tenant, safe=""))
    return template.replace("/botframework.com/", f"/{quote(tenant, safe='')}/")


def from_settings(bot: Bot) -> TeamsChannel | None:
    """The Teams channel when TEAMS_APP_ID and TEAMS_APP_PASSWORD are set; None otherwise."""
    s = bot.settings
    if not (s.teams_app_id and s.teams_app_password):
        if s.teams_app_id or s.teams_app_password:
            log.warning("Teams is half configured: TEAMS_APP_ID and TEAMS_APP_PASSWORD are both needed")
        return None
    if s.teams_tenant_id.strip() in ("", "botframework.com"):
        log.warning(
            "TEAMS_TENANT_ID is not set: the bot asks the multi-tenant authority for its token, which "
            "only bots registered before mid-2025 as multi-tenant may do"
        )
    return TeamsChannel(bot, teams_settings(bot))
