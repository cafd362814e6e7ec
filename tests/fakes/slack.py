"""A loopback fake of the Slack Web API: records every call and answers like Slack for the methods the desk uses.

Messages and views are checked as Slack checks them (`invalid_blocks`): Block Kit's limits (blocks per
message and view, text lengths, buttons, options) and well-formed mrkdwn (`&` only as `&amp;`, `&lt;`,
`&gt;`; every `<` closed by a `>`), so that a cut inside an entity or a link fails a test. `response_url`s
(`/hooks/response/{id}`) record what a command's listener sends after its acknowledgement, and
`hold(method)` keeps a method's answer back until released, to show what waits on Slack. At the end, what
Slack's side of a test needs to call the bot: requests signed with the app's signing secret (`signed`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote_plus

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BOT_TOKEN = "xoxb-4412345678901-7912345678012-fAkEbOtToKeNfOrTeStS"
BOT_USER_ID = "U07WBOT9RZ2"  # the bot user in the sample payloads' `authorizations`
BOT_ID = "B07WBOT5NQ1"
TEAM_ID = "T04KX7Q2M9L"
FIRST_TS = 1777886370.209339  # the case message ts in the sample payloads
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # the app's signing secret
PAYLOADS = Path(__file__).parent.parent / "payloads" / "slack"
ESCALATION = "C07ESC4L8QZ"  # the channel of the sample payloads
ENGINEER, OUTSIDER, MEMBER = "U05LIWEI7KD", "U0OUTSIDE1", "U06ANA2RTX"


@dataclass(frozen=True)
class Call:
    """One Web API call as the fake received it: the method and its arguments (query, form or JSON merged)."""

    method: str
    args: dict[str, Any]


@dataclass
class FakeSlack:
    """State of the fake: the users it knows, the channel's members, the calls received, failures to inject."""

    users: dict[str, str] = field(default_factory=dict)  # user id -> display name
    members: list[str] = field(default_factory=list)  # members of every channel asked about
    calls: list[Call] = field(default_factory=list)
    failures: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = field(default_factory=dict)
    responses: list[dict[str, Any]] = field(default_factory=list)  # posted to response_url
    held: dict[str, threading.Event] = field(default_factory=dict)
    revoked: bool = False  # tokens_revoked: every call answers token_revoked
    _ts: float = FIRST_TS
    _posted: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- for tests ----------------------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int = 200,
        error: str = "internal_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Make the next call of `method` fail with this HTTP status and Slack error."""
        self.failures.setdefault(method, []).append(
            (status, {"ok": False, "error": error}, dict(headers or {}))
        )

    def hold(self, method: str) -> threading.Event:
        """Calls of `method` wait until the returned event is set."""
        event = threading.Event()
        self.held[method] = event
        return event

    def called(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [c.args for c in self.calls if c.method == method]

    def posts(self, **match: Any) -> list[dict[str, Any]]:
        """chat.postMessage calls whose arguments include every `match` item."""
        return [a for a in self.called("chat.postMessage") if all(a.get(k) == v for k, v in match.items())]

    # --- the API ------------------------------------------------------------------------------------------

    def _next_ts(self) -> str:
        self._ts += 1.000101
        return f"{self._ts:.6f}"

    def answer(self, method: str, args: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self.calls.append(Call(method, args))
            queued = self.failures.get(method)
            if queued:
                return queued.pop(0)
            if self.revoked:
                return 200, {"ok": False, "error": "token_revoked"}, {}
            if method in (
                "chat.postMessage",
                "chat.update",
                "chat.postEphemeral",
                "views.open",
                "views.publish",
            ):
                problem = invalid_blocks(args)
                if problem:
                    return (
                        200,
                        {
                            "ok": False,
                            "error": "invalid_blocks",
                            "response_metadata": {"messages": [f"[ERROR] {problem}"]},
                        },
                        {},
                    )
            if method == "auth.test":
                return (
                    200,
                    {
                        "ok": True,
                        "url": "https://csp-aftersales.slack.com/",
                        "team": "CSP After-sales",
                        "user": "csp_warranty",
                        "team_id": TEAM_ID,
                        "user_id": BOT_USER_ID,
                        "bot_id": BOT_ID,
                        "is_enterprise_install": False,
                    },
                    {},
                )
            if method == "chat.postMessage":
                # The first message gets the samples' ts, so that unchanged sample payloads point at it.
                ts = f"{FIRST_TS:.6f}" if self._posted == 0 else self._next_ts()
                self._posted += 1
                return (
                    200,
                    {
                        "ok": True,
                        "channel": args.get("channel"),
                        "ts": ts,
                        "message": {
                            "type": "message",
                            "user": BOT_USER_ID,
                            "bot_id": BOT_ID,
                            "ts": ts,
                            "text": args.get("text", ""),
                        },
                    },
                    {},
                )
            if method == "chat.update":
                return (
                    200,
                    {
                        "ok": True,
                        "channel": args.get("channel"),
                        "ts": args.get("ts"),
                        "text": args.get("text", ""),
                    },
                    {},
                )
            if method == "chat.postEphemeral":
                return 200, {"ok": True, "message_ts": self._next_ts()}, {}
            if method == "conversations.members":
                return self._members(args)
            if method == "users.info":
                user = str(args.get("user", ""))
                if user not in self.users:
                    return 200, {"ok": False, "error": "user_not_found"}, {}
                name = self.users[user]
                return (
                    200,
                    {
                        "ok": True,
                        "user": {
                            "id": user,
                            "team_id": TEAM_ID,
                            "name": name.lower().replace(" ", "."),
                            "real_name": name,
                            "is_bot": False,
                            "profile": {"display_name": name, "real_name": name},
                        },
                    },
                    {},
                )
            if method in ("views.open", "views.publish"):
                view = args.get("view")
                view = json.loads(view) if isinstance(view, str) else view
                return 200, {"ok": True, "view": {"id": "V07FAKE" + str(len(self.calls)), **(view or {})}}, {}
            if method == "reactions.add":
                return 200, {"ok": True}, {}
            return 200, {"ok": False, "error": "unknown_method"}, {}

    def _members(self, args: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        # Pages of `limit` members, like Slack, so that the client's pagination is exercised.
        limit = int(args.get("limit") or 100)
        start = int(args.get("cursor") or 0)
        page = self.members[start : start + limit]
        cursor = str(start + limit) if start + limit < len(self.members) else ""
        return 200, {"ok": True, "members": page, "response_metadata": {"next_cursor": cursor}}, {}


# --- Block Kit, as Slack checks it (https://docs.slack.dev/reference/block-kit) ---------------------------------

_ENTITY = re.compile(r"&(?!amp;|lt;|gt;)")
_LINK = re.compile(r"<[^<>]*>")
LIMITS = {
    "message_blocks": 50,
    "view_blocks": 100,
    "text": 3000,
    "header": 150,
    "field": 2000,
    "fields": 10,
    "context_elements": 10,
    "actions_elements": 25,
    "button_text": 75,
    "button_value": 2000,
    "options": 100,
    "option_text": 75,
    "option_value": 150,
    "fallback": 40000,
}


def mrkdwn_problem(text: str) -> str | None:
    """What makes `text` ill-formed mrkdwn: a bare `&` (or half an entity), a `<` never closed."""
    if _ENTITY.search(text):
        return f"unescaped or cut entity near {text[_ENTITY.search(text).start() :][:12]!r}"  # type: ignore[union-attr]
    if "<" in _LINK.sub("", text):
        return "a link or mention left open"
    return None


def _text_problem(node: Any, limit: int, where: str) -> str | None:
    if not isinstance(node, dict) or node.get("type") not in ("mrkdwn", "plain_text"):
        return f"{where}: not a text object"
    text = node.get("text")
    if not isinstance(text, str) or not text:
        return f"{where}: empty text"
    if len(text) > limit:
        return f"{where}: {len(text)} characters, more than {limit}"
    return mrkdwn_problem(text) if node["type"] == "mrkdwn" else None


def _element_problem(element: dict[str, Any], where: str) -> str | None:
    kind = element.get("type")
    if kind == "button":
        if len(str(element.get("value", ""))) > LIMITS["button_value"]:
            return f"{where}: button value too long"
        return _text_problem(element.get("text"), LIMITS["button_text"], f"{where}.text")
    if kind == "static_select":
        options = element.get("options") or []
        if not 0 < len(options) <= LIMITS["options"]:
            return f"{where}: {len(options)} options"
        for number, option in enumerate(options):
            if len(str(option.get("value", ""))) > LIMITS["option_value"]:
                return f"{where}.options[{number}]: value too long"
            problem = _text_problem(option.get("text"), LIMITS["option_text"], f"{where}.options[{number}]")
            if problem:
                return problem
    return None


def block_problem(block: dict[str, Any], where: str) -> str | None:
    kind = block.get("type")
    if kind == "section":
        if "text" not in block and "fields" not in block:
            return f"{where}: a section needs text or fields"
        if "text" in block and (problem := _text_problem(block["text"], LIMITS["text"], f"{where}.text")):
            return problem
        fields = block.get("fields") or []
        if len(fields) > LIMITS["fields"]:
            return f"{where}: {len(fields)} fields"
        for number, item in enumerate(fields):
            if problem := _text_problem(item, LIMITS["field"], f"{where}.fields[{number}]"):
                return problem
    elif kind == "header":
        text = block.get("text")
        if not isinstance(text, dict) or text.get("type") != "plain_text":
            return f"{where}: a header takes plain_text"
        return _text_problem(text, LIMITS["header"], f"{where}.text")
    elif kind == "context":
        elements = block.get("elements") or []
        if not 0 < len(elements) <= LIMITS["context_elements"]:
            return f"{where}: {len(elements)} context elements"
        for number, element in enumerate(elements):
            if problem := _text_problem(element, LIMITS["text"], f"{where}.elements[{number}]"):
                return problem
    elif kind == "actions":
        elements = block.get("elements") or []
        if not 0 < len(elements) <= LIMITS["actions_elements"]:
            return f"{where}: {len(elements)} action elements"
        for number, element in enumerate(elements):
            if problem := _element_problem(element, f"{where}.elements[{number}]"):
                return problem
    elif kind == "input":
        if problem := _text_problem(block.get("label"), 2000, f"{where}.label"):
            return problem
    elif kind not in ("divider", "image", "rich_text"):
        return f"{where}: unknown block type {kind!r}"
    return None


def invalid_blocks(args: Mapping[str, Any]) -> str | None:
    """Why Slack would refuse this message or view (`invalid_blocks`), or None."""
    view = args.get("view")
    blocks = (view or {}).get("blocks") if isinstance(view, dict) else args.get("blocks")
    limit = LIMITS["view_blocks"] if isinstance(view, dict) else LIMITS["message_blocks"]
    text = args.get("text")
    if isinstance(text, str) and (len(text) > LIMITS["fallback"] or mrkdwn_problem(text)):
        return f"text: {mrkdwn_problem(text) or 'too long'}"
    if blocks is None:
        return None
    if not isinstance(blocks, list) or len(blocks) > limit:
        return f"more than {limit} blocks"
    for number, block in enumerate(blocks):
        if problem := block_problem(block, f"blocks[{number}]"):
            return problem
    return None


def create_app(fake: FakeSlack) -> Starlette:
    async def response_url(request: Request) -> Response:
        body = json.loads(await request.body())
        problem = invalid_blocks(body)
        with fake._lock:
            fake.responses.append({"id": request.path_params["hook"], **body})
        if problem:
            return Response("invalid_blocks", status_code=400)
        return Response("ok")

    async def api(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {BOT_TOKEN}":
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        args: dict[str, Any] = dict(request.query_params)
        body = await request.body()
        if body:
            if request.headers.get("content-type", "").startswith("application/json"):
                args.update(json.loads(body))
            else:
                args.update(parse_qsl(body.decode(), keep_blank_values=True))
        for key in ("blocks", "view"):  # form-encoded calls carry these as JSON text
            if isinstance(args.get(key), str):
                args[key] = json.loads(args[key])
        held = fake.held.get(request.path_params["method"])
        if held is not None:
            await asyncio.to_thread(held.wait, 30)
        status, answer, headers = fake.answer(request.path_params["method"], args)
        return JSONResponse(answer, status_code=status, headers=headers)

    return Starlette(
        routes=[
            Route("/api/{method}", api, methods=["GET", "POST"]),
            Route("/hooks/response/{hook}", response_url, methods=["POST"]),
        ]
    )


# --- what Slack sends the bot ---------------------------------------------------------------------------------


def signed(body: bytes, *, form: bool, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    """The headers of a request Slack signs (v0: HMAC-SHA256 of `v0:{timestamp}:{body}`)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded" if form else "application/json",
    }


def as_form(payload_text: str) -> bytes:
    """An interactivity payload as Slack posts it: a form with one `payload` field."""
    return b"payload=" + quote_plus(payload_text).encode()


def block_text(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)
