"""A loopback fake of the Viber REST bot API (send_message) and of its media host, refusing what Viber refuses.

Like Viber, it answers HTTP 200 with a JSON `status` (0 ok, 2 invalid auth token, 3 bad data, 6 receiver not
subscribed, 12 too many requests), so the client must read the status, not only the HTTP code. At the end,
Viber's side of a callback: the bot's auth token and `sign`, the X-Viber-Content-Signature of a body.
"""

from __future__ import annotations

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

STATUS_MESSAGES = {
    2: "invalidAuthToken",
    3: "badData",
    6: "receiverNotSubscribed",
    12: "tooManyRequests",
}


@dataclass
class FakeViber:
    auth_token: str
    sent: list[dict[str, Any]] = field(default_factory=list)  # accepted send_message bodies
    subscribed: set[str] = field(default_factory=set)  # users who may receive messages
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # path -> (bytes, mime)
    failures: list[int] = field(default_factory=list)  # API statuses (or HTTP >= 500) for the next sends
    lock: threading.Lock = field(default_factory=threading.Lock)
    _tokens: itertools.count[int] = field(default_factory=lambda: itertools.count(5000000000000000001))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/pa/send_message", self._send, methods=["POST"]),
                Route("/media/{name:path}", self._media, methods=["GET"]),
            ]
        )

    def to(self, user_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [b for b in self.sent if b["receiver"] == user_id]

    def texts(self, user_id: str) -> list[str]:
        return [b["text"] for b in self.to(user_id)]

    async def _send(self, request: Request) -> Response:
        if request.headers.get("x-viber-auth-token") != self.auth_token:
            return _status(2)
        try:
            body = await request.json()
        except ValueError:
            return _status(3, "invalid JSON")
        with self.lock:
            if self.failures:
                failure = self.failures.pop(0)
                if failure >= 500:
                    return Response("upstream error", status_code=failure)
                return _status(failure)
        problem = refusal(body)
        if problem:
            return _status(3, problem)
        if body["receiver"] not in self.subscribed:
            return _status(6)
        with self.lock:
            self.sent.append(body)
            token = next(self._tokens)
        return JSONResponse(
            {"status": 0, "status_message": "ok", "message_token": token, "chat_hostname": "SN-1"}
        )

    async def _media(self, request: Request) -> Response:
        found = self.media.get(request.path_params["name"])
        if found is None:
            return Response("not found", status_code=404)
        return Response(found[0], media_type=found[1])


def _status(status: int, detail: str = "") -> JSONResponse:
    message = STATUS_MESSAGES.get(status, "failure")
    return JSONResponse({"status": status, "status_message": f"{message}: {detail}" if detail else message})


def refusal(body: Any) -> str | None:
    """Why Viber would refuse this send_message body (the schema and limits we rely on), or None."""
    if not isinstance(body, dict):
        return "body is not an object"
    allowed = {"receiver", "min_api_version", "sender", "tracking_data", "type", "text", "keyboard"}
    if set(body) - allowed:
        return f"unknown fields {sorted(set(body) - allowed)}"
    if not isinstance(body.get("receiver"), str) or not body["receiver"]:
        return "receiver is required"
    sender = body.get("sender")
    if not isinstance(sender, dict) or not isinstance(sender.get("name"), str):
        return "sender.name is required"
    if not 1 <= len(sender["name"]) <= 28:
        return "sender.name: 1 to 28 characters"
    if body.get("type") != "text":
        return "type: only text messages here"
    text = body.get("text")
    if not isinstance(text, str) or not 1 <= len(text) <= 7000:
        return "text: 1 to 7000 characters"
    keyboard = body.get("keyboard")
    if keyboard is None:
        return None
    if not isinstance(keyboard, dict) or keyboard.get("Type") != "keyboard":
        return "keyboard.Type must be keyboard"
    buttons = keyboard.get("Buttons")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 24:
        return "keyboard.Buttons: 1 to 24"
    for button in buttons:
        if not isinstance(button, dict) or button.get("ActionType") != "reply":
            return "buttons must be reply actions here"
        action, label = button.get("ActionBody"), button.get("Text")
        if not isinstance(action, str) or not 1 <= len(action) <= 4096:
            return "ActionBody: 1 to 4096 characters"
        if not isinstance(label, str) or not 1 <= len(label) <= 250:
            return "Text: 1 to 250 characters"
    return None


# --- what Viber sends the bot: the bot's auth token and callbacks signed with it ----------------------------

PAYLOADS = Path(__file__).parent.parent / "payloads" / "viber"
TOKEN = "445da6az1s345z78-dazcczb2542zv51a-e0vc5fva17480im9"


def sign(body: bytes, token: str = TOKEN) -> str:
    """X-Viber-Content-Signature: HMAC-SHA256 of the body with the auth token, hex."""
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()
