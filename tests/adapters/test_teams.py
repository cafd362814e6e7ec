"""The Teams channel against a fake Bot Framework on loopback: signed activities in, connector calls out."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select, text
from sqlmodel import Session

from adapters import teams
from bot.app import Bot, build
from bot.config import Settings
from bot.messages import Button, OutboundMessage
from bot.outbox import RetryLater, Unreachable
from bot.registry import import_registry
from bot.server import create_app
from bot.store import InboxItem
from bot.store.kv import kv_get, kv_put
from tests.fakes.server import serve
from tests.fakes.teams import APP_ID, MAX_ACTIVITY_BYTES, PASSWORD, PAYLOADS, TENANT, BotFramework, new_key
from tests.support import REGISTRY, wait_until

BOT_ID = f"28:{APP_ID}"
SAMPLE_SERVICE_URL = b"https://smba.trafficmanager.net/emea/"
CONVERSATION = "a:1Mp08Rl8mA-h_Ta_6KjLm-4KzyKsgTSPJzLX_qZ5CJYVd6lymrVAKwJuMhJls5WdvSuXvQR4-bL9emfZ8wiYVnb"
USER_ID = "29:1-S9ROk8Z2tfUHBr2UUYj3sv1q_dIDKY0NJo_5zORIDfyJ927l4nIRruQH-7PyM1aneBaqgWRjFlBcsyrunNyJN"


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


@pytest.fixture
def framework() -> Iterator[tuple[BotFramework, str]]:
    fake = BotFramework(app_id=APP_ID, app_password=PASSWORD)
    with serve(fake.app()) as url:
        yield fake, url


def teams_settings(settings: Settings, fake_url: str) -> Settings:
    return settings.model_copy(
        update={
            "teams_app_id": APP_ID,
            "teams_app_password": SecretStr(PASSWORD),
            "teams_openid_metadata_url": f"{fake_url}/v1/.well-known/openidconfiguration",
            "teams_token_url": f"{fake_url}/{{tenant}}/oauth2/v2.0/token",
            "teams_tenant_id": TENANT,
            "outbox_poll_seconds": 0.1,
            "fetch_insecure_hosts": "127.0.0.1",  # the fake is on loopback, over http
        }
    )


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

    def post(
        self, body: bytes, token: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        token = token if token is not None else self.fake.issue(service_url=self.service_url)
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(
            f"{self.bot_url}{teams.PATH}",
            content=body,
            timeout=10,
            headers={"Content-Type": "application/json", **auth, **(headers or {})},
        )


def inbox(db: Engine) -> list[InboxItem]:
    with Session(db) as session:
        return list(session.execute(select(InboxItem).order_by(InboxItem.id)).scalars())  # type: ignore[arg-type]


def buttons_of(activity: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for card in activity.get("attachments", []) for b in card["content"]["buttons"]]


# --- end to end ----------------------------------------------------------------------------------------


def test_claim_on_teams_and_an_engineers_reply(
    settings: Settings, db: Engine, framework: tuple[BotFramework, str]
) -> None:
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
        question = wait_until(
            lambda: next((a for a in fake.posted() if buttons_of(a)), None),
            what="the cause question with buttons",
        )
        normal = next(b for b in buttons_of(question) if b.get("value") == {"value": "cause:normal"})
        assert normal["type"] == "messageBack" and normal["text"] == "cause:normal"
        assert normal["displayText"] == normal["title"]
        stored = inbox(db)[1]
        assert stored.external_id == "msteams:1777886452318" and stored.chat_id == CONVERSATION
        assert stored.payload["attachments"] == []  # the text/html copy of the text is not a file
        assert stored.payload["locale_hint"] == "fr-FR" and stored.payload["sender_name"] == "Camille Durand"

        # The button press, as Teams delivers a messageBack; then a person is asked for, so a case exists.
        press = customer.derived(
            "message_activity.json",
            id="1777886470001",
            text=normal["text"],
            value=normal["value"],
            attachments=[],
        )
        assert customer.post(press).status_code == 200
        human = customer.derived("message_activity.json", id="1777886490002", text="human", attachments=[])
        assert customer.post(human).status_code == 200
        case = wait_until(lambda: next(iter(bot.desk.list_cases()), None), what="a case")
        assert bot.desk.get_case(case["ref"])["units"][0]["serial"] == "CSP2402A0388"

        # A picture pasted into the chat: fetched from the connector with our token, kept with the case.
        fake.files["0-weu-d1-photo"] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
        picture = customer.derived(
            "message_activity.json",
            id="1777886510003",
            text="",
            attachments=[
                {
                    "contentType": "image/*",
                    "contentUrl": f"{customer.service_url}v3/attachments/0-weu-d1-photo/views/original",
                },
                {"contentType": "text/html", "content": '<div><img src="x"></div>'},
            ],
        )
        assert customer.post(picture).status_code == 200
        wait_until(lambda: bot.desk.get_case(case["ref"])["attachments"], what="the picture with the case")
        [kept] = bot.desk.get_case(case["ref"])["attachments"]
        assert (kept["mime"], kept["kind"]) == ("image/png", "photo")

        # Days later an engineer answers: the message goes out proactively through the stored reference.
        before = len(fake.posted())
        bot.desk.reply(case["ref"], engineer="Li Wei", text="Bonjour <b>Camille</b>, **merci**")
        reply = wait_until(
            lambda: next((a for a in fake.posted()[before:] if "Li Wei" in a["text"]), None),
            what="the engineer's reply",
        )
        assert "Bonjour <b>Camille</b>, **merci**" in reply["text"] and reply["textFormat"] == "plain"
        assert reply["recipient"]["id"] == USER_ID and reply["conversation"]["id"] == CONVERSATION
    assert len(fake.token_requests) == 1  # one token, cached, for every reply
    assert fake.key_requests == 1  # one fetch of the signing keys for every activity
    assert fake.token_requests[0]["scope"] == teams.BOT_FRAMEWORK_SCOPE


def test_a_storage_failure_is_answered_503_so_the_connector_sends_the_activity_again(
    settings: Settings, db: Engine, framework: tuple[BotFramework, str]
) -> None:
    fake, fake_url = framework
    bot = build(teams_settings(settings, fake_url), db=db)
    channel = teams.from_settings(bot)
    assert channel is not None
    with serve(create_app(bot, channels=[channel])) as bot_url:
        customer = Customer(fake, fake_url, bot_url)
        with (
            db.begin() as connection
        ):  # the inbox is gone, as a failed disk or a lost connection would make it
            connection.execute(text("ALTER TABLE inboxitem RENAME TO inboxitem_away"))
        try:
            refused = customer.post(customer.body("message_activity.json"))
        finally:
            with db.begin() as connection:
                connection.execute(text("ALTER TABLE inboxitem_away RENAME TO inboxitem"))
        assert refused.status_code == 503  # as on every webhook; Teams answered 500 before
        assert refused.headers["retry-after"] and "nothing was stored" in refused.json()["error"]
        assert inbox(db) == []
        assert customer.post(customer.body("message_activity.json")).status_code == 200  # the redelivery
        assert [i.external_id for i in inbox(db)] == ["msteams:1777886452318"]


def test_a_restart_reuses_the_stored_token_and_reference(
    settings: Settings, db: Engine, framework: tuple[BotFramework, str]
) -> None:
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
        again = customer.derived(
            "message_activity.json", channelId="skype", text="status", id="1777886999999"
        )
        assert customer.post(again).status_code == 200
        wait_until(lambda: len(fake.posted()) > answered, what="an answer after the restart")
    assert len(fake.token_requests) == 1
    assert all(b["type"] == "imBack" for a in fake.posted() for b in buttons_of(a))


# --- verification -------------------------------------------------------------------------------------


@pytest.fixture
def running(
    settings: Settings, db: Engine, framework: tuple[BotFramework, str]
) -> Iterator[tuple[Customer, Bot]]:
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
    running: tuple[Customer, Bot],
) -> None:
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
        # Without Microsoft's word for the serviceUrl, the activity could send our token anywhere.
        "no serviceurl claim": fake.issue(service_url=None),
    }
    body = customer.body("message_activity.json")
    refused = {name: customer.post(body, token=token).status_code for name, token in forgeries.items()}
    assert refused == dict.fromkeys(forgeries, 401)
    # A channel the signing key is not endorsed for is a forgery too.
    assert customer.post(customer.derived("message_activity.json", channelId="webchat")).status_code == 401
    for malformed in (
        b"{not json",
        b"[]",
        json.dumps({"type": "message"}).encode(),
        customer.derived("message_activity.json", serviceUrl="file:///etc/passwd"),
    ):
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
    assert (reference.service_url, reference.bot_id, reference.user_id) == (
        SAMPLE_SERVICE_URL.decode(),
        BOT_ID,
        USER_ID,
    )
    assert reference.tenant_id == "8b7e4d21-05c3-4a9f-b6e2-9d1f0c3a7e58"


def test_the_bot_being_added_is_a_greeting() -> None:
    activity = teams.read_activity(payload("conversation_update.json"))
    assert teams.is_greeting(activity)
    assert not teams.is_greeting({**activity, "membersAdded": [{"id": USER_ID}]})


def test_a_mention_of_the_bot_is_not_part_of_the_text() -> None:
    activity = teams.read_activity(payload("message_activity.json"))
    activity.update(
        text="<at>CSP Warranty</at> CSP2402A0388 E07",
        entities=[
            {
                "type": "mention",
                "text": "<at>CSP Warranty</at>",
                "mentioned": {"id": BOT_ID, "name": "CSP Warranty"},
            }
        ],
    )
    assert teams.message_text(activity) == "CSP2402A0388 E07"


def test_files_are_told_apart_from_the_html_copy_and_cards() -> None:
    activity = teams.read_activity(payload("message_activity.json"))
    activity["attachments"] += [
        {
            "contentType": teams.FILE_DOWNLOAD,
            "name": "invoice.pdf",
            "content": {"downloadUrl": "https://contoso.sharepoint.example/dl/1", "fileType": "pdf"},
        },
        {"contentType": "image/*", "contentUrl": "https://smba.trafficmanager.net/emea/v3/attachments/x"},
        {"contentType": "application/vnd.microsoft.card.adaptive", "content": {}},
    ]
    refs = teams.file_refs(activity)
    assert [(r.name, r.mime, r.authenticated) for r in refs] == [
        ("invoice.pdf", "application/pdf", False),
        ("picture", "image/*", True),
    ]


def test_buttons_become_hero_cards() -> None:
    reference = teams.Reference(
        service_url="https://smba.example/",
        conversation_id=CONVERSATION,
        channel_id="msteams",
        bot_id=BOT_ID,
        user_id=USER_ID,
    )
    buttons = tuple(Button(label=f"Option <{n}>", value=f"lang:{n}") for n in range(7))
    [activity] = teams.to_activities(
        OutboundMessage(channel="teams", chat_id=CONVERSATION, text="Pick", buttons=buttons), reference
    )
    assert [len(card["content"]["buttons"]) for card in activity["attachments"]] == [6, 1]
    assert activity["attachments"][0]["contentType"] == "application/vnd.microsoft.card.hero"
    assert activity["attachments"][0]["content"]["buttons"][0] == {
        "type": "messageBack",
        "title": "Option <0>",
        "text": "lang:0",
        "displayText": "Option <0>",
        "value": {"value": "lang:0"},
    }
    [skype] = teams.to_activities(
        OutboundMessage(channel="teams", chat_id=CONVERSATION, text="Pick", buttons=buttons[:1]),
        teams.Reference(**{**reference.__dict__, "channel_id": "skype"}),
    )
    assert skype["attachments"][0]["content"]["buttons"] == [
        {"type": "imBack", "title": "Option <0>", "value": "lang:0"}
    ]


async def test_connector_failures_map_to_outbox_outcomes(
    bot: Bot, framework: tuple[BotFramework, str]
) -> None:
    fake, fake_url = framework
    channel = teams.from_settings(build(teams_settings(bot.settings, fake_url), db=bot.db))
    assert channel is not None
    kv_put(
        bot.db,
        teams._reference_key(CONVERSATION),
        {
            "service_url": f"{fake_url}/emea/",
            "conversation_id": CONVERSATION,
            "channel_id": "msteams",
            "bot_id": BOT_ID,
            "user_id": USER_ID,
        },
    )
    sender = channel.sender()
    message = OutboundMessage(channel="teams", chat_id=CONVERSATION, text="hello")
    try:
        fake.fail_next = [429, 503, 403]
        with pytest.raises(RetryLater) as throttled:
            await sender.send(message)
        assert throttled.value.after == 7
        with pytest.raises(RetryLater):
            await sender.send(message)
        with pytest.raises(Unreachable):
            await sender.send(message)
        delivered = await sender.send(message)
        assert delivered.external_id is not None and fake.posted()[-1]["text"] == "hello"
        with pytest.raises(Exception, match="no conversation reference"):
            await sender.send(OutboundMessage(channel="teams", chat_id="a:unknown", text="hello"))
    finally:
        await channel.stop()


def test_settings_decide_whether_teams_runs(bot: Bot) -> None:
    assert teams.from_settings(bot) is None
    half = build(bot.settings.model_copy(update={"teams_app_id": APP_ID}), db=bot.db)
    assert teams.from_settings(half) is None


# --- the tenant, the service URL, files after the 200, long replies, edits ---------------------------------


def test_the_token_comes_from_the_apps_own_tenant(
    settings: Settings, framework: tuple[BotFramework, str]
) -> None:
    # The shipped default names the tenant: a single-tenant app is unknown to the botframework.com authority.
    assert teams.token_url(Settings().teams_token_url, TENANT) == (
        f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
    )
    assert teams.token_url(
        "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token", TENANT
    ) == (f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")  # an old .env moves too
    fake, fake_url = framework
    configured = teams_settings(settings, fake_url)

    async def fetch(tenant: str) -> str:
        bot = build(configured.model_copy(update={"teams_tenant_id": tenant}))
        channel = teams.from_settings(bot)
        assert channel is not None
        try:
            return await channel.tokens.get()
        finally:
            await channel.stop()

    with pytest.raises(RetryLater, match="400"):
        asyncio.run(fetch("botframework.com"))
    assert fake.refused == [("tenant", 400)]
    assert asyncio.run(fetch(TENANT)).startswith("connector-token-")
    assert fake.token_requests[-1]["scope"] == teams.BOT_FRAMEWORK_SCOPE


def test_the_service_url_claim_is_compared_as_a_url() -> None:
    activity = {"channelId": "msteams", "serviceUrl": "https://smba.trafficmanager.net/emea/"}
    for claim in ("https://smba.trafficmanager.net/emea", "HTTPS://SMBA.trafficmanager.net:443/emea/"):
        assert (
            teams.check_activity({"serviceurl": claim}, None, activity)
            == "https://smba.trafficmanager.net/emea"
        )
    for claims in (
        {},
        {"serviceurl": ""},
        {"serviceUrl": activity["serviceUrl"]},
        {"serviceurl": "https://smba.trafficmanager.net/amer/"},
        {"serviceurl": "https://smba.trafficmanager.net.attacker.example/emea/"},
    ):
        with pytest.raises(teams.Unauthorized):
            teams.check_activity(claims, None, activity)


def test_a_conversation_reference_never_moves_to_another_service_url(running: tuple[Customer, Bot]) -> None:
    customer, configured = running
    fake = customer.fake
    assert customer.post(customer.body("message_activity.json")).status_code == 200
    wait_until(lambda: fake.posted(), what="the first answer")
    # A signed activity for the same conversation, vouched for another service URL: taken, but the replies
    # keep going where the conversation lives.
    elsewhere = customer.service_url.replace("/emea/", "/amer/")
    moved = customer.derived("message_activity.json", id="1777886600001", text="status", serviceUrl=elsewhere)
    assert customer.post(moved, token=fake.issue(service_url=elsewhere)).status_code == 200
    stored = kv_get(configured.db, teams._reference_key(CONVERSATION))
    assert stored is not None and stored[0]["service_url"] == customer.service_url
    assert stored[0]["bound_to"] == customer.service_url.rstrip("/")
    before = len(fake.posted())
    wait_until(lambda: len(fake.posted()) > before, what="the answer to the second message")
    assert all(entry["conversation_id"] == CONVERSATION for entry in fake.activities)


def test_files_are_fetched_after_the_200_and_a_restart_still_fetches_them(
    settings: Settings, db: Engine, framework: tuple[BotFramework, str]
) -> None:
    fake, fake_url = framework
    pdf = b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n"
    fake.files["invoice.pdf"] = pdf
    fake.files["0-weu-d7-3c9f5e1a2b4d6f8e0a1c3e5f7b9d1f3a"] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
    configured = teams_settings(settings, fake_url)
    fake.downloads_open.clear()  # the file host answers only when the test lets it
    try:
        bot = build(configured, db=db)
        channel = teams.from_settings(bot)
        assert channel is not None
        with serve(create_app(bot, channels=[channel])) as bot_url:
            customer = Customer(fake, fake_url, bot_url)
            activity = json.loads(customer.body("file_activity.json"))
            activity["attachments"][0]["content"]["downloadUrl"] = f"{fake_url}/files/invoice.pdf"
            body = json.dumps(activity).encode()
            # Answered while the download cannot have happened: the file host is still holding every request.
            assert customer.post(body).status_code == 200
            assert customer.post(body).status_code == 200  # a redelivery meanwhile fetches nothing twice
            assert fake.downloads == [] and inbox(db) == []
        # Stopped before the file came: the next process fetches it.
        fake.downloads_open.set()
        restarted = teams.from_settings(build(configured, db=db))
        assert restarted is not None
        with serve(create_app(restarted.bot, channels=[restarted])) as bot_url:
            customer = Customer(fake, fake_url, bot_url)
            [item] = wait_until(lambda: inbox(db), what="the message with its file")
            assert item.external_id == "msteams:1777886521406"
            assert item.payload["text"] == "Voici la facture d'achat."
            [kept] = item.payload["attachments"]
            assert (kept["name"], kept["mime"], kept["kind"]) == (
                "Facture_F2024-0318.pdf",
                "application/pdf",
                "document",
            )
            assert restarted.bot.attachments.path(kept["ref"]).read_bytes() == pdf
            # A pasted picture: from the connector, with our token, after the 200 too.
            assert customer.post(customer.body("image_activity.json")).status_code == 200
            wait_until(lambda: len(inbox(db)) == 2, what="the picture")
            [picture] = inbox(db)[1].payload["attachments"]
            assert (picture["mime"], picture["kind"]) == ("image/png", "photo")
    finally:
        fake.downloads_open.set()


async def test_a_long_reply_is_split_under_the_connector_limit(
    bot: Bot, framework: tuple[BotFramework, str]
) -> None:
    fake, fake_url = framework
    channel = teams.from_settings(build(teams_settings(bot.settings, fake_url), db=bot.db))
    assert channel is not None
    kv_put(
        bot.db,
        teams._reference_key(CONVERSATION),
        {
            "service_url": f"{fake_url}/emea/",
            "conversation_id": CONVERSATION,
            "channel_id": "msteams",
            "bot_id": BOT_ID,
            "user_id": USER_ID,
        },
    )
    text = "\n\n".join(f"保修说明第{n}段：" + "逆变器显示错误代码E07，请检查负载。" * 120 for n in range(8))
    message = OutboundMessage(
        channel="teams",
        chat_id=CONVERSATION,
        text=text,
        buttons=(Button(label="Talk to an engineer", value="cmd:human"),),
    )
    try:
        fake.fail_next = []
        await channel.sender().send(message)
    finally:
        await channel.stop()
    posted = fake.posted()
    assert len(posted) > 1 and fake.refused == []
    assert all(len(json.dumps(a).encode()) <= MAX_ACTIVITY_BYTES for a in posted)
    assert "".join(a["text"] for a in posted).replace("\n", "") == text.replace("\n", "")
    assert [bool(a.get("attachments")) for a in posted] == [False] * (len(posted) - 1) + [True]


def test_an_edited_message_is_taken_as_a_correction(running: tuple[Customer, Bot]) -> None:
    customer, configured = running
    assert customer.post(customer.body("message_activity.json")).status_code == 200
    assert customer.post(customer.body("message_update.json")).status_code == 200
    assert customer.post(customer.body("message_update.json")).status_code == 200  # redelivered: once
    undelete = customer.derived("message_update.json", channelData={"eventType": "undeleteMessage"})
    assert customer.post(undelete).status_code == 200
    _, edit = inbox(configured.db)
    assert edit.external_id.startswith("msteams:1777886452318:edit:")
    assert "CSP2402A0383" in edit.payload["text"] and edit.payload["raw"]["edited"] is True


def test_files_come_only_through_the_fetch_policy(running: tuple[Customer, Bot]) -> None:
    customer, configured = running
    fake = customer.fake
    fake.files["secret"] = b"%PDF-1.4 internal\n"
    loopback = customer.service_url.split("/emea/")[0].replace("127.0.0.1", "localhost")
    activity = json.loads(customer.body("file_activity.json"))
    activity["attachments"] = [
        # A name the activity chooses, on a host that is neither the connector nor a Teams file host.
        {
            "contentType": teams.FILE_DOWNLOAD,
            "name": "a.pdf",
            "content": {"downloadUrl": f"{loopback}/files/secret"},
        },
        # Internal addresses behind an allowed-looking name are refused as well.
        {
            "contentType": teams.FILE_DOWNLOAD,
            "name": "b.pdf",
            "content": {"downloadUrl": "https://127.0.0.1.sharepoint.com.attacker.example/files/secret"},
        },
        # A picture on another host: our token is never sent there.
        {"contentType": "image/*", "contentUrl": f"{loopback}/emea/v3/attachments/secret/views/original"},
    ]
    assert customer.post(json.dumps(activity).encode()).status_code == 200
    [item] = wait_until(lambda: inbox(configured.db), what="the message, with its files refused")
    assert [(a["kind"], a["ref"]) for a in item.payload["attachments"]] == [("rejected", "unavailable")] * 3
    assert fake.downloads == []  # nothing was fetched
    policy = teams.TeamsChannel(configured, teams.teams_settings(configured)).fetch_policy(
        "https://smba.trafficmanager.net/emea/"
    )
    assert policy.sends_token_to("smba.trafficmanager.net") and not policy.sends_token_to(
        "contoso.sharepoint.com"
    )
    assert policy.allows_host("contoso-my.sharepoint.com") and not policy.allows_host(
        "sharepoint.com.evil.example"
    )
