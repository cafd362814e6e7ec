"""The Teams channel against a fake Bot Framework on loopback: signed activities in, connector calls out."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select
from sqlmodel import Session

from adapters import teams
from bot.app import Bot, build
from bot.config import Settings
from bot.messages import Button, OutboundMessage
from bot.outbox import RetryLater, Unreachable
from bot.registry import import_registry
from bot.server import create_app
from bot.store import InboxItem
from bot.store.kv import kv_put
from tests.fakes.server import serve
from tests.fakes.teams import BotFramework, new_key
from tests.support import wait_until

PAYLOADS = Path(__file__).with_name("payloads") / "teams"
REGISTRY = Path(__file__).with_name("data") / "registry-sample.csv"
APP_ID = "3f2a9c1e-7b4d-4e8a-9f06-1c5d2b8e7a43"  # the bot's "28:" id in the samples
BOT_ID = f"28:{APP_ID}"
SAMPLE_SERVICE_URL = b"https://smba.trafficmanager.net/emea/"
CONVERSATION = "a:1Mp08Rl8mA-h_Ta_6KjLm-4KzyKsgTSPJzLX_qZ5CJYVd6lymrVAKwJuMhJls5WdvSuXvQR4-bL9emfZ8wiYVnb"
USER_ID = "29:1-S9ROk8Z2tfUHBr2UUYj3sv1q_dIDKY0NJo_5zORIDfyJ927l4nIRruQH-7PyM1aneBaqgWRjFlBcsyrunNyJN"
PASSWORD = "app-password-for-tests"


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


@pytest.fixture
def framework() -> Iterator[tuple[BotFramework, str]]:
    fake = BotFramework(app_id=APP_ID, app_password=PASSWORD)
    with serve(fake.app()) as url:
        yield fake, url


def teams_settings(settings: Settings, fake_url: str) -> Settings:
    return settings.model_copy(update={
        "teams_app_id": APP_ID, "teams_app_password": SecretStr(PASSWORD),
        "teams_openid_metadata_url": f"{fake_url}/v1/.well-known/openidconfiguration",
        "teams_token_url": f"{fake_url}/{{tenant}}/oauth2/v2.0/token", "outbox_poll_seconds": 0.1,
    })


class Customer:
    """Posts activities to the bot as the Bot Connector does: the sample's bytes, serviceUrl set to the fake."""

    def __init__(self, fake: BotFramework, fake_url: str, bot_url: str) -> None:
        self.fake = fake
        self.service_url = f"{fake_url}/emea/"
        self.bot_url = bot_url

    def body(self, name: str) -> bytes:
        return payload(name).replace(SAMPLE_SERVICE_URL, self.service_url.encode())

    def derived(self, name: str, **changes: Any) -> bytes:
        activity = json.loads(self.body(name))
        activity.update(changes)
        return json.dumps(activity, ensure_ascii=False, indent=2).encode() + b"\n"

    def post(self, body: bytes, token: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        token = token if token is not None else self.fake.issue(service_url=self.service_url)
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(f"{self.bot_url}{teams.PATH}", content=body, timeout=10,
                          headers={"Content-Type": "application/json", **auth, **(headers or {})})


def inbox(db: Engine) -> list[InboxItem]:
    with Session(db) as session:
        return list(session.execute(select(InboxItem).order_by(InboxItem.id)).scalars())  # type: ignore[arg-type]


def buttons_of(activity: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for card in activity.get("attachments", []) for b in card["content"]["buttons"]]


# --- end to end ----------------------------------------------------------------------------------------


def test_claim_on_teams_and_an_engineers_reply(settings: Settings, db: Engine,
                                               framework: tuple[BotFramework, str]) -> None:
    fake, fake_url = framework
    bot = build(teams_settings(settings, fake_url), db=db)
    import_registry(db, REGISTRY, policy=bot.policy)
    channel = teams.from_settings(bot)
    assert channel is not None
    with serve(create_app(bot, channels=[channel])) as bot_url:
        customer = Customer(fake, fake_url, bot_url)
        assert customer.post(customer.body("conversation_update.json")).status_code == 200
        greeting = wait_until(lambda: fake.posted(), what="the greeting")[0]
        assert greeting["conversation"] == {"id": CONVERSATION}
        assert greeting["from"]["id"] == BOT_ID and greeting["recipient"]["id"] == USER_ID
        assert greeting["textFormat"] == "plain"
        assert fake.activities[0]["authorization"] == "Bearer connector-token-1"

        assert customer.post(customer.body("message_activity.json")).status_code == 200
        question = wait_until(lambda: next((a for a in fake.posted() if buttons_of(a)), None),
                              what="the cause question with buttons")
        normal = next(b for b in buttons_of(question) if b.get("value") == {"value": "cause:normal"})
        assert normal["type"] == "messageBack" and normal["text"] == "cause:normal"
        assert normal["displayText"] == normal["title"]
        stored = inbox(db)[1]
        assert stored.external_id == "msteams:1777886452318" and stored.chat_id == CONVERSATION
        assert stored.payload["attachments"] == []  # the text/html copy of the text is not a file
        assert stored.payload["locale_hint"] == "fr-FR" and stored.payload["sender_name"] == "Camille Durand"

        # The button press, as Teams delivers a messageBack; then a person is asked for, so a case exists.
        press = customer.derived("message_activity.json", id="1777886470001", text=normal["text"],
                                 value=normal["value"], attachments=[])
        assert customer.post(press).status_code == 200
        human = customer.derived("message_activity.json", id="1777886490002", text="human", attachments=[])
        assert customer.post(human).status_code == 200
        case = wait_until(lambda: next(iter(bot.desk.list_cases()), None), what="a case")
        assert bot.desk.get_case(case["ref"])["units"][0]["serial"] == "CSP2402A0388"

        # A picture pasted into the chat: fetched from the connector with our token, kept with the case.
        fake.files["0-weu-d1-photo"] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
        picture = customer.derived("message_activity.json", id="1777886510003", text="", attachments=[
            {"contentType": "image/*", "contentUrl": f"{customer.service_url}v3/attachments/0-weu-d1-photo/views/original"},
            {"contentType": "text/html", "content": "<div><img src=\"x\"></div>"}])
        assert customer.post(picture).status_code == 200
        wait_until(lambda: bot.desk.get_case(case["ref"])["attachments"], what="the picture with the case")
        [kept] = bot.desk.get_case(case["ref"])["attachments"]
        assert (kept["mime"], kept["kind"]) == ("image/png", "photo")

        # Days later an engineer answers: the message goes out proactively through the stored reference.
        before = len(fake.posted())
        bot.desk.reply(case["ref"], engineer="Li Wei", text="Bonjour <b>Camille</b>, **merci**")
        reply = wait_until(lambda: next((a for a in fake.posted()[before:] if "Li Wei" in a["text"]), None),
                           what="the engineer's reply")
        assert "Bonjour <b>Camille</b>, **merci**" in reply["text"] and reply["textFormat"] == "plain"
        assert reply["recipient"]["id"] == USER_ID and reply["conversation"]["id"] == CONVERSATION
    assert len(fake.token_requests) == 1  # one token, cached, for every reply
    assert fake.key_requests == 1  # one fetch of the signing keys for every activity
    assert fake.token_requests[0]["scope"] == teams.BOT_FRAMEWORK_SCOPE


def test_a_restart_reuses_the_stored_token_and_reference(settings: Settings, db: Engine,
                                                         framework: tuple[BotFramework, str]) -> None:
    fake, fake_url = framework
    bot = build(teams_settings(settings, fake_url), db=db)
    channel = teams.from_settings(bot)
    assert channel is not None
    with serve(create_app(bot, channels=[channel])) as bot_url:
        customer = Customer(fake, fake_url, bot_url)
        legacy = customer.derived("message_activity.json", channelId="skype", text="hello")
        assert customer.post(legacy).status_code == 200  # Skype's legacy channel id is still accepted
        answered = len(wait_until(lambda: fake.posted(), what="the answer on the legacy channel"))
    # A new process: the connector token comes from the database, not from the token endpoint again.
    restarted = teams.from_settings(build(bot.settings, db=db))
    assert restarted is not None
    with serve(create_app(restarted.bot, channels=[restarted])) as bot_url:
        customer = Customer(fake, fake_url, bot_url)
        again = customer.derived("message_activity.json", channelId="skype", text="status", id="1777886999999")
        assert customer.post(again).status_code == 200
        wait_until(lambda: len(fake.posted()) > answered, what="an answer after the restart")
    assert len(fake.token_requests) == 1
    assert all(b["type"] == "imBack" for a in fake.posted() for b in buttons_of(a))


# --- verification -------------------------------------------------------------------------------------


@pytest.fixture
def running(settings: Settings, db: Engine, framework: tuple[BotFramework, str]) -> Iterator[tuple[Customer, Bot]]:
    fake, fake_url = framework
    configured = build(teams_settings(settings, fake_url), db=db)
    channel = teams.from_settings(configured)
    assert channel is not None
    with serve(create_app(configured, channels=[channel])) as bot_url:
        yield Customer(fake, fake_url, bot_url), configured


@functools.cache
def other_key() -> Any:
    return new_key()


def test_forged_stale_or_malformed_activities_are_refused_and_nothing_is_stored(
        running: tuple[Customer, Bot]) -> None:
    customer, configured = running
    fake, url = customer.fake, customer.service_url
    forgeries = {
        "missing": "",
        "not a jwt": "abc.def",
        "other key": fake.issue(service_url=url, key=other_key()),
        "expired": fake.issue(service_url=url, expires_in=-3600),
        "audience": fake.issue(service_url=url, audience="another-bot"),
        "issuer": fake.issue(service_url=url, issuer="https://sts.windows.net/evil/"),
        "service url": fake.issue(service_url="https://attacker.example/"),
        "unknown key id": fake.issue(service_url=url, key=other_key(), kid="attacker"),
    }
    body = customer.body("message_activity.json")
    refused = {name: customer.post(body, token=token).status_code for name, token in forgeries.items()}
    assert refused == dict.fromkeys(forgeries, 401)
    # A channel the signing key is not endorsed for is a forgery too.
    assert customer.post(customer.derived("message_activity.json", channelId="webchat")).status_code == 401
    for malformed in (b"{not json", b"[]", json.dumps({"type": "message"}).encode(),
                      customer.derived("message_activity.json", serviceUrl="file:///etc/passwd")):
        assert customer.post(malformed).status_code == 400, malformed
    assert inbox(configured.db) == []


def test_redelivery_and_other_activity_types_store_nothing_new(running: tuple[Customer, Bot]) -> None:
    customer, configured = running
    body = customer.body("message_activity.json")
    assert customer.post(body).status_code == 200
    assert customer.post(body).status_code == 200
    typing = customer.derived("message_activity.json", type="typing", id="typing-1")
    assert customer.post(typing).status_code == 200
    others = customer.derived("conversation_update.json", membersAdded=[{"id": USER_ID}], id="f:other")
    assert customer.post(others).status_code == 200
    assert [i.external_id for i in inbox(configured.db)] == ["msteams:1777886452318"]


# --- parsing and rendering ----------------------------------------------------------------------------


def test_a_message_activity_becomes_one_inbound_message() -> None:
    activity = teams.read_activity(payload("message_activity.json"))
    message = teams.to_inbound(activity, text=teams.message_text(activity))
    assert message.text.startswith("Bonjour, notre onduleur-chargeur CSP2402A0388 affiche l'erreur E07")
    assert (message.chat_id, message.sender_id, message.locale_hint) == (CONVERSATION, USER_ID, "fr-FR")
    assert teams.file_refs(activity) == []
    reference = teams.reference_of(activity)
    assert (reference.service_url, reference.bot_id, reference.user_id) == (SAMPLE_SERVICE_URL.decode(), BOT_ID,
                                                                              USER_ID)
    assert reference.tenant_id == "8b7e4d21-05c3-4a9f-b6e2-9d1f0c3a7e58"


def test_the_bot_being_added_is_a_greeting() -> None:
    activity = teams.read_activity(payload("conversation_update.json"))
    assert teams.is_greeting(activity)
    assert not teams.is_greeting({**activity, "membersAdded": [{"id": USER_ID}]})


def test_a_mention_of_the_bot_is_not_part_of_the_text() -> None:
    activity = teams.read_activity(payload("message_activity.json"))
    activity.update(text="<at>CSP Warranty</at> CSP2402A0388 E07", entities=[
        {"type": "mention", "text": "<at>CSP Warranty</at>", "mentioned": {"id": BOT_ID, "name": "CSP Warranty"}}])
    assert teams.message_text(activity) == "CSP2402A0388 E07"


def test_files_are_told_apart_from_the_html_copy_and_cards() -> None:
    activity = teams.read_activity(payload("message_activity.json"))
    activity["attachments"] += [
        {"contentType": teams.FILE_DOWNLOAD, "name": "invoice.pdf",
         "content": {"downloadUrl": "https://contoso.sharepoint.example/dl/1", "fileType": "pdf"}},
        {"contentType": "image/*", "contentUrl": "https://smba.trafficmanager.net/emea/v3/attachments/x"},
        {"contentType": "application/vnd.microsoft.card.adaptive", "content": {}},
    ]
    refs = teams.file_refs(activity)
    assert [(r.name, r.mime, r.authenticated) for r in refs] == [
        ("invoice.pdf", "application/pdf", False), ("picture", "image/*", True)]


def test_buttons_become_hero_cards() -> None:
    reference = teams.Reference(service_url="https://smba.example/", conversation_id=CONVERSATION,
                                channel_id="msteams", bot_id=BOT_ID, user_id=USER_ID)
    buttons = tuple(Button(label=f"Option <{n}>", value=f"lang:{n}") for n in range(7))
    activity = teams.to_activity(OutboundMessage(channel="teams", chat_id=CONVERSATION, text="Pick", buttons=buttons),
                                 reference)
    assert [len(card["content"]["buttons"]) for card in activity["attachments"]] == [6, 1]
    assert activity["attachments"][0]["contentType"] == "application/vnd.microsoft.card.hero"
    assert activity["attachments"][0]["content"]["buttons"][0] == {
        "type": "messageBack", "title": "Option <0>", "text": "lang:0", "displayText": "Option <0>",
        "value": {"value": "lang:0"}}
    skype = teams.to_activity(OutboundMessage(channel="teams", chat_id=CONVERSATION, text="Pick", buttons=buttons[:1]),
                              teams.Reference(**{**reference.__dict__, "channel_id": "skype"}))
    assert skype["attachments"][0]["content"]["buttons"] == [{"type": "imBack", "title": "Option <0>", "value": "lang:0"}]


async def test_connector_failures_map_to_outbox_outcomes(bot: Bot, framework: tuple[BotFramework, str]) -> None:
    fake, fake_url = framework
    channel = teams.from_settings(build(teams_settings(bot.settings, fake_url), db=bot.db))
    assert channel is not None
    kv_put(bot.db, teams._reference_key(CONVERSATION), {
        "service_url": f"{fake_url}/emea/", "conversation_id": CONVERSATION, "channel_id": "msteams",
        "bot_id": BOT_ID, "user_id": USER_ID})
    sender = channel.sender()
    message = OutboundMessage(channel="teams", chat_id=CONVERSATION, text="hello")
    try:
        fake.fail_next = [429, 503, 403]
        with pytest.raises(RetryLater) as throttled:
            await sender.send(message, {})
        assert throttled.value.after == 7
        with pytest.raises(RetryLater):
            await sender.send(message, {})
        with pytest.raises(Unreachable):
            await sender.send(message, {})
        delivered = await sender.send(message, {})
        assert delivered.external_id is not None and fake.posted()[-1]["text"] == "hello"
        with pytest.raises(Exception, match="no conversation reference"):
            await sender.send(OutboundMessage(channel="teams", chat_id="a:unknown", text="hello"), {})
    finally:
        await channel.stop()


def test_settings_decide_whether_teams_runs(bot: Bot) -> None:
    assert teams.from_settings(bot) is None
    half = build(bot.settings.model_copy(update={"teams_app_id": APP_ID}), db=bot.db)
    assert teams.from_settings(half) is None
