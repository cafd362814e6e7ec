"""`python -m bench.screens`: the screenshots of docs/web.md, taken again in headless Chromium.

By default it starts the bot in this process on a temporary SQLite database with the demo registry
(`warranty-bot demo`, dated from today), plays a customer in the web chat (a covered claim with a photo in
English, a claim in Arabic), lets an engineer open the desk with its token, and writes into docs/img/:

    webchat-desktop-en.png  webchat-phone-en.png   (1280x800 and 390x844, English)
    webchat-desktop-ar.png  webchat-phone-ar.png   (the same sizes, Arabic)
    desk-desktop.png        desk-phone.png         (the desk with the English case open)

`--url http://127.0.0.1:8000 --desk-token TOKEN` shoots a server that is already running instead (`make
run`'s: the token is the DESK_TOKEN in .env, also read from the environment); the chat then sends the
demo's covered serial for today, so run `warranty-bot demo` on that server's database first. `--only
chat` or `--only desk` takes one page's pictures. It needs Debian's Chromium (/usr/bin/chromium) and
Playwright for Python (the dev extras), like tests/test_browser.py; it never downloads a browser.
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench.common import REPO

OUT = REPO / "docs" / "img"
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 1,
    "is_mobile": True,
    "has_touch": True,
}
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
WAIT_MS = 20_000
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FAULTS = {
    "en": "the display shows E07 and it shuts down under load",
    "ar": "الشاشة تعرض E07 وينطفئ الجهاز تحت الحمل",
}


def _label_photo() -> bytes:
    """A small PNG standing in for a photo of the serial label."""
    width, height = 480, 320

    def shade(x: int, y: int) -> int:  # a pale label with a barcode's bars across the middle
        return 40 if 110 < y < 210 and 60 < x < 420 and (x * 7 // 11) % 3 == 0 else 228

    rows = b"".join(
        b"\x00" + bytes(shade(x, y) for x in range(width) for _ in range(3)) for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@contextmanager
def _own_server(token: str) -> Iterator[str]:
    """The bot on a temporary SQLite file with the demo registry, served on a free loopback port."""
    from bot.app import build
    from bot.config import Settings
    from bot.demo import demo_csv, demo_orders
    from bot.registry import import_registry
    from bot.server import create_app
    from tests.fakes.server import serve

    with tempfile.TemporaryDirectory(prefix="warranty-screens-") as folder:
        work = Path(folder)
        settings = Settings(
            _env_file=None,
            database_url=f"sqlite:///{work}/warranty.db",  # type: ignore[call-arg]
            data_dir=work,
            attachments_dir=work / "attachments",
            desk_token=SecretStr(token),
        )
        bot = build(settings)
        registry = work / "demo.csv"
        registry.write_text(demo_csv(demo_orders(date.today())), encoding="utf-8")
        import_registry(bot.db, registry, policy=bot.policy)
        with serve(create_app(bot)) as base:
            yield base


def _claim(page: Any, base: str, language: str, serial: str, photo: bool) -> str:
    """A customer's claim in the web chat: a registered serial and its fault, failed in normal use."""
    from playwright.sync_api import expect

    page.goto(f"{base}/?lang={language}")
    box = page.locator("#text")
    box.fill(f"{serial} {FAULTS[language]}")
    box.press("Enter")
    page.locator('.choices button[data-value="cause:normal"]').last.click()
    opened = page.locator("#log .msg-bot", has_text=re.compile(r"WR-\d{4}-\d{6}"))
    expect(opened).to_have_count(1)
    found = re.search(r"WR-\d{4}-\d{6}", opened.inner_text())
    if photo:
        page.set_input_files(
            "#file", files=[{"name": "label.png", "mimeType": "image/png", "buffer": _label_photo()}]
        )
        expect(page.locator("#log .msg-customer[data-id]", has_text="label.png")).to_have_count(1)
    expect(page.locator("#typing")).to_be_hidden()
    page.wait_for_timeout(500)  # the last preview decoded and scrolled into view
    return found.group(0) if found else ""


def shoot_chat(browser: Any, base: str, out: Path, serial: str) -> tuple[list[Path], str]:
    """Both languages at both sizes; returns the pictures and the English claim's case reference."""
    written, ref = [], ""
    for language in ("en", "ar"):
        phone = browser.new_context(locale="en-US", **PHONE)
        page = phone.new_page()
        opened = _claim(page, base, language, serial, photo=language == "en")
        ref = ref or opened
        written.append(out / f"webchat-phone-{language}.png")
        page.screenshot(path=str(written[-1]))
        # The same conversation on a desktop: the session id is in the browser's storage.
        desktop = browser.new_context(locale="en-US", storage_state=phone.storage_state(), **DESKTOP)
        wide = desktop.new_page()
        wide.goto(f"{base}/?lang={language}")
        wide.locator("#log .msg-bot", has_text=re.compile(r"WR-\d{4}-\d{6}")).first.wait_for(timeout=WAIT_MS)
        wide.wait_for_timeout(500)
        written.append(out / f"webchat-desktop-{language}.png")
        wide.screenshot(path=str(written[-1]))
        desktop.close()
        phone.close()
    return written, ref


def shoot_desk(browser: Any, base: str, out: Path, token: str, ref: str) -> list[Path]:
    """The desk at both sizes with a case open: `ref`, or the newest case."""
    written = []
    for name, size in (("desktop", {"viewport": {"width": 1280, "height": 900}}), ("phone", PHONE)):
        context = browser.new_context(locale="en-US", **size)
        desk = context.new_page()
        desk.goto(f"{base}/desk")
        desk.get_by_label("Desk token").fill(token)
        desk.get_by_label(re.compile("^Your name")).fill("Amira")
        desk.get_by_role("button", name="Open the desk").click()
        first = desk.locator("#case-list button", has_text=ref).first
        first.wait_for(timeout=WAIT_MS)
        first.click()
        desk.locator("#units tbody tr").first.wait_for(timeout=WAIT_MS)
        desk.wait_for_timeout(500)
        written.append(out / f"desk-{name}.png")
        desk.screenshot(path=str(written[-1]))
        context.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.screens",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the pictures (default {OUT})")
    parser.add_argument("--url", help="a running server to shoot (default: start one with the demo registry)")
    parser.add_argument(
        "--desk-token",
        default=os.environ.get("DESK_TOKEN") or _dotenv_token(),
        help="the desk's DESK_TOKEN with --url (default: $DESK_TOKEN, then .env)",
    )
    parser.add_argument("--only", choices=("chat", "desk"), help="one page's pictures only")
    args = parser.parse_args(argv)
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        print(
            "python -m bench.screens: Chromium is not installed (apt-get install chromium)", file=sys.stderr
        )
        return 2
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        print("python -m bench.screens: Playwright is missing (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    if args.url and args.only != "chat" and not args.desk_token:
        print("python -m bench.screens: the desk needs --desk-token (or DESK_TOKEN)", file=sys.stderr)
        return 2
    from bot.demo import demo_orders

    expect.set_options(timeout=WAIT_MS)
    serial = next(o.first for o in demo_orders(date.today()) if o.key == "covered")
    token = args.desk_token if args.url else "screens-desk-token"
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright, _external(args.url) if args.url else _own_server(token) as base:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            written: list[Path]
            written, ref = ([], "") if args.only == "desk" else shoot_chat(browser, base, args.out, serial)
            if args.only != "chat":
                written += shoot_desk(browser, base, args.out, token, ref)
        except PlaywrightError as error:  # a page that did not do what the pictures show
            print(f"python -m bench.screens: {str(error).splitlines()[0]}", file=sys.stderr)
            return 1
        finally:
            browser.close()
    for path in written:
        print(path)
    return 0


@contextmanager
def _external(url: str) -> Iterator[str]:
    yield url.rstrip("/")


def _dotenv_token() -> str | None:
    env = REPO / ".env"
    if env.exists():
        for line in env.read_text(encoding="utf-8").splitlines():
            if line.startswith("DESK_TOKEN="):
                return line.split("=", 1)[1].strip() or None
    return None


if __name__ == "__main__":
    sys.exit(main())
