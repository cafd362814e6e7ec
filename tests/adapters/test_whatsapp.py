"""WhatsApp channel: parsing and rendering, then the bot's real server against a loopback fake of the Graph API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select
from sqlmodel import Session, col

from adapters import whatsapp
from adapters.whatsapp import (
    MalformedPayload,
    delivery_error,
    locale_hint,
    parse,
    render,
    signature_valid,
    verify_subscription,
)
from bot.app import Bot
from bot.channels import split_text
from bot.config import Settings
from bot.messages import Button
from bot.outbox import PermanentFailure, RetryLater, Unreachable
from bot.store import Case, ChannelIdentity, OutboxItem, StoredAttachment, session_scope
from tests.fakes.server import serve
from tests.fakes.whatsapp import (
    ACCESS_TOKEN,
    APP_SECRET,
    PAYLOADS,
    PHONE_NUMBER_ID,
    VERIFY_TOKEN,
    FakeGraph,
    sign,
)
from tests.support import (
    RunningChannel,
    channel_served,
    check_body_signature,
    choose,
    health_elsewhere,
    wait_until,
)

WA_ID = "447700900142"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def derived_message(number: int, **message: Any) -> bytes:
    """A later message of the same customer, derived from the sample text message."""
    document = json.loads(payload("text.json"))
    original = document["entry"][0]["changes"][0]["value"]["messages"][0]
    replacement = {
        "from": original["from"],
        "id": f"wamid.TEST{number:04d}",
        "timestamp": original["timestamp"],
    }
    document["entry"][0]["changes"][0]["value"]["messages"] = [{**replacement, **message}]
    return json.dumps(document, ensure_ascii=False, indent=2).encode()


def derived_status(wamid: str, *, sample: str = "status_delivered.json", **changes: Any) -> bytes:
    document = json.loads(payload(sample))
    status = document["entry"][0]["changes"][0]["value"]["statuses"][0]
    status.update(id=wamid, **changes)
    return json.dumps(document, ensure_ascii=False, indent=2).encode()


# --- verify and parse ---------------------------------------------------------------------------------------------


def test_subscription_verification_echoes_the_challenge_only_for_the_right_token() -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    assert verify_subscription(params, VERIFY_TOKEN) == "1158201444"
    assert verify_subscription({**params, "hub.verify_token": "guess"}, VERIFY_TOKEN) is None
    assert verify_subscription({**params, "hub.mode": "unsubscribe"}, VERIFY_TOKEN) is None
    assert verify_subscription(params, "") is None  # no token configured: nothing verifies


def test_signature_is_checked_over_the_raw_bytes() -> None:
    body = payload("text.json")
    check_body_signature(signature_valid, sign, APP_SECRET, body)
    assert not signature_valid(body, sign(body).removeprefix("sha256="), APP_SECRET)
    # Re-serialised JSON is other bytes: the signature is over what was sent, not over the meaning.
    assert not signature_valid(json.dumps(json.loads(body)).encode(), sign(body), APP_SECRET)


def test_parse_text_image_and_button_reply() -> None:
    text = parse(payload("text.json")).messages[0]
    assert (text.wa_id, text.type, text.name, text.phone_number_id) == (
        WA_ID,
        "text",
        "Daniel Okafor",
        PHONE_NUMBER_ID,
    )
    assert text.wamid.startswith("wamid.") and "CSP2311B0872" in text.text and text.media is None

    image = parse(payload("image.json")).messages[0]
    assert image.media == whatsapp.Media(
        id="1498763502281937", mime="image/jpeg", name="image-1498763502281937.jpg", kind="photo"
    )
    assert image.text == "Display with E07 and the serial plate"

    button = parse(payload("button_reply.json")).messages[0]
    assert button.text == "confirm_serial:CSP2311B0872"  # the id we gave the button, not its title
    assert button.context_id is not None and button.context_id.startswith("wamid.")

    listed = parse(
        derived_message(
            1,
            type="interactive",
            interactive={
                "type": "list_reply",
                "list_reply": {"id": "cause:normal", "title": "It failed in normal use"},
            },
        )
    )
    assert listed.messages[0].text == "cause:normal"

    document = parse(
        derived_message(
            2,
            type="document",
            document={
                "filename": "EX-2024-0311.pdf",
                "mime_type": "application/pdf",
                "id": "778",
                "caption": "invoice",
            },
        )
    )
    assert document.messages[0].media == whatsapp.Media(
        id="778", mime="application/pdf", name="EX-2024-0311.pdf", kind="document"
    )


def test_parse_statuses() -> None:
    delivered = parse(payload("status_delivered.json"))
    assert delivered.messages == () and [s.status for s in delivered.statuses] == ["delivered"]
    failed = parse(payload("status_failed.json")).statuses[0]
    assert failed.status == "failed" and failed.error_code == 131047
    assert failed.error is not None and "more than 24 hours" in failed.error
    assert failed.at == datetime(2026, 5, 6, 8, 0, 2, tzinfo=UTC)  # the sample's "timestamp": "1778054402"
    unreadable = _with_status_timestamp(payload("status_failed.json"), "99999999999999999999")
    assert parse(unreadable).statuses[0].at is None  # applied as of now, as one without a time


def _with_status_timestamp(body: bytes, timestamp: str) -> bytes:
    document = json.loads(body)
    document["entry"][0]["changes"][0]["value"]["statuses"][0]["timestamp"] = timestamp
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"entry": {}}', b'\xff\xfe{"entry": []}', b"[" * 100_000 + b"]" * 100_000],
)
def test_bodies_that_are_no_notification_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse(body)


@pytest.mark.parametrize(
    "broken",
    [
        {"field": "messages", "value": []},
        {"field": "messages", "value": {"messages": [{"type": "text"}]}},
        {
            "field": "messages",
            "value": {"messages": [{"id": "wamid.X1", "from": "4477", "type": "image", "image": {}}]},
        },
        {"field": "messages", "value": {"statuses": [{"status": "read"}]}},
        {"field": "messages", "value": {"messages": "x"}},
    ],
)
def test_an_unreadable_part_is_skipped_and_the_rest_is_taken(broken: dict[str, Any]) -> None:
    document = json.loads(payload("text.json"))
    document["entry"][0]["changes"].insert(0, broken)
    notification = parse(json.dumps(document).encode())
    assert [m.sender for m in notification.messages] == [WA_ID] and len(notification.skipped) == 1


def test_an_interactive_message_without_its_body_is_unreadable_and_its_neighbour_is_taken() -> None:
    # Before, the whole POST was a 400 and the good message beside it was lost (pywa's interactive_message_with_err).
    notification = parse(payload("batch_interactive_without_body.json"))
    assert [(m.sender, m.type) for m in notification.messages] == [
        (WA_ID, "unreadable"),
        ("2348031234567", "text"),
    ]
    assert notification.skipped == ()
    unsupported = parse(payload("unsupported.json")).messages[0]
    sticker = parse(payload("sticker.json")).messages[0]
    assert (unsupported.type, sticker.type, sticker.media) == ("unreadable", "unreadable", None)


def test_a_customer_known_only_by_a_business_scoped_user_id() -> None:
    message = parse(payload("username_text.json")).messages[0]
    assert (message.sender, message.wa_id, message.user_id) == (
        "MX.13491208655302741918",
        None,
        "MX.13491208655302741918",
    )
    assert message.name == "Sofia M." and "CSP2311B0872" in message.text
    both = parse(payload("text.json")).messages[0]
    assert (both.sender, both.user_id) == (WA_ID, None)  # the sample's message has only `from`
    change = parse(payload("user_changed_user_id.json"))
    assert change.messages == () and change.id_changes == (
        whatsapp.IdChange(old="MX.13491208655302741918", new="MX.50917733620148812265", kind="user_id"),
    )
    forged = json.loads(payload("username_text.json"))
    forged["entry"][0]["changes"][0]["value"]["messages"][0]["from_user_id"] = "../../me"
    assert parse(json.dumps(forged).encode()).messages == ()


@pytest.mark.parametrize(
    "media_id", ["../../evil", "https://attacker.example/x", "1498763502281937/../me", "a?b"]
)
def test_a_media_id_that_could_leave_the_graph_url_is_not_one(media_id: str) -> None:
    body = derived_message(4, type="image", image={"id": media_id, "mime_type": "image/jpeg"})
    notification = parse(body)
    assert notification.messages == () and len(notification.skipped) == 1


def test_reactions_and_other_fields_are_ignored() -> None:
    assert (
        parse(derived_message(3, type="reaction", reaction={"message_id": "wamid.x", "emoji": "👍"})).messages
        == ()
    )
    other = b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "account_update", "value": {}}]}]}'
    assert parse(other) == whatsapp.Notification()


def test_locale_hint_from_the_calling_code() -> None:
    assert locale_hint(WA_ID) == "en"
    assert locale_hint("5215512345678") == "es"
    assert locale_hint("8613800138000") == "zh"
    assert locale_hint("971501234567") == "ar"
    assert locale_hint("999") is None


# --- render -------------------------------------------------------------------------------------------------------


def test_long_text_is_split_at_line_breaks_within_the_limit() -> None:
    paragraph = "E07 means the inverter saw an overload. " * 40  # about 1600 characters
    text = "\n\n".join([paragraph.strip()] * 6)
    bodies = render(text, ())
    assert len(bodies) > 1
    assert all(b["type"] == "text" and len(b["text"]["body"]) <= whatsapp.TEXT_LIMIT for b in bodies)
    assert " ".join(b["text"]["body"] for b in bodies).split() == text.split()
    assert split_text("x" * 5000, 4096) == ["x" * 4096, "x" * 904]  # no break to cut at: cut hard


def test_up_to_three_buttons_are_reply_buttons_with_short_titles() -> None:
    buttons = (
        Button(label="It failed in normal use", value="cause:normal"),
        Button(label="Repair", value="pref:r"),
    )
    (body,) = render("How did the fault appear?", buttons)
    action = body["interactive"]["action"]
    assert body["interactive"]["type"] == "button"
    assert [b["reply"]["id"] for b in action["buttons"]] == ["cause:normal", "pref:r"]
    assert [b["reply"]["title"] for b in action["buttons"]] == ["It failed in normal…", "Repair"]


def test_four_to_ten_buttons_are_a_list_and_more_are_numbered_text() -> None:
    six = tuple(Button(label=f"Option number {n} with a long description", value=f"v:{n}") for n in range(6))
    (body,) = render("Choose one", six, language="es")
    interactive = body["interactive"]
    rows = interactive["action"]["sections"][0]["rows"]
    assert interactive["type"] == "list" and interactive["action"]["button"] == "Elegir"
    assert [r["id"] for r in rows] == [f"v:{n}" for n in range(6)]
    assert all(len(r["title"]) <= whatsapp.ROW_TITLE_LIMIT for r in rows)
    assert len({r["title"] for r in rows}) == 6  # clipped titles made unique
    assert rows[0]["description"] == "Option number 0 with a long description"

    many = tuple(Button(label=f"Unit {n}", value=f"u:{n}") for n in range(12))
    (text,) = render("Which unit?", many)
    assert text["type"] == "text"
    assert text["text"]["body"].splitlines()[-1] == "12. Unit 11"


def test_buttons_travel_with_the_last_piece_of_a_long_text() -> None:
    bodies = render("word " * 1500, (Button(label="Yes", value="yes"),))
    assert [b["type"] for b in bodies][-1] == "interactive"
    assert len(bodies[-1]["interactive"]["body"]["text"]) <= whatsapp.INTERACTIVE_BODY_LIMIT
    assert all(len(b["text"]["body"]) <= whatsapp.TEXT_LIMIT for b in bodies[:-1])


def test_graph_errors_map_to_outbox_outcomes() -> None:
    assert isinstance(delivery_error(whatsapp.GraphError(500, 1, "unknown")), RetryLater)
    assert isinstance(delivery_error(whatsapp.GraphError(429, 130429, "throughput")), RetryLater)
    assert isinstance(delivery_error(whatsapp.GraphError(400, 131026, "undeliverable")), Unreachable)
    assert isinstance(delivery_error(whatsapp.GraphError(400, 131009, "bad parameter")), PermanentFailure)
    assert not isinstance(delivery_error(whatsapp.GraphError(400, 131009, "x")), RetryLater)


# --- the bot's server against the fake Graph API --------------------------------------------------------------------


@dataclass
class Running(RunningChannel):
    graph: FakeGraph

    def post(self, body: bytes, *, signature: str | None = "valid") -> httpx.Response:
        return self.post_signed(whatsapp.WEBHOOK_PATH, body, "x-hub-signature-256", signature, sign)

    def sent(self) -> list[dict[str, Any]]:
        return self.graph.sent_to(WA_ID)

    def texts(self) -> list[str]:
        return self.graph.texts(WA_ID)


@pytest.fixture
def running(settings: Settings, db: Engine) -> Iterator[Running]:
    graph = FakeGraph(access_token=ACCESS_TOKEN, phone_number_id=PHONE_NUMBER_ID)
    with serve(graph.app()) as graph_url:
        update = {
            "whatsapp_access_token": SecretStr(ACCESS_TOKEN),
            "whatsapp_app_secret": SecretStr(APP_SECRET),
            "whatsapp_verify_token": SecretStr(VERIFY_TOKEN),
            "whatsapp_phone_number_id": PHONE_NUMBER_ID,
            "whatsapp_graph_url": f"{graph_url}/v23.0",
            "whatsapp_template_name": "case_update",
            "whatsapp_template_language": "en,es,zh_CN",
            "outbox_poll_seconds": 0.1,
            "fetch_insecure_hosts": "127.0.0.1",  # the fake Graph API: plain http on loopback
        }
        with channel_served(settings, db, update, whatsapp.from_settings) as (bot, url):
            yield Running(bot=bot, graph=graph, url=url)


def _press(running: Running, number: int) -> str:
    """Answer the bot's last offered choice the way a customer who wants an engineer would."""
    last = running.graph.sent_to(WA_ID)[-1]
    assert last["type"] == "interactive", last
    interactive = last["interactive"]
    ids: list[str]
    if interactive["type"] == "button":
        ids = [b["reply"]["id"] for b in interactive["action"]["buttons"]]
    else:
        ids = [r["id"] for s in interactive["action"]["sections"] for r in s["rows"]]
    choice = choose(ids)
    kind = "button_reply" if interactive["type"] == "button" else "list_reply"
    body = derived_message(
        number, type="interactive", interactive={"type": kind, kind: {"id": choice, "title": "x"}}
    )
    assert running.post(body).status_code == 200
    return choice


def test_a_full_claim_over_whatsapp(running: Running) -> None:
    graph = running.graph
    graph.media["1498763502281937"] = (JPEG, "image/jpeg")

    # The customer's first message: the sample's bytes, unchanged.
    assert running.post(payload("text.json")).status_code == 200
    first = running.settled(2, "the bot's answer to the serial and fault")
    assert any("CSP2311B0872" in t for t in graph.texts(WA_ID))
    assert first[-1]["type"] == "interactive"  # asks for proof, with a "no proof" button

    # WhatsApp delivers the same notification again: stored once.
    assert running.post(payload("text.json")).status_code == 200
    assert [i.external_id for i in running.inbox()] == [parse(payload("text.json")).messages[0].wamid]

    # The photo of the display, downloaded through the media endpoint with the bearer token.
    before = len(graph.sent_to(WA_ID))
    assert running.post(payload("image.json")).status_code == 200
    running.settled(before + 1, "the bot's answer to the photo")
    assert ("GET", "/v23.0/1498763502281937") in graph.requests and (
        "GET",
        "/download/1498763502281937",
    ) in graph.requests
    stored = running.stored_attachment()
    assert (stored.kind, stored.mime, stored.size) == ("photo", "image/jpeg", len(JPEG))
    assert running.bot.attachments.path(stored.path).read_bytes() == JPEG

    # Buttons and lists until the case is opened (cause, maybe a preference, maybe "talk to an engineer").
    assert "cause:normal" in running.press_until_a_case(lambda number: _press(running, number))
    shown = {m["interactive"]["type"] for m in graph.sent if m["type"] == "interactive"}
    assert shown == {"button", "list"}  # proof had one button, the cause six options: a list

    # An engineer claims it; the customer hears so on WhatsApp. Limits the real API enforces held for
    # everything we sent (the fake refuses what breaks them): all went out.
    running.claimed()
    assert all(m["to"] == WA_ID and m["messaging_product"] == "whatsapp" for m in graph.sent)


def test_delivery_statuses_update_the_outbox_row_and_create_nothing(running: Running) -> None:
    assert running.post(payload("text.json")).status_code == 200
    running.settled(2, "the bot's answers")
    last = wait_until(lambda: [i for i in running.outbox() if i.status == "sent"][-1:], what="a sent row")[0]
    assert last.external_id is not None and last.external_id.startswith("wamid.FAKE")
    outbox_before, inbox_before = len(running.outbox()), len(running.inbox())

    def status_of(row_id: int | None) -> tuple[str, str | None]:
        item = next(i for i in running.outbox() if i.id == row_id)
        return item.status, item.last_error

    assert running.post(payload("status_delivered.json")).status_code == 200  # not one of ours: ignored
    assert running.post(derived_status(last.external_id, status="read")).status_code == 200
    assert status_of(last.id) == ("read", None)
    assert (
        running.post(derived_status(last.external_id)).status_code == 200
    )  # a late "delivered" after "read"
    assert status_of(last.id) == ("read", None)
    failure = derived_status(
        last.external_id,
        sample="status_failed.json",
        errors=[
            {
                "code": 131053,
                "title": "Media upload error",
                "error_data": {"details": "Unsupported file type"},
            }
        ],
    )
    assert running.post(failure).status_code == 200
    assert status_of(last.id) == ("failed", "131053 Media upload error: Unsupported file type")
    assert (len(running.outbox()), len(running.inbox())) == (outbox_before, inbox_before)


def test_a_long_reply_interrupted_halfway_does_not_repeat_its_first_piece(running: Running) -> None:
    graph = running.graph
    assert running.post(payload("text.json")).status_code == 200
    assert running.post(derived_message(40, type="text", text={"body": "human"})).status_code == 200
    ref = wait_until(running.case_ref, what="a case")
    wait_until(
        lambda: running.outbox() and all(i.status == "sent" for i in running.outbox()), what="all sent"
    )

    graph.fail_next(503, 2, "Service temporarily unavailable", after=1)
    steps = "\n".join(
        f"Step {n}: check the cable at terminal {n} and measure the voltage." for n in range(1, 80)
    )
    running.bot.desk.reply(ref, engineer="Ana Ruiz", text=steps)
    row = wait_until(
        lambda: [i for i in running.outbox() if "Step 1:" in i.payload["text"] and i.status == "sent"],
        what="the long reply sent after a retry",
    )[0]
    assert row.attempts == 2 and row.last_error is None
    pieces = [t for t in graph.texts(WA_ID) if "Step " in t]
    assert len(pieces) == 2 and sum("Step 1: " in p for p in pieces) == 1  # the first piece went out once
    assert " ".join(pieces).split() == running.outbox()[-1].payload["text"].split()


def _age_window(db: Engine, hours: int) -> None:
    """Move the customers' times `hours` back, as if everything had happened that much earlier."""
    shift = timedelta(hours=hours)
    with session_scope(db) as session:
        for identity in session.execute(select(ChannelIdentity)).scalars():
            assert identity.last_inbound_at is not None
            identity.last_inbound_at = identity.last_inbound_at - shift
            state = identity.data.get("whatsapp", {})
            identity.data = {
                **identity.data,
                "whatsapp": {
                    key: (datetime.fromisoformat(value) - shift).isoformat() for key, value in state.items()
                },
            }


def _held(running: Running) -> list[OutboxItem]:
    return [i for i in running.outbox() if i.status == "held"]


def test_outside_the_window_a_template_goes_out_and_the_reply_follows_when_the_customer_answers(
    running: Running,
) -> None:
    graph = running.graph
    assert running.post(payload("text.json")).status_code == 200
    assert running.post(derived_message(20, type="text", text={"body": "human"})).status_code == 200
    ref = wait_until(running.case_ref, what="a case")
    wait_until(lambda: any(ref in t for t in graph.texts(WA_ID)), what="the case reference")
    wait_until(lambda: all(i.status == "sent" for i in running.outbox()), what="everything sent")
    _age_window(running.bot.db, hours=25)

    running.bot.desk.reply(ref, engineer="Ana Ruiz", text="Please send a photo of the rating plate.")
    running.bot.desk.reply(ref, engineer="Ana Ruiz", text="And the invoice, if you have it.")
    template = wait_until(
        lambda: [m for m in graph.sent_to(WA_ID) if m["type"] == "template"], what="a template"
    )
    assert template[0]["template"]["name"] == "case_update"
    assert template[0]["template"]["components"][0]["parameters"] == [{"type": "text", "text": ref}]
    held = wait_until(lambda: _held(running), what="the held reply")
    assert len(held) == 1 and held[0].attempts == 0  # waiting for the customer costs no attempt
    assert not any("rating plate" in t for t in graph.texts(WA_ID))

    # The customer answers the template: both replies follow, in order, and no second template.
    assert (
        running.post(
            derived_message(21, type="button", button={"payload": "Continue", "text": "Continue"})
        ).status_code
        == 200
    )

    def held_texts() -> list[str]:
        return [t for t in graph.texts(WA_ID) if "rating plate" in t or "invoice, if you have it" in t]

    texts = wait_until(lambda: len(held_texts()) == 2 and held_texts(), what="both held replies")
    assert "rating plate" in texts[0] and "invoice" in texts[1]
    kinds = [m["type"] for m in graph.sent_to(WA_ID)]
    assert kinds.index("template") < len(kinds) - 2  # the template came before the replies it announced
    assert len([m for m in graph.sent_to(WA_ID) if m["type"] == "template"]) == 1
    wait_until(lambda: not _held(running), what="no held rows left")


def test_a_re_engagement_failure_holds_the_message_for_the_template(running: Running) -> None:
    graph = running.graph
    assert running.post(payload("text.json")).status_code == 200
    assert running.post(derived_message(30, type="text", text={"body": "human"})).status_code == 200
    ref = wait_until(running.case_ref, what="a case")
    wait_until(
        lambda: running.outbox() and all(i.status == "sent" for i in running.outbox()), what="all sent"
    )

    # Our clock said the window was open, WhatsApp says it is not (the sample failure, for our message).
    graph.fail_next(400, 131047, "Re-engagement message")
    running.bot.desk.reply(ref, engineer="Ana Ruiz", text="Is the unit still under load?")
    wait_until(lambda: [m for m in graph.sent_to(WA_ID) if m["type"] == "template"], what="a template")
    wait_until(lambda: _held(running), what="the held reply")

    # The asynchronous form: a sent message reported failed with 131047 later is held, not lost.
    assert running.post(derived_message(31, type="text", text={"body": "yes?"})).status_code == 200
    sent = wait_until(
        lambda: [
            i for i in running.outbox() if i.status == "sent" and "still under load" in i.payload["text"]
        ],
        what="the released reply",
    )[0]
    wait_until(lambda: all(i.status == "sent" for i in running.outbox()), what="all sent")
    assert sent.external_id is not None
    _age_window(running.bot.db, hours=30)
    assert running.post(derived_status(sent.external_id, sample="status_failed.json")).status_code == 200
    wait_until(
        lambda: len([m for m in graph.sent_to(WA_ID) if m["type"] == "template"]) == 2, what="a 2nd template"
    )
    assert [i.id for i in wait_until(lambda: _held(running), what="held again")] == [sent.id]


def test_forged_missing_and_malformed_requests(running: Running) -> None:
    body = payload("text.json")
    assert running.post(body, signature=None).status_code == 401
    assert running.post(body, signature=sign(body, "guessed-secret")).status_code == 401
    assert running.post(body, signature="sha256=" + "0" * 64).status_code == 401
    # Signed but unreadable: acknowledged (any other answer makes Meta redeliver it for days), nothing stored.
    assert running.post(b"{not json", signature="valid").status_code == 200
    assert running.post(b'{"entry": "x"}', signature="valid").status_code == 200
    assert running.inbox() == [] and running.graph.sent == []

    verify = f"{running.url}{whatsapp.WEBHOOK_PATH}"
    good = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "8831"}
    answer = httpx.get(verify, params=good)
    assert (answer.status_code, answer.text) == (200, "8831")
    assert httpx.get(verify, params={**good, "hub.verify_token": "nope"}).status_code == 403


def test_not_configured_without_credentials(bot: Bot) -> None:
    assert whatsapp.from_settings(bot) is None


def test_one_unreadable_message_in_a_post_loses_neither_it_nor_its_neighbour(running: Running) -> None:
    answer = running.post(payload("batch_interactive_without_body.json"))
    assert answer.status_code == 200
    assert sorted(
        i.chat_id
        for i in wait_until(lambda: len(running.inbox()) == 2 and running.inbox(), what="both messages")
    ) == ["2348031234567", WA_ID]
    wait_until(
        lambda: running.graph.sent_to("2348031234567") and running.graph.sent_to(WA_ID),
        what="an answer to each customer",
    )


@pytest.mark.parametrize("sample", ["sticker.json", "unsupported.json"])
def test_a_sticker_or_an_unsupported_message_is_answered(running: Running, sample: str) -> None:
    assert running.post(payload(sample)).status_code == 200
    wait_until(lambda: running.graph.sent_to(WA_ID), what="an answer")


def test_a_username_customer_is_answered_by_user_id_and_followed_across_an_id_change(
    running: Running,
) -> None:
    old, new = "MX.13491208655302741918", "MX.50917733620148812265"
    assert running.post(payload("username_text.json")).status_code == 200
    first = wait_until(lambda: running.graph.sent_to(old), what="an answer by business-scoped user id")
    assert all(m["recipient"] == old and "to" not in m for m in first)
    assert [i.chat_id for i in running.inbox()] == [old]

    assert running.post(payload("user_changed_user_id.json")).status_code == 200
    later = json.loads(payload("username_text.json"))
    message = later["entry"][0]["changes"][0]["value"]["messages"][0]
    message.update(from_user_id=new, id="wamid.AFTERCHANGE0001", text={"body": "Sigue sin funcionar"})
    later["entry"][0]["changes"][0]["value"]["contacts"][0]["user_id"] = new
    assert running.post(json.dumps(later).encode()).status_code == 200
    wait_until(lambda: len(running.inbox()) == 2, what="the second message")
    assert {i.chat_id for i in running.inbox()} == {old}  # the same conversation
    wait_until(lambda: running.graph.sent_to(new), what="a reply to the new user id")


def _spanish_customer_with_a_case(running: Running) -> tuple[str, str]:
    mx = "5215512345678"
    document = json.loads(payload("username_text.json"))
    value = document["entry"][0]["changes"][0]["value"]
    value["contacts"][0]["wa_id"] = mx
    value["messages"][0]["from"] = mx
    assert running.post(json.dumps(document).encode()).status_code == 200
    human = json.loads(json.dumps(document))
    human["entry"][0]["changes"][0]["value"]["messages"][0].update(
        id="wamid.MXHUMAN0001", text={"body": "human"}
    )
    assert running.post(json.dumps(human).encode()).status_code == 200
    ref = wait_until(running.case_ref, what="a case")
    wait_until(
        lambda: running.outbox() and all(i.status == "sent" for i in running.outbox()), what="all sent"
    )
    return mx, ref


def test_the_template_goes_out_in_the_customers_language_and_a_later_failure_is_not_silent(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    mx, ref = _spanish_customer_with_a_case(running)
    _age_window(running.bot.db, hours=25)
    running.bot.desk.reply(ref, engineer="Ana Ruiz", text="Por favor, envíe una foto de la placa.")
    template = wait_until(
        lambda: [m for m in running.graph.sent_to(mx) if m["type"] == "template"], what="a template"
    )[0]
    assert template["template"]["language"] == {"code": "es"}  # one of WHATSAPP_TEMPLATE_LANGUAGE's, not "en"
    assert "template sent (es)" in (wait_until(lambda: _held(running), what="held")[0].last_error or "")

    # Meta accepted it, then reports it failed (132001: no such template in this language): said, not ignored.
    wamid = running.graph.wamids[running.graph.sent.index(template)]
    failed = derived_status(
        wamid,
        sample="status_failed.json",
        errors=[
            {
                "code": 132001,
                "title": "Template name does not exist in the translation",
                "error_data": {"details": "template name (case_update) does not exist in es"},
            }
        ],
    )
    assert running.post(failed).status_code == 200
    wait_until(lambda: "132001" in (_held(running)[0].last_error or ""), what="the failure on the held row")
    assert any("template failed" in r.getMessage() for r in caplog.records)
    with Session(running.bot.db) as session:
        identity = session.execute(select(ChannelIdentity)).scalars().one()
        assert "template_sent_at" not in identity.data["whatsapp"]  # the next reply tries the template again


def test_a_template_refused_at_once_is_on_healthz_until_one_is_accepted(running: Running) -> None:
    mx, spanish = _spanish_customer_with_a_case(running)
    assert running.post(payload("text.json")).status_code == 200
    assert running.post(derived_message(40, type="text", text={"body": "human"})).status_code == 200
    english = wait_until(lambda: [r for r in _case_refs(running) if r != spanish], what="a second case")[0]
    wait_until(  # the second customer was told their case: nothing is left to send inside the window
        lambda: (
            (rows := running.outbox())
            and any(english in (i.payload.get("text") or "") for i in rows)
            and all(i.status == "sent" for i in rows)
        ),
        what="the second case told",
    )
    _age_window(running.bot.db, hours=25)
    running.graph.fail_next(400, 132001, "Template name does not exist in the translation")
    running.bot.desk.reply(english, engineer="Ana Ruiz", text="Please send a photo of the rating plate.")
    held = wait_until(lambda: _held(running), what="a held reply")
    assert "the template was refused" in (held[0].last_error or "")
    problems = health_elsewhere(running.bot.settings, whatsapp.from_settings)["problems"]
    assert "template case_update refused" in problems["whatsapp"] and "132001" in problems["whatsapp"]

    # The next reply held (the other customer's) sends the template again; Meta accepts it, and /healthz no
    # longer shows the problem.
    running.bot.desk.reply(spanish, engineer="Ana Ruiz", text="Por favor, envíe una foto de la placa.")
    wait_until(
        lambda: any("template sent (es)" in (i.last_error or "") for i in _held(running)),
        what="a template sent",
    )
    assert [m for m in running.graph.sent_to(mx) if m["type"] == "template"]
    assert "problems" not in health_elsewhere(running.bot.settings, whatsapp.from_settings)


def _case_refs(running: Running) -> list[str]:
    with Session(running.bot.db) as session:
        return list(session.execute(select(col(Case.ref)).order_by(col(Case.id))).scalars())


def test_a_revoked_token_holds_replies_reports_it_and_they_go_out_once_it_works(running: Running) -> None:
    graph = running.graph
    graph.fail_next(401, 190, "Error validating access token: The session has been invalidated")
    assert running.post(payload("text.json")).status_code == 200
    held = wait_until(lambda: _held(running), what="a held reply")
    assert "190" in (held[0].last_error or "") and not [i for i in running.outbox() if i.status == "dead"]
    health = httpx.get(f"{running.url}/healthz").json()
    assert health["status"] == "degraded" and "190" in health["problems"]["whatsapp"]
    # A front whose channel never sent (the sender ran in another process) reads the same from the database.
    elsewhere = health_elsewhere(running.bot.settings, whatsapp.from_settings)
    assert elsewhere["status"] == "degraded" and elsewhere["problems"] == health["problems"]

    # The token is replaced; the customer writes again and everything held goes out.
    assert running.post(derived_message(40, type="text", text={"body": "hello?"})).status_code == 200
    wait_until(
        lambda: running.outbox() and all(i.status == "sent" for i in running.outbox()), what="all sent"
    )
    assert httpx.get(f"{running.url}/healthz").json()["status"] == "ok"
    assert "problems" not in health_elsewhere(running.bot.settings, whatsapp.from_settings)


def test_a_media_download_follows_metas_redirect(running: Running) -> None:
    graph = running.graph
    graph.media["1498763502281937"] = (JPEG, "image/jpeg")
    graph.redirect_downloads = True
    assert running.post(payload("image.json")).status_code == 200
    stored = wait_until(lambda: _stored(running), what="the photo stored")
    assert stored[0].size == len(JPEG) and ("GET", "/cdn/1498763502281937") in graph.requests


def test_a_media_url_on_another_host_gets_neither_the_token_nor_a_request(running: Running) -> None:
    seen: list[str] = []

    async def collector(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(dict(scope["headers"]).get(b"authorization", b"").decode())
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": JPEG})

    with serve(collector) as elsewhere:
        running.graph.media["1498763502281937"] = (JPEG, "image/jpeg")
        running.graph.media_urls["1498763502281937"] = elsewhere.replace("127.0.0.1", "localhost") + "/steal"
        assert running.post(payload("image.json")).status_code == 200
        wait_until(lambda: running.graph.sent_to(WA_ID), what="an answer")
        assert seen == [] and _stored(running) == []


def _stored(running: Running) -> list[StoredAttachment]:
    with Session(running.bot.db) as session:
        return list(session.execute(select(StoredAttachment)).scalars())
