"""What every channel offers the server: its HTTP routes, a sender for the outbox, background work, and the
capabilities the core reads.

A channel module exposes `from_settings(bot) -> <its Channel> | None` (None when the channel is not
configured), and bot/server.py lists these factories in CHANNELS, where mypy checks each against
`ChannelFactory`. A channel class subclasses `Channel`, so that a method whose name or signature drifts from
the interface is an error, and it inherits the defaults below for what it does not need.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from bot.app import Bot
from bot.channels import inbound, release_config_holds_of
from bot.fetch import Fetcher, FetchPolicy
from bot.messages import Attachment
from bot.outbox import AnySender, Sender


class Channel(Protocol):
    """One channel, as the server and the core see it."""

    name: str  # the outbox channel name, e.g. "telegram"
    # Capabilities the core reads (bot.server.configure_core):
    # an engineers' desk that receives case events through the outbox (Slack); the local desk reads the database.
    takes_desk_events: ClassVar[bool] = False
    # Each message costs the customer (a mail) or a quota (WeChat): the replies to one message go as one.
    one_reply_per_turn: ClassVar[bool] = False
    # The adapter delivers an OutboundMessage's attachments as files; to other channels a file goes as a link.
    sends_files: ClassVar[bool] = False

    def routes(self) -> Sequence[BaseRoute]:
        """Routes mounted into the one server (webhooks, pages, APIs)."""
        return ()

    def sender(self) -> AnySender | None:
        """What delivers this channel's outbox rows; None if the channel never sends."""
        return None

    async def start(self) -> None:
        """Start background work (polling, webhook registration); must return promptly."""
        return None

    async def start_sending(self) -> None:
        """Ready the sender in a process that only delivers (a worker): nothing of `start`'s background work,
        only what sending needs to know (what the channel keeps in the database)."""
        return None

    async def stop(self) -> None:
        """Stop background work and close the channel's clients."""
        return None


Endpoint = Callable[[Request], Awaitable[Response]]
ChannelFactory = Callable[[Bot], Channel | None]


def verified_webhook(
    path: str, challenge: Callable[[Mapping[str, str]], str | None], webhook: Endpoint
) -> list[BaseRoute]:
    """A webhook the service verifies with a GET before it POSTs to it: the GET is answered with what
    `challenge` makes of its query (the challenge to echo), or 403 when that is None."""

    async def verify(request: Request) -> Response:
        answer = challenge(request.query_params)
        if answer is None:
            return JSONResponse({"error": "verification failed"}, status_code=403)
        return PlainTextResponse(answer)

    return [Route(path, verify, methods=["GET"]), Route(path, webhook, methods=["POST"])]


class Closable(Protocol):
    async def aclose(self) -> None: ...


class SendingChannel(Channel):
    """A channel that delivers through `outbox` and closes its `clients` when it stops."""

    outbox: Sender
    clients: Sequence[Closable] = ()

    def sender(self) -> Sender:
        return self.outbox

    async def stop(self) -> None:
        for client in self.clients:
            await client.aclose()


class HoldingChannel(SendingChannel):
    """A sending channel whose replies wait while its set-up is refused (bot.outbox.CONFIG_HOLD), its sender
    saying why for /healthz (bot.channels.note_problem); a restart may be the fix, so they are tried again at
    start and the problem is no longer shown (bot.channels.release_config_holds_of)."""

    bot: Bot

    def __init__(self, bot: Bot, client: Closable, outbox: Sender) -> None:
        self.bot = bot
        self.outbox = outbox
        self.clients = (client,)

    async def start(self) -> None:
        if await asyncio.to_thread(release_config_holds_of, self.bot.db, self.name):
            self.bot.engine.outbox_signal.set()


class WebhookChannel(SendingChannel):
    """A sending channel the service POSTs its events to at `path`, whose customers' files are fetched through
    bot/fetch.py under `files` (from the service's hosts only); it closes its API client and the fetcher."""

    def __init__(self, bot: Bot, path: str, client: Closable, outbox: Sender, files: FetchPolicy) -> None:
        self.bot = bot
        self.webhook_path = path
        self.outbox = outbox
        self.fetcher = Fetcher(files)
        self.clients = (client, self.fetcher)

    def routes(self) -> Sequence[BaseRoute]:
        return [Route(self.webhook_path, self.webhook, methods=["POST"])]

    async def webhook(self, request: Request) -> Response:
        """What the service POSTs: each channel reads its own."""
        raise NotImplementedError

    async def accept(
        self,
        external_id: str,
        customer: str,
        text: str,
        attachments: tuple[Attachment, ...],
        raw: dict[str, Any],
    ) -> None:
        """Hand what a customer sent to the engine (seen already checked: the caller may note state first)."""
        message = inbound(self.name, external_id, customer, text=text, attachments=attachments, raw=raw)
        await self.bot.engine.accept_soon(message)
