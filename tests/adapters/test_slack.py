"""The Slack desk against a loopback fake of the Slack Web API, with signed real-shaped Slack requests."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select, update
from sqlmodel import Session, col

from adapters import slack, slack_blocks, webchat
from bot.app import Bot, build
from bot.config import Settings
from bot.desk import CaseNotFound
from bot.messages import DeskEvent, InboundMessage
from bot.outbox import PermanentFailure, RetryLater, event_from_payload
from bot.registry import import_registry
from bot.server import create_app
from bot.store import Case, KeyValue, Message, OutboxItem
from bot.store.clock import utcnow
from tests.fakes.server import serve
from tests.fakes.slack import (
    BOT_TOKEN,
    ENGINEER,
    ESCALATION,
    FIRST_TS,
    MEMBER,
    OUTSIDER,
    PAYLOADS,
    SECRET,
    FakeSlack,
    as_form,
    block_text,
    invalid_blocks,
    mrkdwn_problem,
    signed,
)
from tests.fakes.slack import create_app as fake_slack_app
from tests.support import REGISTRY, health_elsewhere, wait_until

SAMPLE_REF, SAMPLE_TS = "WR-2026-000042", "1777886370.209339"
REF = re.compile(r"WR-\d{4}-\d{6}")


# --- helpers ------------------------------------------------------------------------------------------------


def sample(name: str) -> str:
    return (PAYLOADS / name).read_text(encoding="utf-8")


def for_case(text: str, ref: str, ts: str) -> str:
    """A sample payload pointed at this run's case: its ref and its message ts."""
    return text.replace(SAMPLE_REF, ref).replace(SAMPLE_TS, ts)


def action_payload(
    ref: str, ts: str, action_id: str, *, user: str = ENGINEER, method: str | None = None
) -> str:
    """block_actions.json with another action pressed (and, for the method menu, an option chosen)."""
    data = json.loads(for_case(sample("block_actions.json"), ref, ts))
    data["user"]["id"] = user
    action = data["actions"][0]
    action["action_id"] = action_id
    action["text"]["text"] = action_id
    if method is not None:
        for key in ("text", "value", "style"):
            action.pop(key, None)
        action.update(
            type="static_select",
            selected_option={
                "text": {"type": "plain_text", "text": slack_blocks.METHOD_LABELS[method], "emoji": True},
                "value": f"{ref}|{method}",
            },
        )
    return json.dumps(data, ensure_ascii=False, indent=2)


def event_payload(
    ref: str, ts: str, *, event_id: str, text: str, message_ts: str, user: str = ENGINEER
) -> bytes:
    """event_thread_reply.json as another message in the thread (new event id, ts and text)."""
    data = json.loads(for_case(sample("event_thread_reply.json"), ref, ts))
    data["event_id"] = event_id
    event = data["event"]
    event.update(text=text, ts=message_ts, event_ts=message_ts, user=user, client_msg_id=f"c-{event_id}")
    event["blocks"][0]["elements"][0]["elements"][0]["text"] = text
    return json.dumps(data, ensure_ascii=False, indent=2).encode()


def slack_settings(settings: Settings, api_url: str, **update: Any) -> Settings:
    values: dict[str, Any] = {
        "slack_bot_token": SecretStr(BOT_TOKEN),
        "slack_signing_secret": SecretStr(SECRET),
        "slack_api_url": f"{api_url}/api/",
        "slack_escalation_channel": ESCALATION,
        "slack_mode": "http",
        "public_url": "https://warranty.example",
        **update,
    }
    return settings.model_copy(update=values)


@pytest.fixture
def fake() -> FakeSlack:
    return FakeSlack(
        users={ENGINEER: "Li Wei", OUTSIDER: "Pat Outsider", MEMBER: "Ana Ruiz"},
        members=["U07WBOT9RZ2", "U03AAAAAAA1", "U03AAAAAAA2", ENGINEER, MEMBER],
    )


@pytest.fixture
def fake_url(fake: FakeSlack) -> Iterator[str]:
    with serve(fake_slack_app(fake)) as url:
        yield url


@contextmanager
def desk_server(settings: Settings, db: Engine) -> Iterator[tuple[Bot, str]]:
    """The one server with the web chat and the Slack desk, Slack receiving case events through the outbox."""
    bot = build(settings, db=db, external_desks=("slack",))
    import_registry(db, REGISTRY, policy=bot.policy)
    desk = slack.from_settings(bot)
    assert desk is not None
    with serve(create_app(bot, channels=[webchat.from_settings(bot), desk])) as base:
        yield bot, base


class Customer:
    """A customer on the web chat, through its HTTP API."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        answer = http.post("/api/webchat/sessions", json={"language": "en"})
        assert answer.status_code == 201, answer.text
        self.session = answer.json()["session_id"]

    def say(self, text: str) -> None:
        answer = self.http.post(f"/api/webchat/sessions/{self.session}/messages", json={"text": text})
        assert answer.status_code == 202, answer.text

    def send_file(self, name: str, data: bytes, mime: str) -> None:
        answer = self.http.post(
            f"/api/webchat/sessions/{self.session}/files", files={"file": (name, data, mime)}
        )
        assert answer.status_code == 202, answer.text

    def messages(self) -> list[dict[str, Any]]:
        answer = self.http.get(f"/api/webchat/sessions/{self.session}/messages", params={"after": 0})
        assert answer.status_code == 200, answer.text
        return list(answer.json()["messages"])

    def wait_for(self, needle: str, *, author: str | None = None) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next(
                (
                    m
                    for m in self.messages()
                    if needle in m["text"] and (author is None or m["author"] == author)
                ),
                None,
            )

        return wait_until(found, what=f"customer to receive {needle!r}")


def post(http: httpx.Client, path: str, body: bytes, *, form: bool, **headers: str) -> httpx.Response:
    return http.post(path, content=body, headers={**signed(body, form=form), **headers})


def open_case(customer: Customer, fake: FakeSlack, db: Engine) -> tuple[str, str]:
    """The customer reports CSP2604D0007 and asks for a person; returns the case ref and its Slack message ts."""
    # Registered (PO-26-0045) and in warranty until 2028-07-31: a covered unit, whose methods the desk allows.
    for text in ("hello", "CSP2604D0007", "Display shows E07 and shuts down under load", "human"):
        customer.say(text)
    found = REF.search(customer.wait_for("passed your conversation")["text"])
    assert found is not None
    ref = found.group()
    wait_until(lambda: case_row(db, ref).desk_ref.get("ts"), what="the case message")
    ts = str(case_row(db, ref).desk_ref["ts"])
    assert [p for p in fake.posts(channel=ESCALATION) if ref in p["text"] and "thread_ts" not in p]
    return ref, ts


def case_row(db: Engine, ref: str) -> Case:
    with Session(db) as session:
        case: Case = session.execute(select(Case).where(col(Case.ref) == ref)).scalar_one()
        session.expunge(case)
        return case


# --- the whole lifecycle -----------------------------------------------------------------------------------------


def test_case_lifecycle_from_web_chat_through_slack(
    settings: Settings, db: Engine, fake: FakeSlack, fake_url: str
) -> None:
    settings = slack_settings(settings, fake_url)  # engineers = members of the escalation channel
    with desk_server(settings, db) as (bot, base), httpx.Client(base_url=base, timeout=10) as http:
        customer = Customer(http)
        ref, ts = open_case(customer, fake, db)

        # The case message: units with registry facts, the decision, buttons; its place is remembered.
        message = fake.posts(channel=ESCALATION)[0]
        shown = block_text(message["blocks"])
        for expected in (
            "CSP2604D0007",
            "2026-06-01",
            "Web chat visitor",
            "webchat",
            "E07",
            ref,
            "claim_case",
            "choose_method",
            "ask_customer",
            "not_covered",
            "close_case",
            "Factory repair",
            "Door to door",
            "W1",
        ):
            assert expected in shown, expected
        assert case_row(db, ref).desk_ref == {"channel": ESCALATION, "ts": ts}

        # Claim.
        assert (
            post(
                http,
                "/slack/interactivity",
                as_form(for_case(sample("block_actions.json"), ref, ts)),
                form=True,
            ).status_code
            == 200
        )
        customer.wait_for("Li Wei, one of our after-sales engineers")
        wait_until(
            lambda: any("Li Wei" in block_text(u["blocks"]) for u in fake.called("chat.update")),
            what="the case message updated with the claim",
        )

        # Someone who is not an engineer presses Close: told so, privately; nothing changes.
        body = as_form(action_payload(ref, ts, slack_blocks.CLOSE, user=OUTSIDER))
        assert post(http, "/slack/interactivity", body, form=True).status_code == 200
        wait_until(
            lambda: [e for e in fake.called("chat.postEphemeral") if e["user"] == OUTSIDER],
            what="the refusal",
        )
        assert bot.desk.get_case(ref)["status"] == "claimed"

        # The engineer's thread reply reaches the customer, signed; Slack's retry of it is handled once.
        reply = for_case(sample("event_thread_reply.json"), ref, ts).encode()
        assert post(http, "/slack/events", reply, form=False).status_code == 200
        relayed = customer.wait_for("E07 is the inverter overload trip", author="engineer")
        assert relayed["author_name"] == "Li Wei" and "Li Wei" in relayed["text"]
        retry = post(
            http,
            "/slack/events",
            reply,
            form=False,
            **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"},
        )
        assert retry.status_code == 200

        # Our own relay into the thread is not sent back to the customer.
        own = for_case(sample("event_bot_message.json"), ref, ts).encode()
        assert post(http, "/slack/events", own, form=False).status_code == 200

        # The customer answers, with a photo: both appear in the thread, attributed, with a link to the file.
        customer.say("The battery is a 12 V 200 Ah LiFePO4 <!channel>")
        customer.send_file("display.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png")
        answer = wait_until(
            lambda: [p for p in fake.posts(channel=ESCALATION, thread_ts=ts) if "LiFePO4" in p["text"]],
            what="the customer's answer in the thread",
        )[0]
        assert answer["text"].startswith("*Web chat visitor* (webchat):")
        assert "&lt;!channel&gt;" in block_text(answer["blocks"])  # customer text cannot mention anyone
        link = f"https://warranty.example/api/desk/cases/{ref}/attachments/"
        wait_until(
            lambda: [p for p in fake.posts(thread_ts=ts) if link in block_text(p["blocks"])],
            what="the attachment link in the thread",
        )

        # note: stays internal, and is marked so.
        note = event_payload(
            ref,
            ts,
            event_id="Ev07NOTE0001",
            message_ts="1777889100.000200",
            text="note: battery probably undersized for the load",
        )
        assert post(http, "/slack/events", note, form=False).status_code == 200
        wait_until(
            lambda: [
                r
                for r in fake.called("reactions.add")
                if r["timestamp"] == "1777889100.000200" and r["name"] == "lock"
            ],
            what="the note mark",
        )
        assert [m["text"] for m in bot.desk.get_case(ref)["messages"] if m["author"] == "note"] == [
            "battery probably undersized for the load"
        ]

        # Ask customer: the modal opens; its submission reaches the customer.
        body = as_form(action_payload(ref, ts, slack_blocks.ASK_CUSTOMER))
        assert post(http, "/slack/interactivity", body, form=True).status_code == 200
        modal = wait_until(lambda: fake.called("views.open"), what="the ask modal")[0]["view"]
        assert modal["callback_id"] == "ask_customer" and modal["private_metadata"] == ref
        submitted = post(
            http,
            "/slack/interactivity",
            as_form(for_case(sample("view_submission.json"), ref, ts)),
            form=True,
        )
        assert submitted.status_code == 200
        customer.wait_for("photo of the rating label", author="engineer")

        # Choose method: the customer gets the method's instructions; the message shows the method.
        body = as_form(action_payload(ref, ts, slack_blocks.CHOOSE_METHOD, method="factory_repair"))
        assert post(http, "/slack/interactivity", body, form=True).status_code == 200
        customer.wait_for("the service method our engineer has chosen is factory repair (M3)")
        wait_until(
            lambda: any(
                "*Method:* Factory repair" in block_text(u["blocks"]) for u in fake.called("chat.update")
            ),
            what="the method on the case message",
        )

        # App Home: the engineer's own cases, and the open cases by status.
        home = json.loads(sample("event_thread_reply.json"))
        home["event_id"] = "Ev07HOME0001"
        home["event"] = {
            "type": "app_home_opened",
            "user": ENGINEER,
            "channel": "D07HOME1234",
            "tab": "home",
            "event_ts": "1777890000.000100",
        }
        assert post(http, "/slack/events", json.dumps(home).encode(), form=False).status_code == 200
        view = wait_until(lambda: fake.called("views.publish"), what="the App Home")[0]
        assert view["user_id"] == ENGINEER
        assert f"*Your cases (Li Wei):*\n• *{ref}*" in view["view"]["blocks"][1]["text"]["text"]

        # Close: the customer is asked for a rating; their rating shows on the case message.
        body = as_form(action_payload(ref, ts, slack_blocks.CLOSE))
        assert post(http, "/slack/interactivity", body, form=True).status_code == 200
        customer.wait_for("is now closed")
        customer.wait_for("rate us from 1")
        customer.say("5")
        wait_until(lambda: bot.desk.get_case(ref)["rating"] == 5, what="the rating")
        wait_until(
            lambda: any("5/5" in block_text(u["blocks"]) for u in fake.called("chat.update")),
            what="the rating on the case message",
        )

        # /warranty with the case ref and with a serial: ephemeral answers.
        command = sample("slash_command.txt").replace(SAMPLE_REF, ref).encode()
        shown_case = post(http, "/slack/commands", command, form=True)
        assert shown_case.status_code == 200
        assert shown_case.json()["response_type"] == "ephemeral"
        assert ref in shown_case.json()["text"] and "Closed" in block_text(shown_case.json()["blocks"])
        command = sample("slash_command.txt").replace(SAMPLE_REF, "csp2604d0007").encode()
        shown_unit = post(http, "/slack/commands", command, form=True).json()
        assert "PO-26-0045" in block_text(shown_unit["blocks"]) and ref in block_text(shown_unit["blocks"])

        # Long after the retry and the bot's own message were acknowledged: each had one effect, or none.
        relayed_texts = [m["text"] for m in customer.messages() if m["author"] == "engineer"]
        assert sum("E07 is the inverter overload trip" in t for t in relayed_texts) == 1
        assert not any("11.2 V on the battery" in t for t in relayed_texts)
        assert not any("undersized" in m["text"] for m in customer.messages())


# --- reminders, configured engineers, Not covered ------------------------------------------------------------


def test_reminder_engineer_ids_and_not_covered(
    settings: Settings, db: Engine, fake: FakeSlack, fake_url: str
) -> None:
    settings = slack_settings(
        settings,
        fake_url,
        slack_engineer_ids=f" {ENGINEER} ,U0SOMEONE9",
        slack_remind_after=timedelta(seconds=5),
        slack_remind_group="S0REMIND1",
    )
    # Slack's rate limit on the first post: the outbox tries again after Slack's Retry-After.
    fake.fail_next("chat.postMessage", 429, "ratelimited", {"Retry-After": "1"})
    with desk_server(settings, db) as (bot, base), httpx.Client(base_url=base, timeout=10) as http:
        customer = Customer(http)
        ref, ts = open_case(customer, fake, db)
        assert len(fake.called("chat.postMessage")) >= 2  # refused once, then posted

        # Unclaimed for long: announced again in the thread and the channel, mentioning the group.
        with Session(db) as session, session.begin():
            session.execute(
                update(Case)
                .where(Case.ref == ref)  # type: ignore[arg-type]
                .values(created_at=utcnow() - timedelta(hours=1))
            )
        reminder = wait_until(
            lambda: [p for p in fake.posts(thread_ts=ts) if p.get("reply_broadcast")], what="the reminder"
        )[0]
        assert "<!subteam^S0REMIND1>" in reminder["text"] and ref in reminder["text"]
        assert case_row(db, ref).reminded_at is not None

        # A channel member who is not in SLACK_ENGINEER_IDS may not act.
        body = as_form(action_payload(ref, ts, slack_blocks.NOT_COVERED, user=MEMBER))
        assert post(http, "/slack/interactivity", body, form=True).status_code == 200
        wait_until(
            lambda: [e for e in fake.called("chat.postEphemeral") if e["user"] == MEMBER], what="refusal"
        )
        assert not fake.called("views.open")

        # Not covered: the modal offers the cited exclusion clauses; unknown clauses are refused in the modal.
        body = as_form(action_payload(ref, ts, slack_blocks.NOT_COVERED))
        assert post(http, "/slack/interactivity", body, form=True).status_code == 200
        modal = wait_until(lambda: fake.called("views.open"), what="the Not covered modal")[0]["view"]
        assert modal["callback_id"] == "not_covered" and modal["private_metadata"] == ref
        submission = json.loads(for_case(sample("view_submission.json"), ref, ts))
        submission["view"].update(callback_id="not_covered", blocks=modal["blocks"])
        values = {
            "reason_block": {
                "reason_input": {
                    "type": "plain_text_input",
                    "value": "The warranty ended before the fault was reported.",
                }
            },
            "clauses_block": {"clauses_input": {"type": "plain_text_input", "value": "X1, Z9"}},
        }
        submission["view"]["state"]["values"] = values
        refused = post(http, "/slack/interactivity", as_form(json.dumps(submission)), form=True)
        assert refused.status_code == 200
        assert (
            refused.json()["response_action"] == "errors"
            and "Z9" in refused.json()["errors"]["clauses_block"]
        )
        # Submitted by the member who may not act: refused on the modal before its fields are looked at.
        by_member = {**submission, "user": {**submission["user"], "id": MEMBER}}
        refused = post(http, "/slack/interactivity", as_form(json.dumps(by_member)), form=True)
        assert refused.json() == {"response_action": "errors", "errors": {"reason_block": slack.REFUSAL}}
        values["clauses_block"]["clauses_input"]["value"] = "X1"
        accepted = post(http, "/slack/interactivity", as_form(json.dumps(submission)), form=True)
        assert accepted.status_code == 200 and not accepted.content
        told = customer.wait_for("warranty does not cover this claim (warranty period over (X1))")
        assert "The warranty ended before the fault was reported." in told["text"]
        case = bot.desk.get_case(ref)
        assert (case["status"], case["method"], case["claimed_by"]) == ("resolved", "not_covered", "Li Wei")
        customer.wait_for("rate us from 1")


# --- requests that must be refused ---------------------------------------------------------------------------


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path}/warranty.db",
        data_dir=tmp_path,  # type: ignore[call-arg]
        attachments_dir=tmp_path / "attachments",
    )


def test_forged_stale_and_malformed_requests_are_refused(
    sqlite_settings: Settings, fake: FakeSlack, fake_url: str
) -> None:
    settings = slack_settings(sqlite_settings, fake_url)
    bot = build(settings, external_desks=("slack",))
    desk = slack.from_settings(bot)
    assert desk is not None
    reply = sample("event_thread_reply.json").encode()
    with serve(create_app(bot, channels=[desk])) as base, httpx.Client(base_url=base, timeout=10) as http:
        forged = {**signed(reply, form=False, secret="not-the-secret")}
        assert http.post("/slack/events", content=reply, headers=forged).status_code == 401
        stale = signed(reply, form=False, timestamp=int(time.time()) - 600)
        assert http.post("/slack/events", content=reply, headers=stale).status_code == 401
        assert http.post("/slack/events", content=reply).status_code == 401
        odd = {**signed(reply, form=False), "X-Slack-Request-Timestamp": "9" * 5000}
        assert http.post("/slack/events", content=reply, headers=odd).status_code == 401
        command = sample("slash_command.txt").encode()
        tampered = {**signed(command, form=True)}
        assert http.post("/slack/commands", content=command + b"&x=1", headers=tampered).status_code == 401

        for malformed in (b"{not json", b"\xff\xfe", b"payload=%7Bbroken", b"[1, 2]"):
            assert (
                http.post(
                    "/slack/interactivity", content=malformed, headers=signed(malformed, form=True)
                ).status_code
                == 400
            )
            assert (
                http.post(
                    "/slack/interactivity",
                    content=malformed,
                    headers=signed(malformed, form=True, secret="x"),
                ).status_code
                == 401
            )

        challenge = sample("url_verification.json").encode()
        answer = http.post("/slack/events", content=challenge, headers=signed(challenge, form=False))
        assert answer.status_code == 200
        assert answer.json()["challenge"] == json.loads(challenge)["challenge"]
        assert http.get("/slack/events").status_code == 405

    with Session(bot.db) as session:
        assert session.execute(select(KeyValue)).first() is None  # no event id was taken as seen
        assert session.execute(select(Message)).first() is None
    assert not [c for c in fake.calls if c.method != "auth.test"]  # nothing reached Slack's API either


# --- the sender: Slack's answers become retry or dead letter -----------------------------------------------------


def escalated_case(bot: Bot) -> str:
    """A console customer's claim that asked for a human: the reference of the case it opened."""
    for number, text in enumerate(("hi", "CSP2402A0153", "E07 under load", "human")):
        bot.engine.accept(
            InboundMessage(
                channel="console",
                external_id=f"m{number}",
                sender_id="c1",
                chat_id="c1",
                text=text,
                received_at=utcnow(),
            )
        )
    bot.engine.process_pending()
    return str(bot.desk.list_cases()[0]["ref"])


def test_sender_maps_slack_errors(sqlite_settings: Settings, fake: FakeSlack, fake_url: str) -> None:
    bot = build(slack_settings(sqlite_settings, fake_url), external_desks=("slack",))
    desk = slack.from_settings(bot)
    assert desk is not None
    ref = escalated_case(bot)
    opened = DeskEvent(desk="slack", kind="case_opened", case_ref=ref)

    fake.fail_next("chat.postMessage", 429, "ratelimited", {"Retry-After": "30"})
    with pytest.raises(RetryLater) as limited:
        asyncio.run(desk.send_event(opened))
    assert limited.value.after == 30
    fake.fail_next("chat.postMessage", 503, "service_unavailable")
    with pytest.raises(RetryLater):
        asyncio.run(desk.send_event(opened))
    fake.fail_next("chat.postMessage", 200, "channel_not_found")
    with pytest.raises(PermanentFailure):
        asyncio.run(desk.send_event(opened))
    assert bot.desk.get_case(ref) and case_row(bot.db, ref).desk_ref == {}

    delivered = asyncio.run(desk.send_event(opened))
    assert delivered.external_id == f"{FIRST_TS:.6f}"
    # Delivered again (a crash before the outbox row was marked sent): the message is updated, not doubled.
    asyncio.run(desk.send_event(opened))
    assert len(fake.posts(channel=ESCALATION)) == 4  # three refused by the fake, one posted
    assert len(fake.called("chat.update")) == 1
    with pytest.raises(PermanentFailure):
        asyncio.run(desk.send_event(DeskEvent(desk="slack", kind="case_opened", case_ref="WR-1999-000001")))
    with pytest.raises(CaseNotFound):
        bot.desk.get_case("WR-1999-000001")


def test_a_revoked_token_a_send_met_is_on_healthz_of_every_front_until_a_new_token(
    settings: Settings, db: Engine, fake: FakeSlack, fake_url: str
) -> None:
    bot = build(slack_settings(settings, fake_url), db=db, external_desks=("slack",))
    desk = slack.from_settings(bot)
    assert desk is not None
    opened = DeskEvent(desk="slack", kind="case_opened", case_ref=escalated_case(bot))
    fake.fail_next("chat.postMessage", 200, "token_revoked")
    with pytest.raises(RetryLater):
        asyncio.run(desk.send_event(opened))

    # A front whose desk never sent (the sender ran in another process) reads it from the database.
    health = health_elsewhere(bot.settings, slack.from_settings)
    assert health["status"] == "degraded" and "token_revoked" in health["problems"]["slack"]

    async def started(desk: slack.SlackDesk) -> None:
        await desk.start()
        await desk.stop()

    # A worker's desk, which only sends (start_sending, not start), knows it too: it posts nothing.
    worker_desk = slack.from_settings(
        build(slack_settings(settings, fake_url), db=db, external_desks=("slack",))
    )
    assert worker_desk is not None
    asyncio.run(worker_desk.start_sending())
    with pytest.raises(RetryLater, match="token_revoked"):
        asyncio.run(worker_desk.send_event(opened))

    # A restart with the same token keeps it; the app installed again (a new token) starts clean.
    asyncio.run(started(desk))
    assert "token_revoked" in health_elsewhere(bot.settings, slack.from_settings)["problems"]["slack"]
    reinstalled = build(slack_settings(settings, fake_url, slack_bot_token=SecretStr("xoxb-new")), db=db)
    new_desk = slack.from_settings(reinstalled)
    assert new_desk is not None
    asyncio.run(started(new_desk))
    assert "problems" not in health_elsewhere(reinstalled.settings, slack.from_settings)


def test_settings() -> None:
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    assert slack.SlackConfig.from_settings(base) is None
    token = {"slack_bot_token": SecretStr(BOT_TOKEN), "slack_escalation_channel": ESCALATION}
    with pytest.raises(slack.SlackSettingsError, match="SLACK_SIGNING_SECRET"):
        slack.SlackConfig.from_settings(base.model_copy(update=token))
    with pytest.raises(slack.SlackSettingsError, match="SLACK_APP_TOKEN"):
        slack.SlackConfig.from_settings(base.model_copy(update={**token, "slack_mode": "socket"}))
    with pytest.raises(slack.SlackSettingsError, match="SLACK_ESCALATION_CHANNEL"):
        slack.SlackConfig.from_settings(
            base.model_copy(
                update={**token, "slack_escalation_channel": "", "slack_signing_secret": SecretStr(SECRET)}
            )
        )
    socket = slack.SlackConfig.from_settings(
        base.model_copy(update={**token, "slack_app_token": SecretStr("xapp-1")})
    )
    assert socket is not None and socket.mode == "socket"
    public = base.model_copy(
        update={
            **token,
            "slack_app_token": SecretStr("xapp-1"),
            "slack_signing_secret": SecretStr(SECRET),
            "public_url": "https://x.example",
        }
    )
    http = slack.SlackConfig.from_settings(public)
    assert http is not None and http.mode == "http" and http.api_url.endswith("/")
    group = slack.SlackConfig.from_settings(public.model_copy(update={"slack_remind_group": "S0REMIND1"}))
    assert group is not None and group.remind_mention == "<!subteam^S0REMIND1>"
    assert 0.5 <= group.remind_interval <= 60


# --- Block Kit ---------------------------------------------------------------------------------------------------


def _unit(number: int, outcome: str = "covered") -> dict[str, Any]:
    return {
        "serial": f"CSP2402A{number:04d}",
        "model": "CSP",
        "production_date": "2024-02-13",
        "port_arrival_date": "2024-03-10",
        "warranty_end": "2026-05-09" if number % 7 else "2026-06-01",
        "outcome": outcome if number % 5 else "not_covered",
        "basis": "port_arrival",
        "clauses": ["W1", "W2"] if number % 5 else ["W1", "W2", "X1"],
        "decision": {},
    }


def _case(units: int, **extra: Any) -> dict[str, Any]:
    return {
        "ref": "WR-2026-000042",
        "status": "claimed",
        "channel": "whatsapp",
        "language": "es",
        "claimed_by": "Li Wei",
        "method": "door_to_door",
        "rating": None,
        "claim_date": "2026-05-04",
        "customer": "Distribuidora <!here> & Co",
        "fault": "E07 " * 2000,
        "refusal_reason": None,
        "prefers_discount": False,
        "units": [_unit(100 + n) for n in range(units)],
        "attachments": [{"id": n, "name": f"photo|{n}.jpg"} for n in range(1, 30)],
        "messages": [],
        "audit": [],
        **extra,
    }


def _limits(blocks: list[dict[str, Any]], max_blocks: int = slack_blocks.MAX_MESSAGE_BLOCKS) -> None:
    assert len(blocks) <= max_blocks
    view = (
        {"view": {"type": "home", "blocks": blocks}} if max_blocks == slack_blocks.MAX_VIEW_BLOCKS else None
    )
    assert invalid_blocks(view or {"blocks": blocks}) is None  # what Slack itself would refuse

    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for node in walk(blocks):
        if node.get("type") in ("mrkdwn", "plain_text"):
            assert 0 < len(node["text"]) <= slack_blocks.MAX_TEXT
    for block in blocks:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= slack_blocks.MAX_HEADER


def test_forty_units_fit_block_kit_limits() -> None:
    fallback, blocks = slack_blocks.case_blocks(_case(40), public_url="https://warranty.example")
    _limits(blocks)
    shown = block_text(blocks)
    assert "*Units (40):*" in shown and "× " in shown  # grouped, not 40 lines
    assert "&lt;!here&gt; &amp; Co" in shown and "<!here>" not in shown
    assert "photo¦1.jpg" in shown and "/api/desk/cases/WR-2026-000042/attachments/29" in shown
    assert "*Method:* Door to door" in shown and "door_to_door" in shown  # the menu shows the method chosen
    assert len(fallback) <= slack_blocks.MAX_FALLBACK and "<!here>" not in fallback

    _, full = slack_blocks.case_blocks(_case(400), public_url="", actions=False, all_units=True)
    _limits(full)
    assert "CSP2402A0100" in block_text(full) and "more" in block_text(full)
    assert not [b for b in full if b["type"] == "actions"]
    _, few = slack_blocks.case_blocks(_case(3, status="closed", rating=4), public_url="")
    assert "★★★★☆ 4/5" in block_text(few) and not [b for b in few if b["type"] == "actions"]
    _limits(few)


def test_customer_thread_line_and_update_lines() -> None:
    text, blocks = slack_blocks.customer_message_blocks(
        _case(1), sender="Yusuf <@U1>", text="x" * 9000, attachment_ids=[2, 3], public_url="https://w.example"
    )
    _limits(blocks)
    assert text.startswith("*Yusuf &lt;@U1&gt;* (whatsapp): x") and len(text) <= slack_blocks.MAX_FALLBACK
    assert "attachments/2|photo¦2.jpg" in block_text(blocks)
    assert slack_blocks.update_line("replied", "Li Wei", "slack", {"text": "hi"}) is None
    assert (
        slack_blocks.update_line("replied", "Ana", "desk", {"text": "<b>"})
        == "💬 *Ana* (local desk) to the customer: &lt;b&gt;"
    )
    assert "Factory repair" in str(
        slack_blocks.update_line("method_chosen", "Li", "slack", {"method": "factory_repair"})
    )
    assert slack_blocks.update_line(None, None, None, {}) is None
    home = slack_blocks.home_view(
        engineer="Li Wei",
        mine=[],
        by_status={
            "open": [
                {"ref": f"WR-2026-{n:06d}", "channel": "email", "status": "open", "units": 1}
                for n in range(500)
            ]
        },
    )
    _limits(home["blocks"], slack_blocks.MAX_VIEW_BLOCKS)


def test_engineer_text_to_plain() -> None:
    assert slack_blocks.slack_to_plain(
        "See <https://docs.example/e07|the manual> and <https://x.example>, ask <@U05LIWEI7KD> or "
        "<mailto:a@b.example|a@b.example> &lt;now&gt; &amp; <!here> <#C1|warranty>",
        {"U05LIWEI7KD": "Li Wei"},
    ) == (
        "See the manual (https://docs.example/e07) and https://x.example, ask Li Wei or a@b.example <now> &  #warranty"
    )
    # A name that could not be looked up still reads as a sentence, never "Hi ,".
    assert (
        slack_blocks.slack_to_plain("Hi <@U06ANA2RTX>, see <@U05LIWEI7KD|li.wei>")
        == "Hi a colleague, see li.wei"
    )
    assert slack_blocks.mentioned_users("<@U06ANA2RTX> <@U06ANA2RTX> <@U05LIWEI7KD|li.wei> <#C1>") == [
        "U06ANA2RTX"
    ]
    assert slack_blocks.parse_clauses(" x1, M1;x1 ") == ["M1", "X1"]


def test_text_is_cut_outside_entities_and_links_and_long_lists_say_how_many_more() -> None:
    escaped = slack_blocks.escape("&<>" * 3000)  # 27000 characters of entities
    for limit in range(2990, 3001):
        clipped = slack_blocks.clip_mrkdwn(escaped, limit)
        assert len(clipped) <= limit and mrkdwn_problem(clipped) is None
    blocks = slack_blocks.sections(escaped, max_blocks=8)
    assert len(blocks) == 8 and all(mrkdwn_problem(b["text"]["text"]) is None for b in blocks)
    assert "".join(b["text"]["text"] for b in blocks).startswith(escaped[:20000])

    case = _case(1, attachments=[{"id": n, "name": f"photo <{n}> & scan.jpg"} for n in range(1, 120)])
    links = slack_blocks.attachment_links(case, "https://warranty.example")
    assert links.endswith(" more") and mrkdwn_problem(links) is None
    shown = len(re.findall(r"<https://", links))
    assert f"+{119 - shown} more" in links and len(links) <= slack_blocks.MAX_TEXT
    _, message = slack_blocks.case_blocks(case, public_url="https://warranty.example")
    _limits(message)
    _, line = slack_blocks.customer_message_blocks(
        case,
        sender="Yusuf",
        text="&" * 4000,
        attachment_ids=list(range(1, 120)),
        public_url="https://warranty.example",
    )
    _limits(line)
    assert line[-1]["type"] == "context" and "more" in line[-1]["elements"][0]["text"]


def test_edits_deletions_mentions_other_events_and_revocation(
    settings: Settings, db: Engine, fake: FakeSlack, fake_url: str
) -> None:
    settings = slack_settings(settings, fake_url)  # engineers = members of the escalation channel
    with desk_server(settings, db) as (_, base), httpx.Client(base_url=base, timeout=10) as http:
        customer = Customer(http)
        ref, ts = open_case(customer, fake, db)

        # /warranty while telling engineers needs conversations.members, which Slack is slow to answer: the
        # command is acknowledged at once and answered through its response_url.
        release = fake.hold("conversations.members")
        command = (
            sample("slash_command.txt")
            .replace(SAMPLE_REF, ref)
            .replace(
                quote_plus(
                    "https://hooks.slack.com/commands/T04KX7Q2M9L/7912345678456/aGxqqmkbRpgVbuO4sJLc0lEN"
                ),
                quote_plus(f"{fake_url}/hooks/response/cmd1"),
            )
            .encode()
        )
        try:
            acknowledged = post(http, "/slack/commands", command, form=True)
            assert acknowledged.status_code == 200 and fake.responses == []  # members not answered yet
        finally:
            release.set()
        answer = wait_until(lambda: fake.responses, what="the answer by response_url")[0]
        assert answer["id"] == "cmd1" and answer["response_type"] == "ephemeral" and ref in answer["text"]

        # A customer text of entities: the thread line is cut between them, which Slack takes.
        customer.say("R&D <test> " + "&<>" * 1300)
        wait_until(
            lambda: [p for p in fake.posts(thread_ts=ts) if "R&amp;D" in p["text"]],
            what="the customer's text in the thread",
        )

        # An engineer mentions a colleague: the customer reads the colleague's name.
        mention = event_payload(
            ref,
            ts,
            event_id="Ev07MENTN001",
            message_ts="1777889000.000100",
            text="Hi, <@U06ANA2RTX> will call you tomorrow about the E07 trip",
        )
        assert post(http, "/slack/events", mention, form=False).status_code == 200
        customer.wait_for("Ana Ruiz will call you tomorrow", author="engineer")

        # The engineer corrects the first reply: the customer gets the correction, once.
        assert (
            post(
                http,
                "/slack/events",
                for_case(sample("event_thread_reply.json"), ref, ts).encode(),
                form=False,
            ).status_code
            == 200
        )
        customer.wait_for("while about 1 kW is connected", author="engineer")
        edited = for_case(sample("event_message_changed.json"), ref, ts).encode()
        for _ in range(2):  # Slack's redelivery is handled once
            assert post(http, "/slack/events", edited, form=False).status_code == 200
        corrected = customer.wait_for("Correction: Hello Yusuf", author="engineer")
        assert "1.5 kW" in corrected["text"]

        # Deleting a relayed message cannot take it back: the engineer is told so, privately.
        deleted = for_case(sample("event_message_deleted.json"), ref, ts).encode()
        assert post(http, "/slack/events", deleted, form=False).status_code == 200
        told = wait_until(
            lambda: [e for e in fake.called("chat.postEphemeral") if e["text"] == slack.DELETED],
            what="the note about the deletion",
        )
        assert told[0]["user"] == ENGINEER and told[0]["thread_ts"] == ts

        # A file in the thread: not sent, and the engineer is told why.
        shared = for_case(sample("event_file_share.json"), ref, ts).encode()
        assert post(http, "/slack/events", shared, form=False).status_code == 200
        wait_until(
            lambda: [e for e in fake.called("chat.postEphemeral") if "Files attached" in e["text"]],
            what="the note about the file",
        )

        # Events the app may be subscribed to are acknowledged, not 404 (Slack would retry them).
        mentioned = for_case(sample("event_app_mention.json"), ref, ts).encode()
        assert post(http, "/slack/events", mentioned, form=False).status_code == 200
        reaction = json.loads(sample("event_app_mention.json"))
        reaction.update(
            event_id="Ev07REACT001",
            event={
                "type": "reaction_added",
                "user": ENGINEER,
                "reaction": "eyes",
                "item": {"type": "message", "channel": ESCALATION, "ts": ts},
                "event_ts": "1777889350.000100",
            },
        )
        assert post(http, "/slack/events", json.dumps(reaction).encode(), form=False).status_code == 200

        # The workspace revokes the token: sending stops, /healthz says why, nothing is lost meanwhile.
        assert http.get("/healthz").json()["status"] == "ok"
        assert (
            post(http, "/slack/events", sample("event_tokens_revoked.json").encode(), form=False).status_code
            == 200
        )
        health = wait_until(
            lambda: http.get("/healthz").json().get("problems"), what="the revocation on /healthz"
        )
        assert "tokens_revoked" in health["slack"]
        posted = len(fake.called("chat.postMessage"))
        customer.say("Any news?")
        waiting = wait_until(
            lambda: [
                o
                for o in outbox_rows(db)
                if o.channel == "slack" and o.last_error and "tokens_revoked" in o.last_error
            ],
            what="a waiting row",
        )
        assert waiting[0].status == "pending" and len(fake.called("chat.postMessage")) == posted


def outbox_rows(db: Engine) -> list[OutboxItem]:
    with Session(db) as session:
        return list(session.execute(select(OutboxItem)).scalars())


# --- corrections and methods outside the decision (issue 14) ----------------------------------------------------


def test_slack_corrects_a_unit_and_asks_goodwill_for_a_method_outside_the_decision(
    settings: Settings, db: Engine, fake: FakeSlack, fake_url: str
) -> None:
    settings = slack_settings(settings, fake_url)
    with desk_server(settings, db) as (bot, base), httpx.Client(base_url=base, timeout=10) as http:
        customer = Customer(http)
        ref, ts = open_case(customer, fake, db)
        shown = block_text(fake.posts(channel=ESCALATION)[0]["blocks"])
        assert "correct_unit" in shown
        # The registry's company and the unit's order, beside the chat's name.
        assert "*Company (registry):* Porto Alegre Energia Ltda." in shown and "order PO-26-0045" in shown

        def submit(view: dict[str, Any], values: dict[str, Any]) -> httpx.Response:
            submission = json.loads(for_case(sample("view_submission.json"), ref, ts))
            submission["view"].update(
                callback_id=view["callback_id"],
                blocks=view["blocks"],
                private_metadata=view["private_metadata"],
                state={"values": values},
            )
            return post(http, "/slack/interactivity", as_form(json.dumps(submission)), form=True)

        # Correct a unit: the certificate was found altered, so the unit is decided again (X3): to confirm.
        body = as_form(action_payload(ref, ts, slack_blocks.CORRECT_UNIT))
        assert post(http, "/slack/interactivity", body, form=True).status_code == 200
        modal = wait_until(
            lambda: [
                c["view"] for c in fake.called("views.open") if c["view"]["callback_id"] == "correct_unit"
            ],
            what="the correction modal",
        )[0]
        unit = {
            "serial_block": {
                "serial_input": {"type": "static_select", "selected_option": {"value": "CSP2604D0007"}}
            }
        }
        nothing = submit(modal, unit)  # neither a date nor the proof: refused in the modal, nothing changes
        assert nothing.json()["response_action"] == "errors" and "arrival_block" in nothing.json()["errors"]
        values = {
            **unit,
            "proof_block": {
                "proof_input": {"type": "static_select", "selected_option": {"value": "altered"}}
            },
            "note_block": {"note_input": {"type": "plain_text_input", "value": "Serial label reprinted."}},
        }
        accepted = submit(modal, values)
        assert accepted.status_code == 200 and not accepted.content
        case = bot.desk.get_case(ref)
        assert (case["status"], case["units"][0]["outcome"]) == ("to_confirm", "not_covered")
        assert "X3" in case["units"][0]["clauses"]
        assert [a["detail"]["note"] for a in case["audit"] if a["action"] == "unit_corrected"] == [
            "Serial label reprinted."
        ]
        wait_until(
            lambda: [p for p in fake.posts(thread_ts=ts) if "corrected CSP2604D0007" in p["text"]],
            what="the correction in the thread",
        )

        # Factory repair is no longer the warranty's: the menu opens the goodwill modal and sets nothing.
        body = as_form(action_payload(ref, ts, slack_blocks.CHOOSE_METHOD, method="factory_repair"))
        assert post(http, "/slack/interactivity", body, form=True).status_code == 200
        goodwill = wait_until(
            lambda: [
                c["view"] for c in fake.called("views.open") if c["view"]["callback_id"] == "goodwill_method"
            ],
            what="the goodwill modal",
        )[0]
        assert goodwill["private_metadata"] == f"{ref}|factory_repair"
        assert bot.desk.get_case(ref)["method"] is None
        reason = {
            "reason_block": {"reason_input": {"type": "plain_text_input", "value": "Long-standing customer."}}
        }
        unanswered = submit(goodwill, reason)
        assert (
            unanswered.json()["response_action"] == "errors"
            and "goodwill_block" in unanswered.json()["errors"]
        )
        chosen = {
            **reason,
            "goodwill_block": {
                "goodwill_input": {"type": "radio_buttons", "selected_option": {"value": "goodwill"}}
            },
        }
        assert submit(goodwill, chosen).status_code == 200
        told = customer.wait_for("as a goodwill gesture our engineer offers factory repair")
        assert "Long-standing customer." in told["text"] and "As the warranty provides" not in told["text"]
        case = bot.desk.get_case(ref)
        assert (case["status"], case["method"]) == ("in_service", "factory_repair")


# --- the service steps after the method (issue 19) ----------------------------------------------------------


def fulfil_payload(ref: str, ts: str, step: str) -> bytes:
    data = json.loads(action_payload(ref, ts, slack_blocks.FULFIL))
    action = data["actions"][0]
    for key in ("text", "value", "style"):
        action.pop(key, None)
    action.update(
        type="static_select",
        selected_option={"text": {"type": "plain_text", "text": step}, "value": f"{ref}|{step}"},
    )
    return as_form(json.dumps(data))


def test_slack_carries_a_factory_repair_through_its_steps(
    settings: Settings, db: Engine, fake: FakeSlack, fake_url: str
) -> None:
    settings = slack_settings(settings, fake_url, return_address="Warranty returns, 88 Chuangye Road, Ningbo")
    with desk_server(settings, db) as (bot, base), httpx.Client(base_url=base, timeout=10) as http:
        customer = Customer(http)
        ref, ts = open_case(customer, fake, db)
        body = as_form(action_payload(ref, ts, slack_blocks.CHOOSE_METHOD, method="factory_repair"))
        assert post(http, "/slack/interactivity", body, form=True).status_code == 200
        customer.wait_for("88 Chuangye Road, Ningbo")
        # The case message shows the step, the RMA and the next steps' menu.
        wait_until(
            lambda: any(
                "RMA-" in block_text(u["blocks"]) and "fulfil_step" in block_text(u["blocks"])
                for u in fake.called("chat.update")
            ),
            what="the service step on the case message",
        )

        # A step without input is done at once; the customer is told, the thread says it.
        assert (
            post(http, "/slack/interactivity", fulfil_payload(ref, ts, "received"), form=True).status_code
            == 200
        )
        customer.wait_for("has arrived at our factory")
        wait_until(
            lambda: [p for p in fake.posts(thread_ts=ts) if "received → received" in p["text"]],
            what="the step in the thread",
        )

        # A step with input opens its modal; a step that does not follow is refused in the modal.
        assert (
            post(http, "/slack/interactivity", fulfil_payload(ref, ts, "diagnosed"), form=True).status_code
            == 200
        )
        modal = wait_until(
            lambda: [
                c["view"] for c in fake.called("views.open") if c["view"]["callback_id"] == "fulfil_step"
            ],
            what="the step modal",
        )[0]
        assert modal["private_metadata"] == f"{ref}|diagnosed"

        def submit(view: dict[str, Any], text: str) -> httpx.Response:
            submission = json.loads(for_case(sample("view_submission.json"), ref, ts))
            values = {"fulfil_block": {"fulfil_input": {"type": "plain_text_input", "value": text}}}
            submission["view"].update(
                callback_id=view["callback_id"],
                blocks=view["blocks"],
                private_metadata=view["private_metadata"],
                state={"values": values},
            )
            return post(http, "/slack/interactivity", as_form(json.dumps(submission)), form=True)

        assert submit(modal, "Capacitor C12 failed.").status_code == 200
        customer.wait_for("Capacitor C12 failed.")
        early = dict(modal, private_metadata=f"{ref}|shipped_back")
        refused = submit(early, "DHL 9876543210")
        assert (
            refused.json()["response_action"] == "errors"
            and "does not follow" in refused.json()["errors"]["fulfil_block"]
        )
        assert bot.desk.get_case(ref)["fulfilment"]["step"] == "diagnosed"


def test_the_case_message_shows_the_service_step_and_a_waiting_credit() -> None:
    case = {
        "ref": "WR-2026-000043",
        "status": "in_service",
        "channel": "webchat",
        "language": "es",
        "units": [],
        "method": "factory_repair",
        "fulfilment": {
            "step": "in_transit",
            "step_label": "On its way to the factory",
            "rma": "RMA-2026-000043",
            "data": {"inbound": {"carrier": "DHL", "tracking": "1234567890"}},
            "actions": [{"action": "received", "label": "Unit received", "input": None}],
        },
        "credits_available": [
            {"amount": "10.13", "currency": "USD", "order_id": "PO-12", "case_ref": "WR-2026-000042"}
        ],
    }
    _, blocks = slack_blocks.case_blocks(case, public_url="https://warranty.example")
    shown = block_text(blocks)
    assert "On its way to the factory" in shown and "RMA-2026-000043" in shown and "DHL 1234567890" in shown
    assert "10.13 USD (order PO-12, WR-2026-000042)" in shown
    menu = next(b for b in blocks if b.get("block_id") == "fulfil_actions")["elements"][0]
    assert menu["action_id"] == "fulfil_step" and menu["options"][0]["value"] == "WR-2026-000043|received"
    line = slack_blocks.update_line(
        "fulfilment",
        "Li Wei",
        "slack",
        {
            "task": "shipped_back",
            "step": ["repaired", "shipped_back"],
            "carrier": "DHL",
            "tracking": "9876543210",
        },
    )
    assert line == "📦 *Li Wei*: shipped back → shipped back (DHL 9876543210)"


def test_a_desk_event_carries_what_the_desk_knew(
    sqlite_settings: Settings, fake: FakeSlack, fake_url: str
) -> None:
    """The thread line is made from the event itself: Slack reads no audit to find the question asked."""
    bot = build(slack_settings(sqlite_settings, fake_url), external_desks=("slack",))
    desk = slack.from_settings(bot)
    assert desk is not None
    ref = escalated_case(bot)
    bot.desk.ask_customer(ref, engineer="Ana Ruiz", question="Which model is on the label?", origin="desk")
    with Session(bot.db) as session:
        rows = (
            session.execute(
                select(OutboxItem).where(col(OutboxItem.channel) == "slack").order_by(col(OutboxItem.id))
            )
            .scalars()
            .all()
        )
    events = [event_from_payload(r.channel, r.chat_id, r.payload) for r in rows]
    assert events[0].kind == "case_opened" and {e.case_ref for e in events} == {ref}
    asked = events[-1]
    assert asked.kind == "case_updated"
    assert asked.detail == {
        "action": "asked_customer",
        "actor": "Ana Ruiz",
        "origin": "desk",
        "question": "Which model is on the label?",
    }
    for event in events:
        asyncio.run(desk.send_event(event))
    thread = [p["text"] for p in fake.posts(channel=ESCALATION) if p.get("thread_ts")]
    assert any("Which model is on the label?" in line for line in thread), thread
    # A row queued before events had their own type (a flat payload) still reads the same.
    flat = event_from_payload(
        "slack",
        ref,
        {"event": "case_updated", "case_id": 1, "action": "noted", "actor": "Li Wei", "origin": "desk"},
    )
    assert flat == DeskEvent(
        desk="slack",
        kind="case_updated",
        case_ref=ref,
        detail={"action": "noted", "actor": "Li Wei", "origin": "desk"},
    )
