"""The one server: every channel mounted on one Starlette app under uvicorn, with the inbox worker and the
outbox deliverer running beside it; `/healthz` and `/metrics`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import h11
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import func, select
from sqlmodel import Session, col
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from adapters import api, line, localdesk, mail, slack, teams, telegram, viber, webchat, wechat, whatsapp
from adapters.base import Channel, ChannelFactory
from bot.app import Bot, build_when_storage_allows, freeze_loaded
from bot.attachments import STORABLE_TYPES
from bot.channels import channel_problems
from bot.config import Role, Settings
from bot.engine import PARKED, STOPPED
from bot.http import exception_handlers, route_of
from bot.logs import setup_logging
from bot.outbox import DEAD, DEAD_LETTERS, HELD, PENDING, Deliverer
from bot.ratelimit import RateLimit, rules_from_settings
from bot.store import Case, InboxItem, OutboxItem
from bot.store import Message as LoggedMessage
from bot.worker import WorkerProcess, processing_loop

log = logging.getLogger(__name__)

# Every channel; each factory returns None when its channel is not configured. Typed, so that mypy checks
# each module's from_settings and the class it returns against the Channel interface.
CHANNELS: tuple[ChannelFactory, ...] = (
    webchat.from_settings,
    localdesk.from_settings,
    slack.from_settings,
    telegram.from_settings,
    mail.from_settings,
    teams.from_settings,
    whatsapp.from_settings,
    wechat.from_settings,
    line.from_settings,
    viber.from_settings,
    api.from_settings,
)


WORKER_READY_SECONDS = 20.0  # how long `serve` waits for its worker processes to warm up before it listens


@dataclass
class Workers:
    """The inbox processing and the outbox deliverer.

    `serve` runs them in processes of their own (`bot.worker`): `processes` processing workers, niced, and one
    deliverer. With none, both run in this process: processing in a thread and the deliverer as an asyncio
    task (`create_app` for tests and embedding); with `inbox=False` neither runs here (`serve --no-worker`,
    with `warranty-bot worker`, which does both, elsewhere). The web front then only accepts and answers:
    its workers' batches wake the deliverer through it, and so does what it queues itself (an engineer's
    reply from the desk, replies released by a start).
    """

    bot: Bot
    channels: Sequence[Channel]
    processes: int = 0
    inbox: bool = True
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    task: asyncio.Task[None] | None = None
    async_stop: asyncio.Event | None = None
    children: list[WorkerProcess] = field(default_factory=list)

    def _wake_children(self, wakeup: threading.Event) -> None:
        """Tells the worker processes what the front's engine signalled: messages accepted, replies queued."""
        engine = self.bot.engine
        while not self.stop_event.is_set():
            if not wakeup.wait(timeout=self.bot.settings.outbox_poll_seconds):
                continue
            wakeup.clear()
            # Cleared only when seen set: a set() between the two is told by the byte written after the clear.
            wake, send = _took(engine.inbox_signal), _took(engine.outbox_signal)
            for child in self.children:
                child.wake(messages=wake, replies=send)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(child.ready.wait(max(0.0, deadline - time.monotonic())) for child in self.children)

    async def start(self) -> None:
        engine = self.bot.engine
        if self.inbox and self.processes:
            wakeup = threading.Event()
            engine.inbox_signal, engine.outbox_signal = Relayed(wakeup), Relayed(wakeup)
            owner = self.bot.settings.worker_id
            deliverer = WorkerProcess(
                self.processes, worker_id=f"{owner}/deliver" if owner else "", role=Role.deliver
            )
            self.children = [
                WorkerProcess(n, worker_id=f"{owner}/{n}" if owner else "", on_queued=_tell(deliverer))
                for n in range(self.processes)
            ]
            self.children.append(deliverer)
            for child in self.children:
                child.start()
            self.thread = threading.Thread(
                target=self._wake_children, args=(wakeup,), name="wake-workers", daemon=True
            )
            self.thread.start()
            # Listen (and register webhooks) once the workers have warmed up, so that the first message after
            # start is answered as fast as the tenth; a worker that is not ready by then catches up later.
            if not await asyncio.to_thread(self._wait_ready, WORKER_READY_SECONDS):
                log.warning(
                    "not every worker process was ready within %s s; serving anyway (messages are stored and "
                    "processed once one is)",
                    WORKER_READY_SECONDS,
                )
        elif self.inbox:
            # In-process (tests, embedding): the process-wide models; templates compile on first use.
            await asyncio.to_thread(engine.warm_up, templates=False)
            self.thread = threading.Thread(
                target=processing_loop,
                args=(engine, self.stop_event, self.bot.settings.outbox_poll_seconds),
                kwargs={"remind_seconds": self.bot.settings.fulfilment_check_seconds},
                name="inbox",
                daemon=True,
            )
            self.thread.start()
            self.async_stop = asyncio.Event()
            self.task = asyncio.create_task(
                make_deliverer(self.bot, self.channels).run(
                    self.async_stop,
                    poll_seconds=self.bot.settings.outbox_poll_seconds,
                    wake=engine.outbox_signal,
                )
            )
        for channel in self.channels:
            await channel.start()
        freeze_loaded()  # the front's modules, channels and clients: out of every full collection from now on

    async def stop(self) -> None:
        # The deliverer first: a send after its channel's client closed would waste an attempt.
        self.stop_event.set()
        self.bot.engine.inbox_signal.set()
        self.bot.engine.outbox_signal.set()
        if self.async_stop is not None:
            self.async_stop.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for channel in self.channels:
            with contextlib.suppress(Exception):
                await channel.stop()
        await asyncio.gather(*(asyncio.to_thread(child.stop, 10) for child in self.children))
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join, 5)


class Relayed(threading.Event):
    """One of the front's engine signals while worker processes do the work: each `set()` also wakes the thread
    that passes it on to them (`Workers._wake_children`)."""

    def __init__(self, wakeup: threading.Event) -> None:
        super().__init__()
        self.wakeup = wakeup

    def set(self) -> None:
        super().set()
        self.wakeup.set()


def _tell(deliverer: WorkerProcess) -> Callable[[], None]:
    """What a processing worker's `QUEUED` does: the deliverer process is woken (straight from the thread that
    read it)."""
    return lambda: deliverer.wake(messages=False, replies=True)


def _took(signal: threading.Event) -> bool:
    if signal.is_set():
        signal.clear()
        return True
    return False


def make_deliverer(bot: Bot, channels: Sequence[Channel]) -> Deliverer:
    """The outbox deliverer of these channels' senders, with the settings' retry rules and lease owner."""
    settings = bot.settings
    return Deliverer(
        bot.db,
        {c.name: s for c in channels if (s := c.sender()) is not None},
        max_attempts=settings.outbox_max_attempts,
        retry_for=timedelta(hours=settings.outbox_retry_hours),
        backoff_max=settings.retry_backoff_max_seconds,
        owner=settings.worker_id or None,
    )


def load_channels(bot: Bot) -> list[Channel]:
    """The configured channels; the core is told what they can do (`configure_core`)."""
    channels = [channel for factory in CHANNELS if (channel := factory(bot)) is not None]
    configure_core(bot, channels)
    return channels


def configure_core(bot: Bot, channels: Sequence[Channel]) -> None:
    """The engine reads the channels' capabilities: which take desk events, which get one reply per turn."""
    config = bot.engine.config
    desks = [c.name for c in channels if c.takes_desk_events]
    config.external_desks = tuple(dict.fromkeys((*config.external_desks, *desks)))
    config.one_message_per_turn = config.one_message_per_turn | {
        c.name for c in channels if c.one_reply_per_turn
    }
    config.sends_files = config.sends_files | {c.name for c in channels if c.sends_files}


class BodyLimit:
    """Refuses request bodies above a size with 413, and bodies that trickle in too slowly with 408, before
    any handler reads them.

    Upload routes (paths ending in `/files`) may carry one attachment of the largest allowed size. The time
    limit runs from the first read of the body to its last part, so a client sending a byte every few
    seconds cannot hold a handler (and its connection) open.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, upload_max_bytes: int, timeout_seconds: float = 30.0
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_max_bytes if scope["path"].endswith("/files") else self.max_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse(send, 413, "request body too large")
            return
        received = 0
        complete = False
        deadline: float | None = None

        async def limited() -> Message:
            nonlocal received, complete, deadline
            if complete:
                return await receive()  # a disconnect a streaming response waits for: no time limit
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout_seconds
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _TooSlow from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > limit:
                    raise _TooLarge
            return message

        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except _TooLarge:
            if not started:
                await _refuse(send, 413, "request body too large")
        except _TooSlow:
            if not started:
                await _refuse(send, 408, "request body too slow", close=True)


class JsonDepthLimit:
    """Refuses JSON bodies nested deeper than `max_depth` with 400, as they stream in.

    Python's parser raises RecursionError near 1,000 levels, and a body nested a few hundred levels deep
    parses but breaks whatever walks it later; no message any channel sends is nested more than a dozen.
    Only brackets outside strings count; the scan keeps its place across the parts of a body.
    """

    def __init__(self, app: ASGIApp, max_depth: int) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope["type"] != "http" or not (
            content_type.endswith(b"/json") or content_type.endswith(b"+json")
        ):
            await self.app(scope, receive, send)
            return
        scan = _DepthScan(self.max_depth)

        async def scanned() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not scan.feed(message.get("body", b"")):
                raise _TooDeep
            return message

        try:
            await self.app(scope, scanned, send)
        except _TooDeep:
            await _refuse(send, 400, f"the JSON body is nested more than {self.max_depth} levels deep")


_STRUCTURE = re.compile(rb'["\\\[\]{}]')


class _DepthScan:
    """Nesting depth of JSON read in parts; `feed` is False once it goes past the limit."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.depth = 0
        self.in_string = False
        self.escaped = False  # the last part ended in a backslash inside a string

    def feed(self, data: bytes) -> bool:
        skip = 0 if not self.escaped else 1
        self.escaped = False
        for found in _STRUCTURE.finditer(data, skip):
            at, char = found.start(), found.group()
            if at < skip:
                continue
            if self.in_string:
                if char == b"\\":
                    skip = at + 2
                    self.escaped = skip > len(data)
                elif char == b'"':
                    self.in_string = False
            elif char == b'"':
                self.in_string = True
            elif char in (b"[", b"{"):
                self.depth += 1
                if self.depth > self.max_depth:
                    return False
            else:
                self.depth -= 1
        return True


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class _TooDeep(Exception):
    pass


async def _refuse(send: Send, status: int, error: str, *, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json")] + ([(b"connection", b"close")] if close else [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"error": error}).encode()})


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers (uvicorn has none).

    Without it a connection that sends half a request line and then one byte a minute is held open for
    ever; a few hundred of them use up the process's file descriptors (slowloris). The deadline starts
    when the connection opens and again after each response, and ends when the headers are complete.
    """

    header_timeout_seconds = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE or self.conn.their_state is h11.DONE:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout_seconds, self._headers_too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_header_deadline", None) is not None:
            assert self._header_deadline is not None
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def create_app(
    bot: Bot, channels: Sequence[Channel] | None = None, *, processes: int = 0, inbox: bool = True
) -> Starlette:
    """The server's app; `processes` worker processes process the inbox (none: a thread of this process),
    or nothing here does (`inbox=False`)."""
    channels = list(channels if channels is not None else load_channels(bot))
    configure_core(bot, channels)
    workers = Workers(bot, channels, processes=processes, inbox=inbox)
    registry = CollectorRegistry()
    gauges = _metrics(registry)

    async def healthz(_: Request) -> Response:
        try:
            queues, stored = await asyncio.to_thread(_health, bot)
        except Exception as error:  # the database cannot even be read: this server is of no use now
            log.warning("healthz: database unavailable: %s", type(error).__name__)
            return JSONResponse({"status": "unavailable", "error": "database unavailable"}, status_code=503)
        held = queues["inbox"]["parked"] + queues["outbox"]["chats_held"]
        # What keeps a channel from working (a revoked token), as whichever process found it stored it
        # (bot.channels.note_problem): the server still answers 200. A channel no longer configured has none.
        problems = {c.name: stored[c.name] for c in channels if c.name in stored}
        body: dict[str, Any] = {
            "status": "degraded" if held or problems else "ok",
            "channels": [c.name for c in channels],
            **queues,
        }
        if problems:
            body["problems"] = problems
        if workers.children:  # started and warmed up (messages are accepted and stored meanwhile)
            processing = [c for c in workers.children if c.role is not Role.deliver]
            body["workers"] = {
                "ready": sum(c.ready.is_set() for c in processing),
                "started": len(processing),
                "deliverer_ready": all(c.ready.is_set() for c in workers.children if c.role is Role.deliver),
            }
        return JSONResponse(body)

    async def metrics(_: Request) -> Response:
        await asyncio.to_thread(_collect, bot, gauges)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await workers.start()
        try:
            yield
        finally:
            await workers.stop()

    async def linked_file(request: Request) -> Response:
        """A file an engineer sent to a customer on a channel that cannot carry files (bot/engine.py links)."""
        stored = await asyncio.to_thread(bot.engine.linked_file, request.path_params["token"])
        if stored is None:
            return JSONResponse({"error": "no such file (the link may be mistyped)"}, status_code=404)
        return FileResponse(
            bot.attachments.path(stored.path),
            media_type=stored.mime if stored.mime in STORABLE_TYPES else "application/octet-stream",
            filename=stored.name,
            content_disposition_type="attachment",
            headers={"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"},
        )

    routes: list[Any] = [
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/files/{token}", linked_file),
    ]
    for channel in channels:
        routes.extend(channel.routes())
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(RateLimit, rules=rules_from_settings(bot.settings)),
            Middleware(
                BodyLimit,
                max_bytes=bot.settings.max_body_bytes,
                upload_max_bytes=bot.settings.attachment_max_bytes
                + 64 * 1024,  # room for the multipart framing
                timeout_seconds=bot.settings.server_body_timeout_seconds,
            ),
            Middleware(JsonDepthLimit, max_depth=bot.settings.max_json_depth),
        ],
        exception_handlers={
            404: _not_found,
            405: _not_allowed,
            500: _server_error,
            RecursionError: _too_deep,
            **exception_handlers(),
        },
    )
    app.state.bot = bot
    app.state.channels = [c.name for c in channels]
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "not found"}, status_code=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "method not allowed"}, status_code=405)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s: %s", request.method, route_of(request), type(exc).__name__)
    return JSONResponse({"error": "internal error; the request was not processed"}, status_code=500)


async def _too_deep(request: Request, exc: Exception) -> Response:
    # Past the depth check (a body that is not declared JSON, or a value nested inside a form field).
    log.warning("%s %s: input nested too deeply", request.method, route_of(request))
    return JSONResponse({"error": "the request is nested too deeply"}, status_code=400)


def _metrics(registry: CollectorRegistry) -> dict[str, Gauge]:
    return {
        "messages": Gauge("warranty_messages", "Messages logged, by author", ["author"], registry=registry),
        "inbox": Gauge(
            "warranty_inbox_messages", "Inbound messages by processing status", ["status"], registry=registry
        ),
        "cases": Gauge("warranty_cases", "Cases by status", ["status"], registry=registry),
        "outbox": Gauge("warranty_outbox_messages", "Outbox rows by status", ["status"], registry=registry),
        "held": Gauge(
            "warranty_chats_held",
            "Chats whose later messages wait for an operator: a parked inbound message or a dead reply",
            ["queue"],
            registry=registry,
        ),
    }


def _health(bot: Bot) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """What /healthz reads, in one thread: the queues and the channels' stored problems."""
    return _queues(bot), channel_problems(bot.db)


def _queues(bot: Bot) -> dict[str, dict[str, int]]:
    """What waits: inbound messages pending and parked, replies pending, dead, and chats a dead letter holds."""
    with Session(bot.db) as session:
        inbox: dict[str, int] = {
            status: count
            for status, count in session.execute(
                select(col(InboxItem.status), func.count())
                .where(col(InboxItem.status).in_(("pending", *STOPPED)))
                .group_by(col(InboxItem.status))
            )
        }
        outbox: dict[str, int] = {
            status: count
            for status, count in session.execute(
                select(col(OutboxItem.status), func.count())
                .where(col(OutboxItem.status).in_((PENDING, HELD, *DEAD_LETTERS)))
                .group_by(col(OutboxItem.status))
            )
        }
        held = session.execute(
            select(func.count()).where(col(OutboxItem.status) == DEAD, col(OutboxItem.holds_chat))
        ).scalar_one()
    return {
        "inbox": {"pending": inbox.get("pending", 0), "parked": sum(inbox.get(s, 0) for s in STOPPED)},
        "outbox": {
            "pending": outbox.get(PENDING, 0),
            "held": outbox.get(HELD, 0),
            "dead": sum(outbox.get(s, 0) for s in DEAD_LETTERS),
            "chats_held": int(held),
        },
    }


def _collect(bot: Bot, gauges: dict[str, Gauge]) -> None:
    with Session(bot.db) as session:
        for name, column, table in (
            ("messages", col(LoggedMessage.author), LoggedMessage),
            ("inbox", col(InboxItem.status), InboxItem),
            ("cases", col(Case.status), Case),
            ("outbox", col(OutboxItem.status), OutboxItem),
        ):
            gauges[name].clear()
            for label, count in session.execute(
                select(column, func.count()).select_from(table).group_by(column)
            ):
                gauges[name].labels(label).set(count)
        parked_chats = session.execute(
            select(func.count(func.distinct(col(InboxItem.channel) + ":" + col(InboxItem.chat_id)))).where(
                col(InboxItem.status) == PARKED
            )
        ).scalar_one()
        dead_heads = session.execute(
            select(func.count()).where(col(OutboxItem.status) == DEAD, col(OutboxItem.holds_chat))
        ).scalar_one()
        gauges["held"].labels("inbox").set(parked_chats)
        gauges["held"].labels("outbox").set(dead_heads)


def run_server(settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    """`serve`: the web front, its deliverer and `workers` worker processes beside it (0: none here; run
    `warranty-bot worker` elsewhere). More than one only on PostgreSQL (SQLite has one writer)."""
    setup_logging(settings.log_level)
    if not settings.worker_id:  # the same name after a restart: the new process takes back its own leases
        settings = settings.model_copy(update={"worker_id": f"{socket.gethostname()}:{port}"})
    bot = build_when_storage_allows(settings, background_checkpoints=True)
    if workers > 1 and bot.db.dialect.name == "sqlite":
        raise ValueError("SQLite has one writer: run one worker (--workers 1), or use PostgreSQL for more")
    in_memory = bot.db.dialect.name == "sqlite" and bot.db.url.database in (None, "", ":memory:")
    # A database in memory cannot be shared with another process: processing stays in this one.
    app = create_app(bot, processes=0 if in_memory else workers, inbox=workers > 0 or in_memory)
    base = f"http://{host}:{port}"
    print(f"warranty-bot serving on {base}")
    print(f"  web chat:   {base}/")
    if settings.desk_token:
        print(f"  local desk: {base}/desk  (sign in with the DESK_TOKEN from .env)")
    else:
        print(f"  local desk: {base}/desk  is off: set DESK_TOKEN in .env to turn it on")
    print(f"  channels:   {', '.join(app.state.channels)}")
    print(f"  health:     {base}/healthz   metrics: {base}/metrics")
    print(
        f"  workers:    {workers} worker process(es)"
        if workers
        else "  workers:    none (run `warranty-bot worker`)"
    )
    uvicorn.run(app, host=host, port=port, **uvicorn_options(settings))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings as `serve` runs it, with its limits against slow and numerous clients."""

    class Protocol(HeaderTimeoutH11):
        header_timeout_seconds = settings.server_header_timeout_seconds

    return {
        "log_config": None,  # keep our handler (and its masking) for uvicorn's records too
        "log_level": settings.log_level.lower(),
        "access_log": False,
        "timeout_graceful_shutdown": 5,
        "http": Protocol,
        "timeout_keep_alive": settings.server_keep_alive_seconds,
        # Past this many connections (or requests in progress) a request is answered 503 at once.
        "limit_concurrency": settings.server_max_concurrency,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }


def plain(text: str, status: int = 200) -> Response:
    return PlainTextResponse(text, status_code=status)
