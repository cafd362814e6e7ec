"""Security of the one server with every channel: forged and replayed requests, the desk token, web chat
isolation, customer text kept inert wherever it is shown, body and attachment limits, and logs without
phone numbers, email addresses or tokens."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import Session, col

from adapters import mail, teams, telegram, wechat, whatsapp
from bot.logs import MaskingFormatter, mask
from bot.messages import Button, OutboundMessage
from bot.store import Case, InboxItem, KeyValue, StoredAttachment
from tests.all_channels import DESK_AUTH, DESK_TOKEN, Stack, channel_env, database, fakes, payload, running
from tests.fakes.imap import Mailbox, imap_server
from tests.fakes.mail import CONFIG as MAIL_CONFIG
from tests.fakes.mail import IMAP_PASSWORD, SUPPORT, smtp_server
from tests.fakes.server import free_port
from tests.fakes.slack import BOT_TOKEN as SLACK_BOT_TOKEN
from tests.fakes.slack import SECRET as SLACK_SECRET
from tests.fakes.slack import as_form, block_text, signed
from tests.fakes.telegram import SECRET as TELEGRAM_SECRET
from tests.fakes.telegram import TOKEN as TELEGRAM_TOKEN
from tests.fakes.wechat import OPENID, signed_query
from tests.fakes.whatsapp import ACCESS_TOKEN as WHATSAPP_ACCESS_TOKEN
from tests.fakes.whatsapp import APP_SECRET as WHATSAPP_APP_SECRET
from tests.fakes.whatsapp import sign
from tests.support import wait_until

CASE_REF = re.compile(r"WR-\d{4}-\d{6}")
MAX_BODY = 64 * 1024
MAX_FILE = 100_000
# Customer text that would do something if any layer took it for markup, a template or SQL.
INJECTION = (
    "<script>alert('x')</script> <b>bold</b> <a href=\"https://evil.example\">link</a> {{ 7*191 }} "
    '{% if 1 %}jinja{% endif %} \'; DROP TABLE "case"; -- <!channel> &amp; E07'
)
PHONE = "+44 7700 900123"
EMAIL = "yusuf.demir@solarege.example"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(200)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp(f"security-{request.param}")
    with (
        database(request.param, folder) as url,
        running(url, folder, max_body_bytes=MAX_BODY, attachment_max_bytes=MAX_FILE) as running_stack,
    ):
        yield running_stack


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


def inbox_count(stack: Stack) -> int:
    with Session(stack.db) as session:
        return int(session.execute(select(func.count()).select_from(InboxItem)).scalar_one())


def customer_said(stack: Stack, text: str) -> int:
    """How many customer messages in the log carry exactly this text."""
    stack.settle()
    return sum(t == text for t in stack.customer_texts())


def telegram_update(update_id: int, text: str, *, chat: int = 6021457893) -> bytes:
    document = json.loads(payload("telegram", "text_serial.json"))
    document["update_id"] = update_id
    document["message"].update(message_id=update_id % 100000, text=text)
    document["message"]["chat"]["id"] = document["message"]["from"]["id"] = chat
    return json.dumps(document, ensure_ascii=False).encode()


def whatsapp_message(wamid: str, text: str, *, wa_id: str = "447700900142") -> bytes:
    document = json.loads(payload("whatsapp", "text.json"))
    value = document["entry"][0]["changes"][0]["value"]
    value["contacts"][0]["wa_id"] = wa_id
    value["messages"][0].update(id=wamid, text={"body": text})
    value["messages"][0]["from"] = wa_id
    return json.dumps(document, ensure_ascii=False).encode()


def wechat_text(msg_id: int, text: str) -> bytes:
    sample = payload("wechat", "text.xml")
    body = re.sub(
        rb"<Content><!\[CDATA\[.*?\]\]></Content>",
        b"<Content><![CDATA[" + text.encode() + b"]]></Content>",
        sample,
        flags=re.S,
    )
    return body.replace(b"24593860172834561", str(msg_id).encode())


def teams_message(stack: Stack, activity_id: str, text: str) -> bytes:
    body = payload("teams", "message_activity.json").replace(
        b"https://smba.trafficmanager.net/emea/", stack.teams_service_url.encode()
    )
    activity = json.loads(body)
    activity.update(id=activity_id, text=text, attachments=[])
    return json.dumps(activity, ensure_ascii=False).encode()


def teams_headers(stack: Stack, **claims: Any) -> dict[str, str]:
    token = stack.framework.issue(service_url=stack.teams_service_url, **claims)
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


# --- forged requests ----------------------------------------------------------------------------------------------

Forgery = Callable[[Stack, httpx.Client], tuple[httpx.Response, int]]


def _telegram(secret: str | None) -> Forgery:
    def send(stack: Stack, http: httpx.Client) -> tuple[httpx.Response, int]:
        headers = {telegram.SECRET_HEADER: secret} if secret is not None else {}
        answer = http.post(telegram.WEBHOOK_PATH, content=telegram_update(900001, "forged"), headers=headers)
        return answer, 401 if secret is None else 403

    return send


def _slack(path: str, body: bytes, *, form: bool, secret: str = "not-the-signing-secret") -> Forgery:
    def send(stack: Stack, http: httpx.Client) -> tuple[httpx.Response, int]:
        return http.post(path, content=body, headers=signed(body, form=form, secret=secret)), 401

    return send


def _slack_unsigned(path: str, body: bytes) -> Forgery:
    def send(stack: Stack, http: httpx.Client) -> tuple[httpx.Response, int]:
        return http.post(path, content=body, headers={"Content-Type": "application/json"}), 401

    return send


def _whatsapp(signature: str | None) -> Forgery:
    def send(stack: Stack, http: httpx.Client) -> tuple[httpx.Response, int]:
        body = whatsapp_message("wamid.FORGED1", "forged")
        headers = {"X-Hub-Signature-256": signature} if signature is not None else {}
        return http.post(whatsapp.WEBHOOK_PATH, content=body, headers=headers), 401

    return send


def _whatsapp_resigned(stack: Stack, http: httpx.Client) -> tuple[httpx.Response, int]:
    original = whatsapp_message("wamid.FORGED2", "hello")
    tampered = original.replace(b"hello", b"HELLO")  # a captured body changed after signing
    return http.post(
        whatsapp.WEBHOOK_PATH, content=tampered, headers={"X-Hub-Signature-256": sign(original)}
    ), 401


def _wechat(query: Callable[[], dict[str, str]]) -> Forgery:
    def send(stack: Stack, http: httpx.Client) -> tuple[httpx.Response, int]:
        return http.post(wechat.WEBHOOK_PATH, params=query(), content=wechat_text(900001, "forged")), 401

    return send


def _teams(headers: Callable[[Stack], dict[str, str]]) -> Forgery:
    def send(stack: Stack, http: httpx.Client) -> tuple[httpx.Response, int]:
        return http.post(
            teams.PATH, content=teams_message(stack, "forged-1", "forged"), headers=headers(stack)
        ), 401

    return send


EVENT = payload("slack", "event_thread_reply.json")
COMMAND = payload("slack", "slash_command.txt")
ACTIONS = as_form(payload("slack", "block_actions.json").decode())
FORGERIES: dict[str, Forgery] = {
    "telegram without the secret header": _telegram(None),
    "telegram with a wrong secret": _telegram("guessed-secret"),
    "telegram with the secret's prefix": _telegram(TELEGRAM_SECRET[:-1]),
    "slack event signed with another secret": _slack("/slack/events", EVENT, form=False),
    "slack action signed with another secret": _slack("/slack/interactivity", ACTIONS, form=True),
    "slack command signed with another secret": _slack("/slack/commands", COMMAND, form=True),
    "slack event without a signature": _slack_unsigned("/slack/events", EVENT),
    # Odd-typed fields must not matter: an unsigned request is refused before anything reads it.
    "slack event with a numeric user, forged": _slack(
        "/slack/events", b'{"type": "event_callback", "user": 1}', form=False
    ),
    "slack event with numeric authorizations, forged": _slack(
        "/slack/events", b'{"type": "event_callback", "authorizations": 1}', form=False
    ),
    "slack action with a numeric enterprise, forged": _slack(
        "/slack/interactivity", as_form('{"type": "block_actions", "enterprise": 7}'), form=True
    ),
    "whatsapp without a signature": _whatsapp(None),
    "whatsapp signed with another secret": _whatsapp("sha256=" + "0" * 64),
    "whatsapp body changed after signing": _whatsapp_resigned,
    "wechat without a signature": _wechat(dict),
    "wechat signed with another token": _wechat(lambda: signed_query(token="guessed-token")),
    "wechat signature of other parameters": _wechat(lambda: {**signed_query(), "nonce": "changed"}),
    "teams without a token": _teams(lambda s: {"Content-Type": "application/json"}),
    "teams token for another bot": _teams(lambda s: teams_headers(s, audience="another-bot")),
    "teams token expired": _teams(lambda s: teams_headers(s, expires_in=-3600)),
    "teams token from another issuer": _teams(
        lambda s: teams_headers(s, issuer="https://sts.windows.net/evil/")
    ),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_requests_are_refused_and_store_nothing(stack: Stack, http: httpx.Client, name: str) -> None:
    before = inbox_count(stack)
    answer, expected = FORGERIES[name](stack, http)
    assert http.get("/healthz").status_code == 200  # the server is done with the request (and any log of it)
    assert answer.status_code == expected, answer.text
    assert inbox_count(stack) == before


def test_webhook_verification_needs_the_right_token(stack: Stack, http: httpx.Client) -> None:
    hub = {"hub.mode": "subscribe", "hub.challenge": "8831", "hub.verify_token": "verify-me-please"}
    assert http.get(whatsapp.WEBHOOK_PATH, params=hub).text == "8831"
    assert http.get(whatsapp.WEBHOOK_PATH, params={**hub, "hub.verify_token": "guess"}).status_code == 403
    assert http.get(whatsapp.WEBHOOK_PATH, params={**hub, "hub.verify_token": ""}).status_code == 403
    assert http.get(wechat.WEBHOOK_PATH, params={**signed_query(), "echostr": "7301"}).text == "7301"
    forged = {**signed_query(token="guessed-token"), "echostr": "7301"}
    assert http.get(wechat.WEBHOOK_PATH, params=forged).status_code == 403


# --- replays --------------------------------------------------------------------------------------------------------


def test_a_slack_request_replayed_after_five_minutes_is_refused(stack: Stack, http: httpx.Client) -> None:
    event = json.loads(EVENT)
    event["event_id"] = "Ev07REPLAY001"
    body = json.dumps(event).encode()
    captured = signed(
        body, form=False, timestamp=int(time.time()) - 301
    )  # a valid signature, five minutes old
    assert http.post("/slack/events", content=body, headers=captured).status_code == 401
    command = signed(COMMAND, form=True, timestamp=int(time.time()) - 3600)
    assert http.post("/slack/commands", content=COMMAND, headers=command).status_code == 401
    with Session(stack.db) as session:
        assert session.get(KeyValue, "slack-event:Ev07REPLAY001") is None  # not even remembered as seen
    # The same request signed now is Slack's own: accepted (so the refusal above was the timestamp's doing).
    assert http.post("/slack/events", content=body, headers=signed(body, form=False)).status_code == 200


Captured = Callable[[Stack, str], tuple[str, dict[str, Any]]]  # a valid request: its path and httpx arguments


def _telegram_request(stack: Stack, text: str) -> tuple[str, dict[str, Any]]:
    return telegram.WEBHOOK_PATH, {
        "content": telegram_update(910001, text),
        "headers": {telegram.SECRET_HEADER: TELEGRAM_SECRET},
    }


def _whatsapp_request(stack: Stack, text: str) -> tuple[str, dict[str, Any]]:
    body = whatsapp_message("wamid.REPLAYED0001", text)
    return whatsapp.WEBHOOK_PATH, {"content": body, "headers": {"X-Hub-Signature-256": sign(body)}}


def _wechat_request(stack: Stack, text: str) -> tuple[str, dict[str, Any]]:
    return wechat.WEBHOOK_PATH, {"params": signed_query(), "content": wechat_text(910001, text)}


def _teams_request(stack: Stack, text: str) -> tuple[str, dict[str, Any]]:
    return teams.PATH, {
        "content": teams_message(stack, "replayed-0001", text),
        "headers": teams_headers(stack),
    }


CAPTURED: dict[str, Captured] = {
    "telegram": _telegram_request,
    "whatsapp": _whatsapp_request,
    "wechat": _wechat_request,
    "teams": _teams_request,
}


@pytest.mark.parametrize("channel", sorted(CAPTURED))
def test_a_replayed_request_is_processed_once(stack: Stack, http: httpx.Client, channel: str) -> None:
    text = f"Replayed on {channel}: CSP2402A0153 shows E07"
    path, arguments = CAPTURED[channel](stack, text)
    first = http.post(path, **arguments)
    again = http.post(
        path, **arguments
    )  # the same bytes, headers and query: a redelivery, or an attacker's replay
    assert (first.status_code, again.status_code) == (200, 200), (first.text, again.text)
    assert customer_said(stack, text) == 1


# --- the local desk -------------------------------------------------------------------------------------------------

DESK_ROUTES = [
    ("GET", "/api/desk/cases"),
    ("GET", "/api/desk/cases/WR-2026-000001"),
    ("POST", "/api/desk/cases/WR-2026-000001/messages"),
    ("POST", "/api/desk/cases/WR-2026-000001/claim"),
    ("POST", "/api/desk/cases/WR-2026-000001/ask"),
    ("POST", "/api/desk/cases/WR-2026-000001/method"),
    ("POST", "/api/desk/cases/WR-2026-000001/close"),
    ("POST", "/api/desk/cases/WR-2026-000001/fulfil/files"),
    ("GET", "/api/desk/cases/WR-2026-000001/attachments/1"),
    ("GET", "/api/desk/report"),
    ("GET", "/api/desk/report.csv"),
    ("GET", "/api/desk/report.html"),
]
WRONG_AUTH = [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Basic {DESK_TOKEN}"},
    {"Authorization": f"Bearer {DESK_TOKEN.upper()}"},
    {"Authorization": f"Bearer {DESK_TOKEN[:-1]}"},
    {"Authorization": f"Bearer {DESK_TOKEN}x"},
    {"X-Desk-Token": DESK_TOKEN},
    {"Cookie": f"desk_token={DESK_TOKEN}"},
]


def test_the_desk_api_needs_the_token(stack: Stack, http: httpx.Client) -> None:
    for method, path in DESK_ROUTES:
        for headers in WRONG_AUTH:
            answer = http.request(method, path, headers=headers, json={"text": "x", "engineer": "Mallory"})
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.headers.get("www-authenticate") == "Bearer"
    assert http.get("/api/desk/cases", headers=DESK_AUTH).status_code == 200  # the right token does open it


# --- web chat sessions ----------------------------------------------------------------------------------------------


def test_one_web_chat_session_cannot_read_or_write_another(stack: Stack, http: httpx.Client) -> None:
    alice = http.post("/api/webchat/sessions", json={"language": "en"}).json()["session_id"]
    bob = http.post("/api/webchat/sessions", json={"language": "en"}).json()["session_id"]
    secret = f"Alice here, my number is {PHONE}"
    assert http.post(f"/api/webchat/sessions/{alice}/messages", json={"text": secret}).status_code == 202
    assert http.post(f"/api/webchat/sessions/{bob}/messages", json={"text": "Bob here"}).status_code == 202
    stack.settle()

    def texts(session: str, after: str = "0") -> list[str]:
        answer = http.get(f"/api/webchat/sessions/{session}/messages", params={"after": after})
        assert answer.status_code == 200
        return [m["text"] for m in answer.json()["messages"]]

    assert secret in texts(alice)
    assert not any("Alice" in t for t in texts(bob)) and not any("Alice" in t for t in texts(bob, "1"))
    assert len(alice) >= 32  # unguessable: 24 random bytes
    guesses = [
        alice[:-1],
        alice[:-1] + ("A" if alice[-1] != "A" else "B"),
        alice.upper(),
        alice.lower(),
        alice + "x",
        f"{alice[:20]}%00",
        "../" + alice,
        alice[::-1],
        "0" * len(alice),
        "webchat:" + alice,
    ]
    for guess in guesses:
        path = f"/api/webchat/sessions/{quote_plus(guess)}"
        read = http.get(f"{path}/messages")
        assert read.status_code == 404 and "Alice" not in read.text, guess
        assert http.post(f"{path}/messages", json={"text": "injected by a guess"}).status_code == 404, guess
        files = http.post(f"{path}/files", files={"file": ("a.pdf", PDF, "application/pdf")})
        assert files.status_code == 404, guess
    assert not any("injected" in t for t in texts(alice))
    assert http.get("/api/desk/cases", headers={"Authorization": f"Bearer {alice}"}).status_code == 401


# --- customer text stays data ---------------------------------------------------------------------------------------


def _new_customer(http: httpx.Client) -> str:
    session = http.post("/api/webchat/sessions", json={"language": "en"}).json()["session_id"]
    assert isinstance(session, str)
    return session


def _say(http: httpx.Client, session: str, text: str) -> None:
    assert http.post(f"/api/webchat/sessions/{session}/messages", json={"text": text}).status_code == 202


def _transcript(http: httpx.Client, session: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = http.get(f"/api/webchat/sessions/{session}/messages").json()["messages"]
    return messages


def test_customer_markup_is_inert_everywhere_it_is_shown(stack: Stack, http: httpx.Client) -> None:
    session = _new_customer(http)
    for text in ("hello", "CSP2402A0153", INJECTION, "human"):
        _say(http, session, text)
    ref = wait_until(
        lambda: next(
            (found.group() for m in _transcript(http, session) if (found := CASE_REF.search(m["text"]))), None
        ),
        what="the case",
    )
    _say(http, session, INJECTION)  # after the hand-off: relayed into the Slack thread
    stack.settle()

    # Web chat API: the customer's words come back exactly as typed.
    shown = [m["text"] for m in _transcript(http, session) if m["author"] == "customer"]
    assert shown.count(INJECTION) == 2
    # Desk API: the fault and the message, literally.
    case = http.get(f"/api/desk/cases/{ref}", headers=DESK_AUTH).json()
    assert INJECTION in case["fault"]
    assert INJECTION in [m["text"] for m in case["messages"]]

    # Slack: the case message and the thread line carry it escaped; nothing in it is a tag or a mention.
    def slack_texts() -> str:
        return "\n".join(
            block_text(c.args.get("blocks") or []) + "\n" + str(c.args.get("text", ""))
            for c in stack.slack.calls
            if c.method in ("chat.postMessage", "chat.update")
        )

    wait_until(
        lambda: slack_texts().count("&lt;script&gt;") >= 2, what="the case and the thread line in Slack"
    )
    posted = slack_texts()
    assert "<script>" not in posted and "<b>" not in posted and "<!channel>" not in posted
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in posted and "&lt;!channel&gt;" in posted
    assert '<a href="https://evil.example">' not in posted

    # An engineer quoting the customer on the desk: the web chat shows it as text, Slack escaped.
    reply = http.post(
        f"/api/desk/cases/{ref}/messages",
        headers=DESK_AUTH,
        json={"text": f"You wrote: {INJECTION}", "engineer": "Li <b>Wei</b>"},
    )
    assert reply.status_code == 200, reply.text
    engineer = wait_until(
        lambda: [m for m in _transcript(http, session) if m["author"] == "engineer"],
        what="the engineer's reply",
    )
    assert f"You wrote: {INJECTION}" in engineer[0]["text"]
    wait_until(
        lambda: "You wrote: &lt;script&gt;" in slack_texts(), what="the reply's line in the Slack thread"
    )
    assert "<b>Wei</b>" not in slack_texts()

    # No template ever ran the customer's {{ 7*191 }}.
    everything = [m["text"] for m in _transcript(http, session)] + [case["fault"], slack_texts()]
    assert all("1337" not in text for text in everything)
    assert all("{{ 7*191 }}" in t for t in (case["fault"], engineer[0]["text"]))
    # And the SQL in it was stored, not run: the table it names is still there, with this case in it.
    with Session(stack.db) as session_db:
        assert (
            session_db.execute(select(Case).where(col(Case.ref) == ref)).scalar_one().fault == case["fault"]
        )


def test_customer_markup_in_telegram_html_is_escaped(stack: Stack, http: httpx.Client) -> None:
    """The bot quotes a refused file's name back to the customer: in Telegram's HTML it must stay text."""
    document = json.loads(payload("telegram", "document_invoice.json"))
    document["update_id"] = 920001
    document["message"]["chat"]["id"] = document["message"]["from"]["id"] = 777000111
    document["message"]["document"].update(file_name=f"{INJECTION}.pdf", mime_type="application/x-msdownload")
    answer = http.post(
        telegram.WEBHOOK_PATH,
        content=json.dumps(document).encode(),
        headers={telegram.SECRET_HEADER: TELEGRAM_SECRET},
    )
    assert answer.status_code == 200
    sent = wait_until(
        lambda: [m for m in stack.telegram.sent("777000111") if "alert" in m["text"]],
        what="the refusal quoting the file name",
    )
    text = sent[0]["text"]
    assert sent[0]["parse_mode"] == "HTML"
    assert "<script>" not in text and "<b>" not in text and "<a href" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text and "1337" not in text
    assert not stack.telegram.calls_to(
        "sendMessage", ok=False
    )  # Telegram's HTML parser found nothing to refuse


def test_customer_markup_in_the_email_html_part_is_escaped() -> None:
    message = OutboundMessage(
        channel="email",
        chat_id=EMAIL,
        text=f"You wrote:\n\n{INJECTION}",
        buttons=(Button(label="<img src=x onerror=alert(1)>", value="cause:normal"),),
    )
    composed = mail.compose(message, thread=mail.Thread(subject="Re: <b>claim</b>"), config=MAIL_CONFIG)
    parsed = BytesParser(policy=email_policy.default).parsebytes(composed.as_bytes())
    assert isinstance(parsed, EmailMessage)
    html_body = parsed.get_body(preferencelist=("html",))
    plain_body = parsed.get_body(preferencelist=("plain",))
    assert html_body is not None and plain_body is not None
    markup = str(html_body.get_content())
    assert (
        "<script>" not in markup and "<b>" not in markup and "<img" not in markup and "<a href" not in markup
    )
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in markup and "&lt;img src=x" in markup
    assert "{{ 7*191 }}" in markup and "1337" not in markup
    assert INJECTION in str(plain_body.get_content()).replace("\r\n", "\n")


# --- size limits ----------------------------------------------------------------------------------------------------


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), 16 * 1024):
        yield data[start : start + 16 * 1024]


Endpoint = Callable[[Stack, httpx.Client, bytes], tuple[str, dict[str, str], dict[str, str]]]


def _plain(path: str) -> Endpoint:
    return lambda stack, http, body: (path, {}, {})


def _session_path(suffix: str) -> Endpoint:
    def build(stack: Stack, http: httpx.Client, body: bytes) -> tuple[str, dict[str, str], dict[str, str]]:
        return f"/api/webchat/sessions/{_new_customer(http)}/{suffix}", {}, {}

    return build


def _upload(size: int) -> tuple[bytes, str]:
    """A well-formed multipart upload of one PDF of `size` bytes: read to its end unless refused for its size."""
    request = httpx.Request(
        "POST", "http://upload.invalid/", files={"file": ("big.pdf", PDF + bytes(size), "application/pdf")}
    )
    return request.read(), request.headers["content-type"]


ENDPOINTS: dict[str, Endpoint] = {
    "web chat sessions": _plain("/api/webchat/sessions"),
    "web chat messages": _session_path("messages"),
    "web chat files": _session_path("files"),
    "desk messages": lambda s, h, b: ("/api/desk/cases/WR-2026-000001/messages", {}, DESK_AUTH),
    "desk method": lambda s, h, b: ("/api/desk/cases/WR-2026-000001/method", {}, DESK_AUTH),
    "telegram": lambda s, h, b: (telegram.WEBHOOK_PATH, {}, {telegram.SECRET_HEADER: TELEGRAM_SECRET}),
    "slack events": lambda s, h, b: ("/slack/events", {}, signed(b, form=False)),
    "slack interactivity": lambda s, h, b: ("/slack/interactivity", {}, signed(b, form=True)),
    "slack commands": lambda s, h, b: ("/slack/commands", {}, signed(b, form=True)),
    "whatsapp": lambda s, h, b: (whatsapp.WEBHOOK_PATH, {}, {"X-Hub-Signature-256": sign(b)}),
    "wechat": lambda s, h, b: (wechat.WEBHOOK_PATH, signed_query(), {"Content-Type": "text/xml"}),
    "teams": lambda s, h, b: (teams.PATH, {}, teams_headers(s)),
}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_oversized_bodies_are_refused_with_413(
    stack: Stack, http: httpx.Client, name: str, chunked: bool
) -> None:
    body = b"{" + b" " * MAX_BODY + b"}"
    path, params, headers = ENDPOINTS[name](stack, http, body)
    if name == "web chat files":  # uploads may carry one file of the largest size allowed, and its framing
        body, headers["Content-Type"] = _upload(MAX_FILE + 64 * 1024)
    before = inbox_count(stack)
    answer = http.post(path, params=params, headers=headers, content=_chunks(body) if chunked else body)
    assert answer.status_code == 413, answer.text
    assert inbox_count(stack) == before
    assert http.get("/healthz").status_code == 200


def test_a_body_just_under_the_limit_is_read(stack: Stack, http: httpx.Client) -> None:
    session = _new_customer(http)
    # The text itself is bounded (MAX_TEXT_CHARS); the JSON around it may still fill the body.
    body = b'{"text": "E07 E07"' + b" " * (MAX_BODY - 100) + b"}"
    answer = http.post(
        f"/api/webchat/sessions/{session}/messages",
        content=_chunks(body),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 202, answer.text


def _nested(depth: int) -> bytes:
    return b'{"text": ' + b'{"a": ' * depth + b"1" + b"}" * (depth + 1)


@pytest.mark.parametrize(
    "name", sorted(set(ENDPOINTS) - {"web chat files", "wechat", "slack commands"})
)  # no JSON there
def test_deeply_nested_json_is_refused_with_400_on_every_json_endpoint(
    stack: Stack, http: httpx.Client, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = _nested(2_000)  # Python's parser gives up near 1,000 levels with RecursionError
    if name.startswith("slack") and name != "slack events":
        body = b"payload=" + quote_plus(body.decode()).encode()  # a form whose payload field is the JSON
    path, params, headers = ENDPOINTS[name](stack, http, body)
    session = path.split("/")[4] if path.startswith("/api/webchat/sessions/") else _new_customer(http)
    before = inbox_count(stack)
    with caplog.at_level(logging.DEBUG):
        answer = http.post(
            path,
            params=params,
            content=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded"
                if body.startswith(b"payload=")
                else "application/json",
                **headers,
            },
        )
    assert answer.status_code == 400, answer.text
    assert inbox_count(stack) == before
    server = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]  # not our client's
    assert not [r for r in server if r.exc_info or r.levelno >= logging.ERROR or session in r.getMessage()]
    assert http.get("/healthz").status_code == 200


def test_json_nested_within_the_limit_and_brackets_in_strings_are_read(
    stack: Stack, http: httpx.Client
) -> None:
    session = _new_customer(http)
    text = "[[[{{" * 200 + " E07 " + "}}]]]" * 200  # 1,000 brackets inside a string are text, not nesting
    answer = http.post(
        f"/api/webchat/sessions/{session}/messages", json={"text": text, "client_id": "deep-ok"}
    )
    assert answer.status_code == 202, answer.text
    escaped = (
        '{"text": "a \\" [[[[ \\\\", "client_id": "escapes"}'  # an escaped quote does not end the string
    )
    answer = http.post(
        f"/api/webchat/sessions/{session}/messages",
        content=escaped.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 202, answer.text
    deep_but_allowed = b'{"language": ' + b"[" * 60 + b"]" * 60 + b"}"
    answer = http.post(
        "/api/webchat/sessions", content=deep_but_allowed, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422  # read, and refused for what it says, not for its depth


# --- attachments ----------------------------------------------------------------------------------------------------


def test_attachment_types_and_sizes_are_limited_and_the_customer_is_told(
    stack: Stack, http: httpx.Client
) -> None:
    session = _new_customer(http)
    _say(http, session, "hello")

    def upload(name: str, data: bytes, mime: str) -> dict[str, Any]:
        answer = http.post(f"/api/webchat/sessions/{session}/files", files={"file": (name, data, mime)})
        assert answer.status_code == 202, answer.text
        result: dict[str, Any] = answer.json()
        return result

    assert (
        upload("setup.pdf", EXE, "application/pdf")["rejected"] is True
    )  # an .exe renamed: wrong magic bytes
    assert upload("setup.exe", EXE, "application/x-msdownload")["rejected"] is True
    assert upload("drawing.svg", b"<svg onload=alert(1)>", "image/svg+xml")["rejected"] is True
    assert upload("huge.pdf", PDF + bytes(MAX_FILE), "application/pdf")["rejected"] is True  # over the limit
    assert upload("invoice.pdf", PDF, "application/pdf")["rejected"] is False  # control: a real PDF is kept

    def told() -> list[str]:
        return [
            m["text"]
            for m in _transcript(http, session)
            if m["author"] == "bot" and "couldn't keep" in m["text"]
        ]

    def all_told() -> list[str]:
        found = told()
        return found if len(found) >= 4 else []

    replies = "\n".join(wait_until(all_told, what="the customer told of the four refusals"))
    assert '"setup.pdf": only photos' in replies and '"setup.exe": only photos' in replies
    assert '"huge.pdf": it is larger than' in replies
    assert "invoice.pdf" not in replies
    stack.settle()  # the PDF's message, too, is processed: its file is kept with the conversation
    with Session(stack.db) as session_db:
        kept = session_db.execute(select(StoredAttachment)).scalars().all()
    assert all(stack.bot.attachments.path(a.path).read_bytes()[:2] != b"MZ" for a in kept)
    assert any(a.name == "invoice.pdf" for a in kept) and not any(
        a.name in ("setup.pdf", "huge.pdf") for a in kept
    )
    stored = [p for p in Path(stack.bot.settings.attachments_dir).rglob("*") if p.is_file()]
    assert all(p.read_bytes()[:2] != b"MZ" and p.stat().st_size <= MAX_FILE for p in stored)


# --- logs -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        (f"call me on {PHONE} please", [PHONE, "7700"]),
        ("or +447700900123, or 07700 900123, or (020) 7946-0958", ["447700900123", "07700 900123", "7946"]),
        (f"mail {EMAIL} or a.b+tag@sub.example.co.uk", [EMAIL, "a.b+tag@sub.example.co.uk", "solarege"]),
        (f"POST https://api.telegram.org/bot{TELEGRAM_TOKEN}/sendMessage", [TELEGRAM_TOKEN.split(":")[1]]),
        (f"token {TELEGRAM_TOKEN}", [TELEGRAM_TOKEN.split(":")[1]]),
        (f"bot said {TELEGRAM_TOKEN}", [TELEGRAM_TOKEN.split(":")[1]]),
        (f"slack {SLACK_BOT_TOKEN} and xapp-1-A07WRN-1234-abcdef", [SLACK_BOT_TOKEN, "A07WRN-1234-abcdef"]),
        ("Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", ["eyJhbGciOiJSUzI1NiJ9"]),
        ("GET /cgi-bin/media/get?access_token=ACCESS_TOKEN_1&media_id=5", ["ACCESS_TOKEN_1"]),
        ("password: hunter2, secret=abc123", ["hunter2", "abc123"]),
        # A token endpoint's answer (WeChat's stable_token, the Bot Framework's token) quoted in an error.
        ('{"access_token": "EAAGtest0access0token", "expires_in": 7200}', ["EAAGtest0access0token"]),
    ],
)
def test_mask_hides_phone_numbers_emails_and_tokens(text: str, hidden: list[str]) -> None:
    masked = mask(text)
    assert [h for h in hidden if h in masked] == [], masked
    assert masked.split()[0] == text.split()[0]  # only the sensitive part goes


@pytest.mark.parametrize(
    "text",
    [
        # What operators must still read in a log line: case references, serials, dates and times, short ids.
        "reminder for WR-2026-000042 not posted",
        "unit CSP2402A0153 arrived 2024-03-10",
        "outbox row 42 dead after 8 attempts",
        "mail UID 17 not taken: a mailing list",
    ],
)
def test_mask_keeps_what_is_not_personal(text: str) -> None:
    assert mask(text) == text


def test_the_masking_formatter_masks_messages_and_tracebacks_but_not_the_time() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("tests.security.masking")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(f"customer {EMAIL} at {PHONE}")
        except ValueError:
            logger.exception("could not process %s", PHONE)
    finally:
        logger.removeHandler(handler)
    logged = stream.getvalue()
    assert EMAIL not in logged and "7700" not in logged
    assert "could not process <phone>" in logged and "ValueError: customer <email> at <phone>" in logged
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR tests.security.masking: ", logged), logged


SECRETS_AND_PII = (
    "7700 900123",
    "7700900123",
    EMAIL,
    TELEGRAM_TOKEN,
    TELEGRAM_TOKEN.split(":")[1],
    SLACK_BOT_TOKEN,
    SLACK_SECRET,
    WHATSAPP_ACCESS_TOKEN,
    WHATSAPP_APP_SECRET,
    DESK_TOKEN,
    IMAP_PASSWORD,
    "app-password-for-tests",
    "test-wechat-app-secret",
    "ACCESS_TOKEN_1",
    "connector-token-1",
)


def test_no_phone_number_email_or_token_reaches_the_logs(tmp_path: Path) -> None:
    """A real `warranty-bot serve` at DEBUG, every channel configured; customers write their phone number and
    email address on several channels, and some calls fail and are logged; the log shows none of them."""
    mailbox = Mailbox(user=SUPPORT, password=IMAP_PASSWORD)
    with (
        fakes() as (fake_telegram, _slack, graph, fake_wechat, framework, urls),
        imap_server(mailbox) as imap,
        smtp_server() as smtp,
        database("sqlite", tmp_path) as url,
    ):
        port = free_port()
        # Telegram, with a failing setWebhook whose error is logged (the button answer rides in the webhook's
        # response, so no Bot API error follows a press any more).
        fake_telegram.fail_next(
            "setWebhook", 400, f"Bad Request: webhook of {PHONE} {EMAIL} token {TELEGRAM_TOKEN} is refused"
        )
        env = {
            **os.environ,
            **channel_env(url, tmp_path, **urls),
            "LOG_LEVEL": "DEBUG",
            "PORT": str(port),
            "IMAP_HOST": imap[0],
            "IMAP_PORT": str(imap[1]),
            "IMAP_SECURITY": "none",
            "IMAP_USER": SUPPORT,
            "IMAP_PASSWORD": IMAP_PASSWORD,
            "IMAP_POLL_SECONDS": "0.5",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_SECURITY": "none",
            "EMAIL_FROM": f"CSP Warranty <{SUPPORT}>",
        }
        log_file = tmp_path / "server.log"
        with log_file.open("wb") as output:
            server = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "serve", "--port", str(port)],
                cwd=tmp_path,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        try:

            def healthy() -> bool:
                if server.poll() is not None:
                    raise AssertionError(log_file.read_text()[-3000:])
                try:
                    return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(healthy, timeout=40, what="the server")
            said = f"My number is {PHONE} (or 07700 900123), mail {EMAIL}, Slack token {SLACK_BOT_TOKEN}"
            with httpx.Client(base_url=base, timeout=15) as http:
                # Web chat, with a message whose processing fails (a lone surrogate) and is logged.
                session = http.post("/api/webchat/sessions", json={}).json()["session_id"]
                for text in (said, f"\ud800 {PHONE} {EMAIL}"):
                    http.post(
                        f"/api/webchat/sessions/{session}/messages",
                        content=json.dumps({"text": text}).encode(),
                        headers={"Content-Type": "application/json"},
                    ).raise_for_status()
                # Telegram.
                http.post(
                    telegram.WEBHOOK_PATH,
                    content=telegram_update(930001, said, chat=447700900123),
                    headers={telegram.SECRET_HEADER: TELEGRAM_SECRET},
                ).raise_for_status()
                press = json.loads(payload("telegram", "callback_query.json"))
                press["callback_query"]["data"] = PHONE
                http.post(
                    telegram.WEBHOOK_PATH,
                    content=json.dumps(press).encode(),
                    headers={telegram.SECRET_HEADER: TELEGRAM_SECRET},
                ).raise_for_status()
                # WhatsApp: the customer's id is their phone number; an unknown message type and a missing media
                # file are logged.
                wa_id = "447700900123"
                for body in (
                    whatsapp_message("wamid.LOG0001", said, wa_id=wa_id),
                    whatsapp_message("wamid.LOG0002", said, wa_id=wa_id).replace(
                        b'"type": "text"', f'"type": "{PHONE}"'.encode()
                    ),
                    payload("whatsapp", "image.json").replace(b"447700900142", wa_id.encode()),
                ):
                    http.post(
                        whatsapp.WEBHOOK_PATH, content=body, headers={"X-Hub-Signature-256": sign(body)}
                    ).raise_for_status()
                # WeChat and Teams, Teams with a refused token too.
                fake_wechat.interaction(OPENID)
                http.post(
                    wechat.WEBHOOK_PATH, params=signed_query(), content=wechat_text(930001, said)
                ).raise_for_status()
                service = f"{urls['framework']}/emea/"
                activity = (
                    payload("teams", "message_activity.json")
                    .replace(b"https://smba.trafficmanager.net/emea/", service.encode())
                    .replace(b"Camille Durand", EMAIL.encode())
                )
                token = framework.issue(service_url=service)
                http.post(
                    teams.PATH, content=activity, headers={"Authorization": f"Bearer {token}"}
                ).raise_for_status()
                refused = http.post(
                    teams.PATH,
                    content=activity,
                    headers={
                        "Authorization": f"Bearer {framework.issue(service_url=service, audience=EMAIL)}"
                    },
                )
                assert refused.status_code == 401
                # Email: a claim, and an out-of-office answer (not taken, and logged why).
                mailbox.append(payload("email", "customer_claim.eml"))
                mailbox.append(
                    payload("email", "auto_reply.eml").replace(
                        b"Auto-Submitted: auto-replied",
                        f"Auto-Submitted: auto-replied {EMAIL} {PHONE}".encode(),
                    )
                )
                # Slack: an engineer's command (signed), answered from the database.
                command = payload("slack", "slash_command.txt").replace(
                    b"WR-2026-000042", quote_plus(PHONE).encode()
                )
                assert (
                    http.post(
                        "/slack/commands", content=command, headers=signed(command, form=True)
                    ).status_code
                    == 200
                )

                wait_until(lambda: smtp.received, what="an email answer")
                wait_until(lambda: graph.sent_to(wa_id), what="a WhatsApp answer")
                wait_until(lambda: framework.posted(), what="a Teams answer")
                wait_until(lambda: "not taken" in log_file.read_text(), what="the auto-reply logged")
        finally:
            server.terminate()
            server.wait(timeout=20)
    logged = log_file.read_text(errors="replace")
    # The flows above did reach the log (so their absence below means masking, not silence).
    for expected in (
        "telegram setWebhook failed",
        "whatsapp message of type",
        "could not be fetched",
        "Teams activity refused",
        "not taken",
    ):
        assert expected in logged, expected
    assert "<phone>" in logged and "<email>" in logged
    leaked = [s for s in SECRETS_AND_PII if s in logged]
    assert leaked == [], [line for line in logged.splitlines() if any(s in line for s in leaked)][:10]
    assert not [
        line for line in logged.splitlines() if line.startswith("<phone>")
    ]  # timestamps stay readable
