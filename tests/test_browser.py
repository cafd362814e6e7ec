"""The web chat and the local desk driven in headless Chromium against the real server on a SQLite file."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from bot.app import build
from bot.server import create_app
from tests.browser_support import SCREENSHOTS, WAIT_MS, PageProblems
from tests.browser_support import noisy_png as _noisy_png
from tests.browser_support import recent_serial as _recent_serial
from tests.browser_support import serious_violations as _serious_violations
from tests.browser_support import settings_for as _settings
from tests.browser_support import shots as _shots
from tests.fakes.server import serve

pytestmark = pytest.mark.browser

DESK_TOKEN = "desk-token-for-the-browser-test"
XSS = "<script>alert(1)</script> {{ 7*7 }}"
ARABIC = "مرحبا، سنرسل لك قطعة الغيار غدا."
# The smallest well-formed PDF: one empty page.
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


def test_customer_and_engineer_talk_through_the_web_pages(
    browser: Any, axe_source: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    bot = build(_settings(tmp_path, desk_token=DESK_TOKEN))
    serial = _recent_serial(date.today())
    problems = PageProblems()
    with serve(create_app(bot)) as base:
        phone = browser.new_context(
            viewport={"width": 390, "height": 844},
            device_scale_factor=2,
            is_mobile=True,
            has_touch=True,
            locale="en-US",
        )
        chat = problems.watch(phone.new_page())
        response = chat.goto(f"{base}/")
        assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
        log = chat.locator("#log")
        expect(chat.get_by_label("Your message")).to_be_visible()
        expect(log).to_have_attribute("aria-live", "polite")

        # Serial and fault in one message; the bot asks for proof, then for the cause, with buttons.
        chat.get_by_label("Your message").fill(f"{serial} display shows E07 and shuts down under load")
        chat.get_by_label("Your message").press("Enter")
        chat.locator(".choices button", has_text="I don't have them").click()
        # The button's label shows as the customer's message; the server got (and logged) its value.
        expect(log.locator(".msg-customer[data-id]", has_text="I don't have them")).to_have_count(1)
        chat.locator(".choices button", has_text="It failed in normal use").click()
        opened = log.locator(".msg-bot", has_text=re.compile(r"WR-\d{4}-\d{6}"))
        expect(opened).to_have_count(1)
        found = re.search(r"WR-\d{4}-\d{6}", opened.inner_text())
        assert found is not None
        ref = found.group(0)
        expect(log.locator(".msg-bot", has_text=serial).last).to_contain_text("Covered")
        expect(chat.locator(".choices button", has_text="I don't have them")).to_be_disabled()

        chat.set_input_files(
            "#file", files=[{"name": "invoice.pdf", "mimeType": "application/pdf", "buffer": PDF}]
        )
        expect(log.locator(".msg-customer[data-id]", has_text="invoice.pdf")).to_have_count(1)

        # A phone photo above the server's request limit is shrunk by the page before it is sent.
        photo = _noisy_png(1800, 1350)
        assert len(photo) > bot.settings.max_body_bytes
        chat.set_input_files("#file", files=[{"name": "label.png", "mimeType": "image/png", "buffer": photo}])
        expect(log.locator(".msg-customer[data-id]", has_text="label.jpg")).to_have_count(1)

        # Shift+Enter starts a new line; Enter sends.
        box = chat.get_by_label("Your message")
        box.press_sequentially("The invoice")
        box.press("Shift+Enter")
        box.press_sequentially("is attached")
        box.press("Enter")
        expect(log.locator(".msg-customer[data-id] .text").last).to_have_text("The invoice\nis attached")
        expect(box).to_have_value("")

        # Customer text is data: markup and template syntax show literally, nothing runs or evaluates.
        chat.get_by_label("Your message").fill(XSS)
        chat.get_by_label("Your message").press("Enter")
        expect(log.locator(".msg-customer[data-id] .text").last).to_have_text(XSS)
        assert log.locator("script").count() == 0

        # A reload resumes the same conversation from the server, button labels included.
        chat.reload()
        expect(log.locator(".msg-customer .text").last).to_have_text(XSS)
        expect(log.locator(".msg-customer", has_text="I don't have them")).to_have_count(1)
        expect(log.locator(".msg-customer", has_text="proof:none")).to_have_count(0)
        expect(log.locator(".msg-bot", has_text=ref).first).to_be_visible()
        assert "49" not in log.locator(".msg-customer").all_inner_texts()[-1]

        # The engineer: a wrong token is refused with the API's message, then the right one opens the desk.
        office = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
        desk = problems.watch(office.new_page())
        desk.goto(f"{base}/desk")
        desk.get_by_label("Desk token").fill("wrong")
        desk.get_by_label("Your name").fill("Amira")
        desk.get_by_role("button", name="Open the desk").click()
        expect(desk.locator("#notice")).to_contain_text("not accepted")
        desk.get_by_label("Desk token").fill(DESK_TOKEN)
        desk.get_by_role("button", name="Open the desk").click()
        desk.locator("#case-list button", has_text=ref).click()
        expect(desk.locator("#case-title")).to_have_text(ref)
        expect(desk.locator("#units tbody tr")).to_have_count(1)
        expect(desk.locator("#units tbody tr")).to_contain_text(serial)
        expect(desk.locator("#units tbody tr")).to_contain_text("W3")
        expect(desk.locator("#case-fault")).to_contain_text("E07")
        expect(desk.locator("#thread li.from-customer .text", has_text="alert(1)")).to_have_text(XSS)

        expect(desk.locator("#attachments button", has_text="label.jpg")).to_contain_text("image/jpeg")
        expect(desk.locator("#attachments button", has_text="label.jpg").locator("img")).to_have_attribute(
            "src", re.compile(r"^blob:")
        )

        # Attachments need the token: the page fetches them and opens them as blob: URLs.
        with office.expect_page() as opened_file:
            desk.locator("#attachments button", has_text="invoice.pdf").click()
        assert opened_file.value.url.startswith("blob:")
        opened_file.value.close()

        # A search by serial finds the case; a filter on another status hides it.
        desk.get_by_label("Search").fill(serial[-6:])
        expect(desk.locator("#case-list button", has_text=ref)).to_have_count(1)
        desk.get_by_label("Status").select_option("closed")
        expect(desk.locator("#case-list button")).to_have_count(0)
        desk.get_by_label("Status").select_option("")
        desk.get_by_label("Search").fill("")

        desk.get_by_label("Message").fill("Checked the invoice: consistent.")
        desk.get_by_role("button", name="Add internal note").click()
        expect(desk.locator("#thread li.from-note")).to_contain_text("Internal note by Amira")
        desk.get_by_label("Message").fill(ARABIC)
        desk.get_by_role("button", name="Send reply to customer").click()
        expect(desk.locator("#thread li.from-engineer .text").last).to_contain_text(ARABIC)

        # The reply reaches the open chat page without a reload, right-to-left, with the engineer's name.
        engineer_bubble = log.locator(".msg-engineer", has_text=ARABIC)
        expect(engineer_bubble.locator(".who")).to_have_text("Amira")
        assert engineer_bubble.locator(".text").evaluate("e => getComputedStyle(e).direction") == "rtl"
        assert (
            log.locator(".msg-customer .text").first.evaluate("e => getComputedStyle(e).direction") == "ltr"
        )

        desk.get_by_label("Service method").select_option("remote_guidance")
        desk.get_by_role("button", name="Set method").click()
        expect(desk.locator("#case-status")).to_have_text("In service")
        expect(log.locator(".msg-bot", has_text="remote guidance")).to_have_count(1)
        # The internal note was written before the method message that is now shown: it never reached the chat.
        expect(log.locator(".msg", has_text="Checked the invoice")).to_have_count(0)
        # The method's steps (issue 19): guidance recorded on the desk reaches the chat; the step shows.
        expect(desk.locator("#service")).to_be_visible()
        desk.get_by_label("Next step").select_option("guide")
        desk.locator("#fulfil-text").fill("Open the cover and replace the fuse F2.")
        desk.get_by_role("button", name="Record step").click()
        expect(log.locator(".msg-bot", has_text="replace the fuse F2")).to_have_count(1)
        expect(desk.locator("#service-meta")).to_contain_text("Guided repair")

        desk.get_by_role("button", name="Close case").click()
        desk.get_by_role("button", name="Click again to close").click()
        expect(desk.locator("#case-status")).to_have_text("Closed")
        expect(desk.get_by_role("button", name="Send reply to customer")).to_be_disabled()
        expect(log.locator(".msg-bot", has_text="closed")).to_have_count(1)
        expect(log.locator(".choices button").last).to_have_text("5")
        chat.screenshot(path=str(SCREENSHOTS / "webchat-phone.png"))
        desk.screenshot(path=str(SCREENSHOTS / "desk.png"), full_page=True)
        # On a phone the desk's attachment cards (thumbnail, name, type) stay inside the panel.
        desk.set_viewport_size({"width": 390, "height": 844})
        expect(desk.locator("#attachments button", has_text="label.jpg")).to_be_visible()
        desk.screenshot(path=str(SCREENSHOTS / "desk-phone.png"), full_page=True)
        assert desk.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        overflowing = desk.evaluate("""() => Array.from(document.querySelectorAll('#attachments button'))
          .filter((b) => b.getBoundingClientRect().right > document.getElementById('attachments').getBoundingClientRect().right + 1)
          .map((b) => b.textContent)""")
        assert overflowing == []
        desk.set_viewport_size({"width": 1280, "height": 900})
        assert _serious_violations(desk, axe_source) == []
        # Nothing is wider than the phone's screen.
        assert chat.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

        # "New conversation" forgets the session: an empty log, and the next message starts afresh.
        chat.get_by_role("link", name="New conversation").click()
        expect(log.locator(".msg")).to_have_count(0)
        assert chat.evaluate("localStorage.length") == 0
        box.fill("hello")
        box.press("Enter")
        expect(log.locator(".msg-bot")).not_to_have_count(0)
        expect(log.locator(".msg", has_text=ref)).to_have_count(0)

        office.close()
        phone.close()
    assert problems.items == []


def test_desk_page_says_when_the_desk_is_off(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    bot = build(_settings(tmp_path))
    problems = PageProblems()
    with serve(create_app(bot)) as base:
        context = browser.new_context(locale="en-US")
        page = context.new_page()
        page.on("pageerror", lambda error: problems.items.append(f"page error: {error}"))
        page.goto(f"{base}/desk")
        expect(page.locator("#notice")).to_contain_text("DESK_TOKEN", timeout=WAIT_MS)
        expect(page.locator("#login")).to_be_hidden()
        context.close()
    assert problems.items == []


def test_desk_page_confirms_corrects_and_keeps_methods_to_the_decision(browser: Any, tmp_path: Path) -> None:
    """A refusal of every unit is on the desk to confirm; a method outside the decision needs goodwill or
    chargeable; a corrected port-arrival date decides the unit again, and then the warranty's methods apply."""
    from playwright.sync_api import expect

    from bot.messages import InboundMessage
    from bot.store.clock import utcnow

    expect.set_options(timeout=WAIT_MS)
    bot = build(_settings(tmp_path, desk_token=DESK_TOKEN))
    # Made January 2020, in no registry, no proof: by its serial the warranty ended in 2022 (X1, X2).
    for number, text in enumerate(
        ("CSP2001A0001 display shows E07 and shuts down", "proof:none", "cause:normal", "cmd:human")
    ):
        bot.engine.accept(
            InboundMessage(
                channel="test",
                external_id=f"m{number}",
                sender_id="c1",
                chat_id="c1",
                text=text,
                received_at=utcnow(),
                sender_name="Ana",
            )
        )
    bot.engine.process_pending()
    ref = bot.desk.list_cases()[0]["ref"]
    arrival = date.fromordinal(date.today().toordinal() - 100).isoformat()
    problems = PageProblems()
    with serve(create_app(bot)) as base:
        context = browser.new_context(locale="en-US")
        desk = problems.watch(context.new_page())
        desk.goto(f"{base}/desk")
        desk.get_by_label("Desk token").fill(DESK_TOKEN)
        desk.get_by_label("Your name").fill("Amira")
        desk.get_by_role("button", name="Open the desk").click()
        desk.locator("#case-list button", has_text=ref).click()
        expect(desk.locator("#case-status")).to_have_text("Refusal to confirm")
        # No method the decision does not allow is preselected: the choice starts at the refusal.
        expect(desk.get_by_label("Service method")).to_have_value("not_covered")
        expect(desk.locator("#reasons")).to_contain_text("The policy allows no service method")

        desk.get_by_label("Service method").select_option("remote_guidance")
        expect(desk.locator("#goodwill-row")).to_be_visible()
        desk.get_by_role("button", name="Set method").click()
        expect(desk.locator("#action-result")).to_contain_text("choose goodwill or chargeable")
        expect(desk.locator("#case-status")).to_have_text("Refusal to confirm")

        # The customer's bill of lading gives the port arrival: corrected, the unit is decided again.
        desk.locator("#correct summary").click()
        desk.get_by_label("Port arrival date (from the customer's documents)").fill(arrival)
        desk.get_by_label("Proof of purchase").select_option("documents")
        desk.get_by_label("Why (kept in the history)").fill("Read from the bill of lading.")
        desk.get_by_role("button", name="Correct and decide again").click()
        expect(desk.locator("#units tbody tr")).to_contain_text("Covered")
        expect(desk.locator("#units tbody tr")).to_contain_text("W2")
        expect(desk.locator("#case-status")).to_have_text("Open")
        expect(desk.locator("#audit")).to_contain_text("unit_corrected")

        desk.get_by_label("Service method").select_option("remote_guidance")
        expect(desk.locator("#goodwill-row")).to_be_hidden()
        desk.get_by_role("button", name="Set method").click()
        expect(desk.locator("#case-status")).to_have_text("In service")
        context.close()
    assert problems.items == []


def _luminance(css: str) -> float:
    channels = [int(v) / 255 for v in re.findall(r"[\d.]+", css)[:3]]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(foreground: str, background: str) -> float:
    """WCAG contrast ratio of two opaque `rgb(...)` colours."""
    light, dark = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


LAST_MESSAGE_IN_VIEW = """() => {
  const main = document.getElementById("main"), items = document.querySelectorAll("#log .msg");
  if (!items.length) return false;
  const last = items[items.length - 1].getBoundingClientRect(), box = main.getBoundingClientRect();
  return last.bottom <= box.bottom + 1 && main.scrollHeight - main.scrollTop - main.clientHeight < 2;
}"""


def test_web_chat_follows_the_customer(browser: Any, axe_source: str, tmp_path: Path) -> None:
    """Scroll after upload, queue and resend while the server is away, focus after a button, group names,
    typing dots, long messages, page language and picker, bidi isolation, two tabs, no sideways scroll."""
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    bot = build(_settings(tmp_path, max_text_chars=25_000))
    serial = _recent_serial(date.today())
    problems = PageProblems()
    shots = _shots()
    with serve(create_app(bot)) as base:
        phone = browser.new_context(
            viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, locale="en-US"
        )
        chat = problems.watch(phone.new_page())
        chat.goto(f"{base}/")
        log = chat.locator("#log")
        box = chat.get_by_label("Your message")
        box.fill(f"{serial} display shows E07 and shuts down under load")
        box.press("Enter")

        # Buttons come in a named group; choosing one with the keyboard leaves the focus in the text box.
        expect(chat.get_by_role("group", name="Choose an answer").last).to_be_visible()
        chat.locator(".choices button", has_text="I don't have them").focus()
        chat.keyboard.press("Enter")
        expect(box).to_be_focused()
        chat.locator(".choices button", has_text="It failed in normal use").focus()
        chat.keyboard.press("Space")
        expect(box).to_be_focused()
        expect(log.locator(".msg-bot", has_text=re.compile(r"WR-\d{4}-\d{6}"))).to_have_count(1)

        # A photo: its preview and the bot's answer end inside the visible area.
        bots_before = log.locator(".msg-bot").count()
        chat.set_input_files(
            "#file", files=[{"name": "label.png", "mimeType": "image/png", "buffer": _noisy_png(600, 800)}]
        )
        expect(log.locator(".msg-customer[data-id]", has_text="label.png")).to_have_count(1)
        expect(log.locator(".msg-bot")).to_have_count(bots_before + 1)
        chat.wait_for_function(LAST_MESSAGE_IN_VIEW, timeout=WAIT_MS)
        assert chat.evaluate("getComputedStyle(document.getElementById('main')).overflowY") == "auto"
        chat.screenshot(path=str(shots / "webchat-after-photo.png"))

        # While the bot is answering, the typing dots show (the answers are held back to see them).
        answers = re.compile(r".*/messages\?after=.*")
        chat.route(answers, lambda route: route.abort())
        box.fill("Is a technician needed?")
        box.press("Enter")
        expect(log.locator(".msg-customer[data-id]", has_text="technician")).to_have_count(0)
        expect(chat.locator("#typing")).to_be_visible()
        chat.unroute(answers)
        expect(log.locator(".msg-customer[data-id]", has_text="technician")).to_have_count(1)
        sent_mark = "e => getComputedStyle(e, '::after').content"
        assert "✓" in log.locator(".msg-customer[data-id] time").last.evaluate(sent_mark)
        # The case acknowledged the photo; this message is added quietly, and the dots stop without an answer.
        expect(chat.locator("#typing")).to_be_hidden()
        expect(log.locator(".msg-bot", has_text="added this to case")).to_have_count(1)
        assert log.locator(".msg").last.evaluate("e => e.classList.contains('msg-customer')")

        # The server is away: the message waits, says so readably, and goes once the server is back.
        api = "**/api/webchat/**"
        chat.route(api, lambda route: route.abort())
        box.fill("Are you still there?")
        box.press("Enter")
        failed = log.locator(".msg-customer.failed", has_text="Are you still there?")
        expect(failed.locator(".state")).to_contain_text("Not sent.")
        state = failed.locator(".state span").first
        colour = state.evaluate("e => getComputedStyle(e).color")
        background = failed.evaluate("e => getComputedStyle(e).backgroundColor")
        assert _contrast(colour, background) >= 4.5, (colour, background)
        retry = failed.get_by_role("button", name="Retry")
        retry_box = retry.bounding_box()
        assert retry_box is not None and retry_box["height"] >= 44 and retry_box["width"] >= 44
        chat.screenshot(path=str(shots / "webchat-not-sent.png"))
        chat.unroute(api)
        expect(log.locator(".msg-customer[data-id]", has_text="Are you still there?")).to_have_count(1)
        expect(log.locator(".msg-customer.failed")).to_have_count(0)
        chat.reload()
        expect(log.locator(".msg-customer", has_text="Are you still there?")).to_have_count(1)  # stored once

        # A 20,000-character paste is shown collapsed, with "Show more".
        box.fill("The fault log follows. " + "E07 overcurrent at phase B; " * 720)
        box.press("Enter")
        long = log.locator(".msg-customer[data-id]", has_text="The fault log follows.")
        expect(long).to_have_count(1)
        height = long.bounding_box()
        assert height is not None and height["height"] < 600
        more = long.get_by_role("button", name="Show more")
        expect(more).to_have_attribute("aria-expanded", "false")
        more.click()
        expect(long.get_by_role("button", name="Show less")).to_have_attribute("aria-expanded", "true")
        opened = long.bounding_box()
        assert opened is not None and opened["height"] > 2000
        long.get_by_role("button", name="Show less").click()
        assert chat.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

        # Two tabs of one browser: when one starts a new conversation, the other follows it.
        other = problems.watch(phone.new_page())
        other.goto(f"{base}/")
        expect(other.locator("#log .msg-customer", has_text="Are you still there?")).to_have_count(1)
        chat.get_by_role("link", name="New conversation").click()
        expect(other.locator("#log .msg")).to_have_count(0)
        other.get_by_label("Your message").fill("Written in the second tab")
        other.get_by_label("Your message").press("Enter")
        expect(log.locator(".msg-customer[data-id]", has_text="Written in the second tab")).to_have_count(1)
        expect(log.locator(".msg", has_text="Are you still there?")).to_have_count(0)
        other.close()

        # The language picker: the page's own words and the conversation switch together.
        chat.get_by_label("Language").select_option("es")
        expect(chat.locator("#send")).to_have_text("Enviar")
        expect(chat.get_by_role("link", name="Nueva conversación")).to_be_visible()
        assert chat.title() == "Soporte de garantía"
        expect(log.locator(".msg-customer[data-id]", has_text="Español")).to_have_count(1)
        expect(log.locator(".msg-bot .who").last).to_have_text("Asistente de garantía")

        # Arabic: the page mirrors; serials and references are isolated, so they do not set a line's
        # direction; markup the customer types stays text.
        chat.get_by_label("Idioma").select_option("ar")
        expect(chat.locator("html")).to_have_attribute("dir", "rtl")
        expect(chat.locator("#send")).to_have_text("إرسال")
        written = f"{serial} الشاشة لا تعمل، المرجع WR-2026-000001 <b>2026-12-01</b>"
        chat.get_by_label("رسالتك").fill(written)
        chat.get_by_label("رسالتك").press("Enter")
        mine = log.locator(".msg-customer[data-id] .text").last
        expect(mine).to_have_text(written)
        assert mine.locator("b").count() == 0
        assert mine.locator("bdi").all_inner_texts() == [serial, "WR-2026-000001", "2026-12-01"]
        assert mine.evaluate("e => getComputedStyle(e).direction") == "rtl"
        assert mine.locator("bdi").first.evaluate("e => getComputedStyle(e).unicodeBidi") == "isolate"
        expect(log.locator(".msg-bot bdi", has_text=serial).last).to_be_visible()
        # The bot's Arabic line that names the serial reads right to left, the serial isolated inside it.
        named = log.locator(".msg-bot .text", has=chat.locator("bdi", has_text=serial)).last
        assert named.evaluate("e => getComputedStyle(e).direction") == "rtl"
        expect(chat.get_by_role("group", name="اختر إجابة")).not_to_have_count(0)
        chat.locator('.choices button[data-value="proof:none"]').last.click()
        chat.locator('.choices button[data-value="cause:normal"]').last.click()
        # The decision's line of a serial alone ("CSP…:") sits at the right of the bubble, as Arabic does.
        decision = log.locator(".msg-bot .text", has_text=re.compile(rf"{serial}\u2069?:")).last
        expect(decision).to_be_visible()
        edges = decision.evaluate("""e => {
          const alone = Array.from(e.querySelectorAll("bdi")).find((b) => (b.nextSibling || {}).textContent?.match(/^\u2069?:/));
          const box = e.getBoundingClientRect(), own = alone.getBoundingClientRect();
          return [box.right - own.right, own.left - box.left];
        }""")
        assert edges[0] < 20 < edges[1], edges
        expect(chat.get_by_role("group", name="اختر إجابة")).not_to_have_count(0)
        assert chat.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        chat.screenshot(path=str(shots / "webchat-phone-ar.png"))
        assert _serious_violations(chat, axe_source) == []
        phone.close()

        # A desktop window in Chinese, from the address.
        desktop = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
        page = problems.watch(desktop.new_page())
        page.goto(f"{base}/?lang=zh")
        expect(page.locator("#send")).to_have_text("发送")
        expect(page.get_by_label("语言")).to_have_value("zh")
        page.screenshot(path=str(shots / "webchat-desktop-zh.png"))
        assert _serious_violations(page, axe_source) == []
        desktop.close()
    assert problems.items == []


WATCH_FOR_TROUBLE = """
window.__trouble = [];
new MutationObserver(() => {
  const notice = document.getElementById("notice");
  if (document.querySelector("#log .msg.failed")) window.__trouble.push("a bubble said Not sent");
  if (notice && !notice.hidden && notice.textContent) window.__trouble.push("notice: " + notice.textContent);
}).observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
"""


def test_web_chat_waits_as_long_as_a_429_asks(browser: Any, tmp_path: Path) -> None:
    """The server's own rate limits, tight: a message refused with 429 is sent again once, after Retry-After,
    without "Not sent"; polls refused with 429 wait too, and never say the connection is lost."""
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    # Creating the session and the first message use up the writes; reads run out within a second of polls.
    bot = build(_settings(tmp_path, rate_limit_client="2/4 seconds", rate_limit_reads="3/2 seconds"))
    problems = PageProblems()
    statuses: list[tuple[str, int]] = []
    with serve(create_app(bot)) as base:
        context = browser.new_context(viewport={"width": 390, "height": 844}, locale="en-US")
        context.add_init_script(WATCH_FOR_TROUBLE)
        chat = problems.watch(context.new_page())
        chat.on("response", lambda r: statuses.append((f"{r.request.method} {r.url}", r.status)))
        # Chromium logs each 429 as "Failed to load resource"; PageProblems leaves those out.
        chat.goto(f"{base}/")
        log = chat.locator("#log")
        box = chat.get_by_label("Your message")
        box.fill("hello")
        box.press("Enter")
        expect(log.locator(".msg-customer[data-id]", has_text="hello")).to_have_count(1)
        box.fill("CSP2001A0001 the display shows E07")
        box.press("Enter")
        mine = log.locator(".msg-customer", has_text="CSP2001A0001")
        expect(mine.locator(".state")).to_have_text("Sending…")  # waiting as asked: nothing is wrong
        expect(log.locator(".msg-customer[data-id]", has_text="CSP2001A0001")).to_have_count(1)
        expect(log.locator(".msg-bot", has_text="CSP2001A0001")).not_to_have_count(0)
        posts = [
            status for what, status in statuses if what.startswith("POST") and what.endswith("/messages")
        ]
        assert posts == [202, 429, 202], posts  # one refusal, then one resend after Retry-After
        reads = [status for what, status in statuses if what.startswith("GET") and "/messages?after=" in what]
        assert 429 in reads  # the polls did meet the limit...
        assert chat.evaluate("window.__trouble") == []  # ...and the page never called it a lost connection
        chat.reload()
        expect(log.locator(".msg-customer", has_text="CSP2001A0001")).to_have_count(1)  # stored once
        context.close()
    assert problems.items == []


def test_a_guidance_file_from_the_desk_page_reaches_the_web_chat(browser: Any, tmp_path: Path) -> None:
    """M2 (issue 19): the engineer attaches a PDF to a guidance step on the desk page; the customer's web chat
    shows it under the instructions as a download link of their own chat, which returns the file."""
    import httpx
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    bot = build(_settings(tmp_path, desk_token=DESK_TOKEN))
    serial = _recent_serial(date.today())
    problems = PageProblems()
    with serve(create_app(bot)) as base:
        chat = problems.watch(browser.new_context(locale="en-US").new_page())
        chat.goto(f"{base}/")
        log = chat.locator("#log")
        chat.get_by_label("Your message").fill(f"{serial} display shows E07 and shuts down")
        chat.get_by_label("Your message").press("Enter")
        chat.locator(".choices button", has_text="I don't have them").click()
        chat.locator(".choices button", has_text="It failed in normal use").click()
        opened = log.locator(".msg-bot", has_text=re.compile(r"WR-\d{4}-\d{6}"))
        expect(opened).to_have_count(1)
        found = re.search(r"WR-\d{4}-\d{6}", opened.inner_text())
        assert found is not None
        ref = found.group(0)
        auth = {"Authorization": f"Bearer {DESK_TOKEN}", "X-Engineer": "Amira"}
        chosen = httpx.post(
            f"{base}/api/desk/cases/{ref}/method", json={"method": "remote_guidance"}, headers=auth
        )
        assert chosen.status_code == 200, chosen.text

        desk = problems.watch(browser.new_context(locale="en-US").new_page())
        desk.goto(f"{base}/desk#{ref}")
        desk.get_by_label("Desk token").fill(DESK_TOKEN)
        desk.get_by_label("Your name").fill("Amira")
        desk.get_by_role("button", name="Open the desk").click()
        desk.locator("#case-list button", has_text=ref).click()
        expect(desk.locator("#case-title")).to_have_text(ref)
        expect(desk.locator("#fulfil-files")).to_be_hidden()
        desk.locator("#fulfil-action").select_option(label="Send repair guidance")
        expect(desk.locator("#fulfil-files")).to_be_visible()
        desk.locator("#fulfil-text").fill("Replace the fuse F2 as in the manual.")
        desk.set_input_files(
            "#fulfil-files", files=[{"name": "fuse-manual.pdf", "mimeType": "application/pdf", "buffer": PDF}]
        )
        desk.locator("#fulfil-submit").click()
        expect(desk.locator("#action-result")).to_contain_text("with 1 file(s)")

        link = log.locator(".msg-bot a.file-link", has_text="fuse-manual.pdf")
        expect(link).to_have_count(1)
        href = link.get_attribute("href")
        assert href is not None and href.startswith("/api/webchat/sessions/")
        got = httpx.get(f"{base}{href}")
        assert got.status_code == 200 and got.content == PDF
        assert not problems.items, problems.items
