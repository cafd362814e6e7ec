"""A loopback fake of the WhatsApp Cloud (Graph) API: messages and media, checked like the real one, recorded;
and Meta's side of a webhook: the app's credentials and `sign`, the X-Hub-Signature-256 of a body."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_PHONE = re.compile(r"\+?[0-9]{6,15}")
_BSUID = re.compile(r"[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}")


@dataclass
class FakeGraph:
    """Answers `POST /{version}/{phone_number_id}/messages`, `GET /{version}/{media_id}` and the media download."""

    access_token: str
    phone_number_id: str
    sent: list[dict[str, Any]] = field(default_factory=list)  # every accepted message body, in order
    wamids: list[str] = field(default_factory=list)  # the wamid each of them was given
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # media id -> (bytes, mime)
    failures: list[list[Any]] = field(
        default_factory=list
    )  # [sends to let through first, status, code, title]
    redirect_downloads: bool = (
        False  # the download URL answers 302 to where the bytes are, as Meta's CDN does
    )
    media_urls: dict[str, str] = field(default_factory=dict)  # media id -> the URL its answer names instead
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/download/{media_id}", self._download, methods=["GET"]),
                Route("/cdn/{media_id}", self._download, methods=["GET"]),
                Route("/{version}/{phone_number_id}/messages", self._messages, methods=["POST"]),
                Route("/{version}/{media_id}", self._media_info, methods=["GET"]),
            ]
        )

    def fail_next(self, status: int, code: int, title: str, *, after: int = 0) -> None:
        """The next message send (or the one after `after` successful sends) is refused with this Graph error."""
        with self.lock:
            self.failures.append([after, status, code, title])

    def sent_to(self, wa_id: str) -> list[dict[str, Any]]:
        """What went to this phone number or business-scoped user id."""
        with self.lock:
            return [m for m in self.sent if wa_id in (m.get("to"), m.get("recipient"))]

    def texts(self, wa_id: str) -> list[str]:
        """What the customer can read: text bodies and interactive bodies, in order."""
        out = []
        for message in self.sent_to(wa_id):
            if message["type"] == "text":
                out.append(message["text"]["body"])
            elif message["type"] == "interactive":
                out.append(message["interactive"]["body"]["text"])
        return out

    # --- handlers ------------------------------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.access_token}"

    async def _messages(self, request: Request) -> Response:
        with self.lock:
            self.requests.append(("POST", request.url.path))
        if not self._authorised(request):
            return _error(401, 190, "Invalid OAuth access token")
        if request.path_params["phone_number_id"] != self.phone_number_id:
            return _error(400, 100, "Unsupported post request")
        body = await request.json()
        with self.lock:
            if self.failures and self.failures[0][0] > 0:
                self.failures[0][0] -= 1
            elif self.failures:
                _, status, code, title = self.failures.pop(0)
                return _error(status, code, title)
        problem = _invalid(body)
        if problem:
            return _error(400, 131009, "Parameter value is not valid", problem)
        with self.lock:
            self.sent.append(body)
            wamid = f"wamid.FAKE{next(self._ids):08d}"
            self.wamids.append(wamid)
        contact = (
            {"input": body["to"], "wa_id": body["to"]}
            if "to" in body
            else {"input": body["recipient"], "user_id": body["recipient"]}
        )
        return JSONResponse(
            {"messaging_product": "whatsapp", "contacts": [contact], "messages": [{"id": wamid}]}
        )

    async def _media_info(self, request: Request) -> Response:
        with self.lock:
            self.requests.append(("GET", request.url.path))
        if not self._authorised(request):
            return _error(401, 190, "Invalid OAuth access token")
        media_id = request.path_params["media_id"]
        with self.lock:
            found = self.media.get(media_id)
        if found is None:
            return _error(404, 100, "Unsupported get request")
        data, mime = found
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "id": media_id,
                "mime_type": mime,
                "sha256": hashlib.sha256(data).hexdigest(),
                "file_size": len(data),
                "url": self.media_urls.get(media_id)
                or f"{str(request.base_url).rstrip('/')}/download/{media_id}",
            }
        )

    async def _download(self, request: Request) -> Response:
        with self.lock:
            self.requests.append(("GET", request.url.path))
        if not self._authorised(request):
            return Response(status_code=401)
        if self.redirect_downloads and request.url.path.startswith("/download/"):
            return Response(status_code=302, headers={"location": f"/cdn/{request.path_params['media_id']}"})
        found = self.media.get(request.path_params["media_id"])
        if found is None:
            return Response(status_code=404)
        return Response(found[0], media_type=found[1])


def _error(status: int, code: int, title: str, details: str = "") -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "message": f"({code}) {title}",
                "type": "OAuthException",
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": details or title},
                "fbtrace_id": "AbCdEfFAKE",
            }
        },
        status_code=status,
    )


def _invalid(body: dict[str, Any]) -> str | None:
    """Why the real API would refuse this message body (the limits we rely on), or None."""
    if body.get("messaging_product") != "whatsapp" or ("to" in body) == ("recipient" in body):
        return "messaging_product and one of to or recipient are required"
    if "to" in body and not _PHONE.fullmatch(str(body["to"])):
        return "to must be a phone number"
    if "recipient" in body and not _BSUID.fullmatch(str(body["recipient"])):
        return "recipient must be a business-scoped user id"
    kind = body.get("type")
    if kind == "text":
        text = body.get("text", {}).get("body", "")
        return None if 0 < len(text) <= 4096 else "text.body must have 1 to 4096 characters"
    if kind == "template":
        template = body.get("template", {})
        return None if template.get("name") and template.get("language", {}).get("code") else "template name"
    if kind != "interactive":
        return f"type {kind!r} not supported by this fake"
    interactive = body.get("interactive", {})
    if not 0 < len(interactive.get("body", {}).get("text", "")) <= 1024:
        return "interactive.body.text must have 1 to 1024 characters"
    action = interactive.get("action", {})
    if interactive.get("type") == "button":
        buttons = action.get("buttons", [])
        titles = [b["reply"]["title"] for b in buttons]
        if (
            not 1 <= len(buttons) <= 3
            or any(not 0 < len(t) <= 20 for t in titles)
            or len(set(titles)) < len(titles)
        ):
            return "1 to 3 buttons with unique titles of at most 20 characters"
        return None
    if interactive.get("type") == "list":
        rows = [r for s in action.get("sections", []) for r in s.get("rows", [])]
        if not 1 <= len(rows) <= 10 or any(not 0 < len(r["title"]) <= 24 for r in rows):
            return "1 to 10 rows with titles of at most 24 characters"
        if (
            any(len(r.get("description", "")) > 72 for r in rows)
            or not 0 < len(action.get("button", "")) <= 20
        ):
            return "row descriptions of at most 72 characters, a button label of at most 20"
        return None
    return f"interactive type {interactive.get('type')!r} not supported by this fake"


# --- what Meta sends the bot: the app's credentials and webhooks signed with its app secret ------------------

PAYLOADS = Path(__file__).parent.parent / "payloads" / "whatsapp"
APP_SECRET = "test-app-secret-5f2a"
ACCESS_TOKEN = "EAAGtest0access0token"
VERIFY_TOKEN = "verify-me-please"
PHONE_NUMBER_ID = "112049386624571"


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    """X-Hub-Signature-256 of a webhook body: HMAC-SHA256 with the app secret, hex, after `sha256=`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
