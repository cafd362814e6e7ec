"""How the one server answers what goes wrong, the same way on every route: the error-to-status mapping the
Starlette app installs as exception handlers, and the helpers the JSON APIs and pages share.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from bot.engine import StorageUnavailable
from bot.fetch import FetchFailed

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class Redeliver(Exception):
    """Nothing was stored, for a reason that passes (the database, or a download the message needs): answer
    503, which makes every channel send the request again."""


# What makes a request "not stored, send it again": a storage failure is a 503 on every webhook and API.
UNAVAILABLE: tuple[type[Exception], ...] = (SQLAlchemyError, StorageUnavailable, FetchFailed, Redeliver)


async def unavailable(request: Request, exc: Exception) -> Response:
    log.warning("%s %s not stored, asking for redelivery: %s", request.method, route_of(request), type(exc).__name__)
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
    return {kind: unavailable for kind in UNAVAILABLE}
