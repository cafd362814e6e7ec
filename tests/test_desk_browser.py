"""The engineers' desk page in headless Chromium, at desktop and phone size, against the real server on a SQLite
file: the unread signal, the list's outcome, activity, search and filters, canned replies, actions a closed case
cannot take, the address's #case, screen-reader structure, no sideways scrolling, axe-core, and the engineer's
typing shown in the customer's web chat."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.app import Bot, build
from bot.messages import InboundMessage
from bot.registry import import_registry
from bot.server import create_app
from bot.store.clock import utcnow
from tests.browser_support import (
    DESKTOP,
    NO_SIDEWAYS_SCROLL,
    PHONE,
    WAIT_MS,
    PageProblems,
    noisy_png,
    recent_serial,
    serious_violations,
    settings_for,
    shots,
)
from tests.fakes.server import serve
from tests.support import wait_until

pytestmark = pytest.mark.browser

TOKEN = "desk-token-for-the-desk-browser-test"
SIZES = {"desktop": DESKTOP, "phone": PHONE}
# A browser Notification stand-in that records what the page shows, and a page that can be "in the
# background": Chromium's headless tabs are always visible and never show notifications.
BROWSER_SEAMS = """
  window.__notifications = [];
  window.Notification = class {
    constructor(title, options) { window.__notifications.push({ title, body: (options || {}).body || "" }); }
    static get permission() { return "granted"; }
    static requestPermission() { return Promise.resolve("granted"); }
  };
  window.__hidden = false;
  Object.defineProperty(Document.prototype, "hidden", { get() { return window.__hidden; }, configurable: true });
"""
# Which elements are live regions (announced by screen readers as they change).
LIVE_REGIONS = """() => Array.from(document.querySelectorAll(
  '[aria-live], [role=log], [role=status], [role=alert], [role=marquee], [role=timer]'))
  .filter((e) => e.getAttribute('aria-live') !== 'off').map((e) => e.id)"""
_numbers = itertools.count(1)


@dataclass
class Customers:
    """Customers writing on two channels while the server runs: a phone chat (channel "test") and the web chat."""

    bot: Bot
    base: str
    web_session: str = ""

    def phone(self, text: str) -> None:
        self.bot.engine.accept(
            InboundMessage(
                channel="test",
                external_id=f"p{next(_numbers)}",
                sender_id="+34600111222",
                chat_id="+34600111222",
                text=text,
                received_at=utcnow(),
                sender_name="Ana Souza",
            )
        )
        self.bot.engine.inbox_signal.set()

    def web(self, text: str) -> None:
        if not self.web_session:
            created = httpx.post(f"{self.base}/api/webchat/sessions", json={"language": "es"}, timeout=10)
            self.web_session = created.json()["session_id"]
        sent = httpx.post(
            f"{self.base}/api/webchat/sessions/{self.web_session}/messages", json={"text": text}, timeout=10
        )
        assert sent.status_code == 202, sent.text

    def web_file(self, name: str, data: bytes, mime: str) -> None:
        sent = httpx.post(
            f"{self.base}/api/webchat/sessions/{self.web_session}/files",
            files={"file": (name, data, mime)},
            timeout=10,
        )
        assert sent.status_code == 202, sent.text


def _case_of(bot: Bot, channel: str) -> str:
    return str(
        wait_until(
            lambda: next((c["ref"] for c in bot.desk.list_cases(channel=channel)), None),
            what=f"a case on {channel}",
        )
    )


@pytest.fixture
def desk_server(tmp_path: Path) -> Iterator[tuple[Bot, str]]:
    """The server, with a registry that knows the first customer's unit (its order and company)."""
    bot = build(settings_for(tmp_path, desk_token=TOKEN))
    registry = tmp_path / "registry.csv"
    registry.write_text(
        "order_id,customer,serial,serial_to,production_date,port_arrival_date,cargo_compensation,"
        "order_pieces,order_total,currency\n"
        f"PO-7781,Sol Energia Ltda,{recent_serial(date.today())},,,,false,10,25000.00,USD\n",
        encoding="utf-8",
    )
    import_registry(bot.db, registry, policy=bot.policy)
    with serve(create_app(bot)) as base:
        yield bot, base


def _sign_in(context: Any, base: str, problems: PageProblems, fragment: str = "") -> Any:
    page = problems.watch(context.new_page())
    page.goto(f"{base}/desk{fragment}")
    page.get_by_label("Desk token").fill(TOKEN)
    page.get_by_label("Your name").fill("Amira")
    page.get_by_role("button", name="Open the desk").click()
    return page


def _row(page: Any, ref: str) -> Any:
    return page.locator("#case-list li", has=page.locator(f'button[data-ref="{ref}"]'))


def _back_to_list(page: Any, phone: bool) -> None:
    if phone:
        page.get_by_role("button", name="← Cases").click()


@pytest.mark.parametrize("size", SIZES)
def test_the_desk_says_a_customer_wrote_until_an_engineer_opens_the_case(
    browser: Any, axe_source: str, desk_server: tuple[Bot, str], size: str
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    bot, base = desk_server
    phone = size == "phone"
    folder = shots()
    customers = Customers(bot, base)
    customers.phone(f"{recent_serial(date.today())} display shows E07 and shuts down under load")
    customers.phone("proof:none")
    customers.phone("cause:normal")
    first = _case_of(bot, "test")
    customers.web(f"{recent_serial(date.today(), 8642)} el ventilador hace mucho ruido y se apaga")
    customers.web("proof:none")
    customers.web("cause:normal")
    second = _case_of(bot, "webchat")
    problems = PageProblems()
    context = browser.new_context(viewport=SIZES[size], locale="en-US", is_mobile=phone, has_touch=phone)
    context.add_init_script(BROWSER_SEAMS)
    page = _sign_in(context, base, problems)

    # Two new cases: each has a badge, the tab's title counts them; the newest activity is on top.
    expect(page.locator("#case-list li")).to_have_count(2)
    expect(page).to_have_title("(2) Warranty desk")
    expect(page.locator("#case-list li").first).to_have_attribute("data-key", second)
    expect(_row(page, first).locator(".unread")).to_have_text(re.compile(r"^\d+ new$"))
    expect(_row(page, first)).to_contain_text("Covered")  # the outcome
    expect(_row(page, first)).to_contain_text("Ana Souza")
    expect(_row(page, first).locator(".last")).to_contain_text("Bot:")  # the last activity
    expect(_row(page, first).locator(".when")).to_contain_text("Last activity")
    page.screenshot(path=str(folder / f"desk-unread-{size}.png"), full_page=True)

    # Opening a case clears its badge, for the whole desk; the title counts what is left.
    page.locator(f'button[data-ref="{first}"]').click()
    expect(page.locator("#case-title")).to_have_text(first)
    _back_to_list(page, phone)
    expect(_row(page, first).locator(".unread")).to_be_hidden()
    expect(page).to_have_title("(1) Warranty desk")
    assert bot.desk.list_cases(channel="test")[0]["unread"] == 0
    page.locator(f'button[data-ref="{second}"]').click()
    expect(page.locator("#case-title")).to_have_text(second)
    expect(page).to_have_title("Warranty desk")
    _back_to_list(page, phone)
    expect(page.locator("#case-list .unread:visible")).to_have_count(0)

    # The list is updated in place: the rows are the same elements after a refresh and a move.
    page.evaluate("() => document.querySelectorAll('#case-list li').forEach((li) => { li.__kept = true; })")
    updated = page.locator(f'button[data-ref="{first}"] .when').get_attribute("datetime")
    customers.phone("It failed again this morning, the same E07")
    expect(page.locator("#case-list li").first).to_have_attribute("data-key", first)  # moved up
    expect(_row(page, first).locator(".unread")).to_have_text("1 new")
    expect(page).to_have_title("(1) Warranty desk")
    assert page.locator(f'button[data-ref="{first}"] .when').get_attribute("datetime") != updated
    assert page.evaluate(
        "() => Array.from(document.querySelectorAll('#case-list li')).every((li) => li.__kept)"
    )
    # Said once, politely: the only live regions are the page's notice, the announcer and the action result.
    expect(page.locator("#announcer")).to_contain_text(f"New message from the customer on {first}")
    expect(page.locator("#announcer")).to_contain_text("It failed again this morning")
    assert sorted(page.evaluate(LIVE_REGIONS)) == ["action-result", "announcer", "notice"]
    page.screenshot(path=str(folder / f"desk-new-message-{size}.png"), full_page=True)

    # The open case's thread appends the new message and keeps the rest; a tab in the background does not mark
    # it seen, and the browser notification tells the engineer.
    page.locator(f'button[data-ref="{second}"]').click()
    expect(page.locator("#case-title")).to_have_text(second)
    thread = page.locator("#thread li")
    expect(thread.first).to_be_visible()  # the thread is drawn after the title: count it once it is there
    shown = thread.count()
    page.evaluate("() => document.querySelectorAll('#thread li').forEach((li) => { li.__kept = true; })")
    page.evaluate("() => { window.__hidden = true; document.dispatchEvent(new Event('visibilitychange')); }")
    customers.web("¿Hay novedades? Sigue fallando")
    expect(page.locator("#thread li.from-customer", has_text="Sigue fallando")).to_have_count(1)
    assert thread.count() > shown
    assert (
        page.evaluate(
            "() => Array.from(document.querySelectorAll('#thread li')).filter((li) => li.__kept).length"
        )
        == shown
    )
    expect(page).to_have_title("(2) Warranty desk")
    page.wait_for_function("(ref) => window.__notifications.some((n) => n.title.includes(ref))", arg=second)
    notes = page.evaluate("() => window.__notifications")
    assert any(second in n["title"] and "Sigue fallando" in n["body"] for n in notes), notes
    expect(page.locator("#announcer")).to_contain_text("Sigue fallando")
    # Back in view: the shown messages are marked seen.
    page.evaluate("() => { window.__hidden = false; document.dispatchEvent(new Event('visibilitychange')); }")
    expect(page).to_have_title("(1) Warranty desk")

    # Changing #case in the address of the open tab opens that case.
    page.evaluate(f"() => {{ location.hash = '#{first}'; }}")
    expect(page.locator("#case-title")).to_have_text(first)
    expect(page.locator("#thread li.from-customer", has_text="It failed again")).to_have_count(1)
    expect(page).to_have_title("Warranty desk")
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    assert serious_violations(page, axe_source) == []
    page.screenshot(path=str(folder / f"desk-case-{size}.png"), full_page=True)
    context.close()
    assert problems.items == []


@pytest.mark.parametrize("size", SIZES)
def test_the_desk_finds_filters_offers_canned_replies_and_keeps_closed_cases_quiet(
    browser: Any, axe_source: str, desk_server: tuple[Bot, str], size: str
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    bot, base = desk_server
    phone = size == "phone"
    folder = shots()
    serial = recent_serial(date.today())
    customers = Customers(bot, base)
    for text in (f"{serial} display shows E07 and shuts down under load", "proof:none", "cause:normal"):
        customers.phone(text)
    first = _case_of(bot, "test")
    for text in (
        f"{recent_serial(date.today(), 8642)} el ventilador hace mucho ruido y se apaga",
        "proof:none",
        "cause:normal",
    ):
        customers.web(text)
    second = _case_of(bot, "webchat")
    # A photo with a long name, as phones name them: its card must stay inside the panel on a phone.
    long_name = "IMG_20261201_093412_inverter_rating_label_and_display_E07_fault_" + "x" * 40 + ".png"
    customers.web_file(long_name, noisy_png(64, 48), "image/png")
    wait_until(lambda: bot.desk.get_case(second)["attachments"], what="the photo on the case")

    problems = PageProblems()
    context = browser.new_context(viewport=SIZES[size], locale="en-US", is_mobile=phone, has_touch=phone)
    page = _sign_in(context, base, problems)
    cases = page.locator("#case-list li")
    expect(cases).to_have_count(2)

    # Search runs on the server over what engineers know of a case.
    search = page.get_by_label("Search")
    for query, expected in (
        ("po-7781", first),  # order number
        ("sol energia", first),  # the registry's company
        ("ana sou", first),  # customer's name
        ("600111", first),  # contact
        (first.lower(), first),  # reference
        (serial[-7:], first),  # serial
        ("VENTILADOR", second),  # fault text
    ):
        search.fill(query)
        expect(cases).to_have_count(1)
        expect(cases.first).to_have_attribute("data-key", expected)
    search.fill("nothing like this")
    expect(page.locator("#cases-empty")).to_be_visible()
    search.fill("")
    expect(cases).to_have_count(2)

    # Filters: by channel, and by assignee once a case is claimed.
    page.get_by_label("Channel").select_option("webchat")
    expect(cases).to_have_count(1)
    expect(cases.first).to_have_attribute("data-key", second)
    page.get_by_label("Channel").select_option("")
    page.locator(f'button[data-ref="{first}"]').click()
    page.get_by_role("button", name="Claim", exact=True).click()
    expect(page.locator("#action-result")).to_have_text("Case claimed.")
    _back_to_list(page, phone)
    page.get_by_label("Assignee").select_option("Amira")
    expect(cases).to_have_count(1)
    expect(cases.first).to_have_attribute("data-key", first)
    expect(cases.first).to_contain_text("claimed by Amira")
    page.get_by_label("Assignee").select_option("~unassigned")
    expect(cases).to_have_count(1)
    expect(cases.first).to_have_attribute("data-key", second)
    page.get_by_label("Status").select_option("claimed")
    expect(cases).to_have_count(0)
    page.get_by_label("Status").select_option("")
    page.get_by_label("Assignee").select_option("")
    expect(cases).to_have_count(2)

    # Canned replies come in the case's language: the web chat case is in Spanish.
    page.locator(f'button[data-ref="{second}"]').click()
    expect(page.locator("#case-title")).to_have_text(second)
    canned = page.get_by_label("Canned reply")
    expect(canned.locator("option")).to_have_count(4)
    canned.select_option(label="Ask for photos of the label and the fault")
    expect(page.get_by_label("Message")).to_have_value(re.compile(r"^¿Podría enviarnos fotos nítidas"))
    expect(canned).to_have_value("")
    expect(page.get_by_label("Message")).to_be_focused()
    page.get_by_role("button", name="Send reply to customer").click()
    expect(page.locator("#thread li.from-engineer", has_text="Podría enviarnos fotos")).to_have_count(1)
    # The factory address, filled in with the case's reference.
    canned.select_option("factory_address")
    expect(page.get_by_label("Message")).to_have_value(re.compile(rf"referencia del caso {second}"))
    page.get_by_label("Message").fill("")

    # The attachment card wraps inside the panel; nothing on the page scrolls sideways.
    card = page.locator("#attachments button").first
    expect(card).to_be_visible()
    panel = page.locator("#case").bounding_box()
    box = card.bounding_box()
    assert (
        panel is not None and box is not None and box["x"] + box["width"] <= panel["x"] + panel["width"] + 1
    )
    assert page.evaluate(NO_SIDEWAYS_SCROLL), page.evaluate("document.scrollingElement.scrollWidth")
    assert serious_violations(page, axe_source) == []
    page.screenshot(path=str(folder / f"desk-canned-{size}.png"), full_page=True)

    # A closed case: what cannot work is off, and says why; the server refuses it too, with a clear message.
    page.get_by_role("button", name="Close case").click()
    page.get_by_role("button", name="Click again to close").click()
    expect(page.locator("#case-status")).to_have_text("Closed")
    for name in ("Ask the customer (waits for the answer)", "Send reply to customer", "Claim", "Close case"):
        expect(page.get_by_role("button", name=name, exact=True)).to_be_disabled()
    expect(canned).to_be_disabled()
    expect(page.get_by_role("button", name="Add internal note")).to_be_enabled()
    expect(page.locator("#closed-hint")).to_be_visible()
    answer = page.evaluate(
        """async ([ref, token]) => {
          const response = await fetch(`/api/desk/cases/${ref}/ask`, { method: "POST",
            headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
            body: JSON.stringify({ question: "A photo?" }) });
          return { status: response.status, body: await response.json() };
        }""",
        [second, TOKEN],
    )
    assert answer["status"] == 409 and "is closed" in answer["body"]["error"], answer
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    assert serious_violations(page, axe_source) == []
    page.screenshot(path=str(folder / f"desk-closed-{size}.png"), full_page=True)
    context.close()
    assert problems.items == []


def test_the_web_chat_shows_the_engineer_typing_until_the_reply_arrives(
    browser: Any, desk_server: tuple[Bot, str]
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    bot, base = desk_server
    folder = shots()
    problems = PageProblems()
    customer = browser.new_context(viewport=PHONE, locale="en-US", is_mobile=True, has_touch=True)
    chat = problems.watch(customer.new_page())
    chat.goto(f"{base}/")
    log = chat.locator("#log")
    chat.get_by_label("Your message").fill(
        f"{recent_serial(date.today(), 8642)} display shows E07 and shuts down"
    )
    chat.get_by_label("Your message").press("Enter")
    chat.locator(".choices button", has_text="I don't have them").click()
    chat.locator(".choices button", has_text="It failed in normal use").click()
    ref = _case_of(bot, "webchat")
    expect(log.locator(".msg-bot", has_text=ref).first).to_be_visible()
    typing = chat.locator("#typing")
    expect(typing).to_be_hidden()

    engineer = browser.new_context(viewport=DESKTOP, locale="en-US")
    desk = _sign_in(engineer, base, problems, f"#{ref}")
    expect(desk.locator("#case-title")).to_have_text(ref)
    reply = desk.get_by_label("Message")

    # The engineer writes: the customer sees who, by first name; with nothing more typed, it goes by itself.
    reply.press_sequentially("Hello, we are checking")
    expect(typing).to_be_visible()
    expect(typing).to_have_text(re.compile(r"^\s*\u2068Amira\u2069 is typing…\s*$"))
    chat.screenshot(path=str(folder / "chat-engineer-typing-phone.png"))
    expect(typing).to_be_hidden(timeout=20_000)

    # Writing again shows it again, in the language the customer picks; the reply replaces it in the same poll.
    reply.press_sequentially(" the log of your unit now.")
    expect(typing).to_be_visible()
    chat.get_by_label("Language").select_option("ar")
    expect(typing).to_have_text(re.compile(r"^\s*\u2068Amira\u2069 يكتب…\s*$"))
    desk.get_by_role("button", name="Send reply to customer").click()
    answer = log.locator(".msg-engineer", has_text="Hello, we are checking the log of your unit now")
    expect(answer).to_have_count(1)
    expect(typing).to_be_hidden()
    assert not chat.evaluate("() => !document.getElementById('typing').hidden")
    customer.close()
    engineer.close()
    assert problems.items == []
