"""The engineers' desk in Slack: one message per case in the escalation channel, its thread as the conversation.

slack-bolt's AsyncApp serves HTTP mode (signed requests on /slack/*) or Socket Mode; engineer actions go
through bot.desk, case events from the outbox post and update the case message (docs/channels/slack.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapters import slack_blocks as ui
from adapters.base import Channel
from bot import channels, fulfilment
from bot.app import Bot
from bot.config import Settings
from bot.desk import CaseNotFound, DeskError
from bot.messages import CASE_OPENED, CASE_UPDATED, CUSTOMER_MESSAGE, DeskEvent
from bot.outbox import Delivered, PermanentFailure, RetryLater
from bot.status import CaseStatus
from bot.store.clock import utcnow
from policy import decision_to_json, evaluate, normalize_serial, parse_serial, refusal_clauses, unit_claim

log = logging.getLogger(__name__)

Listener = Callable[..., Awaitable[None]]  # a Bolt listener: Bolt passes the arguments its parameters name

CHANNEL = "slack"
ORIGIN = "slack"
EVENTS_PATH, INTERACTIVITY_PATH, COMMANDS_PATH = "/slack/events", "/slack/interactivity", "/slack/commands"
FORM = "application/x-www-form-urlencoded"
# Handled event ids are kept in the KeyValue table, so that Slack's redelivery of an event (same event_id,
# with X-Slack-Retry-Num) is acknowledged and dropped, across restarts and workers.
SEEN_PREFIX = "slack-event:"
SEEN_FOR = timedelta(days=2)  # Slack retries an event for about an hour; two days leaves a wide margin
MEMBERS_CACHE_SECONDS = 60.0
NAMES_CACHE_SECONDS = 600.0
MAX_MEMBER_PAGES = 50
REMIND_BATCH = 50
SOCKET_RETRY_SECONDS = 30.0
NOTE = re.compile(r"^\s*note:\s*", re.IGNORECASE)
REFUSAL = (
    "Only the after-sales engineers can act on warranty cases; nothing was changed. "
    "Ask an admin to add you to the escalation channel or to SLACK_ENGINEER_IDS."
)
# Events this desk listens for; any other type the app is subscribed to is acknowledged (200) and dropped,
# since Bolt answers an event without a listener 404, which Slack counts as a failure and retries.
HANDLED_EVENTS = frozenset({"message", "app_home_opened", "app_mention", "tokens_revoked", "app_uninstalled"})
# The workspace took the app's token away: nothing can be sent until the app is installed again.
REVOKED_PREFIX = "slack:revoked:"
REVOKED_ERRORS = frozenset(
    {"token_revoked", "account_inactive", "invalid_auth", "not_authed", "token_expired"}
)
REVOKED_WAIT_SECONDS = 300.0
CORRECTION = "Correction: "
DELETED = (
    "Deleting a message in Slack does not take it back from the customer: they already have it. "
    "Write a correction in the thread if needed."
)
# Slack errors worth another try; everything else (channel_not_found, invalid_blocks, ...) will not improve.
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


def revoked_problem(reason: str) -> str:
    """What /healthz says while Slack has taken the token away (`reason`: the event or the error)."""
    return f"Slack {reason}: nothing is posted until the app is installed again with a new token"


class SlackSettingsError(ValueError):
    """Slack is switched on (SLACK_BOT_TOKEN) but a setting it needs is missing or wrong."""


# --- settings -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SlackConfig:
    """The Slack settings in force, checked once at start."""

    bot_token: str
    signing_secret: str
    app_token: str
    api_url: str
    channel: str
    engineer_ids: frozenset[str]
    remind_after: timedelta
    remind_group: str
    mode: str  # http | socket, resolved from SLACK_MODE
    public_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> SlackConfig | None:
        token = settings.slack_bot_token.get_secret_value().strip() if settings.slack_bot_token else ""
        if not token:
            return None
        secret = (
            settings.slack_signing_secret.get_secret_value().strip() if settings.slack_signing_secret else ""
        )
        app_token = settings.slack_app_token.get_secret_value().strip() if settings.slack_app_token else ""
        mode = settings.slack_mode
        if mode == "auto":
            # A public URL means Slack can call us; without one, Socket Mode needs no inbound connection.
            mode = "http" if settings.public_url or not app_token else "socket"
        if mode == "http" and not secret:
            raise SlackSettingsError(
                "Slack in HTTP mode needs SLACK_SIGNING_SECRET (or SLACK_APP_TOKEN for Socket Mode)"
            )
        if mode == "socket" and not app_token:
            raise SlackSettingsError("Slack in Socket Mode needs SLACK_APP_TOKEN (xapp-...)")
        if not settings.slack_escalation_channel.strip():
            raise SlackSettingsError(
                "SLACK_ESCALATION_CHANNEL (a channel id such as C07ESC4L8QZ) must be set"
            )
        if settings.slack_remind_after <= timedelta(0):
            raise SlackSettingsError("SLACK_REMIND_AFTER must be positive")
        api_url = (
            settings.slack_api_url if settings.slack_api_url.endswith("/") else settings.slack_api_url + "/"
        )
        return cls(
            bot_token=token,
            signing_secret=secret,
            app_token=app_token,
            api_url=api_url,
            channel=settings.slack_escalation_channel.strip(),
            engineer_ids=frozenset(i.strip() for i in settings.slack_engineer_ids.split(",") if i.strip()),
            remind_after=settings.slack_remind_after,
            remind_group=settings.slack_remind_group.strip(),
            mode=mode,
            public_url=settings.public_url.rstrip("/"),
        )

    @property
    def remind_mention(self) -> str:
        group = self.remind_group
        if not group:
            return ""
        return group if group.startswith("<") else f"<!subteam^{group}>"

    @property
    def remind_interval(self) -> float:
        """How often unclaimed cases are looked for: a tenth of the delay, between half a second and a minute."""
        return min(60.0, max(0.5, self.remind_after.total_seconds() / 10))


# --- verify and parse (HTTP mode) ----------------------------------------------------------------------------


_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


def headers_ok(timestamp: str, signature: str) -> bool:
    """Headers of the shape Slack sends: a number for a timestamp, a v0 HMAC-SHA256 signature."""
    return (
        timestamp.isascii()
        and timestamp.isdigit()
        and len(timestamp) <= 12
        and bool(_SIGNATURE.fullmatch(signature))
    )


def signed_by_slack(secret: str, body: bytes, timestamp: str, signature: str, *, now: float) -> bool:
    """Slack's v0 check over raw bytes (the SDK's verifier needs UTF-8), recent timestamps only."""
    if not secret or abs(now - int(timestamp)) > 300:
        return False
    expected = (
        "v0="
        + hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    )
    return hmac.compare_digest(expected.encode(), signature.encode())


def parse_body(body: bytes, kind: str, content_type: str) -> dict[str, Any]:
    """A Slack request body of the path's kind, read as Bolt will read it.

    `events`: a JSON object with a type; `interactivity`: a form whose `payload` is such an object;
    `commands`: a form with the command. Raises ValueError otherwise, so that a malformed body gets 400
    instead of an error (500) or "unhandled" (404) inside Bolt.
    """
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    parsed: Any
    if kind == "events":
        parsed = json.loads(text) if text.startswith("{") else None
    else:
        # Bolt reads any body sent as application/json as JSON, a form too; Slack sends these two as forms.
        if content_type.partition(";")[0].strip().lower() != FORM:
            raise ValueError(f"a Slack {kind} request must be form-encoded")
        form = dict(parse_qsl(text, keep_blank_values=True)) if not text.startswith("{") else {}
        parsed = form if kind == "commands" else json.loads(form.get("payload") or "null")
    if not isinstance(parsed, dict):
        raise ValueError(f"not a Slack {kind} request")
    # Slack checks the certificate of a slash command's URL with `ssl_check=1`; Bolt answers it.
    if (
        kind == "commands"
        and not str(parsed.get("command", "")).startswith("/")
        and not parsed.get("ssl_check")
    ):
        raise ValueError("not a slash command")
    if kind != "commands" and not (_listened(parsed) and _shaped(parsed)):
        raise ValueError(f"not a Slack {kind} request this desk handles")
    return parsed


def _listened(payload: Mapping[str, Any]) -> bool:
    """A payload of a type this desk listens for, with what Bolt indexes to pick the listener."""
    kind = payload.get("type")
    if kind == "event_callback":
        event = payload.get("event")
        return isinstance(event, dict) and isinstance(event.get("type"), str)
    if kind == "block_actions":
        actions = payload.get("actions")
        return (
            isinstance(actions, list)
            and bool(actions)
            and all(isinstance(a, dict) and isinstance(a.get("action_id"), str) for a in actions)
        )
    if kind in ("view_submission", "view_closed"):
        view = payload.get("view")
        return (
            isinstance(view, dict)
            and view.get("type") == "modal"
            and isinstance(view.get("callback_id"), str)
        )
    return kind in ("url_verification", "app_rate_limited")  # answered by Bolt and by nothing, respectively


# What else Bolt reads from a payload (for its context and its log lines) without checking types: ids given
# as text or as an object with an id, and these objects and lists of objects. Slack sends nothing else
# there; anything else would fail inside Bolt (a 500, which Slack retries).
_IDS = ("user", "channel", "team", "enterprise")
_OBJECTS = ("event", "view", "container", "message", "previous_message", "item", "assistant_thread")
_LISTS = ("authorizations", "actions", "response_urls")


def _shaped(node: Mapping[str, Any]) -> bool:
    """True when `node`, and the objects in it that Bolt looks into, have the shapes Bolt relies on."""
    for key in _IDS:
        if node.get(key) is not None and not isinstance(node[key], str | dict):
            return False
    for key in _OBJECTS:
        if key in node and not (isinstance(node[key], dict) and _shaped(node[key])):
            return False
    for key in _LISTS:
        items = node.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) and _shaped(i) for i in items):
            return False
    return True


# --- the desk ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Submission:
    """What a submitted modal asks of the desk (SlackDesk._submit)."""

    block: str  # the field a refusal is shown on: not an engineer, or refused by the desk
    action: Callable[[str], Any]  # the desk action, run as the engineer (by display name)
    invalid: dict[str, str] | None = None  # the fields' errors instead, when what they hold will not do
    # Opened before its user was known to be an engineer (on_open_modal): it closes first, and they are told.
    closes_first: bool = False


@dataclass(frozen=True, kw_only=True)
class EngineerPost:
    """An engineer's message in a case's thread, as the customer would read it."""

    ref: str  # the case
    user: str
    thread_ts: str
    text: str  # without a leading "note:", colleagues' mentions as their names
    note: bool  # marked "note:": it stays internal


class SlackDesk(Channel):
    """The Slack channel: HTTP routes (or Socket Mode), the outbox sender for case events, and reminders."""

    name = CHANNEL
    takes_desk_events = True

    def __init__(self, bot: Bot, config: SlackConfig) -> None:
        self.bot = bot
        self.config = config
        bolt_logger = logging.getLogger(f"{__name__}.bolt")
        # Bolt logs rejected request bodies at INFO; they carry Slack's verification token and message text.
        bolt_logger.setLevel(max(logging.WARNING, bolt_logger.getEffectiveLevel()))
        self.client = AsyncWebClient(
            token=config.bot_token, base_url=config.api_url, timeout=10, logger=bolt_logger
        )
        # AsyncApp verifies no token at init (it calls auth.test lazily, through this client, on the first
        # request), so nothing reaches slack.com when SLACK_API_URL points elsewhere.
        self.app = AsyncApp(
            client=self.client,
            signing_secret=config.signing_secret,
            logger=bolt_logger,
            name="warranty-desk",
            process_before_response=False,
        )
        self.handler = AsyncSlackRequestHandler(self.app)
        self.socket: AsyncSocketModeHandler | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self._bot_user: str | None = None
        self._members: tuple[float, frozenset[str]] | None = None
        self._names: dict[str, tuple[float, str]] = {}
        self.revoked: str | None = None  # why Slack took the token away, while it is so
        self._revoked_key = REVOKED_PREFIX + hashlib.sha256(config.bot_token.encode()).hexdigest()[:48]
        self._register()

    # --- Channel -----------------------------------------------------------------------------------------

    def routes(self) -> Sequence[BaseRoute]:
        if self.config.mode != "http":
            return []
        return [
            Route(EVENTS_PATH, self.events, methods=["POST"]),
            Route(INTERACTIVITY_PATH, self.interactivity, methods=["POST"]),
            Route(COMMANDS_PATH, self.commands, methods=["POST"]),
        ]

    def sender(self) -> SlackDesk:
        return self

    async def start(self) -> None:
        self.revoked = await asyncio.to_thread(self._load_revoked)
        self._stop = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._remind_loop(), name="slack-reminders"))
        if self.config.mode == "socket":
            self.socket = AsyncSocketModeHandler(self.app, self.config.app_token)
            # connect_async opens the websocket; a task keeps start() prompt even when Slack is slow.
            self._tasks.append(asyncio.create_task(self._connect_socket(), name="slack-socket"))

    async def start_sending(self) -> None:
        """A worker's sender knows a token Slack took away (posting waits, as in the front)."""
        self.revoked = await asyncio.to_thread(self._load_revoked)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.socket is not None:
            with contextlib.suppress(Exception):
                await self.socket.close_async()  # type: ignore[no-untyped-call]
            self.socket = None

    async def _connect_socket(self) -> None:
        """Connect, trying again every 30 s until it works; once connected the socket client reconnects itself."""
        assert self.socket is not None
        while not self._stop.is_set():
            try:
                await self.socket.connect_async()  # type: ignore[no-untyped-call]
                log.info("Slack Socket Mode connected")
                return
            except Exception as error:
                log.error(
                    "Slack Socket Mode could not connect (%s); trying again in 30 s", type(error).__name__
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=SOCKET_RETRY_SECONDS)

    # --- HTTP ----------------------------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        return await self.http(request, "events")

    async def interactivity(self, request: Request) -> Response:
        return await self.http(request, "interactivity")

    async def commands(self, request: Request) -> Response:
        return await self.http(request, "commands")

    async def http(self, request: Request, kind: str) -> Response:
        """Slack's requests: signature and body shape checked here, before Bolt, then dispatched by Bolt.

        Bolt reads fields (user, enterprise, authorizations) before it checks the signature and fails on odd
        types, so a forged body must never reach it; an authentic but malformed one is answered 400, never
        500 (Slack would retry it).
        """
        body = await request.body()
        timestamp = request.headers.get("x-slack-request-timestamp", "")
        signature = request.headers.get("x-slack-signature", "")
        secret = self.config.signing_secret
        if not headers_ok(timestamp, signature) or not signed_by_slack(
            secret, body, timestamp, signature, now=time.time()
        ):
            return JSONResponse({"error": "invalid request"}, status_code=401)
        try:
            parsed = parse_body(body, kind, request.headers.get("content-type", ""))
        except ValueError:
            return JSONResponse({"error": "malformed request body"}, status_code=400)
        if (
            kind == "events"
            and parsed.get("type") == "event_callback"
            and parsed["event"]["type"] not in HANDLED_EVENTS
        ):
            return Response(status_code=200)  # subscribed to, not used: acknowledged so Slack does not retry
        try:
            return await self.handler.handle(request)
        except (TypeError, ValueError, LookupError, AttributeError) as error:
            # Raised while Bolt builds its request from the body; errors in listeners Bolt answers itself.
            log.warning("Slack %s request Bolt could not read: %s", kind, type(error).__name__)
            return JSONResponse({"error": "malformed request body"}, status_code=400)

    # --- listeners -----------------------------------------------------------------------------------------

    def _register(self) -> None:
        """Which listener Bolt calls for each event, button, modal submission and command."""
        events: dict[str, Listener] = {
            "message": self.on_message,
            "app_home_opened": self.on_home_opened,
            "app_mention": self.on_mention,
            "tokens_revoked": self.on_revoked,
            "app_uninstalled": self.on_revoked,
        }
        actions: dict[str, Listener] = {
            ui.CLAIM: self.on_claim,
            ui.CHOOSE_METHOD: self.on_choose_method,
            ui.ASK_CUSTOMER: self.on_open_modal,
            ui.NOT_COVERED: self.on_open_modal,
            ui.CORRECT_UNIT: self.on_open_modal,
            ui.CLOSE: self.on_close,
            ui.FULFIL: self.on_fulfil,
        }
        modals: dict[str, Callable[[dict[str, Any]], Submission]] = {
            ui.FULFIL_VIEW: self._fulfil_submission,
            ui.ASK_VIEW: self._ask_submission,
            ui.REFUSE_VIEW: self._refuse_submission,
            ui.CORRECT_VIEW: self._correct_submission,
            ui.GOODWILL_VIEW: self._goodwill_submission,
        }
        for event, listener in events.items():
            self.app.event(event)(listener)
        for action_id, listener in actions.items():
            self.app.action(action_id)(listener)
        for callback_id, read in modals.items():
            self.app.view(callback_id)(self._on_submitted(read))
        self.app.command("/warranty")(self.on_warranty_command)

    async def on_message(self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any]) -> None:
        """A message in the escalation channel: an engineer's reply in a case thread goes to the customer."""
        # Events API listeners are acknowledged by Bolt before they run.
        if event.get("channel") != self.config.channel:
            return
        if event.get("subtype") == "message_changed":
            await self._on_edited(body, event, context)
            return
        if event.get("subtype") == "message_deleted":
            await self._on_deleted(body, event, context)
            return
        if event.get("subtype") not in (None, "file_share", "thread_broadcast"):
            return
        post = await self._engineer_post(body, event, context)
        if post is None:
            return
        if event.get("files") and not post.text:
            await self._ephemeral(
                post.user,
                "Files attached in Slack are not sent to the customer; write the text you want them to read.",
                post.thread_ts,
            )
            return
        if await self._relay(post, post.text, note=post.note):
            # A lock marks what stayed internal; the outbox tray what went to the customer.
            await self._react(str(event.get("ts") or ""), "lock" if post.note else "outbox_tray")
            if event.get("files"):
                await self._ephemeral(
                    post.user, "Files attached in Slack are not sent to the customer.", post.thread_ts
                )

    async def _engineer_post(
        self, body: Mapping[str, Any], message: Mapping[str, Any], context: Mapping[str, Any]
    ) -> EngineerPost | None:
        """What an engineer wrote when `message` is a person's message in a case thread, seen for the first
        time, by an engineer (anyone else is told privately that nothing was sent); else None."""
        user, thread_ts, raw = message.get("user"), message.get("thread_ts"), message.get("text") or ""
        if not isinstance(user, str) or not isinstance(thread_ts, str) or not isinstance(raw, str):
            return None  # not a message an engineer typed in a thread
        if (
            not user
            or message.get("bot_id")
            or user == (context.get("bot_user_id") or await self._bot_user_id())
        ):
            return None  # our own relays (and other bots) would echo back to the customer
        if not thread_ts or thread_ts == message.get("ts"):
            return None
        if not await self._first_time(body):
            return None
        ref = await asyncio.to_thread(self.bot.desk.case_at, "ts", thread_ts)
        if ref is None:
            return None
        if not await self._is_engineer(user):
            await self._ephemeral(user, REFUSAL + " Your message was not sent to the customer.", thread_ts)
            return None
        note = NOTE.match(raw)
        text = await self._plain(raw[note.end() :] if note else raw)
        return EngineerPost(ref=ref, user=user, thread_ts=thread_ts, text=text, note=note is not None)

    async def _relay(self, post: EngineerPost, text: str, *, note: bool) -> bool:
        """`text` to the post's case as the engineer: a note stays internal, a reply goes to the customer."""
        act = self.bot.desk.note if note else self.bot.desk.reply
        return await self._act(
            post.user, post.thread_ts, lambda name: act(post.ref, engineer=name, text=text, origin=ORIGIN)
        )

    async def _on_edited(
        self, body: Mapping[str, Any], event: Mapping[str, Any], context: Mapping[str, Any]
    ) -> None:
        """An engineer corrected a message in a case thread: the customer gets the corrected text, marked so
        (a chat message cannot be edited on the customer's side)."""
        message, previous = event.get("message"), event.get("previous_message")
        if not isinstance(message, dict) or not isinstance(previous, dict):
            return
        if message.get("text") == previous.get("text"):
            return  # an unfurl or a reaction changed the message, not its words
        post = await self._engineer_post(body, message, context)
        if post is None or not post.text:
            return
        note = post.note or NOTE.match(str(previous.get("text") or "")) is not None
        if await self._relay(post, CORRECTION + post.text, note=note):
            await self._react(str(message.get("ts") or ""), "lock" if post.note else "outbox_tray")

    async def _on_deleted(
        self, body: Mapping[str, Any], event: Mapping[str, Any], context: Mapping[str, Any]
    ) -> None:
        """A relayed message deleted in Slack: the engineer is told that the customer still has it."""
        previous = event.get("previous_message")
        if not isinstance(previous, dict) or NOTE.match(str(previous.get("text") or "")):
            return
        user, thread_ts = previous.get("user"), previous.get("thread_ts")
        if not isinstance(user, str) or not isinstance(thread_ts, str) or previous.get("bot_id"):
            return
        if (
            not await self._first_time(body)
            or await asyncio.to_thread(self.bot.desk.case_at, "ts", thread_ts) is None
        ):
            return
        await self._ephemeral(user, DELETED, thread_ts)

    async def _plain(self, raw: str) -> str:
        """The engineer's words as the customer reads them, colleagues' mentions as their names."""
        names = {user: await self._display_name(user) for user in ui.mentioned_users(raw)}
        return ui.slack_to_plain(raw, names)

    async def on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """The bot mentioned: the message event of the same post is what the desk acts on."""
        return None

    async def on_revoked(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """tokens_revoked or app_uninstalled: sending stops, and /healthz says why, until a new token."""
        kind = str(event.get("type"))
        if kind == "tokens_revoked" and not (event.get("tokens") or {}).get("bot"):
            return  # a user token of the workspace: not ours
        await asyncio.to_thread(self._mark_revoked, kind)

    async def on_claim(self, ack: Callable[..., Any], body: dict[str, Any], action: dict[str, Any]) -> None:
        await self._on_case_button(ack, body, action, self.bot.desk.claim)

    async def _on_case_button(
        self, ack: Callable[..., Any], body: dict[str, Any], action: dict[str, Any], act: Callable[..., Any]
    ) -> None:
        """A button whose value is the case's reference and whose press is one desk action (claim, close)."""
        ref = str(action.get("value", ""))
        await self._ack_and_act(ack, _user_id(body), lambda name: act(ref, engineer=name, origin=ORIGIN))

    async def on_choose_method(
        self, ack: Callable[..., Any], body: dict[str, Any], action: dict[str, Any]
    ) -> None:
        await ack()
        user = _user_id(body)
        if await self._refused(user):
            return
        ref, _, method = str((action.get("selected_option") or {}).get("value", "")).partition("|")
        if method not in ui.SELECTABLE_METHODS:
            await self._ephemeral(user, "Choose one of the listed methods.")
            return
        if await self._outside_decision(user, body, ref, method):
            return
        await self._act(
            user,
            None,
            lambda name: self.bot.desk.choose_method(ref, engineer=name, method=method, origin=ORIGIN),
        )

    async def _outside_decision(self, user: str, body: dict[str, Any], ref: str, method: str) -> bool:
        """A method the decision does not allow is never set from the menu: the goodwill modal asks first."""
        try:
            case = await asyncio.to_thread(self.bot.desk.get_case, ref)
        except CaseNotFound as error:
            await self._ephemeral(user, str(error))
            return True
        allowed = case.get("allowed_methods") or []
        if method in allowed or case["status"] == CaseStatus.closed:
            return False  # the desk sets it, or says the case is closed
        try:
            await self.client.views_open(
                trigger_id=body["trigger_id"], view=ui.goodwill_modal(ref, method, allowed)
            )
        except (SlackApiError, KeyError) as error:
            log.warning("views.open failed: %s", type(error).__name__)
        return True

    async def on_fulfil(self, ack: Callable[..., Any], body: dict[str, Any], action: dict[str, Any]) -> None:
        """The next service step: done at once when it needs no input, else its modal (tracking, slots…)."""
        await ack()
        user = _user_id(body)
        if self._known_engineer(user) is False:
            await self._ephemeral(user, REFUSAL)
            return
        ref, _, step = str((action.get("selected_option") or {}).get("value", "")).partition("|")
        if step not in fulfilment.INPUTS:
            await self._ephemeral(user, "Choose one of the listed steps.")
            return
        needs = fulfilment.INPUTS[step]
        if needs:
            view = ui.fulfil_modal(ref, step, fulfilment.ACTION_LABELS[step], needs)
            try:
                await self.client.views_open(trigger_id=body["trigger_id"], view=view)
            except (SlackApiError, KeyError) as error:
                log.warning("views.open failed: %s", type(error).__name__)
            return
        if await self._refused(user):
            return
        await self._act(
            user, None, lambda name: self.bot.desk.fulfil(ref, engineer=name, action=step, origin=ORIGIN)
        )

    def _fulfil_submission(self, view: dict[str, Any]) -> Submission:
        text = _view_value(view, ui.FULFIL_BLOCK, ui.FULFIL_INPUT)
        ref, _, step = str(view.get("private_metadata", "")).partition("|")
        return Submission(
            block=ui.FULFIL_BLOCK,
            action=lambda name: self.bot.desk.fulfil(
                ref, engineer=name, action=step, text=text, origin=ORIGIN
            ),
        )

    async def on_close(self, ack: Callable[..., Any], body: dict[str, Any], action: dict[str, Any]) -> None:
        await self._on_case_button(ack, body, action, self.bot.desk.close)

    async def on_open_modal(
        self, ack: Callable[..., Any], body: dict[str, Any], action: dict[str, Any]
    ) -> None:
        """Ask customer / Not covered: open the modal (the trigger id is valid for 3 seconds only)."""
        await ack()
        user = _user_id(body)
        # The trigger id lasts 3 seconds: when telling an engineer needs Slack, the modal opens first and its
        # submission is refused instead.
        if self._known_engineer(user) is False:
            await self._ephemeral(user, REFUSAL)
            return
        ref = str(action.get("value", ""))
        try:
            case = await asyncio.to_thread(self.bot.desk.get_case, ref)
        except CaseNotFound as error:
            await self._ephemeral(user, str(error))
            return
        if case["status"] == CaseStatus.closed:
            await self._ephemeral(user, f"{ref} is closed.")
            return
        if action["action_id"] == ui.ASK_CUSTOMER:
            view = ui.ask_modal(case["ref"])
        elif action["action_id"] == ui.CORRECT_UNIT:
            view = ui.correct_modal(case["ref"], case["units"])
        else:
            cited = refusal_clauses((u["outcome"], u["clauses"]) for u in case["units"])
            view = ui.refuse_modal(case["ref"], cited)
        try:
            await self.client.views_open(trigger_id=body["trigger_id"], view=view)
        except SlackApiError as error:
            log.warning("views.open failed: %s", error.response.get("error"))

    def _ask_submission(self, view: dict[str, Any]) -> Submission:
        question = _view_value(view, ui.QUESTION_BLOCK, ui.QUESTION_INPUT)
        ref = str(view.get("private_metadata", ""))
        return Submission(
            block=ui.QUESTION_BLOCK,
            action=lambda name: self.bot.desk.ask_customer(
                ref, engineer=name, question=question, origin=ORIGIN
            ),
            invalid=_first_error((not question, ui.QUESTION_BLOCK, "Write the question.")),
            closes_first=True,
        )

    def _refuse_submission(self, view: dict[str, Any]) -> Submission:
        reason = _view_value(view, ui.REASON_BLOCK, ui.REASON_INPUT)
        clauses = ui.parse_clauses(_view_value(view, ui.CLAUSES_BLOCK, ui.CLAUSES_INPUT))
        unknown = [c for c in clauses if c not in self.bot.policy.clauses]
        ref = str(view.get("private_metadata", ""))
        return Submission(
            block=ui.REASON_BLOCK,
            action=lambda name: self.bot.desk.choose_method(
                ref,
                engineer=name,
                method="not_covered",
                reason=reason,
                clauses=clauses or None,
                origin=ORIGIN,
            ),
            invalid=_first_error(
                (not reason, ui.REASON_BLOCK, "Give the reason."),
                (bool(unknown), ui.CLAUSES_BLOCK, f"Not in the policy: {', '.join(unknown)}"),
            ),
            closes_first=True,
        )

    def _correct_submission(self, view: dict[str, Any]) -> Submission:
        serial = _view_choice(view, ui.SERIAL_BLOCK, ui.SERIAL_INPUT)
        changes: dict[str, Any] = {}
        for field, block, element in (
            ("port_arrival_date", ui.ARRIVAL_BLOCK, ui.ARRIVAL_INPUT),
            ("production_date", ui.PRODUCTION_BLOCK, ui.PRODUCTION_INPUT),
        ):
            picked = _view_date(view, block, element)
            if picked:
                changes[field] = picked
        proof = _view_choice(view, ui.PROOF_BLOCK, ui.PROOF_INPUT)
        if proof:
            changes["proof"] = proof
        note = _view_value(view, ui.NOTE_BLOCK, ui.NOTE_INPUT)
        ref = str(view.get("private_metadata", ""))
        return Submission(
            block=ui.SERIAL_BLOCK,
            action=lambda name: self.bot.desk.correct_unit(
                ref, engineer=name, serial=serial, changes=changes, note=note or None, origin=ORIGIN
            ),
            invalid=_first_error(
                (not serial, ui.SERIAL_BLOCK, "Choose the unit."),
                (not changes, ui.ARRIVAL_BLOCK, "Give a date or the proof to correct."),
            ),
        )

    def _goodwill_submission(self, view: dict[str, Any]) -> Submission:
        goodwill = _view_choice(view, ui.GOODWILL_BLOCK, ui.GOODWILL_INPUT)
        reason = _view_value(view, ui.REASON_BLOCK, ui.REASON_INPUT)
        ref, _, method = str(view.get("private_metadata", "")).partition("|")
        return Submission(
            block=ui.GOODWILL_BLOCK,
            action=lambda name: self.bot.desk.choose_method(
                ref, engineer=name, method=method, reason=reason, goodwill=goodwill, origin=ORIGIN
            ),
            invalid=_first_error(
                (goodwill not in ui.GOODWILL_CHOICES, ui.GOODWILL_BLOCK, "Goodwill or chargeable?"),
                (not reason, ui.REASON_BLOCK, "Give the reason."),
            ),
        )

    async def on_warranty_command(
        self, ack: Callable[..., Any], respond: Callable[..., Any], command: dict[str, Any]
    ) -> None:
        """`/warranty <case ref | serial>`: answered ephemerally, read from the database only.

        When telling an engineer needs Slack (channel members not cached), the command is acknowledged first
        and answered through its response_url, so that Slack's 3 seconds never wait on Slack's own API.
        """
        user = str(command.get("user_id", ""))
        known = self._known_engineer(user)
        if known is None:
            await ack()
            known = await self._is_engineer(user)
            reply: Callable[..., Any] = respond
        else:
            reply = ack
        if not known:
            await reply(text=REFUSAL, response_type="ephemeral")
            return
        text, blocks = await asyncio.to_thread(self._warranty_answer, str(command.get("text") or ""))
        await reply(text=text, blocks=blocks, response_type="ephemeral")

    async def on_home_opened(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if event.get("tab") != "home" or not await self._first_time(body):
            return
        user = str(event.get("user", ""))
        if not await self._is_engineer(user):
            view = ui.refused_home_view()
        else:
            view = await asyncio.to_thread(self._home_view, await self._display_name(user))
        try:
            await self.client.views_publish(user_id=user, view=view)
        except SlackApiError as error:
            log.warning("views.publish failed: %s", error.response.get("error"))

    # --- outbox: case events ------------------------------------------------------------------------------

    async def send_event(self, event: DeskEvent) -> Delivered:
        """Post or update the case message, or add to its thread; Slack's errors become retry or dead letter.

        The case message shows the case as it is now (read when it is posted); a thread line says what the
        event carries."""
        ref, detail = event.case_ref, event.detail
        if self.revoked:
            # Kept waiting, not dead-lettered: once the app is installed again every case event goes out.
            raise RetryLater(f"Slack {self.revoked}", after=REVOKED_WAIT_SECONDS)
        try:
            case = await asyncio.to_thread(self.bot.desk.get_case, ref)
        except CaseNotFound as error:
            raise PermanentFailure(str(error)) from error
        try:
            if event.kind == CASE_OPENED:
                ts = await self._post_case(case, update_existing=True)
            elif event.kind == CUSTOMER_MESSAGE:
                ts = await self._post_case(case, update_existing=False)
                text, blocks = ui.customer_message_blocks(
                    case,
                    sender=detail.get("sender"),
                    text=str(detail.get("text") or ""),
                    attachment_ids=list(detail.get("attachment_ids") or ()),
                    public_url=self.config.public_url,
                )
                ts = await self._thread_post(case, ts, text, blocks)
            elif event.kind == CASE_UPDATED:
                ts = await self._post_case(case, update_existing=True)
                line = ui.update_line(detail.get("action"), detail.get("actor"), detail.get("origin"), detail)
                if line:
                    await self._thread_post(case, ts, line, [ui.section(line)])
            elif event.kind == "batch_alert":
                # A production batch past the alert rule (bot/report.py): in the channel, not only a thread.
                text = f":warning: {ui.escape(str(detail.get('text') or ''))}"
                answer = await self.client.chat_postMessage(
                    channel=self.config.channel,
                    text=text,
                    blocks=[ui.section(text)],
                    unfurl_links=False,
                    unfurl_media=False,
                )
                ts = str(answer["ts"])
            else:
                raise PermanentFailure(f"unknown desk event {event.kind!r}")
        except SlackApiError as error:
            code = str(error.response.get("error") or "")
            if code in REVOKED_ERRORS:
                await asyncio.to_thread(self._mark_revoked, code)
                raise RetryLater(f"Slack {code}", after=REVOKED_WAIT_SECONDS) from error
            raise _delivery_error(error) from error
        except (aiohttp.ClientError, TimeoutError) as error:
            raise RetryLater(f"Slack unreachable: {type(error).__name__}") from error
        return Delivered(external_id=ts)

    def _mark_revoked(self, reason: str) -> None:
        if self.revoked is None:
            log.error("Slack says %s: case events wait until the app is installed again", reason)
        self.revoked = reason
        channels.kv_put(self.bot.db, self._revoked_key, {"reason": reason, "at": utcnow().isoformat()})
        channels.note_problem(self.bot.db, CHANNEL, revoked_problem(reason))

    def _load_revoked(self) -> str | None:
        """Why Slack took this token away, as stored (None for a token it did not: a new token starts clean),
        and /healthz shows it, or no longer does."""
        stored = channels.kv_get(self.bot.db, self._revoked_key)
        reason = str(stored[0].get("reason")) if stored is not None else None
        channels.note_problem(self.bot.db, CHANNEL, revoked_problem(reason) if reason else None)
        return reason

    async def _post_case(self, case: Mapping[str, Any], *, update_existing: bool) -> str:
        """The case message's ts: posted when there is none yet, else updated (when asked) to the case's state."""
        ref = case["ref"]
        where = await asyncio.to_thread(self.bot.desk.desk_ref, ref)
        text, blocks = ui.case_blocks(case, public_url=self.config.public_url)
        if where.get("ts") and where.get("channel"):
            if not update_existing:
                return str(where["ts"])
            try:
                await self.client.chat_update(
                    channel=where["channel"], ts=where["ts"], text=text, blocks=blocks
                )
                return str(where["ts"])
            except SlackApiError as error:
                if error.response.get("error") != "message_not_found":
                    raise
                # Someone deleted the case message: post it again rather than lose the case.
        answer = await self.client.chat_postMessage(
            channel=self.config.channel, text=text, blocks=blocks, unfurl_links=False, unfurl_media=False
        )
        ts, channel = str(answer["ts"]), str(answer["channel"])
        await asyncio.to_thread(self.bot.desk.mark_desk_ref, ref, channel=channel, ts=ts)
        return ts

    async def _thread_post(
        self, case: Mapping[str, Any], ts: str, text: str, blocks: list[dict[str, Any]]
    ) -> str:
        where = await asyncio.to_thread(self.bot.desk.desk_ref, case["ref"])
        answer = await self.client.chat_postMessage(
            channel=where.get("channel") or self.config.channel,
            thread_ts=ts,
            text=text,
            blocks=blocks,
            unfurl_links=False,
            unfurl_media=False,
        )
        return str(answer["ts"])

    # --- reminders -----------------------------------------------------------------------------------------

    async def _remind_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.revoked:
                    await self.remind_due()
                await asyncio.to_thread(self._forget_old_events)
            except Exception:
                log.exception("Slack reminder round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.config.remind_interval)

    async def remind_due(self) -> int:
        """Announce again, in the case thread and the channel, each case still unclaimed after the delay."""
        due = await asyncio.to_thread(
            self.bot.desk.take_due_reminders, self.config.remind_after, limit=REMIND_BATCH
        )
        for reminder in due:
            ref, opened = reminder.ref, reminder.opened_at
            ts, channel = reminder.desk_ref.get("ts"), reminder.desk_ref.get("channel")
            if not ts or not channel:
                continue
            mention = self.config.remind_mention
            text = (
                f"{mention + ' ' if mention else ''}*{ref}* is still unclaimed, "
                f"{_duration(utcnow() - opened)} after it was opened. Press *Claim* on the case message."
            )
            try:
                await self.client.chat_postMessage(
                    channel=channel, thread_ts=ts, reply_broadcast=True, text=text, blocks=[ui.section(text)]
                )
            except (SlackApiError, aiohttp.ClientError, TimeoutError) as error:
                log.warning("reminder for %s not posted: %s", ref, type(error).__name__)
        return len(due)

    # --- helpers: engineers, names, Slack calls ------------------------------------------------------------

    def _known_engineer(self, user: str) -> bool | None:
        """Whether `user` is an engineer, when that is known without asking Slack; None otherwise."""
        if not user:
            return False
        if self.config.engineer_ids:
            return user in self.config.engineer_ids
        if self._members is not None and time.monotonic() - self._members[0] <= MEMBERS_CACHE_SECONDS:
            return user in self._members[1]
        return None

    async def _is_engineer(self, user: str) -> bool:
        """Configured ids when SLACK_ENGINEER_IDS is set, else members of the escalation channel."""
        if not user:
            return False
        if self.config.engineer_ids:
            return user in self.config.engineer_ids
        if self._members is None or time.monotonic() - self._members[0] > MEMBERS_CACHE_SECONDS:
            try:
                self._members = (time.monotonic(), await self._channel_members())
            except (SlackApiError, aiohttp.ClientError, TimeoutError) as error:
                log.warning("conversations.members failed: %s; refusing", type(error).__name__)
                return False  # fail closed: no one acts when we cannot tell who may
        return user in self._members[1]

    async def _channel_members(self) -> frozenset[str]:
        members: set[str] = set()
        cursor = ""
        for _ in range(MAX_MEMBER_PAGES):
            answer = await self.client.conversations_members(
                channel=self.config.channel, limit=200, cursor=cursor
            )
            members.update(answer.get("members") or ())
            cursor = (answer.get("response_metadata") or {}).get("next_cursor") or ""
            if not cursor:
                break
        return frozenset(members)

    async def _display_name(self, user: str) -> str:
        cached = self._names.get(user)
        if cached and time.monotonic() - cached[0] < NAMES_CACHE_SECONDS:
            return cached[1]
        try:
            answer = await self.client.users_info(user=user)
            info = answer.get("user") or {}
            profile = info.get("profile") or {}
            name = (
                profile.get("display_name")
                or profile.get("real_name")
                or info.get("real_name")
                or info.get("name")
                or user
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as error:
            log.warning("users.info failed: %s", type(error).__name__)
            return user
        self._names[user] = (time.monotonic(), str(name))
        return str(name)

    async def _bot_user_id(self) -> str:
        if self._bot_user is None:
            answer = await self.client.auth_test()
            self._bot_user = str(answer.get("user_id") or "")
        return self._bot_user

    async def _refused(self, user: str) -> bool:
        if await self._is_engineer(user):
            return False
        await self._ephemeral(user, REFUSAL)
        return True

    async def _ack_and_act(self, ack: Callable[..., Any], user: str, action: Callable[[str], Any]) -> None:
        """Acknowledge at once, then run the desk action as the engineer (unless they are not one: told so)."""
        await ack()
        if await self._refused(user):
            return
        await self._act(user, None, action)

    def _on_submitted(self, read: Callable[[dict[str, Any]], Submission]) -> Listener:
        """The listener for a modal whose fields `read` makes a Submission of."""

        async def on_submitted(ack: Callable[..., Any], body: dict[str, Any], view: dict[str, Any]) -> None:
            await self._submit(ack, _user_id(body), read(view))

        return on_submitted

    async def _submit(self, ack: Callable[..., Any], user: str, submission: Submission) -> None:
        """A modal's desk action, run as the engineer (by display name) before the modal is acknowledged.
        Someone who is not an engineer, or a refusal by the desk, is shown on the field `submission.block`, and
        the `invalid` fields' errors on theirs; the modal then stays open. One that `closes_first` is refused
        on the field only when its user is known not to be an engineer; otherwise it closes at once, and the
        check and the desk's refusal are told to them privately (_ack_and_act)."""
        block, action = submission.block, submission.action
        if submission.closes_first:
            refused = self._known_engineer(user) is False
        else:
            refused = not await self._is_engineer(user)
        if refused or submission.invalid:
            await ack(response_action="errors", errors={block: REFUSAL} if refused else submission.invalid)
            return
        if submission.closes_first:
            await self._ack_and_act(ack, user, action)
            return
        name = await self._display_name(user)
        try:
            await asyncio.to_thread(action, name)
        except DeskError as error:
            await ack(response_action="errors", errors={block: _clip_error(error)})
            return
        await ack()

    async def _act(self, user: str, thread_ts: str | None, action: Callable[[str], Any]) -> bool:
        """Run a desk action as the engineer (by display name); a refusal by the desk is told to them only."""
        name = await self._display_name(user)
        try:
            await asyncio.to_thread(action, name)
        except DeskError as error:
            await self._ephemeral(user, f"Not done: {error}", thread_ts)
            return False
        return True

    async def _ephemeral(self, user: str, text: str, thread_ts: str | None = None) -> None:
        try:
            # The SDK leaves out arguments that are None, so a reply outside a thread has no thread_ts.
            await self.client.chat_postEphemeral(
                channel=self.config.channel, user=user, text=text, thread_ts=thread_ts
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as error:
            log.warning("chat.postEphemeral failed: %s", type(error).__name__)

    async def _react(self, ts: str, emoji: str) -> None:
        try:
            await self.client.reactions_add(channel=self.config.channel, timestamp=ts, name=emoji)
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as error:
            log.warning("reactions.add failed: %s", type(error).__name__)

    # --- helpers: the database -----------------------------------------------------------------------------

    async def _first_time(self, body: Mapping[str, Any]) -> bool:
        """False when this event id was handled before (a redelivery); events without an id pass."""
        event_id = body.get("event_id")
        if not isinstance(event_id, str) or not event_id or not event_id.isprintable():
            return (
                True  # PostgreSQL could not store a key with NUL or a lone surrogate; Slack's ids are ASCII
            )
        return await asyncio.to_thread(self._remember, SEEN_PREFIX + event_id[:100])

    def _remember(self, key: str) -> bool:
        now = utcnow()
        return channels.kv_add(self.bot.db, key, {"seen_at": now.isoformat()}, now + SEEN_FOR)

    def _forget_old_events(self) -> None:
        channels.kv_purge(self.bot.db, SEEN_PREFIX)

    def _home_view(self, engineer: str) -> dict[str, Any]:
        desk = self.bot.desk
        by_status: dict[str, list[dict[str, Any]]] = {
            status: desk.list_cases(status=status, limit=100)
            for status in (
                CaseStatus.open,
                CaseStatus.claimed,
                CaseStatus.waiting_customer,
                CaseStatus.in_service,
                CaseStatus.resolved,
            )
        }
        mine = [c for cases in by_status.values() for c in cases if c.get("claimed_by") == engineer]
        return ui.home_view(engineer=engineer, mine=mine, by_status=by_status)

    def _warranty_answer(self, query: str) -> tuple[str, list[dict[str, Any]]]:
        query = query.strip().upper()
        if not query:
            text = "Usage: `/warranty <case ref | serial>`, e.g. `/warranty WR-2026-000042` or `/warranty CSP2402A0153`"
            return text, [ui.section(text)]
        try:
            case = self.bot.desk.get_case(query)
        except CaseNotFound:
            pass
        else:
            return ui.case_blocks(case, public_url=self.config.public_url, actions=False, all_units=True)
        serial = normalize_serial(query)
        policy = self.bot.policy
        facts = channels.registry_record(self.bot.db, serial)
        if facts is None and parse_serial(serial, policy) is None:
            text = f"No case and no unit `{ui.escape(query)}`."
            return text, [ui.section(text)]
        claim = unit_claim(serial, claim_date=utcnow().date(), record=facts)
        decision = decision_to_json(evaluate(claim, policy), policy)
        record = None
        if facts is not None:
            record = {
                "order_id": facts.order_id,
                "production_date": _iso(facts.production_date),
                "port_arrival_date": _iso(facts.port_arrival_date),
                "cargo_compensation": facts.cargo_compensation,
            }
        return ui.unit_blocks(serial, record, decision, self.bot.desk.list_cases(query=serial, limit=20))


def _user_id(body: Mapping[str, Any]) -> str:
    """Who pressed or submitted: "" when the payload names no one (nobody is an engineer then)."""
    user = body.get("user")
    user_id = user.get("id") if isinstance(user, dict) else None
    return user_id if isinstance(user_id, str) else ""


def _first_error(*checks: tuple[bool, str, str]) -> dict[str, str] | None:
    """A modal's errors ({block: text}) for the first of the (failed, block, text) checks that failed; None when
    none did."""
    return next(({block: text} for failed, block, text in checks if failed), None)


def _view_state(view: Mapping[str, Any], *path: str) -> str:
    """The string at view.state.values.<path> of a modal; "" when a level is missing or not an object."""
    node: Any = view
    for key in ("state", "values", *path[:-1]):
        node = node.get(key) if isinstance(node, dict) else None
    value = node.get(path[-1]) if isinstance(node, dict) else None
    return value if isinstance(value, str) else ""


def _view_value(view: Mapping[str, Any], block: str, action: str) -> str:
    """The text typed into a modal's input."""
    return _view_state(view, block, action, "value").strip()


def _view_choice(view: Mapping[str, Any], block: str, action: str) -> str:
    """The value of a select or radio choice in a modal; "" when none was made."""
    return _view_state(view, block, action, "selected_option", "value")


def _view_date(view: Mapping[str, Any], block: str, action: str) -> str:
    """A datepicker's YYYY-MM-DD in a modal, or ""; the desk checks it is a date."""
    return _view_state(view, block, action, "selected_date")


def _clip_error(error: Exception) -> str:
    """A desk refusal as a modal's field error (Slack shows at most a short line)."""
    return str(error)[:150]


def _delivery_error(error: SlackApiError) -> Exception:
    status = error.response.status_code
    code = str(error.response.get("error") or "")
    if status == 429 or code == "ratelimited":
        retry_after = error.response.headers.get("Retry-After") or error.response.headers.get("retry-after")
        # Slack's limits are per method and workspace, not per thread: the whole desk channel waits.
        return RetryLater(
            f"Slack rate limit ({code or status})",
            after=channels.retry_after(str(retry_after or "")),
            scope="channel",
        )
    if status >= 500 or code in TRANSIENT_ERRORS:
        return RetryLater(f"Slack error {status} {code}")
    return channels.delivery_error(f"Slack refused: {code or status}", status=status)


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def from_settings(bot: Bot) -> SlackDesk | None:
    """The Slack desk when SLACK_BOT_TOKEN is set; SlackSettingsError when a setting it needs is missing."""
    config = SlackConfig.from_settings(bot.settings)
    return SlackDesk(bot, config) if config is not None else None
