"""A loopback fake of the WeChat Official Account API: stable token, customer-service send, temporary media.

Like the real API it refuses an invalid or replaced token (40001) and enforces the customer-service quotas
(5 messages in 48 hours after a customer's message, 3 in a minute after a follow), so a test sees the bot
respect them rather than trusting it to. At the end, WeChat's side of a push: the account's credentials
and `signed_query`, the query WeChat signs with the account's token.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

QUOTA = {"message": 5, "event": 3}


@dataclass
class FakeWeChat:
    app_id: str
    app_secret: str
    sent: list[dict[str, Any]] = field(default_factory=list)  # accepted customer-service messages, in order
    raw_bodies: list[bytes] = field(default_factory=list)  # their bytes as received
    refused: list[int] = field(default_factory=list)  # errcodes we answered with
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # media id -> (bytes, content type)
    media_requests: list[str] = field(default_factory=list)
    quota: dict[str, int] = field(default_factory=dict)  # openid -> messages still allowed
    token: str = ""
    revoked: set[str] = field(default_factory=set)  # refused by the API, still handed out unless forced
    whitelisted: bool = True  # False: the server's IP is not in the account's whitelist (40164)
    forced: int = 0  # force_refresh requests; WeChat allows 20 a day
    lock: threading.Lock = field(default_factory=threading.Lock)
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/cgi-bin/stable_token", self._stable_token, methods=["POST"]),
                Route("/cgi-bin/message/custom/send", self._send, methods=["POST"]),
                Route("/cgi-bin/media/get", self._media, methods=["GET"]),
            ]
        )

    # --- what the test tells the fake about the customer's side ------------------------------------------------

    def interaction(self, openid: str, kind: str = "message") -> None:
        """The customer wrote (or followed): a new quota, as WeChat's servers would grant."""
        with self.lock:
            self.quota[openid] = QUOTA[kind]

    def window_closed(self, openid: str) -> None:
        with self.lock:
            self.quota[openid] = -1

    def invalidate_token(self) -> None:
        """The current token stops working (expired early, or refreshed by another client)."""
        with self.lock:
            self.token = ""

    def revoke_token(self) -> None:
        """The API refuses the current token, yet the stable endpoint hands it out until a forced refresh."""
        with self.lock:
            self.revoked.add(self.token)

    def texts(self, openid: str) -> list[str]:
        with self.lock:
            return [m["text"]["content"] for m in self.sent if m.get("touser") == openid]

    # --- handlers ------------------------------------------------------------------------------------------

    async def _stable_token(self, request: Request) -> Response:
        body = await request.json()
        with self.lock:
            self.token_requests.append(body)
            if body.get("grant_type") != "client_credential" or body.get("appid") != self.app_id:
                return _error(40013, "invalid appid")
            if body.get("secret") != self.app_secret:
                return _error(40125, "invalid appsecret")
            if not self.whitelisted:
                return _error(40164, "invalid ip 192.0.2.10 ipv6 ::ffff:192.0.2.10, not in whitelist")
            if body.get("force_refresh"):
                self.forced += 1
                if self.forced > 20:
                    return _error(45009, "reach max api daily quota limit")
            # The stable token stays the same for every caller until it expires or is force-refreshed.
            if not self.token or body.get("force_refresh"):
                self.token = f"ACCESS_TOKEN_{next(self._serial)}"
            return JSONResponse({"access_token": self.token, "expires_in": 7200})

    def _token_ok(self, request: Request) -> bool:
        given = request.query_params.get("access_token")
        return bool(self.token) and given == self.token and given not in self.revoked

    async def _send(self, request: Request) -> Response:
        raw = await request.body()
        with self.lock:
            if not self.whitelisted:
                self.refused.append(40164)
                return _error(40164, "invalid ip 192.0.2.10 ipv6 ::ffff:192.0.2.10, not in whitelist")
            if not self._token_ok(request):
                self.refused.append(40001)
                return _error(40001, "invalid credential, access_token is invalid or not latest")
            try:
                body = json.loads(raw)
            except ValueError:
                self.refused.append(47001)
                return _error(47001, "data format error")
            content = body.get("text", {}).get("content", "") if body.get("msgtype") == "text" else ""
            if not body.get("touser") or not content or len(content.encode()) > 2048:
                self.refused.append(44003)
                return _error(44003, "empty or too long news content")
            left = self.quota.get(body["touser"], -1)
            if left < 0:
                self.refused.append(45015)
                return _error(45015, "response out of time limit or subscription is canceled")
            if left == 0:
                self.refused.append(45047)
                return _error(45047, "out of response count limit")
            self.quota[body["touser"]] = left - 1
            self.sent.append(body)
            self.raw_bodies.append(raw)
        return _error(0, "ok")

    async def _media(self, request: Request) -> Response:
        media_id = request.query_params.get("media_id", "")
        with self.lock:
            self.media_requests.append(media_id)
            if not self._token_ok(request):
                return _error(40001, "invalid credential, access_token is invalid or not latest")
            found = self.media.get(media_id)
        if found is None:
            return _error(40007, "invalid media_id")
        data, content_type = found
        return Response(
            data,
            media_type=content_type,
            headers={"content-disposition": f'attachment; filename="{media_id}"'},
        )


def _error(errcode: int, errmsg: str) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "errmsg": errmsg})


# --- what WeChat sends the bot: the account's credentials and pushes signed with its token ------------------

PAYLOADS = Path(__file__).parent.parent / "payloads" / "wechat"
TOKEN = "wxCallbackToken2026"
APP_ID = "wx5c1e8a9f3b27d401"
APP_SECRET = "test-wechat-app-secret"
OPENID = "oX3kT5wQ9pL2mN8vR6yB1cJ4dF7g"


def signature(*parts: str) -> str:
    # The README's recipe, written out here so that the adapter is checked against it, not against itself.
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()  # noqa: S324 - WeChat's scheme


def signed_query(*, token: str = TOKEN, encrypted: str | None = None, age: float = 0) -> dict[str, str]:
    """The query WeChat signs a push with (`age` seconds old), with msg_signature over `encrypted` in safe mode."""
    timestamp, nonce = str(int(time.time() - age)), secrets.token_hex(5)
    query = {
        "signature": signature(token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
        "openid": OPENID,
    }
    if encrypted is not None:
        query.update(encrypt_type="aes", msg_signature=signature(token, timestamp, nonce, encrypted))
    return query
