"""The engineer's typing indicator on real databases: the desk says an engineer is writing, the customer's web
chat poll shows it (read by another process's bot: it lives in the database), until it expires, the reply
arrives or a note is sent; the desk API refuses it for an unknown case (404), a closed one (409) and without the token (401); and
the chat page has its words in all seven languages."""

from __future__ import annotations

import re
from typing import Any

import httpx
from pydantic import SecretStr

from bot.app import build
from bot.config import Settings
from bot.conversation import LANGUAGES
from bot.http import WEB
from bot.server import create_app
from tests.fakes.server import serve
from tests.support import wait_until

SERIAL = "CSP2604D0007"  # made April 2026: in warranty without proof until 2028-07-30
TOKEN = "desk-token-for-the-typing-test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_the_web_chat_shows_an_engineer_typing_until_it_expires_or_the_reply_comes(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"desk_token": SecretStr(TOKEN)})
    desk_bot, web_bot = build(settings), build(settings)  # two processes' bots on one database
    with (
        serve(create_app(desk_bot)) as desk_base,
        serve(create_app(web_bot)) as web_base,
        httpx.Client(base_url=desk_base, timeout=10) as desk,
        httpx.Client(base_url=web_base, timeout=10) as web,
    ):
        session = web.post("/api/webchat/sessions", json={"language": "en"}).json()["session_id"]
        for text in (f"{SERIAL} display shows E07 and shuts down", "proof:none", "cause:normal"):
            assert (
                web.post(f"/api/webchat/sessions/{session}/messages", json={"text": text}).status_code == 202
            )
        ref = wait_until(
            lambda: next((c["ref"] for c in desk_bot.desk.list_cases(channel="webchat")), None),
            what="the web chat's case",
        )

        def poll(after: int = 0) -> dict[str, Any]:
            response = web.get(f"/api/webchat/sessions/{session}/messages", params={"after": after})
            assert response.status_code == 200
            body: dict[str, Any] = response.json()
            return body

        first = poll()
        assert first["typing"] is None and first["messages"]
        last = first["messages"][-1]["id"]

        # Amira types: the customer sees her first name, whichever process answers the poll.
        typed = desk.post(f"/api/desk/cases/{ref}/typing", json={"engineer": "Amira Haddad"}, headers=AUTH)
        assert (
            typed.status_code == 200 and typed.json()["ref"] == ref and typed.json()["channel"] == "webchat"
        )
        assert poll(last)["typing"] == {"engineer": "Amira"}
        # Nobody types any more: a few seconds later the chat says nothing (the row expires, no clean-up job).
        wait_until(
            lambda: poll(last)["typing"] is None, timeout=20, interval=0.5, what="the typing to expire"
        )

        # Without a name it is "an engineer"; the reply ends it at once, in the same answer that brings it.
        assert desk.post(f"/api/desk/cases/{ref}/typing", json={}, headers=AUTH).status_code == 200
        assert poll(last)["typing"] == {"engineer": None}
        replied = desk.post(
            f"/api/desk/cases/{ref}/messages",
            json={"text": "Checking the log now", "engineer": "Amira"},
            headers=AUTH,
        )
        assert replied.status_code == 200
        after_reply = poll(last)
        assert after_reply["typing"] is None
        assert any(
            m["author"] == "engineer" and "Checking the log now" in m["text"] for m in after_reply["messages"]
        )

        # A note is typed in the same box: sending it ends the dots at once, and the customer sees no message.
        assert (
            desk.post(f"/api/desk/cases/{ref}/typing", json={"engineer": "Amira"}, headers=AUTH).status_code
            == 200
        )
        before_note = poll(last)
        assert before_note["typing"] == {"engineer": "Amira"}
        noted = desk.post(
            f"/api/desk/cases/{ref}/messages",
            json={"text": "Customer's log shows E07 twice", "engineer": "Amira", "internal": True},
            headers=AUTH,
        )
        assert noted.status_code == 200
        after_note = poll(last)
        assert after_note["typing"] is None
        assert not any("E07 twice" in m["text"] for m in after_note["messages"])

        # Refused: no token, an unknown case, a closed case; none of them shows anything to the customer.
        assert desk.post(f"/api/desk/cases/{ref}/typing", json={}).status_code == 401
        wrong = desk.post(f"/api/desk/cases/{ref}/typing", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        json_auth = {**AUTH, "Content-Type": "application/json"}
        assert desk.post("/api/desk/cases/WR-1999-000001/typing", json={}, headers=AUTH).status_code == 404
        assert desk.post(f"/api/desk/cases/{ref}/typing", content=b"[", headers=json_auth).status_code == 422
        assert desk.post(f"/api/desk/cases/{ref}/close", json={}, headers=AUTH).status_code == 200
        closed = desk.post(f"/api/desk/cases/{ref}/typing", json={"engineer": "Amira"}, headers=AUTH)
        assert closed.status_code == 409 and "closed" in closed.json()["error"]
        assert poll(last)["typing"] is None


def test_the_chat_page_says_an_engineer_is_typing_in_every_language() -> None:
    script = (WEB / "static" / "chat.js").read_text(encoding="utf-8")
    table = script[script.index("const STRINGS = {") : script.index("const LANGUAGE_NAMES")]
    blocks = dict(re.findall(r"\n    (\w+): \{(.*?)\n    \}", table, flags=re.S))
    assert set(blocks) == set(LANGUAGES)
    named = {code: re.search(r'engineerTyping: "([^"]+)"', block) for code, block in blocks.items()}
    someone = {code: re.search(r'someoneTyping: "([^"]+)"', block) for code, block in blocks.items()}
    for code in LANGUAGES:
        found, anyone = named[code], someone[code]
        assert found is not None and "{name}" in found.group(1), code
        assert anyone is not None and anyone.group(1).strip(), code
    # Each its own words, not English left in place.
    assert len({m.group(1) for m in someone.values() if m}) == len(LANGUAGES)
