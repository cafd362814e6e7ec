"""The embedded default end to end: a real `warranty-bot serve` process, the web chat API and the desk API."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bot.app import build
from bot.config import Settings
from bot.server import Workers, load_channels
from tests.support import AUTH, PDF, SERIAL, Server, messages, send, wait_until


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[Server]:
    running = Server(tmp_path, database_url)
    running.start()
    yield running
    running.stop()


def test_a_claim_over_the_web_chat_reaches_the_desk_and_back(server: Server) -> None:
    session = httpx.post(f"{server.url}/api/webchat/sessions").json()["session_id"]
    replies = send(server, session, f"{SERIAL} display shows E07 and shuts down under load")
    assert [b["value"] for b in replies[-1]["buttons"]] == ["proof:none"]
    upload = httpx.post(
        f"{server.url}/api/webchat/sessions/{session}/files",
        files={"file": ("invoice.pdf", PDF, "application/pdf")},
    )
    assert upload.status_code == 202 and upload.json()["rejected"] is False
    wait_until(
        lambda: any(
            m["author"] == "bot" and m["buttons"] and m["buttons"][0]["value"] == "cause:normal"
            for m in messages(server, session)
        ),
        what="the cause question",
    )
    replies = send(server, session, "cause:normal", expect_reply="WR-")
    decision = next(m["text"] for m in replies if "Clauses" in m["text"])
    assert "W1" in decision and "W3" in decision
    ref = next(word.strip(".,") for m in replies for word in m["text"].split() if word.startswith("WR-"))

    cases = httpx.get(f"{server.url}/api/desk/cases", headers=AUTH).json()["cases"]
    assert [c["ref"] for c in cases] == [ref]
    case = httpx.get(f"{server.url}/api/desk/cases/{ref}", headers=AUTH).json()
    assert case["units"][0]["serial"] == SERIAL and case["units"][0]["outcome"] == "covered"
    assert [a["name"] for a in case["attachments"]] == ["invoice.pdf"]
    attachment = httpx.get(
        f"{server.url}/api/desk/cases/{ref}/attachments/{case['attachments'][0]['id']}", headers=AUTH
    )
    assert attachment.content == PDF

    assert (
        httpx.post(
            f"{server.url}/api/desk/cases/{ref}/claim", headers=AUTH, json={"engineer": "Li Wei"}
        ).status_code
        == 200
    )
    httpx.post(
        f"{server.url}/api/desk/cases/{ref}/messages",
        headers=AUTH,
        json={"text": "internal: suspect the fan", "internal": True, "engineer": "Li Wei"},
    )
    asked = httpx.post(
        f"{server.url}/api/desk/cases/{ref}/ask",
        headers=AUTH,
        json={"question": "Does it happen with no load?", "engineer": "Li Wei"},
    )
    assert asked.status_code == 200 and asked.json()["status"] == "waiting_customer"
    wait_until(
        lambda: any(
            "Does it happen with no load?" in m["text"] and m["author"] == "engineer"
            for m in messages(server, session)
        ),
        what="the engineer's reply in the web chat",
    )
    assert not any("suspect the fan" in m["text"] for m in messages(server, session))
    assert (
        httpx.post(
            f"{server.url}/api/webchat/sessions/{session}/messages", json={"text": "Yes, also without load"}
        ).status_code
        == 202
    )
    wait_until(
        lambda: any(
            m["text"] == "Yes, also without load"
            for m in httpx.get(f"{server.url}/api/desk/cases/{ref}", headers=AUTH).json()["messages"]
        ),
        what="the customer's answer on the desk",
    )
    assert httpx.get(f"{server.url}/api/desk/cases/{ref}", headers=AUTH).json()["status"] == "claimed"
    httpx.post(
        f"{server.url}/api/desk/cases/{ref}/messages",
        headers=AUTH,
        json={"text": "Thanks, we will repair it.", "engineer": "Li Wei"},
    )
    wait_until(
        lambda: any(
            "Thanks, we will repair it." in m["text"] and "Li Wei" in m["text"]
            for m in messages(server, session)
        ),
        what="the engineer's reply, signed",
    )
    method = httpx.post(
        f"{server.url}/api/desk/cases/{ref}/method",
        headers=AUTH,
        json={"method": "factory_repair", "engineer": "Li Wei"},
    )
    assert method.status_code == 200 and method.json()["status"] == "in_service"
    wait_until(
        lambda: any("factory repair" in m["text"] and "F1" in m["text"] for m in messages(server, session)),
        what="the method's instructions",
    )
    assert (
        httpx.post(f"{server.url}/api/desk/cases/{ref}/close", headers=AUTH, json={}).json()["status"]
        == "closed"
    )
    send(server, session, "5", expect_reply="Thank you for your rating")
    assert httpx.get(f"{server.url}/api/desk/cases/{ref}", headers=AUTH).json()["rating"] == 5
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'warranty_cases{status="closed"} 1.0' in metrics


def test_the_conversation_survives_a_server_restart(server: Server) -> None:
    session = httpx.post(f"{server.url}/api/webchat/sessions").json()["session_id"]
    send(server, session, SERIAL)
    server.stop()
    server.start()
    send(server, session, "It shows E07 and shuts down", expect_reply="invoice")
    send(server, session, "proof:none")
    replies = send(server, session, "1", expect_reply="WR-")
    assert any("Clauses" in m["text"] for m in replies)


def test_the_same_client_id_twice_stores_one_message(server: Server) -> None:
    session = httpx.post(f"{server.url}/api/webchat/sessions").json()["session_id"]
    url = f"{server.url}/api/webchat/sessions/{session}/messages"
    first = httpx.post(url, json={"text": "hello", "client_id": "c-1"})
    second = httpx.post(url, json={"text": "hello", "client_id": "c-1"})
    assert first.status_code == second.status_code == 202 and second.json()["duplicate"] is True
    wait_until(lambda: len(messages(server, session)) >= 3, what="the greeting")
    assert [m["text"] for m in messages(server, session) if m["author"] == "customer"] == ["hello"]


BAD_REQUESTS: list[tuple[str, str, Any, int]] = [
    ("POST", "/api/webchat/sessions/nope/messages", {"text": "hi"}, 404),
    ("GET", "/api/webchat/sessions/nope/messages", None, 404),
    ("POST", "/api/webchat/sessions/{s}/messages", {}, 422),
    ("POST", "/api/webchat/sessions/{s}/messages", {"text": ""}, 422),
    ("POST", "/api/webchat/sessions/{s}/messages", {"text": 42}, 422),
    ("POST", "/api/webchat/sessions/{s}/messages", ["text"], 422),
    ("POST", "/api/webchat/sessions/{s}/messages", "not json{", 422),
    ("POST", "/api/webchat/sessions/{s}/messages", {"text": "x", "client_id": 7}, 422),
    ("POST", "/api/webchat/sessions/{s}/messages", {"text": "x" * 4_001}, 422),  # MAX_TEXT_CHARS
    ("POST", "/api/webchat/sessions/{s}/messages", {"text": "x" * 3_000_000}, 413),
    ("GET", "/api/webchat/sessions/{s}/messages?after=-1", None, 422),
    ("GET", "/api/webchat/sessions/{s}/messages?after=abc", None, 422),
    ("POST", "/api/webchat/sessions/{s}/files", {"text": "no file"}, 422),
    ("POST", "/api/webchat/sessions", {"language": 5}, 422),
    ("GET", "/api/desk/cases", None, 401),
    ("GET", "/api/desk/cases/WR-2026-999999", None, 404),
    ("POST", "/api/desk/cases/WR-2026-999999/claim", {}, 404),
    ("POST", "/api/desk/cases/WR-2026-999999/method", {"method": "teleport"}, 400),
    ("POST", "/api/desk/cases/WR-2026-999999/messages", {"text": ""}, 422),
    ("POST", "/api/desk/cases/WR-2026-999999/ask", {"question": 3}, 422),
    ("POST", "/api/desk/cases/WR-2026-999999/ask", {"question": "why?"}, 404),
    ("GET", "/api/desk/cases?status=lost", None, 422),
    ("DELETE", "/api/desk/cases", None, 405),
    ("GET", "/no/such/page", None, 404),
]


def test_bad_requests_get_a_4xx_and_never_a_500(server: Server) -> None:
    session = httpx.post(f"{server.url}/api/webchat/sessions").json()["session_id"]
    for method, path, body, expected in BAD_REQUESTS:
        headers = {} if expected == 401 else AUTH
        content = body if isinstance(body, str) else None
        if content is not None:
            headers = {**headers, "Content-Type": "application/json"}  # declared JSON, but is not
        response = httpx.request(
            method,
            server.url + path.replace("{s}", session),
            headers=headers,
            json=None if content is not None or body is None else body,
            content=content,
        )
        assert response.status_code == expected, (method, path, response.status_code, response.text[:200])
        assert response.headers["content-type"].startswith("application/json")
    wrong = httpx.get(f"{server.url}/api/desk/cases", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401


def test_customer_text_is_shown_inert(server: Server) -> None:
    session = httpx.post(f"{server.url}/api/webchat/sessions").json()["session_id"]
    hostile = "<script>alert(1)</script> {{ 7*191 }}"
    send(server, session, hostile)
    logged = messages(server, session)
    assert logged[0]["text"] == hostile
    assert not any("1337" in m["text"] for m in logged)


def test_sessions_cannot_read_each_other(server: Server) -> None:
    mine = httpx.post(f"{server.url}/api/webchat/sessions").json()["session_id"]
    theirs = httpx.post(f"{server.url}/api/webchat/sessions").json()["session_id"]
    assert mine != theirs and len(mine) >= 32
    send(server, theirs, "my secret serial CSP2604D0007")
    assert messages(server, mine) == []


def test_the_core_reads_what_the_configured_channels_can_do(settings: Settings) -> None:
    """Desk events and one reply per turn follow the channels' capabilities, not names written in the core."""
    configured = settings.model_copy(
        update={
            "slack_bot_token": SecretStr("xoxb-1-test"),
            "slack_signing_secret": SecretStr("slack-secret"),
            "slack_api_url": "http://127.0.0.1:9/api/",
            "slack_escalation_channel": "C0ESCALATE",
            "slack_mode": "http",
            "wechat_app_id": "wx0123456789abcdef",
            "wechat_app_secret": SecretStr("wechat-secret"),
            "wechat_token": SecretStr("wechat-token"),
        }
    )
    bot = build(configured)
    assert (bot.engine.config.external_desks, bot.engine.config.one_message_per_turn) == ((), frozenset())
    names = [channel.name for channel in load_channels(bot)]
    assert {"webchat", "localdesk", "slack", "wechat"} <= set(names) and "email" not in names
    assert bot.engine.config.external_desks == ("slack",)  # the local desk reads the database instead
    assert bot.engine.config.one_message_per_turn == {"wechat"}
    bot.db.dispose()
    plain = build(settings)
    load_channels(plain)
    assert (plain.engine.config.external_desks, plain.engine.config.one_message_per_turn) == ((), frozenset())
    plain.db.dispose()


def test_the_front_leaves_what_it_loaded_at_start_out_of_full_collections(settings: Settings) -> None:
    """Once started, the web front's modules, channels and clients are in the collector's permanent generation
    (`gc.freeze`): a full collection would otherwise stop every thread of the front, webhooks included."""
    bot = build(settings)
    workers = Workers(bot, [], inbox=False)  # the front alone: no processing here

    async def start_and_stop() -> None:
        await workers.start()
        await workers.stop()

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        asyncio.run(start_and_stop())
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        bot.db.dispose()
