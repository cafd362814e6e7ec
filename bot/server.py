"""The one server: every channel mounted on one Starlette app under uvicorn, with the inbox worker and the
outbox deliverer running beside it; `/healthz` and `/metrics`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import func, select
from sqlmodel import Session, col
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.base import Channel
from bot.app import Bot, build
from bot.config import Settings
from bot.logs import setup_logging
from bot.outbox import Deliverer
from bot.store import Case, InboxItem, OutboxItem
from bot.store import Message as LoggedMessage

log = logging.getLogger(__name__)

# Every channel module; each one's from_settings(bot) returns None when the channel is not configured.
CHANNEL_MODULES: tuple[str, ...] = (
    "adapters.webchat",
    "adapters.localdesk",
    "adapters.slack",
    "adapters.telegram",
    "adapters.mail",
    "adapters.teams",
    "adapters.whatsapp",
    "adapters.wechat",
)
# Desks that receive case events through the outbox when configured (module, predicate on settings).
DESK_CHANNELS: dict[str, str] = {}


@dataclass
class Workers:
    """The inbox worker (a thread: the core is synchronous) and the outbox deliverer (an asyncio task)."""

    bot: Bot
    channels: Sequence[Channel]
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    task: asyncio.Task[None] | None = None
    async_stop: asyncio.Event | None = None

    def _inbox_loop(self) -> None:
        engine = self.bot.engine
        while not self.stop_event.is_set():
            engine.inbox_signal.clear()
            try:
                engine.process_pending()
            except Exception:
                log.exception("inbox round failed")
            engine.inbox_signal.wait(timeout=self.bot.settings.outbox_poll_seconds)

    async def start(self) -> None:
        self.thread = threading.Thread(target=self._inbox_loop, name="inbox", daemon=True)
        self.thread.start()
        senders = {c.name: s for c in self.channels if (s := c.sender()) is not None}
        deliverer = Deliverer(self.bot.db, senders, max_attempts=self.bot.settings.outbox_max_attempts)
        self.async_stop = asyncio.Event()
        self.task = asyncio.create_task(
            deliverer.run(
                self.async_stop,
                poll_seconds=self.bot.settings.outbox_poll_seconds,
                wake=self.bot.engine.outbox_signal,
            )
        )
        for channel in self.channels:
            await channel.start()

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
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join, 5)


def load_channels(bot: Bot) -> list[Channel]:
    channels: list[Channel] = []
    for module_name in CHANNEL_MODULES:
        module = importlib.import_module(module_name)
        channel = module.from_settings(bot)
        if channel is not None:
            channels.append(channel)
    return channels


def desks_configured(settings: Settings) -> tuple[str, ...]:
    """The external desks that must receive case events (Slack when its token is set)."""
    return ("slack",) if settings.slack_bot_token and "adapters.slack" in CHANNEL_MODULES else ()


class BodyLimit:
    """Refuses request bodies above a size with 413 before any handler reads them.

    Upload routes (paths ending in `/files`) may carry one attachment of the largest allowed size.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, upload_max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_max_bytes if scope["path"].endswith("/files") else self.max_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(send)
            return
        received = 0
        too_large = False

        async def limited() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(send)


class _TooLarge(Exception):
    pass


async def _too_large(send: Send) -> None:
    await send(
        {"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b'{"error": "request body too large"}'})


def create_app(bot: Bot, channels: Sequence[Channel] | None = None) -> Starlette:
    channels = list(channels if channels is not None else load_channels(bot))
    workers = Workers(bot, channels)
    registry = CollectorRegistry()
    gauges = _metrics(registry)

    async def healthz(_: Request) -> Response:
        # A channel may say why it cannot deliver (a refused configuration): shown here, for monitoring.
        problems = {c.name: p for c in channels if isinstance(p := getattr(c, "problem", None), str)}
        return JSONResponse({"status": "degraded" if problems else "ok", "channels": [c.name for c in channels],
                             **({"problems": problems} if problems else {})})

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

    routes: list[Any] = [Route("/healthz", healthz), Route("/metrics", metrics)]
    for channel in channels:
        routes.extend(channel.routes())
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                BodyLimit,
                max_bytes=bot.settings.max_body_bytes,
                upload_max_bytes=bot.settings.attachment_max_bytes + 64 * 1024,  # room for the multipart framing
            )
        ],
        exception_handlers={404: _not_found, 405: _not_allowed, 500: _server_error},
    )
    app.state.bot = bot
    app.state.channels = [c.name for c in channels]
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "not found"}, status_code=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "method not allowed"}, status_code=405)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return JSONResponse({"error": "internal error; the request was not processed"}, status_code=500)


def _metrics(registry: CollectorRegistry) -> dict[str, Gauge]:
    return {
        "messages": Gauge("warranty_messages", "Messages logged, by author", ["author"], registry=registry),
        "inbox": Gauge(
            "warranty_inbox_messages", "Inbound messages by processing status", ["status"], registry=registry
        ),
        "cases": Gauge("warranty_cases", "Cases by status", ["status"], registry=registry),
        "outbox": Gauge("warranty_outbox_messages", "Outbox rows by status", ["status"], registry=registry),
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


def run_server(settings: Settings, *, host: str, port: int) -> None:
    setup_logging(settings.log_level)
    bot = build(settings, external_desks=desks_configured(settings))
    app = create_app(bot)
    base = f"http://{host}:{port}"
    print(f"warranty-bot serving on {base}")
    print(f"  web chat:   {base}/")
    if settings.desk_token:
        print(f"  local desk: {base}/desk  (sign in with the DESK_TOKEN from .env)")
    else:
        print(f"  local desk: {base}/desk  is off: set DESK_TOKEN in .env to turn it on")
    print(f"  channels:   {', '.join(app.state.channels)}")
    print(f"  health:     {base}/healthz   metrics: {base}/metrics")
    uvicorn.run(
        app,
        log_config=None,  # keep our handler (and its masking) for uvicorn's records too
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def plain(text: str, status: int = 200) -> Response:
    return PlainTextResponse(text, status_code=status)
