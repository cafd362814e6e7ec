"""How the one server answers what goes wrong, the same way on every route: the error-to-status mapping the
Starlette app installs as exception handlers, and the helpers the JSON APIs and pages share.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from bot.desk import DeskError
from bot.engine import StorageUnavailable
from bot.fetch import FetchFailed

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
WEB = Path(__file__).resolve().parent / "web"  # the pages (chat.html, desk.html) and their static files
# Pages of ours load only our own scripts and styles; nothing is sniffed into another type.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'",
    "X-Content-Type-Options": "nosniff",
}


class ApiError(Exception):
    """A request our JSON APIs refuse: answered `status` with {"error": message} by the app's handler."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError | DeskError)
    if isinstance(exc, ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


def _declares_json(request: Request) -> bool:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object (an empty body is an empty object); ApiError 415 unless declared JSON, 422
    unless it is a JSON object.

    Requiring `Content-Type: application/json` makes a cross-site page's request a preflighted one, which
    the browser does not send (no CORS here): a form or `text/plain` POST from any site is refused.
    """
    body = await request.body()
    if not body.strip():
        return {}
    if not _declares_json(request):
        raise ApiError(415, "send the body as JSON with Content-Type: application/json")
    try:
        return decode_object(body)
    except NotAnObject as error:
        raise ApiError(422, str(error)) from None


class NotAnObject(ValueError):
    """A body that is not a JSON object."""


def decode_object(body: bytes, refused: Callable[[str], Exception] = NotAnObject) -> dict[str, Any]:
    """A body's JSON object, else `refused(why)` is raised (a channel's own "malformed" error). For a route
    whose contract answers a bad body otherwise than json_object's 422 (a webhook: 400), or that must read the
    raw body first (a signature)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise refused("the body must be JSON") from None
    if not isinstance(data, dict):
        raise refused("the body must be a JSON object")
    return data


async def signed_body(request: Request, header: str, valid: Callable[[bytes, str | None], bool]) -> bytes:
    """The raw body of a channel's webhook when `valid(body, <the header's value>)`; ApiError 401 if not."""
    body = await request.body()
    if not valid(body, request.headers.get(header)):
        raise ApiError(401, "invalid signature")
    return body


class Redeliver(Exception):
    """Nothing was stored, for a reason that passes (the database, or a download the message needs): answer
    503, which makes every channel send the request again."""


# What makes a request "not stored, send it again": a storage failure is a 503 on every webhook and API.
UNAVAILABLE: tuple[type[Exception], ...] = (SQLAlchemyError, StorageUnavailable, FetchFailed, Redeliver)


async def unavailable(request: Request, exc: Exception) -> Response:
    log.warning(
        "%s %s not stored, asking for redelivery: %s", request.method, route_of(request), type(exc).__name__
    )
    return JSONResponse(
        {"error": "temporarily unavailable; nothing was stored, send it again"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def route_of(request: Request) -> str:
    """The route's template (`/api/webchat/sessions/{session_id}/messages`): a path can carry a credential."""
    route = request.scope.get("route")
    template = getattr(route, "path", None)
    return template if isinstance(template, str) else "(no route)"


def exception_handlers() -> dict[Any, ExceptionHandler]:
    """The app's handlers: refused API requests and desk actions, and the storage failures of every route."""
    return {ApiError: api_error, DeskError: api_error, **{kind: unavailable for kind in UNAVAILABLE}}
