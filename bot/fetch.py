"""The one way the bot downloads a file a channel names: an outbound-fetch policy enforced on every hop.

A webhook is the sender's word, so a URL in it is never fetched as it stands. Every download goes through
`Fetcher.get` (or the one-off `fetch`), which enforces a `FetchPolicy`:

- only the channel's own hosts (`hosts`: exact names, or `*.example.com` for its subdomains);
- https only;
- the name is resolved once, every address it resolves to must be public (no private, loopback,
  link-local, shared or reserved address), and the connection goes to that vetted address, with the name
  kept for the TLS certificate check and the Host header, so a second DNS answer cannot swap it;
- redirects only to the same host (and never from https to http), at most `max_redirects` of them;
- at most `max_bytes` (a larger Content-Length is refused before reading; a body is cut off past it) within
  `timeout_seconds` for the whole download, redirects included;
- the bearer token only to `token_hosts`: asked to send it anywhere else, the download is refused.

`insecure_hosts` (the setting FETCH_INSECURE_HOSTS, for tests against loopback fakes only) lists hosts that
may be reached over plain http and on private or loopback addresses; they must still be in `hosts`.

Errors::

    FetchError             anything that kept the file from us; `url` is the URL asked for
     ├── FetchRefused      the policy forbids the URL, an address it resolves to, a redirect or the token
     ├── FetchTooLarge     the file is larger than max_bytes
     └── FetchFailed       network error, timeout, or an HTTP error status (`status`, `body`, `content_type`)

The channels' hosts (each adapter builds its policy with `FetchPolicy.from_settings`): Telegram its Bot API
host (TELEGRAM_API_BASE_URL; the token is in the path), Slack `files.slack.com` (bearer token), WhatsApp the
Graph host (WHATSAPP_GRAPH_URL) and `lookaside.fbsbx.com` (both with the bearer token), Teams the
connector's service URL host (bearer token) and the file hosts of pre-signed downloads, WeChat its API host
(WECHAT_API_BASE_URL; the token is a query parameter).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from bot.config import Settings

# Resolves (host, port) to IP addresses; the default asks the system resolver. Tests pass their own.
Resolver = Callable[[str, int], Awaitable[list[str]]]

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 303, 307, 308}


class FetchError(Exception):
    """A download that did not happen; `url` is the URL asked for (it may carry a token: never log it)."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


class FetchRefused(FetchError):
    """The policy forbids this download; `reason` says which rule (host, scheme, address, redirect, token)."""

    def __init__(self, reason: str, url: str) -> None:
        super().__init__(f"refused: {reason}", url)
        self.reason = reason


class FetchTooLarge(FetchError):
    """The file is larger than the limit; nothing past the limit was read."""

    def __init__(self, url: str, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes", url)
        self.limit = limit


class FetchFailed(FetchError):
    """The network failed, the time ran out, or the server answered an error (`status` is 0 for no answer)."""

    def __init__(
        self, message: str, url: str, *, status: int = 0, body: bytes = b"", content_type: str = ""
    ) -> None:
        super().__init__(message, url)
        self.status = status
        self.body = body
        self.content_type = content_type


@dataclass(frozen=True)
class Fetched:
    """A downloaded file: its bytes, the type the server declared (parameters dropped) and the final URL."""

    data: bytes
    content_type: str
    url: str
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class FetchPolicy:
    """Where one channel's downloads may go, and how big and slow they may be."""

    hosts: frozenset[str]
    max_bytes: int
    token_hosts: frozenset[str] = frozenset()
    insecure_hosts: frozenset[str] = frozenset()
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    resolver: Resolver = system_resolver

    def __post_init__(self) -> None:
        for name in ("hosts", "token_hosts", "insecure_hosts"):
            object.__setattr__(
                self, name, frozenset(h.strip().lower() for h in getattr(self, name) if h.strip())
            )
        if not self.token_hosts <= self.hosts:
            raise ValueError("every token host must be an allowed host")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        hosts: Iterable[str],
        token_hosts: Iterable[str] = (),
        max_bytes: int | None = None,
    ) -> FetchPolicy:
        """A channel's policy: its hosts (names or URLs), the limits and insecure hosts from the settings."""
        allowed = frozenset(host_of(h) for h in hosts)
        return cls(
            hosts=allowed,
            token_hosts=frozenset(host_of(h) for h in token_hosts),
            insecure_hosts=settings.fetch_insecure_host_set,
            max_bytes=max_bytes or settings.attachment_max_bytes,
            timeout_seconds=settings.fetch_timeout_seconds,
        )

    def allows_host(self, host: str) -> bool:
        return _matches(host.lower(), self.hosts)

    def sends_token_to(self, host: str) -> bool:
        return _matches(host.lower(), self.token_hosts)

    def is_insecure(self, host: str) -> bool:
        return host.lower() in self.insecure_hosts


def host_of(url_or_host: str) -> str:
    """The host name of a URL (`https://graph.facebook.com/v23.0` → `graph.facebook.com`), or the name given."""
    if "://" not in url_or_host:
        return url_or_host.strip().lower()
    return httpx.URL(url_or_host).host.lower()


def _matches(host: str, patterns: frozenset[str]) -> bool:
    if host in patterns:
        return True
    return any(p.startswith("*.") and host.endswith(p[1:]) and len(host) > len(p) - 1 for p in patterns)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class Fetcher:
    """Downloads under one policy, on one connection pool; close it with `aclose()`."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        # trust_env=False: a proxy from the environment would resolve names itself, past the address check.
        self._client = httpx.AsyncClient(
            timeout=policy.timeout_seconds, follow_redirects=False, trust_env=False
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def get(
        self,
        url: str,
        *,
        bearer: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> Fetched:
        """The file at `url`, under the policy; `bearer` is sent as `Authorization: Bearer …` (token hosts only)."""
        extra = dict(headers or {})
        if any(name.lower() == "authorization" for name in extra):
            raise ValueError("pass the token as bearer=, so the policy decides where it goes")
        limit = max_bytes or self.policy.max_bytes
        try:
            target = httpx.URL(url, params=params) if params else httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as error:
            raise FetchRefused("url", url) from error
        try:
            async with asyncio.timeout(self.policy.timeout_seconds):
                return await self._follow(url, target, bearer, extra, limit)
        except TimeoutError as error:
            raise FetchFailed("timed out", url) from error
        except httpx.HTTPError as error:
            raise FetchFailed(type(error).__name__, url) from error

    async def _follow(
        self, asked: str, target: httpx.URL, bearer: str | None, headers: dict[str, str], limit: int
    ) -> Fetched:
        first_host = target.host.lower()
        for _hop in range(self.policy.max_redirects + 1):
            request = await self._request(asked, target, bearer, headers)
            response = await self._client.send(request, stream=True)
            try:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    try:
                        following = target.join(response.headers["location"])
                    except (httpx.InvalidURL, ValueError) as error:
                        raise FetchRefused("redirect", asked) from error
                    if following.host.lower() != first_host:
                        raise FetchRefused("redirect to another host", asked)
                    target = following
                    continue
                return await self._read(asked, target, response, limit)
            finally:
                await response.aclose()
        raise FetchRefused("too many redirects", asked)

    async def _request(
        self, asked: str, target: httpx.URL, bearer: str | None, headers: dict[str, str]
    ) -> httpx.Request:
        policy = self.policy
        host = target.host.lower()
        if not host or not policy.allows_host(host):
            raise FetchRefused("host", asked)
        insecure = policy.is_insecure(host)
        if target.scheme != "https" and not (target.scheme == "http" and insecure):
            raise FetchRefused("scheme", asked)
        if target.userinfo:
            raise FetchRefused("credentials in the URL", asked)
        send = dict(headers)
        if bearer is not None:
            if not policy.sends_token_to(host):
                raise FetchRefused("token", asked)
            send["Authorization"] = f"Bearer {bearer}"
        address = await self._vetted_address(asked, target, insecure=insecure)
        extensions = {}
        if address != host:
            send["Host"] = target.netloc.decode("ascii")
            if target.scheme == "https":
                extensions["sni_hostname"] = host
        return self._client.build_request(
            "GET", target.copy_with(host=address), headers=send, extensions=extensions
        )

    async def _vetted_address(self, asked: str, target: httpx.URL, *, insecure: bool) -> str:
        """The address to connect to: every address the host resolves to must be public (unless insecure)."""
        host = target.host.lower()
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            try:
                addresses = await self.policy.resolver(host, target.port or 443)
            except OSError as error:
                raise FetchFailed("name not resolved", asked) from error
        if not addresses:
            raise FetchFailed("name not resolved", asked)
        if not insecure and not all(_public(a) for a in addresses):
            raise FetchRefused("address", asked)
        return next((a for a in addresses if ":" not in a), addresses[0])

    async def _read(self, asked: str, target: httpx.URL, response: httpx.Response, limit: int) -> Fetched:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FetchTooLarge(asked, limit)
        data = bytearray()
        async for chunk in response.aiter_bytes():  # decoded: a gzip bomb counts as what it becomes
            data.extend(chunk)
            if len(data) > limit:
                raise FetchTooLarge(asked, limit)
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.status_code >= 400:
            raise FetchFailed(
                f"HTTP {response.status_code}",
                asked,
                status=response.status_code,
                body=bytes(data),
                content_type=content_type,
            )
        return Fetched(
            data=bytes(data),
            content_type=content_type,
            url=str(target),
            status=response.status_code,
            headers=dict(response.headers),
        )


async def fetch(
    url: str,
    *,
    policy: FetchPolicy,
    bearer: str | None = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    max_bytes: int | None = None,
) -> Fetched:
    """One download under `policy` (a `Fetcher` keeps its connections for the next one)."""
    async with Fetcher(policy) as fetcher:
        return await fetcher.get(url, bearer=bearer, headers=headers, params=params, max_bytes=max_bytes)
