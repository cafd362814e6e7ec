"""Rate limits for the web chat and local desk APIs: per client and for everyone, answered 429 + Retry-After.

The counting is the `limits` library's moving window in memory (one server process, so one memory); this
module only decides which requests count against which limit. A client is its IP address (an IPv6 client
by its /64, which one host usually owns whole); behind a reverse proxy that is the address the proxy
reports in X-Forwarded-For, trusted only from FORWARDED_ALLOW_IPS (docs/operations.md, Security).
"""

from __future__ import annotations

import ipaddress
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from bot.config import Settings


@dataclass(frozen=True)
class Rule:
    """Requests of `methods` under `prefix` (and ending in `suffix`) count against these limits."""

    name: str
    methods: frozenset[str]
    prefix: str
    per_client: tuple[RateLimitItem, ...]
    overall: tuple[RateLimitItem, ...] = ()
    suffix: str = ""
    exclude: tuple[str, ...] = ()  # prefixes under `prefix` that this rule leaves alone

    def applies(self, method: str, path: str) -> bool:
        if any(path.startswith(prefix) for prefix in self.exclude):
            return False
        return method in self.methods and path.startswith(self.prefix) and path.endswith(self.suffix)


def rules_from_settings(settings: Settings) -> tuple[Rule, ...]:
    """Every request is counted by each rule that applies: a new session counts as a session and a write."""
    writes = frozenset({"POST", "PUT", "PATCH", "DELETE"})
    reads = frozenset({"GET", "HEAD"})
    overall = tuple(parse_many(settings.rate_limit_global))
    return (
        Rule(
            "sessions",
            frozenset({"POST"}),
            "/api/webchat/sessions",
            tuple(parse_many(settings.rate_limit_sessions)),
            suffix="/sessions",
        ),
        # The generic channel's gateway posts every customer's messages from one address, each signed: like
        # the other channels' webhooks, it is not limited per client.
        Rule(
            "writes",
            writes,
            "/api/",
            tuple(parse_many(settings.rate_limit_client)),
            overall,
            exclude=("/api/channels/",),
        ),
        Rule("reads", reads, "/api/", tuple(parse_many(settings.rate_limit_reads))),
    )


def client_key(scope: Scope) -> str:
    client = scope.get("client")
    host = client[0] if client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped or address) if isinstance(address, ipaddress.IPv6Address) else str(address)


class RateLimit:
    """ASGI middleware: 429 with Retry-After (whole seconds) when a rule's limit is used up."""

    def __init__(self, app: ASGIApp, rules: Sequence[Rule]) -> None:
        self.app = app
        self.rules = tuple(rules)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wait = self._take(scope["method"], scope["path"], client_key(scope))
        if wait is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "too many requests; try again later", "retry_after": wait}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", str(wait).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _take(self, method: str, path: str, client: str) -> int | None:
        """None when the request may go (and it is counted); otherwise the seconds until it may."""
        checks = []
        for rule in self.rules:
            if rule.applies(method, path):
                checks += [(item, (rule.name, client)) for item in rule.per_client]
                checks += [(item, (rule.name, "*")) for item in rule.overall]
        # Test all first, so that a refused request uses up none of the others' allowance.
        refused = [(item, ids) for item, ids in checks if not self.limiter.test(item, *ids)]
        if not refused:
            for item, ids in checks:
                self.limiter.hit(item, *ids)
            return None
        now = time.time()
        resets = [self.limiter.get_window_stats(item, *ids).reset_time for item, ids in refused]
        return max(1, math.ceil(max(resets) - now))
