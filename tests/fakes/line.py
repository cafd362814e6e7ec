"""A loopback fake of the LINE Messaging API (reply, push) and its data API (content), refusing what LINE refuses;
and LINE's side of a webhook: the channel's credentials and `sign`, the X-Line-Signature of a body."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class FakeLine:
    access_token: str
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (how, to, message object)
    reply_tokens: dict[str, str] = field(default_factory=dict)  # valid, unused token -> user id
    content: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # message id -> (bytes, mime)
    failures: list[int] = field(default_factory=list)  # statuses for the next reply/push requests
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v2/bot/message/reply", self._reply, methods=["POST"]),
                Route("/v2/bot/message/push", self._push, methods=["POST"]),
                Route("/v2/bot/message/{message_id}/content", self._content, methods=["GET"]),
            ]
        )

    def to(self, user_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for _, to, m in self.sent if to == user_id]

    def texts(self, user_id: str) -> list[str]:
        return [m["text"] for m in self.to(user_id)]

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.access_token}"

    async def _reply(self, request: Request) -> Response:
        if not self._authorised(request):
            return _error(
                401,
                "Authentication failed. Confirm that the access token in the authorization header is valid.",
            )
        body = await request.json()
        with self.lock:
            user = self.reply_tokens.pop(str(body.get("replyToken")), None)  # a token works once
        if user is None:
            return _error(400, "Invalid reply token")
        return self._deliver("reply", user, body)

    async def _push(self, request: Request) -> Response:
        if not self._authorised(request):
            return _error(
                401,
                "Authentication failed. Confirm that the access token in the authorization header is valid.",
            )
        body = await request.json()
        to = body.get("to")
        if not isinstance(to, str) or not to.startswith("U") or len(to) != 33:
            return _error(400, "The property, 'to', in the request body is invalid (line: -, column: -)")
        return self._deliver("push", to, body)

    def _deliver(self, how: str, to: str, body: dict[str, Any]) -> Response:
        with self.lock:
            if self.failures:
                return _error(self.failures.pop(0), "told to fail")
        problem = _invalid(body.get("messages"))
        if problem:
            return _error(400, "The request body has 1 error(s)", problem)
        with self.lock:
            ids = []
            for message in body["messages"]:
                self.sent.append((how, to, message))
                ids.append({"id": str(460000000000000 + next(self._ids)), "quoteToken": "IStG5h1Tz7b..."})
        return JSONResponse({"sentMessages": ids})

    async def _content(self, request: Request) -> Response:
        if not self._authorised(request):
            return _error(401, "Authentication failed.")
        found = self.content.get(request.path_params["message_id"])
        if found is None:
            return _error(404, "Not found")
        return Response(found[0], media_type=found[1])


def _error(status: int, message: str, detail: str = "") -> JSONResponse:
    body: dict[str, Any] = {"message": message}
    if detail:
        body["details"] = [{"message": detail, "property": "messages"}]
    return JSONResponse(body, status_code=status)


def _invalid(messages: Any) -> str | None:
    """Why LINE would refuse these message objects (the limits we rely on), or None."""
    if not isinstance(messages, list) or not 1 <= len(messages) <= 5:
        return "messages: 1 to 5 message objects"
    for message in messages:
        if message.get("type") != "text" or not 1 <= len(message.get("text", "")) <= 5000:
            return "text messages of 1 to 5000 characters"
        quick = message.get("quickReply")
        if quick is None:
            continue
        items = quick.get("items", [])
        if not 1 <= len(items) <= 13:
            return "quickReply.items: 1 to 13"
        for item in items:
            action = item.get("action", {})
            if item.get("type") != "action" or action.get("type") != "postback":
                return "quick reply items must be postback actions here"
            if not 1 <= len(action.get("label", "")) <= 20 or not 1 <= len(action.get("data", "")) <= 300:
                return "postback label of 1 to 20 characters and data of 1 to 300"
            if len(action.get("displayText", "")) > 300:
                return "displayText of at most 300 characters"
    return None


# --- what LINE sends the bot: the channel's credentials and webhooks signed with its channel secret ---------

PAYLOADS = Path(__file__).parent.parent / "payloads" / "line"
SECRET = "8c570fa6dd201bb328f1c1eac23a96d8"
TOKEN = "W1TeHCgfH2Liwaa/test/channel/access/token="


def sign(body: bytes, secret: str = SECRET) -> str:
    """X-Line-Signature: HMAC-SHA256 of the body with the channel secret, base64."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
