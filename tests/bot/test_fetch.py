"""The outbound-fetch policy (bot/fetch.py) against a real loopback server: what it fetches and what it refuses."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from bot.config import Settings
from bot.fetch import (
    Fetcher,
    FetchFailed,
    FetchPolicy,
    FetchRefused,
    FetchTooLarge,
    fetch,
    host_of,
)
from tests.fakes.server import free_port, serve

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


class FileHost:
    """A file server that records every request it receives, so a test can tell that nothing was sent."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.app = Starlette(
            routes=[
                Route("/file.png", self.file),
                Route("/big", self.big),
                Route("/stream", self.stream),
                Route("/bomb", self.bomb),
                Route("/slow", self.slow),
                Route("/missing", self.missing),
                Route("/redirect", self.redirect),
                Route("/loop", self.loop),
            ]
        )

    def _record(self, request: Request) -> None:
        self.seen.append(
            {
                "path": request.url.path,
                "host": request.headers.get("host", ""),
                "authorization": request.headers.get("authorization", ""),
            }
        )

    async def file(self, request: Request) -> Response:
        self._record(request)
        return Response(PNG, media_type="image/png; charset=binary")

    async def big(self, request: Request) -> Response:
        self._record(request)
        return Response(b"x" * 5000, media_type="application/octet-stream")

    async def stream(self, request: Request) -> Response:
        self._record(request)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(50):  # 50 KB without a Content-Length
                yield b"y" * 1024

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def bomb(self, request: Request) -> Response:
        self._record(request)
        body = gzip.compress(b"\x00" * 1_000_000)
        return Response(body, headers={"content-encoding": "gzip"}, media_type="application/octet-stream")

    async def slow(self, request: Request) -> Response:
        self._record(request)

        async def drip() -> AsyncIterator[bytes]:
            for _ in range(20):  # bounded: 1 byte every 0.2 s, for 4 s at most
                yield b"z"
                await asyncio.sleep(0.2)

        return StreamingResponse(drip(), media_type="application/octet-stream")

    async def missing(self, request: Request) -> Response:
        self._record(request)
        return JSONResponse({"error": {"message": "no such media"}}, status_code=404)

    async def redirect(self, request: Request) -> Response:
        self._record(request)
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def loop(self, request: Request) -> Response:
        self._record(request)
        return RedirectResponse("/loop", status_code=302)


@pytest.fixture(scope="module")
def files() -> Iterator[tuple[FileHost, str]]:
    host = FileHost()
    with serve(host.app) as base:
        yield host, base


@pytest.fixture
def host(files: tuple[FileHost, str]) -> FileHost:
    files[0].seen.clear()
    return files[0]


@pytest.fixture
def base(files: tuple[FileHost, str]) -> str:
    return files[1]


def loopback_policy(**overrides: object) -> FetchPolicy:
    """The policy a test gets with FETCH_INSECURE_HOSTS=127.0.0.1."""
    values: dict[str, object] = {
        "hosts": frozenset({"127.0.0.1"}),
        "insecure_hosts": frozenset({"127.0.0.1"}),
        "max_bytes": 10_000,
    }
    values.update(overrides)
    return FetchPolicy(**values)  # type: ignore[arg-type]


def resolver_for(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(name: str, port: int) -> list[str]:
        if name not in table:
            raise OSError("unknown name")
        return table[name]

    return resolve


async def test_an_allowed_file_is_fetched(host: FileHost, base: str) -> None:
    got = await fetch(f"{base}/file.png", policy=loopback_policy())
    assert got.data == PNG
    assert got.content_type == "image/png"
    assert got.url == f"{base}/file.png"
    assert len(host.seen) == 1


async def test_a_host_outside_the_policy_is_never_contacted(host: FileHost, base: str) -> None:
    policy = loopback_policy(hosts=frozenset({"files.slack.com"}), insecure_hosts=frozenset())
    with pytest.raises(FetchRefused) as refused:
        await fetch(f"{base}/file.png", policy=policy)
    assert refused.value.reason == "host"
    assert host.seen == []


async def test_plain_http_is_refused_unless_the_host_is_insecure(host: FileHost, base: str) -> None:
    with pytest.raises(FetchRefused) as refused:
        await fetch(f"{base}/file.png", policy=loopback_policy(insecure_hosts=frozenset()))
    assert refused.value.reason == "scheme"
    for scheme in ("file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:25/x"):
        with pytest.raises(FetchRefused):
            await fetch(scheme, policy=loopback_policy())
    assert host.seen == []


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.7",
        "172.16.5.5",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
async def test_a_name_resolving_to_a_private_address_is_refused(host: FileHost, address: str) -> None:
    policy = FetchPolicy(
        hosts=frozenset({"files.example.com"}),
        max_bytes=10_000,
        resolver=resolver_for({"files.example.com": [address]}),
    )
    with pytest.raises(FetchRefused) as refused:
        await fetch("https://files.example.com/file.png", policy=policy)
    assert refused.value.reason == "address"
    assert host.seen == []


async def test_one_private_address_among_public_ones_is_enough_to_refuse() -> None:
    policy = FetchPolicy(
        hosts=frozenset({"files.example.com"}),
        max_bytes=10_000,
        resolver=resolver_for({"files.example.com": ["93.184.216.34", "127.0.0.1"]}),
    )
    with pytest.raises(FetchRefused):
        await fetch("https://files.example.com/x", policy=policy)


async def test_an_ip_literal_on_a_private_address_is_refused(host: FileHost, base: str) -> None:
    port = base.rsplit(":", 1)[1]
    policy = loopback_policy(insecure_hosts=frozenset())
    with pytest.raises(FetchRefused) as refused:
        await fetch(f"https://127.0.0.1:{port}/file.png", policy=policy)
    assert refused.value.reason == "address"
    assert host.seen == []


async def test_the_connection_goes_to_the_vetted_address_with_the_name_kept(
    host: FileHost, base: str
) -> None:
    port = base.rsplit(":", 1)[1]
    # The system resolver does not know this name: only the vetted address can have reached the server.
    policy = FetchPolicy(
        hosts=frozenset({"files.example.test"}),
        insecure_hosts=frozenset({"files.example.test"}),
        max_bytes=10_000,
        resolver=resolver_for({"files.example.test": ["127.0.0.1"]}),
    )
    got = await fetch(f"http://files.example.test:{port}/file.png", policy=policy)
    assert got.data == PNG
    assert got.url == f"http://files.example.test:{port}/file.png"
    assert host.seen[-1]["host"] == f"files.example.test:{port}"


async def test_the_token_goes_to_token_hosts_only(host: FileHost, base: str) -> None:
    policy = loopback_policy(token_hosts=frozenset({"127.0.0.1"}))
    await fetch(f"{base}/file.png", policy=policy, bearer="s3cret")
    assert host.seen[-1]["authorization"] == "Bearer s3cret"

    with pytest.raises(FetchRefused) as refused:
        await fetch(f"{base}/file.png", policy=loopback_policy(), bearer="s3cret")
    assert refused.value.reason == "token"
    assert len(host.seen) == 1
    with pytest.raises(ValueError, match="bearer="):
        await fetch(f"{base}/file.png", policy=policy, headers={"Authorization": "Bearer s3cret"})


async def test_a_redirect_on_the_same_host_is_followed_with_the_token(host: FileHost, base: str) -> None:
    policy = loopback_policy(token_hosts=frozenset({"127.0.0.1"}))
    got = await fetch(f"{base}/redirect", params={"to": "/file.png"}, policy=policy, bearer="s3cret")
    assert got.data == PNG
    assert [s["path"] for s in host.seen] == ["/redirect", "/file.png"]
    assert host.seen[-1]["authorization"] == "Bearer s3cret"


async def test_a_redirect_to_another_host_is_refused(host: FileHost, base: str) -> None:
    port = base.rsplit(":", 1)[1]
    both = frozenset({"127.0.0.1", "localhost"})
    policy = loopback_policy(hosts=both, insecure_hosts=both, token_hosts=both)
    with pytest.raises(FetchRefused) as refused:
        await fetch(
            f"{base}/redirect",
            params={"to": f"http://localhost:{port}/file.png"},
            policy=policy,
            bearer="s3cret",
        )
    assert refused.value.reason == "redirect to another host"
    assert [s["path"] for s in host.seen] == ["/redirect"]


async def test_redirects_are_bounded(host: FileHost, base: str) -> None:
    with pytest.raises(FetchRefused) as refused:
        await fetch(f"{base}/loop", policy=loopback_policy(max_redirects=2))
    assert refused.value.reason == "too many redirects"
    assert len(host.seen) == 3


async def test_a_declared_length_over_the_limit_is_refused(base: str) -> None:
    with pytest.raises(FetchTooLarge):
        await fetch(f"{base}/big", policy=loopback_policy(max_bytes=4999))
    got = await fetch(f"{base}/big", policy=loopback_policy(max_bytes=5000))
    assert len(got.data) == 5000


async def test_a_stream_is_cut_off_past_the_limit(base: str) -> None:
    with pytest.raises(FetchTooLarge):
        await fetch(f"{base}/stream", policy=loopback_policy(), max_bytes=20_000)
    got = await fetch(f"{base}/stream", policy=loopback_policy(), max_bytes=50 * 1024)
    assert len(got.data) == 50 * 1024


async def test_a_compressed_bomb_counts_as_what_it_decompresses_to(base: str) -> None:
    with pytest.raises(FetchTooLarge):
        await fetch(f"{base}/bomb", policy=loopback_policy(max_bytes=100_000))


async def test_a_slow_download_runs_out_of_time(base: str) -> None:
    with pytest.raises(FetchFailed) as failed:
        await fetch(f"{base}/slow", policy=loopback_policy(timeout_seconds=0.5))
    assert str(failed.value) == "timed out"


async def test_an_error_status_carries_the_answer(base: str) -> None:
    with pytest.raises(FetchFailed) as failed:
        await fetch(f"{base}/missing", policy=loopback_policy())
    assert failed.value.status == 404
    assert failed.value.content_type == "application/json"
    assert b"no such media" in failed.value.body


async def test_a_closed_port_and_an_unknown_name_are_failures_not_crashes() -> None:
    with pytest.raises(FetchFailed):
        await fetch(f"http://127.0.0.1:{free_port()}/x", policy=loopback_policy())
    policy = FetchPolicy(hosts=frozenset({"nowhere.example.com"}), max_bytes=10, resolver=resolver_for({}))
    with pytest.raises(FetchFailed):
        await fetch("https://nowhere.example.com/x", policy=policy)


async def test_credentials_in_the_url_are_refused(host: FileHost, base: str) -> None:
    with pytest.raises(FetchRefused):
        await fetch(base.replace("http://", "http://user:pw@") + "/file.png", policy=loopback_policy())
    assert host.seen == []


async def test_one_fetcher_serves_many_downloads(host: FileHost, base: str) -> None:
    async with Fetcher(loopback_policy()) as fetcher:
        for _ in range(3):
            assert (await fetcher.get(f"{base}/file.png")).data == PNG
    assert len(host.seen) == 3


def test_host_patterns() -> None:
    policy = FetchPolicy(hosts=frozenset({"*.sharepoint.com", "Graph.Facebook.com"}), max_bytes=1)
    assert policy.allows_host("contoso-my.sharepoint.com")
    assert policy.allows_host("a.b.sharepoint.com")
    assert policy.allows_host("graph.facebook.com")
    assert not policy.allows_host("sharepoint.com")
    assert not policy.allows_host("evilsharepoint.com")
    assert not policy.allows_host("graph.facebook.com.evil.example")
    with pytest.raises(ValueError, match="token host"):
        FetchPolicy(hosts=frozenset({"a.example"}), token_hosts=frozenset({"b.example"}), max_bytes=1)


def test_a_policy_from_the_settings() -> None:
    settings = Settings(
        _env_file=None,
        fetch_insecure_hosts="127.0.0.1, Localhost",
        fetch_timeout_seconds=7,
        attachment_max_bytes=1234,
    )  # type: ignore[call-arg]
    policy = FetchPolicy.from_settings(
        settings,
        hosts=["https://graph.facebook.com/v23.0", "lookaside.fbsbx.com"],
        token_hosts=["https://graph.facebook.com/v23.0"],
    )
    assert policy.hosts == {"graph.facebook.com", "lookaside.fbsbx.com"}
    assert policy.token_hosts == {"graph.facebook.com"}
    assert policy.insecure_hosts == {"127.0.0.1", "localhost"}
    assert (policy.max_bytes, policy.timeout_seconds) == (1234, 7)
    assert host_of("http://127.0.0.1:8081/file/bot") == "127.0.0.1"
    assert Settings(_env_file=None).fetch_insecure_host_set == frozenset()  # type: ignore[call-arg]
