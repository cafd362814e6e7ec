"""What the browser tests share: Debian's headless Chromium driven by Playwright, axe-core from npm, the bot's
settings on a SQLite file, page problem collection, screenshots, and test data (photo-like PNGs, serials).

The fixtures (`browser`, `axe_source`) are offered to every test module by tests/conftest.py.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, NoReturn

import pytest

from bot.config import Settings

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(os.environ.get("BROWSER_SCREENSHOTS", "/tmp"))
WAIT_MS = 15_000
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Nothing on the page is wider than the window: no sideways scrolling.
NO_SIDEWAYS_SCROLL = "document.scrollingElement.scrollWidth <= window.innerWidth"


def unavailable(reason: str) -> NoReturn:
    """Without a browser the test cannot run: fine on a developer's machine, a failure in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser test must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
    if chromium is None:
        unavailable("Chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright for Python is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        # Debian's Chromium, never a browser downloaded by `playwright install`.
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=30_000)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def axe_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """axe-core from the npm registry, installed into a temporary folder for this run (never committed)."""
    npm = shutil.which("npm")
    if npm is None:
        unavailable("npm is not installed: the axe-core accessibility check needs it")
    folder = tmp_path_factory.mktemp("axe")
    done = subprocess.run(
        [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(folder), "axe-core@4"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    script = folder / "node_modules" / "axe-core" / "axe.min.js"
    if done.returncode != 0 or not script.exists():
        unavailable(f"axe-core could not be installed from npm: {done.stderr.strip()[-200:]}")
    return script.read_text(encoding="utf-8")


def serious_violations(page: Any, axe: str) -> list[str]:
    """axe-core run in the page (by the DevTools protocol, so the page's CSP does not apply)."""
    page.evaluate(axe)
    found = page.evaluate("""async () => {
      const result = await axe.run(document, { resultTypes: ["violations"] });
      return result.violations.filter((v) => v.impact === "serious" || v.impact === "critical")
        .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
    }""")
    return list(found)


def settings_for(tmp_path: Path, **update: Any) -> Settings:
    return Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path}/warranty.db",  # type: ignore[call-arg]
        data_dir=tmp_path,
        attachments_dir=tmp_path / "attachments",
        **update,
    )


def noisy_png(width: int, height: int) -> bytes:
    """A photo-like PNG: grey with faint noise, which PNG cannot squeeze below a couple of megabytes."""
    faint = bytes(118 + (b & 15) for b in range(256))
    rows = b"".join(b"\x00" + os.urandom(width * 3).translate(faint) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 1))
        + chunk(b"IEND", b"")
    )


def recent_serial(today: date, unit: int = 153) -> str:
    """A serial made three months ago and in no registry: in warranty by its production date (W3) for years."""
    month = today.month - 3
    year = today.year + (month - 1) // 12
    month = (month - 1) % 12 + 1
    return f"CSP{year % 100:02d}{month:02d}A{unit:04d}"


class PageProblems:
    """Collects what must never happen on our pages: script errors, CSP violations, dialogs (alert)."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def _console(self, message: Any) -> None:
        # Chromium logs every 4xx/5xx answer ("Failed to load resource"); the desk expects 401s, so skip those.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.items.append(f"console {message.type}: {message.text}")

    def watch(self, page: Any) -> Any:
        page.on("pageerror", lambda error: self.items.append(f"page error: {error}"))
        page.on("console", self._console)

        def dialog(d: Any) -> None:
            self.items.append(f"dialog {d.type}: {d.message}")
            d.dismiss()

        page.on("dialog", dialog)
        return page


def shots() -> Path:
    """The folder the browser tests write their screenshots to (printed: `pytest -s` shows it)."""
    folder = SCREENSHOTS / "warranty-bot-screens"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder
