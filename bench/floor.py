"""The floor for the webhook benchmark: a bare Starlette endpoint that checks the secret header, reads the
JSON update and does one durable INSERT per request, on the same database with the same engine settings
as the bot (`python -m bench.floor --port N --database-url URL`). Nothing a webhook could do is cheaper."""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json

import uvicorn
from sqlalchemy import BigInteger, Column, Engine, LargeBinary, MetaData, Table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.telegram import SECRET_HEADER
from bot.store import make_engine, session_scope

metadata = MetaData()
updates = Table(
    "floor_update",
    metadata,
    Column("update_id", BigInteger, primary_key=True),
    Column("body", LargeBinary, nullable=False),
)


def create_app(db: Engine, secret: str) -> Starlette:
    metadata.create_all(db)

    def store(update_id: int, body: bytes) -> None:
        with session_scope(db) as session:  # the bot's own write transaction: BEGIN IMMEDIATE on SQLite
            session.execute(updates.insert().values(update_id=update_id, body=body))

    async def webhook(request: Request) -> Response:
        presented = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(presented.encode(), secret.encode()):
            return JSONResponse({"error": "wrong secret"}, status_code=403)
        body = await request.body()
        try:
            update_id = int(json.loads(body)["update_id"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "not an update"}, status_code=400)
        await asyncio.to_thread(store, update_id, body)
        return JSONResponse({"ok": True})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/telegram/webhook", webhook, methods=["POST"]), Route("/healthz", healthz)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    # The same uvicorn settings as `warranty-bot serve` (bot/server.py run_server).
    uvicorn.run(
        create_app(make_engine(args.database_url), args.secret),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
