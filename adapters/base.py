"""What every channel offers the server: its HTTP routes, a sender for the outbox, and background work.

A channel module exposes `from_settings(bot) -> Channel | None` (None when the channel is not configured).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from starlette.routing import BaseRoute

from bot.outbox import Sender


class Channel(Protocol):
    """One channel, as the server sees it."""

    name: str  # the outbox channel name, e.g. "telegram"
    is_desk: bool  # True for an engineers' desk (Slack): it receives case events, not customer messages

    def routes(self) -> Sequence[BaseRoute]:
        """Routes mounted into the one server (webhooks, pages, APIs)."""
        ...

    def sender(self) -> Sender | None:
        """What delivers this channel's outbox rows; None if the channel never sends."""
        ...

    async def start(self) -> None:
        """Start background work (polling, webhook registration); must return promptly."""
        ...

    async def stop(self) -> None:
        """Stop background work."""
        ...
