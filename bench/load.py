"""The load generator (`python -m bench.load ...`, prints one JSON report): Telegram-shaped webhook updates
over HTTP on loopback, with bounded concurrency and a bounded number of requests, sent with aiohttp
(httpx's pool costs milliseconds of CPU per request at 40 connections: the generator would be the bottleneck).

Like Telegram, it sends one chat's updates one at a time (the next after the previous one's response) and
keeps at most `--concurrency` requests open (Telegram's default `max_connections` is 40). In `blast` mode a
customer sends the next message as soon as the webhook answered; in `interactive` mode it first waits for the
bot's replies (read from the fake Bot API), as a person would, so the end-to-end latency carries no backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from adapters.telegram import SECRET_HEADER
from bench.script import SCRIPT, SCRIPT_REPLIES

PAYLOADS = Path(__file__).resolve().parents[1] / "tests" / "payloads" / "telegram"
TEXT_TEMPLATE = json.loads((PAYLOADS / "text_serial.json").read_text(encoding="utf-8"))
BUTTON_TEMPLATE = json.loads((PAYLOADS / "callback_query.json").read_text(encoding="utf-8"))


def update(chat: int, step: int, update_id: int) -> bytes:
    """The customer's `step` of SCRIPT as Telegram sends it: a text message, or a pressed inline button."""
    value = SCRIPT[step]
    if ":" in value and " " not in value:  # a button's value: proof:none, cause:normal
        document = json.loads(json.dumps(BUTTON_TEMPLATE))
        query = document["callback_query"]
        query["id"] = f"{chat}{step:03d}"
        query["from"]["id"] = chat
        query["message"]["chat"]["id"] = chat
        query["data"] = value
    else:
        document = json.loads(json.dumps(TEXT_TEMPLATE))
        message = document["message"]
        message["message_id"] = 1000 + step
        message["from"]["id"] = chat
        message["from"]["language_code"] = "en"
        message["chat"]["id"] = chat
        message["text"] = value
    document["update_id"] = update_id
    return json.dumps(document, ensure_ascii=False).encode()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cumulative = [sum(SCRIPT_REPLIES[: i + 1]) for i in range(len(SCRIPT))]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(args.conversations):
        queue.put_nowait(index)
    requests: list[list[Any]] = []  # chat, step, sent, answered, status
    e2e: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + args.timeout
    headers = {SECRET_HEADER: args.secret, "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=args.concurrency), timeout=aiohttp.ClientTimeout(total=30)
        ) as client,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.reply_timeout + 10)) as replies,
    ):

        async def customer() -> None:
            while not queue.empty() and time.monotonic() < deadline:
                index = queue.get_nowait()
                chat = args.chat_base + index
                for step in range(len(SCRIPT)):
                    body = update(chat, step, args.update_base + index * 10 + step)
                    sent = time.monotonic()
                    try:
                        async with client.post(args.url, data=body, headers=headers) as response:
                            await response.read()
                            status = response.status
                    except (aiohttp.ClientError, TimeoutError) as error:
                        status = 0
                        errors.append(type(error).__name__)
                    requests.append([chat, step, sent, time.monotonic(), status])
                    if status != 200:
                        if status:
                            errors.append(f"HTTP {status}")
                        break
                    if args.mode == "interactive":
                        async with replies.get(
                            f"{args.fake}/_bench/wait",
                            params={
                                "chat": str(chat),
                                "count": str(cumulative[step]),
                                "timeout": str(args.reply_timeout),
                            },
                        ) as answer:
                            times = await answer.json()
                        if len(times) < cumulative[step]:
                            errors.append("reply timeout")
                            break
                        e2e.append(times[cumulative[step] - 1] - sent)

        started = time.monotonic()
        await asyncio.gather(*(customer() for _ in range(args.concurrency)))
        finished = time.monotonic()
    return {
        "start": started,
        "end": finished,
        "requests": requests,
        "e2e": e2e,
        "errors": errors[:20],
        "error_count": len(errors),  # failed or refused requests, and replies that never came
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the webhook URL (loopback)")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--fake", required=True, help="the fake Bot API's base URL (for interactive mode)")
    parser.add_argument("--mode", choices=("blast", "interactive"), default="blast")
    parser.add_argument("--conversations", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument("--chat-base", type=int, required=True)
    parser.add_argument("--update-base", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=600, help="stop starting conversations after this")
    parser.add_argument("--reply-timeout", type=float, default=60)
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost")):
        sys.exit("bench.load only sends to loopback addresses")
    # What the imports loaded (the Telegram adapter brings the bot's modules): out of the collector's full
    # collections, which took 80-200 ms each here and could fall between a send's timestamp and the send.
    gc.freeze()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
