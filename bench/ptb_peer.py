"""The peer for the webhook benchmark: what a Python developer would otherwise build, python-telegram-bot's
own ConversationHandler with PicklePersistence, playing the same claim script (same replies, same buttons, the
same policy evaluation), fed by webhook: a Starlette endpoint puts each update on `application.update_queue`
as python-telegram-bot's own webhook server does (`python -m bench.ptb_peer --port N --api URL ...`).

Unpaced by default, as python-telegram-bot is out of the box; `--rate-limiter` paces it as its users deploy it
against api.telegram.org: its own AIORateLimiter (the `[rate-limiter]` extra) with its defaults, 30 requests a
second for the whole bot and 20 a minute to a group, nothing per private chat, no retry after a 429."""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
    PicklePersistence,
    filters,
)
from telegram.warnings import PTBUserWarning

from adapters.telegram import SECRET_HEADER
from policy import Circumstances, Claim, Proof, default_policy, evaluate, find_serials

SERIAL, PROOF, CAUSE = range(3)
POLICY = default_policy()
CAUSES = ("normal", "damage", "misuse", "repair", "force_majeure", "unsure")

Context = ContextTypes.DEFAULT_TYPE


async def greet(update: Update, context: Context) -> int:
    chat = update.effective_chat
    assert chat is not None
    await chat.send_message(
        "Hello! I'm the after-sales warranty assistant. I'll check your unit's warranty and "
        "pass your case to our engineers."
    )
    await chat.send_message("Please send the serial number of the faulty unit (for example CSP2402A0153).")
    return SERIAL


async def serial(update: Update, context: Context) -> int:
    chat, message = update.effective_chat, update.effective_message
    assert chat is not None and message is not None and context.chat_data is not None
    serials = find_serials(message.text or "", POLICY)
    if not serials:
        await chat.send_message("Please send the serial number of the faulty unit.")
        return SERIAL
    context.chat_data["serials"] = serials
    context.chat_data["fault"] = message.text
    await chat.send_message(f"Thank you. Unit: {', '.join(serials)}.")
    await chat.send_message(
        "I couldn't find this unit in our shipment records. Please send a photo or PDF of the invoice.",
        reply_markup=InlineKeyboardMarkup(
            [[InlineKeyboardButton("I don't have them", callback_data="proof:none")]]
        ),
    )
    return PROOF


async def proof(update: Update, context: Context) -> int:
    query, chat = update.callback_query, update.effective_chat
    assert query is not None and chat is not None
    await query.answer()
    await chat.send_message(
        "One more question: how did the fault appear?",
        reply_markup=InlineKeyboardMarkup(
            [[InlineKeyboardButton(c, callback_data=f"cause:{c}")] for c in CAUSES]
        ),
    )
    return CAUSE


async def cause(update: Update, context: Context) -> int:
    query, chat = update.callback_query, update.effective_chat
    assert query is not None and chat is not None and context.chat_data is not None
    await query.answer()
    today = datetime.now(UTC).date()
    damaged = query.data == "cause:damage"
    lines = []
    for unit in context.chat_data["serials"]:
        decision = evaluate(
            Claim(
                serial=unit,
                claim_date=today,
                proof=Proof.none,
                circumstances=Circumstances(human_damage=damaged),
            ),
            POLICY,
        )
        lines.append(
            f"{unit}: {decision.outcome.value} until {decision.warranty_end} "
            f"(clauses {', '.join(sorted(decision.clauses))})"
        )
    await chat.send_message("Here is what the warranty policy says:\n" + "\n".join(lines))
    assert context.bot_data is not None
    number = context.bot_data["cases"] = context.bot_data.get("cases", 0) + 1
    await chat.send_message(f"I've opened case WR-{today.year}-{number:06d} and passed it to our engineers.")
    return ConversationHandler.END


def build_application(
    api: str, token: str, persistence_path: Path, *, rate_limiter: bool = False
) -> Application[Any, Any, Any, Any, Any, Any]:
    with warnings.catch_warnings():  # per_message=False with CallbackQueryHandler: intended, chat-keyed
        warnings.simplefilter("ignore", PTBUserWarning)
        conversation = ConversationHandler(
            entry_points=[MessageHandler(filters.TEXT & ~filters.COMMAND, greet)],
            states={
                SERIAL: [MessageHandler(filters.TEXT & ~filters.COMMAND, serial)],
                PROOF: [CallbackQueryHandler(proof, pattern="^proof:")],
                CAUSE: [CallbackQueryHandler(cause, pattern="^cause:")],
            },
            fallbacks=[],
            name="claim",
            persistent=True,
        )
    builder = (
        Application.builder()
        .token(token)
        .base_url(f"{api.rstrip('/')}/bot")
        .base_file_url(f"{api.rstrip('/')}/file/bot")
        .updater(None)
        .persistence(PicklePersistence(filepath=persistence_path))
    )
    application = (builder.rate_limiter(AIORateLimiter()) if rate_limiter else builder).build()
    application.add_handler(conversation)
    return application


def create_app(application: Application[Any, Any, Any, Any, Any, Any], secret: str) -> Starlette:
    async def webhook(request: Request) -> Response:
        presented = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(presented.encode(), secret.encode()):
            return JSONResponse({"error": "wrong secret"}, status_code=403)
        try:
            update = Update.de_json(json.loads(await request.body()), application.bot)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "not an update"}, status_code=400)
        await application.update_queue.put(update)
        return JSONResponse({"ok": True})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with application:
            await application.start()
            yield
            await application.stop()

    return Starlette(
        routes=[Route("/telegram/webhook", webhook, methods=["POST"]), Route("/healthz", healthz)],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api", required=True, help="the Bot API base URL (the loopback fake)")
    parser.add_argument("--token", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--persistence", type=Path, required=True)
    parser.add_argument(
        "--rate-limiter", action="store_true", help="pace sends with AIORateLimiter() (its defaults)"
    )
    args = parser.parse_args()
    application = build_application(args.api, args.token, args.persistence, rate_limiter=args.rate_limiter)
    uvicorn.run(
        create_app(application, args.secret),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
