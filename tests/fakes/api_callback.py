"""A loopback callback receiver for the generic API channel: it checks every request the way docs/channels/api.md
tells a gateway to (signature, timestamp window, body schema from docs/channels/api.openapi.yaml) and records it;
and the gateway's side of a request to the bot: the shared secret and `sign`, its signature headers."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from openapi_schema_validator import OAS31Validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SPEC = Path(__file__).resolve().parents[2] / "docs" / "channels" / "api.openapi.yaml"


def callback_schema() -> dict[str, Any]:
    """The callback body's schema, with the spec's components so that its references resolve."""
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return {**spec["components"]["schemas"]["Reply"], "components": spec["components"]}


@dataclass
class FakeCallback:
    """Answers `POST /callback`: 200 {"message_id"} for a genuine, well-formed reply; 401 or 400 otherwise."""

    secret: str
    tolerance: float = 300.0
    received: list[dict[str, Any]] = field(default_factory=list)  # accepted bodies, in order
    refused: list[tuple[int, str]] = field(default_factory=list)  # (status, reason) of refused requests
    failures: list[int] = field(default_factory=list)  # statuses to answer the next requests with
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self._validator = OAS31Validator(callback_schema())

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/callback", self._callback, methods=["POST"])])

    def fail_next(self, *statuses: int) -> None:
        with self.lock:
            self.failures.extend(statuses)

    def texts(self, chat_id: str) -> list[str]:
        with self.lock:
            return [r["text"] for r in self.received if r["chat_id"] == chat_id]

    def to(self, chat_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.received if r["chat_id"] == chat_id]

    def _refuse(self, status: int, reason: str) -> Response:
        with self.lock:
            self.refused.append((status, reason))
        return JSONResponse({"error": reason}, status_code=status)

    async def _callback(self, request: Request) -> Response:
        body = await request.body()
        timestamp = request.headers.get("x-warranty-timestamp", "")
        given = request.headers.get("x-warranty-signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > self.tolerance:
            return self._refuse(401, "stale or missing timestamp")
        expected = (
            "v1="
            + hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return self._refuse(401, "bad signature")
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return self._refuse(415, "not JSON")
        try:
            document = json.loads(body)
        except ValueError:
            return self._refuse(400, "body is not JSON")
        errors = [e.message for e in self._validator.iter_errors(document)]
        if errors:
            return self._refuse(400, f"schema: {errors[0]}")
        with self.lock:
            if self.failures:
                status = self.failures.pop(0)
                return JSONResponse({"error": "told to fail"}, status_code=status)
            self.received.append(document)
            message_id = f"cb-{next(self._ids)}"
        return JSONResponse({"message_id": message_id})


# --- what a gateway sends the bot: requests signed with the channel's shared secret --------------------------

SECRET = "portal-secret-0123456789abcdef"


def sign(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Exactly as docs/channels/api.md shows it."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Warranty-Timestamp": ts, "X-Warranty-Signature": f"v1={mac}"}
