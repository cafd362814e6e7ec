"""The console channel: a customer typing in the terminal, through the same engine as every channel.

What the engineers would receive (new cases, relayed messages) is printed too, marked as the desk's view.
"""

from __future__ import annotations

import asyncio
import getpass
import mimetypes
import sys
from pathlib import Path
from typing import Any, TextIO

from bot import channels
from bot.app import Bot, build
from bot.attachments import AttachmentRejected
from bot.config import Settings
from bot.messages import (
    CASE_OPENED,
    CASE_UPDATED,
    CUSTOMER_MESSAGE,
    Attachment,
    DeskEvent,
    OutboundMessage,
)
from bot.outbox import Delivered, Deliverer
from bot.store.clock import utcnow

CHANNEL = "console"
DESK = "console-desk"


class ConsoleSender:
    """Prints the bot's replies; buttons become numbered options (type the number)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    async def send(self, message: OutboundMessage) -> Delivered:
        print(f"\nbot> {message.text}", file=self.out)
        for option in channels.numbered(message.buttons):
            print(f"     {option}", file=self.out)
        return Delivered()


class ConsoleDesk:
    """Prints the events the engineers' desk would receive."""

    def __init__(self, bot: Bot, out: TextIO) -> None:
        self.bot = bot
        self.out = out

    async def send_event(self, event: DeskEvent) -> Delivered:
        if event.kind == CASE_OPENED:
            case = self.bot.desk.get_case(event.case_ref)
            print(
                f"\n[desk] new case {case['ref']} ({case['channel']}, {case['language']}), "
                f"{len(case['units'])} unit(s); fault: {case['fault']}",
                file=self.out,
            )
            for unit in case["units"][:10]:
                print(
                    f"[desk]   {unit['serial']}: {unit['outcome']} until {unit['warranty_end']} "
                    f"[{', '.join(unit['clauses'])}]",
                    file=self.out,
                )
        elif event.kind == CUSTOMER_MESSAGE:
            print(f"\n[desk] {event.case_ref} customer: {event.detail.get('text', '')}", file=self.out)
        elif event.kind == CASE_UPDATED:
            print(
                f"\n[desk] {event.case_ref}: {event.detail.get('action')} by {event.detail.get('actor')}",
                file=self.out,
            )
        return Delivered()


def run_console(
    settings: Settings, *, name: str, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> None:
    bot = build(settings, external_desks=(DESK,))
    deliverer = Deliverer(bot.db, {CHANNEL: ConsoleSender(stdout), DESK: ConsoleDesk(bot, stdout)})
    chat_id = f"console-{getpass.getuser()}"
    interactive = stdin.isatty()
    print(
        "Warranty bot console. Type your messages; '/file PATH' sends a photo or PDF; Ctrl-D quits.",
        file=stdout,
    )
    counter = 0
    while True:
        if interactive:
            print("\nyou> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if not interactive:
            print(f"\nyou> {text}", file=stdout)
        counter += 1
        attachments: tuple[Attachment, ...] = ()
        if text.startswith("/file "):
            attachment = _load_file(bot, Path(text.removeprefix("/file ").strip()), stdout)
            if attachment is None:
                continue
            attachments, text = (attachment,), ""
        external_id = f"{chat_id}-{utcnow().timestamp()}-{counter}"
        bot.engine.accept(
            channels.inbound(
                CHANNEL, external_id, chat_id, text=text, attachments=attachments, sender_name=name
            )
        )
        bot.engine.process_pending()
        while asyncio.run(deliverer.deliver_due()):
            pass
    print("", file=stdout)


def _load_file(bot: Bot, path: Path, out: TextIO) -> Any:
    try:
        data = path.read_bytes()
    except OSError as error:
        print(f"cannot read {path}: {error.strerror}", file=out)
        return None
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        return bot.attachments.save(
            data, name=path.name, mime=mime, kind="photo" if mime.startswith("image/") else "document"
        )
    except AttachmentRejected as error:
        return bot.attachments.rejected(path.name, error.reason)
