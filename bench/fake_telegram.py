"""A minimal loopback fake of the Telegram Bot API for the benchmarks: answers sendMessage and friends like
api.telegram.org and records when each reply reached it, per chat, so the load generator can measure
end-to-end latency (`python -m bench.fake_telegram --port N`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import time
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BOT_USER = {
    "id": 7391046285,
    "is_bot": True,
    "first_name": "CSP Warranty",
    "username": "csp_warranty_bot",
    "can_join_groups": False,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}


class Replies:
    """When each sendMessage arrived (time.monotonic, which every process on the machine shares), per chat."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.changed = asyncio.Condition()
        self.ids = itertools.count(5001)

    async def add(self, chat: str) -> None:
        async with self.changed:
            self.times[chat].append(time.monotonic())
            self.changed.notify_all()

    async def wait(self, chat: str, count: int, timeout: float) -> list[float]:
        async with self.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait_for(lambda: len(self.times[chat]) >= count), timeout)
            return list(self.times[chat])


def create_app() -> Starlette:
    replies = Replies()

    async def method(request: Request) -> Response:
        name = request.path_params["method"]
        params = await _params(request)
        result: Any = True
        if name == "getMe":
            result = BOT_USER
        elif name == "sendMessage":
            chat = str(params.get("chat_id", ""))
            if not chat or not str(params.get("text", "")).strip():
                return JSONResponse(
                    {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"},
                    status_code=400,
                )
            await replies.add(chat)
            result = {
                "message_id": next(replies.ids),
                "from": BOT_USER,
                "date": int(time.time()),
                "chat": {"id": int(chat), "type": "private"},
                "text": params.get("text", ""),
            }
        return JSONResponse({"ok": True, "result": result})

    async def wait(request: Request) -> Response:
        query = request.query_params
        times = await replies.wait(query["chat"], int(query["count"]), float(query.get("timeout", "30")))
        return JSONResponse(times)

    async def sent(request: Request) -> Response:
        return JSONResponse(dict(replies.times))

    async def total(request: Request) -> Response:
        return JSONResponse(sum(len(t) for t in replies.times.values()))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/bot{token}/{method}", method, methods=["GET", "POST"]),
            Route("/_bench/wait", wait),
            Route("/_bench/sent", sent),
            Route("/_bench/total", total),
            Route("/healthz", healthz),
        ]
    )


async def _params(request: Request) -> dict[str, Any]:
    """python-telegram-bot posts url-encoded forms (JSON-encoded values for objects); others post JSON."""
    params: dict[str, Any] = dict(request.query_params)
    body = await request.body()
    if body:
        if request.headers.get("content-type", "").startswith("application/json"):
            params.update(json.loads(body))
        else:
            params.update(parse_qsl(body.decode()))
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    gc.freeze()  # what the imports loaded: out of the collector's full collections (a pause delays a reply)
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
