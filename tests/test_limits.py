"""The server's limits against slow, numerous and oversized requests, on a real uvicorn run as `serve` runs
it (bot.server.uvicorn_options): header and body deadlines, concurrency, rate limits with Retry-After, the
web chat's bounded text and JSON-only bodies, the desk's framing and file headers, a large case in pages."""

from __future__ import annotations

import logging
import random
import socket
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, func, select, text
from sqlmodel import Session, col
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from adapters.base import Channel
from bot.app import Bot, build
from bot.config import Settings
from bot.server import create_app, uvicorn_options
from bot.store import CaseUnit, InboxItem, Message, StoredAttachment
from tests.fakes.server import serve
from tests.support import wait_until

DESK_TOKEN = "desk-token-for-limit-tests"
DESK = {"Authorization": f"Bearer {DESK_TOKEN}"}
SERIAL = "CSP2604D0007"
CLAIM = (f"{SERIAL} the display shows E07 and it shuts down under load", "proof:none", "cause:normal")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
GENEROUS = "1000000/minute"


def make_bot(database_url: str, folder: Path, **overrides: Any) -> Bot:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": folder,
        "attachments_dir": folder / "attachments",
        "desk_token": SecretStr(DESK_TOKEN),
        "outbox_poll_seconds": 0.1,
        "rate_limit_client": GENEROUS,
        "rate_limit_sessions": GENEROUS,
        "rate_limit_reads": GENEROUS,
        "rate_limit_global": GENEROUS,
    }
    values.update(overrides)
    return build(Settings(_env_file=None, **values))  # type: ignore[call-arg]


@contextmanager
def running(bot: Bot) -> Iterator[str]:
    try:
        with serve(create_app(bot), **uvicorn_options(bot.settings)) as url:
            yield url
    finally:
        bot.db.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/warranty.db"


def new_session(http: httpx.Client, **headers: str) -> str:
    answer = http.post("/api/webchat/sessions", json={"language": "en"}, headers=headers)
    assert answer.status_code == 201, answer.text
    session: str = answer.json()["session_id"]
    return session


def inbox_count(db: Engine) -> int:
    with Session(db) as session:
        return int(session.execute(select(func.count()).select_from(InboxItem)).scalar_one())


def settled(db: Engine) -> bool:
    with Session(db) as session:
        return not session.execute(
            select(func.count()).select_from(InboxItem).where(col(InboxItem.status) == "pending")
        ).scalar_one()


# --- slow and numerous connections (slowloris) ------------------------------------------------------------------


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; the socket's timeout fails the test if it never does."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _read_response(sock: socket.socket) -> bytes:
    """One whole answer on a connection that stays open: its headers, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_request_whose_headers_never_finish_is_closed(tmp_path: Path, sqlite_url: str) -> None:
    with running(make_bot(sqlite_url, tmp_path, server_header_timeout_seconds=0.5)) as url:
        half = _connect(url)
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
        silent = _connect(url)
        try:
            assert _read_all(half) == b""  # closed without an answer
            assert _read_all(silent) == b""  # a connection that never sends a byte, too
        finally:
            half.close()
            silent.close()
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_keep_alive_connection_must_send_its_next_headers_in_time(tmp_path: Path, sqlite_url: str) -> None:
    with running(
        make_bot(sqlite_url, tmp_path, server_header_timeout_seconds=0.5, server_keep_alive_seconds=30)
    ) as url:
        sock = _connect(url)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(sock).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost")  # and then nothing
            assert _read_all(sock) == b""
        finally:
            sock.close()


def test_a_body_that_trickles_in_gets_408(tmp_path: Path, sqlite_url: str) -> None:
    bot = make_bot(sqlite_url, tmp_path, server_body_timeout_seconds=0.5)
    with running(bot) as url:
        sock = _connect(url)
        try:
            sock.sendall(
                b"POST /api/webchat/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"lang'
            )
            answer = _read_all(sock)
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"too slow" in answer


def test_past_the_concurrency_limit_requests_get_503_at_once(tmp_path: Path, sqlite_url: str) -> None:
    with running(
        make_bot(sqlite_url, tmp_path, server_max_concurrency=3, server_header_timeout_seconds=30)
    ) as url:
        holders = [_connect(url) for _ in range(3)]
        try:
            for sock in holders:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            # The server may take a moment to accept the three; then every other request is 503 at once.
            wait_until(lambda: httpx.get(f"{url}/healthz", timeout=10).status_code == 503, what="a 503")
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 503
        finally:
            for sock in holders:
                sock.close()
        wait_until(
            lambda: httpx.get(f"{url}/healthz").status_code == 200, what="the server to take requests again"
        )


# --- rate limits ------------------------------------------------------------------------------------------------


def test_a_client_past_its_write_limit_gets_429_with_retry_after(tmp_path: Path, sqlite_url: str) -> None:
    bot = make_bot(sqlite_url, tmp_path, rate_limit_client="3/minute")
    with running(bot) as url, httpx.Client(base_url=url) as http:
        session = new_session(http)
        for n in range(2):
            assert (
                http.post(
                    f"/api/webchat/sessions/{session}/messages", json={"text": f"hello {n}"}
                ).status_code
                == 202
            )
        stored = inbox_count(bot.db)
        refused = http.post(f"/api/webchat/sessions/{session}/messages", json={"text": "one too many"})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["retry_after"] == int(refused.headers["retry-after"])
        assert inbox_count(bot.db) == stored
        # Reads are counted apart, and another client (as the trusted proxy reports it) has its own allowance.
        assert http.get(f"/api/webchat/sessions/{session}/messages").status_code == 200
        other = {"X-Forwarded-For": "203.0.113.7"}
        assert (
            http.post(
                f"/api/webchat/sessions/{session}/messages", json={"text": "from elsewhere"}, headers=other
            ).status_code
            == 202
        )


def test_new_sessions_per_client_are_limited(tmp_path: Path, sqlite_url: str) -> None:
    with (
        running(make_bot(sqlite_url, tmp_path, rate_limit_sessions="2/minute")) as url,
        httpx.Client(base_url=url) as http,
    ):
        new_session(http)
        new_session(http)
        refused = http.post("/api/webchat/sessions", json={})
        assert refused.status_code == 429 and "retry-after" in refused.headers
        # An IPv6 client is counted by its /64: a host cannot step around the limit by changing address.
        new_session(http, **{"X-Forwarded-For": "2001:db8::1"})
        new_session(http, **{"X-Forwarded-For": "2001:db8::2"})
        assert (
            http.post(
                "/api/webchat/sessions", json={}, headers={"X-Forwarded-For": "2001:db8::ffff"}
            ).status_code
            == 429
        )


def test_writes_from_everyone_together_are_limited(tmp_path: Path, sqlite_url: str) -> None:
    with (
        running(make_bot(sqlite_url, tmp_path, rate_limit_global="4/minute")) as url,
        httpx.Client(base_url=url) as http,
    ):
        answers = [
            http.post("/api/webchat/sessions", json={}, headers={"X-Forwarded-For": f"198.51.100.{n}"})
            for n in range(6)
        ]
        assert [a.status_code for a in answers] == [201, 201, 201, 201, 429, 429]


def test_reads_per_client_are_limited(tmp_path: Path, sqlite_url: str) -> None:
    with (
        running(make_bot(sqlite_url, tmp_path, rate_limit_reads="3/minute")) as url,
        httpx.Client(base_url=url) as http,
    ):
        session = new_session(http)
        codes = [http.get(f"/api/webchat/sessions/{session}/messages").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert http.get("/healthz").status_code == 200  # not an API route: never limited


def test_a_rate_limit_setting_must_be_readable() -> None:
    with pytest.raises(ValueError, match="60/minute"):
        Settings(_env_file=None, rate_limit_client="sixty a minute")  # type: ignore[call-arg]


# --- the web chat's bodies --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]
)
def test_a_body_not_declared_json_is_refused(tmp_path: Path, sqlite_url: str, content_type: str) -> None:
    """A cross-site page can POST these without a preflight; application/json it cannot."""
    bot = make_bot(sqlite_url, tmp_path)
    with running(bot) as url, httpx.Client(base_url=url) as http:
        session = new_session(http)
        headers = {"Content-Type": content_type} if content_type else {}
        answer = http.post(
            f"/api/webchat/sessions/{session}/messages",
            content=b'{"text": "written by another site"}',
            headers=headers,
        )
        assert answer.status_code == 415
        assert (
            http.post("/api/webchat/sessions", content=b'{"language": "en"}', headers=headers).status_code
            == 415
        )
        assert (
            http.post(
                "/api/desk/cases/WR-2026-000001/claim", content=b"{}", headers={**DESK, **headers}
            ).status_code
            == 415
        )
        assert inbox_count(bot.db) == 0


def test_stored_text_is_bounded_and_growth_per_message_is_measured(tmp_path: Path, database_url: str) -> None:
    bot = make_bot(database_url, tmp_path)
    limit = bot.settings.max_text_chars
    with running(bot) as url, httpx.Client(base_url=url) as http:
        session = new_session(http)
        path = f"/api/webchat/sessions/{session}/messages"
        assert http.post(path, json={"text": "x" * 100_000}).status_code == 422
        assert http.post(path, json={"text": "E07 " * (limit // 4) + "x"}).status_code == 422
        assert inbox_count(bot.db) == 0
        http.post(path, json={"text": "hello"}).raise_for_status()
        wait_until(lambda: settled(bot.db), what="the greeting to be processed")
        before = database_bytes(bot.db)
        rounds = 20
        for n in range(rounds):
            # Words that do not compress (PostgreSQL compresses long values): a real message's worst case.
            words = random.Random(n).choices(string.ascii_lowercase, k=limit)
            text = "".join(c if i % 7 else " " for i, c in enumerate(words))[:limit]
            assert len(text) <= limit
            http.post(path, json={"text": text, "client_id": f"m{n}"}).raise_for_status()
        wait_until(lambda: settled(bot.db), timeout=60, what="the messages to be processed")
        growth = (database_bytes(bot.db) - before) / rounds
        print(f"database growth per {limit}-character message ({bot.db.dialect.name}): {growth:.0f} bytes")
        with Session(bot.db) as db_session:
            longest = db_session.execute(select(func.max(func.length(Message.text)))).scalar_one()
        assert longest <= limit
        # The text is kept twice (inbox and message log) with the bot's reply and the indexes: a few times
        # the text, never more than ten.
        assert growth <= 10 * limit, growth


def database_bytes(db: Engine) -> int:
    with db.connect() as connection:
        if db.dialect.name == "sqlite":
            pages = connection.execute(text("PRAGMA page_count")).scalar_one()
            free = connection.execute(text("PRAGMA freelist_count")).scalar_one()
            size = connection.execute(text("PRAGMA page_size")).scalar_one()
            return int((pages - free) * size)
        connection.execute(text("ANALYZE"))
        return int(
            connection.execute(
                text(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
            ).scalar_one()
        )


def test_a_caption_over_the_text_limit_is_refused_and_its_file_not_kept(
    tmp_path: Path, sqlite_url: str
) -> None:
    bot = make_bot(sqlite_url, tmp_path)
    with running(bot) as url, httpx.Client(base_url=url) as http:
        session = new_session(http)
        path = f"/api/webchat/sessions/{session}/files"
        answer = http.post(
            path, files={"file": ("label.png", PNG, "image/png")}, data={"text": "y" * 900_000}
        )
        assert answer.status_code == 422
        answer = http.post(
            path,
            files={"file": ("label.png", PNG, "image/png")},
            data={"text": "y" * (bot.settings.max_text_chars + 1)},
        )
        assert answer.status_code == 422
        assert inbox_count(bot.db) == 0
        assert not [p for p in (tmp_path / "attachments").rglob("*") if p.is_file()]
        ok = http.post(path, files={"file": ("label.png", PNG, "image/png")}, data={"text": "the label"})
        assert ok.status_code == 202, ok.text


# --- the desk ---------------------------------------------------------------------------------------------------


def test_the_desk_page_cannot_be_framed(tmp_path: Path, sqlite_url: str) -> None:
    with running(make_bot(sqlite_url, tmp_path)) as url:
        page = httpx.get(f"{url}/desk")
        assert page.status_code == 200
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def open_case(http: httpx.Client, bot: Bot) -> str:
    session = new_session(http)
    for line in CLAIM:
        http.post(f"/api/webchat/sessions/{session}/messages", json={"text": line}).raise_for_status()
        wait_until(lambda: settled(bot.db), what="the claim to be processed")
    cases = wait_until(lambda: http.get("/api/desk/cases", headers=DESK).json()["cases"], what="the case")
    ref: str = cases[0]["ref"]
    return ref


def test_a_case_with_many_units_is_read_in_pages(tmp_path: Path, database_url: str) -> None:
    bot = make_bot(database_url, tmp_path)
    with running(bot) as url, httpx.Client(base_url=url) as http:
        ref = open_case(http, bot)
    # With the server stopped (its workers would hold SQLite's write lock), the case grows, then it is read.
    bot = make_bot(database_url, tmp_path)
    with Session(bot.db) as session:
        first = session.execute(select(CaseUnit)).scalars().one()
        # What the conversation stored before units per claim were capped: one message, thousands of units.
        for n in range(449):
            session.add(
                CaseUnit(
                    case_id=first.case_id,
                    serial=f"CSP2604D{n + 1000:04}",
                    model=first.model,
                    outcome=first.outcome,
                    clauses=first.clauses,
                    decision=first.decision,
                )
            )
        session.commit()
    with running(bot) as url, httpx.Client(base_url=url) as http:
        page = http.get(f"/api/desk/cases/{ref}", headers=DESK).json()
        assert (len(page["units"]), page["unit_count"], page["units_offset"], page["units_next"]) == (
            200,
            450,
            0,
            200,
        )
        assert page["units"][0]["serial"] == SERIAL
        seen = [u["serial"] for u in page["units"]]
        while page["units_next"] is not None:
            page = http.get(
                f"/api/desk/cases/{ref}", params={"units_offset": page["units_next"]}, headers=DESK
            ).json()
            seen += [u["serial"] for u in page["units"]]
        assert len(seen) == len(set(seen)) == 450
        small = http.get(f"/api/desk/cases/{ref}", params={"units_limit": 5}, headers=DESK).json()
        assert len(small["units"]) == 5 and small["units_next"] == 5
        for bad in ("-1", "abc", "1e3", "²", "99999999999"):
            assert (
                http.get(f"/api/desk/cases/{ref}", params={"units_offset": bad}, headers=DESK).status_code
                == 422
            )
        assert (
            http.get(f"/api/desk/cases/{ref}", params={"units_limit": "5000"}, headers=DESK).status_code
            == 422
        )
        listed = http.get("/api/desk/cases", headers=DESK).json()["cases"]
        assert listed[0]["units"] == 450


def test_a_customer_file_is_a_download_never_a_page(tmp_path: Path, sqlite_url: str) -> None:
    bot = make_bot(sqlite_url, tmp_path)
    with running(bot) as url, httpx.Client(base_url=url) as http:
        ref = open_case(http, bot)
    bot = make_bot(sqlite_url, tmp_path)  # the server stopped: its workers would hold the write lock
    with Session(bot.db) as session:
        case_id = session.execute(select(col(CaseUnit.case_id))).scalars().first()
        # A row as an older version could keep it: HTML under a type the store does not check today.
        target = tmp_path / "attachments" / "ab" / "page.html"
        target.parent.mkdir(parents=True)
        target.write_bytes(b"<html><script>alert(document.domain)</script></html>")
        row = StoredAttachment(
            case_id=case_id,
            kind="document",
            name="page.html",
            mime="text/html",
            size=60,
            path="ab/page.html",
            sha256="0" * 64,
        )
        session.add(row)
        session.commit()
        attachment_id = row.id
    with running(bot) as url, httpx.Client(base_url=url) as http:
        answer = http.get(f"/api/desk/cases/{ref}/attachments/{attachment_id}", headers=DESK)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/octet-stream"
        assert answer.headers["content-disposition"].startswith("attachment;")
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


# --- what a failing request leaves in the log ---------------------------------------------------------------------


class Failing(Channel):
    """A channel whose one route fails, as a bug would: what does the server log about the request?"""

    name = "failing"

    def routes(self) -> list[BaseRoute]:
        return [Route("/api/failing/sessions/{session_id}/boom", self.boom, methods=["GET"])]

    async def boom(self, request: Request) -> Response:
        raise RuntimeError("a bug")


def test_a_failing_request_is_logged_by_its_route_not_its_path(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    bot = make_bot(sqlite_url, tmp_path)
    session = "pP6v4fGq3Zr0nXyTmA-8bL1s_cD2eF7h"
    with (
        serve(create_app(bot, channels=[Failing()]), **uvicorn_options(bot.settings)) as url,
        caplog.at_level(logging.ERROR, logger="bot.server"),
    ):
        answer = httpx.get(f"{url}/api/failing/sessions/{session}/boom")
    bot.db.dispose()
    assert answer.status_code == 500
    [line] = [r.getMessage() for r in caplog.records if r.name == "bot.server"]
    assert line == "unhandled error on GET /api/failing/sessions/{session_id}/boom: RuntimeError"


def test_the_signed_channel_api_is_not_limited_like_the_web_chat() -> None:
    from bot.config import Settings
    from bot.ratelimit import rules_from_settings

    rules = rules_from_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    assert not any(rule.applies("POST", "/api/channels/gateway/messages") for rule in rules)
    assert any(rule.applies("POST", "/api/webchat/sessions/abc/messages") for rule in rules)
