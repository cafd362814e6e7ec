"""A loopback fake of the Slack Web API: records every call and answers like Slack for the methods the desk uses."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BOT_TOKEN = "xoxb-4412345678901-7912345678012-fAkEbOtToKeNfOrTeStS"
BOT_USER_ID = "U07WBOT9RZ2"  # the bot user in the sample payloads' `authorizations`
BOT_ID = "B07WBOT5NQ1"
TEAM_ID = "T04KX7Q2M9L"
FIRST_TS = 1777886370.209339  # the case message ts in the sample payloads


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
    _ts: float = FIRST_TS
    _posted: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- for tests ----------------------------------------------------------------------------------------

    def fail_next(self, method: str, status: int = 200, error: str = "internal_error",
                  headers: Mapping[str, str] | None = None) -> None:
        """Make the next call of `method` fail with this HTTP status and Slack error."""
        self.failures.setdefault(method, []).append((status, {"ok": False, "error": error}, dict(headers or {})))

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
            if method == "auth.test":
                return 200, {"ok": True, "url": "https://csp-aftersales.slack.com/", "team": "CSP After-sales",
                             "user": "csp_warranty", "team_id": TEAM_ID, "user_id": BOT_USER_ID,
                             "bot_id": BOT_ID, "is_enterprise_install": False}, {}
            if method == "chat.postMessage":
                # The first message gets the samples' ts, so that unchanged sample payloads point at it.
                ts = f"{FIRST_TS:.6f}" if self._posted == 0 else self._next_ts()
                self._posted += 1
                return 200, {"ok": True, "channel": args.get("channel"), "ts": ts,
                             "message": {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": ts,
                                         "text": args.get("text", "")}}, {}
            if method == "chat.update":
                return 200, {"ok": True, "channel": args.get("channel"), "ts": args.get("ts"),
                             "text": args.get("text", "")}, {}
            if method == "chat.postEphemeral":
                return 200, {"ok": True, "message_ts": self._next_ts()}, {}
            if method == "conversations.members":
                return self._members(args)
            if method == "users.info":
                user = str(args.get("user", ""))
                if user not in self.users:
                    return 200, {"ok": False, "error": "user_not_found"}, {}
                name = self.users[user]
                return 200, {"ok": True, "user": {"id": user, "team_id": TEAM_ID, "name": name.lower().replace(" ", "."),
                                                  "real_name": name, "is_bot": False,
                                                  "profile": {"display_name": name, "real_name": name}}}, {}
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
        page = self.members[start:start + limit]
        cursor = str(start + limit) if start + limit < len(self.members) else ""
        return 200, {"ok": True, "members": page, "response_metadata": {"next_cursor": cursor}}, {}


def create_app(fake: FakeSlack) -> Starlette:
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
        status, answer, headers = fake.answer(request.path_params["method"], args)
        return JSONResponse(answer, status_code=status, headers=headers)

    return Starlette(routes=[Route("/api/{method}", api, methods=["GET", "POST"])])
