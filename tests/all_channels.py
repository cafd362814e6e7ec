"""Every HTTP channel on one in-process server, each third-party API a loopback fake, for the fuzz and
security tests; credentials, signing helpers and samples come from the channels' fakes (tests/fakes/)."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from bot.app import Bot, build
from bot.config import ApiChannelSettings, Settings
from bot.outbox import DEAD, HELD, PENDING, SENT
from bot.registry import import_registry
from bot.server import create_app
from bot.status import CaseStatus
from bot.store import Case, Conversation, InboxItem, Message, OutboxItem
from tests.conftest import postgres_schema
from tests.fakes.api_callback import SECRET as API_SECRET
from tests.fakes.api_callback import FakeCallback
from tests.fakes.line import SECRET as LINE_SECRET
from tests.fakes.line import TOKEN as LINE_TOKEN
from tests.fakes.line import FakeLine
from tests.fakes.server import serve
from tests.fakes.slack import BOT_TOKEN as SLACK_BOT_TOKEN
from tests.fakes.slack import ENGINEER, ESCALATION, MEMBER, OUTSIDER, FakeSlack
from tests.fakes.slack import SECRET as SLACK_SECRET
from tests.fakes.slack import create_app as fake_slack_app
from tests.fakes.teams import APP_ID as TEAMS_APP_ID
from tests.fakes.teams import PASSWORD as TEAMS_PASSWORD
from tests.fakes.teams import TENANT as TEAMS_TENANT
from tests.fakes.teams import BotFramework
from tests.fakes.telegram import SECRET as TELEGRAM_SECRET
from tests.fakes.telegram import TOKEN as TELEGRAM_TOKEN
from tests.fakes.telegram import FakeTelegram
from tests.fakes.viber import TOKEN as VIBER_TOKEN
from tests.fakes.viber import FakeViber
from tests.fakes.wechat import APP_ID as WECHAT_APP_ID
from tests.fakes.wechat import APP_SECRET as WECHAT_APP_SECRET
from tests.fakes.wechat import TOKEN as WECHAT_TOKEN
from tests.fakes.wechat import FakeWeChat
from tests.fakes.whatsapp import ACCESS_TOKEN as WHATSAPP_ACCESS_TOKEN
from tests.fakes.whatsapp import APP_SECRET as WHATSAPP_APP_SECRET
from tests.fakes.whatsapp import PHONE_NUMBER_ID, VERIFY_TOKEN, FakeGraph
from tests.support import REGISTRY, TESTS, wait_until

API_CHANNEL = "portal"
PAYLOADS = TESTS / "payloads"
DESK_TOKEN = "desk-token-for-security-tests-7f3a"
DESK_AUTH = {"Authorization": f"Bearer {DESK_TOKEN}"}
PUBLIC_URL = "https://warranty.example"
INBOX_STATUSES = frozenset({"pending", "done", "failed"})
OUTBOX_STATUSES = frozenset({PENDING, HELD, SENT, DEAD})
CONVERSATION_STATES = frozenset(
    {
        "new",
        "awaiting_serial",
        "awaiting_fault",
        "awaiting_proof",
        "screening",
        "preference",
        "with_engineer",
        "closed",
    }
)


def payload(channel: str, name: str) -> bytes:
    return (PAYLOADS / channel / name).read_bytes()


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """A DATABASE_URL: a SQLite file in `folder`, or a throwaway PostgreSQL schema (skipped locally when
    PostgreSQL is down, a failure in CI, like conftest's `database_url`)."""
    if kind == "sqlite":
        yield f"sqlite:///{folder}/warranty.db"
        return
    with postgres_schema() as url:
        yield url


@dataclass
class Stack:
    """The running server and the fakes behind it."""

    bot: Bot
    url: str
    telegram: FakeTelegram
    slack: FakeSlack
    graph: FakeGraph
    wechat: FakeWeChat
    framework: BotFramework
    framework_url: str

    @property
    def db(self) -> Engine:
        return self.bot.db

    @property
    def teams_service_url(self) -> str:
        return f"{self.framework_url}/emea/"

    def client(self) -> httpx.Client:
        # A connection per request: the server closes one after an unhandled error, and a reused one would
        # fail the next request with a confusing ReadError.
        return httpx.Client(base_url=self.url, timeout=15, limits=httpx.Limits(max_keepalive_connections=0))

    def inbox(self) -> list[InboxItem]:
        with Session(self.db) as session:
            return list(session.execute(select(InboxItem).order_by(col(InboxItem.id))).scalars())

    def outbox(self) -> list[OutboxItem]:
        with Session(self.db) as session:
            return list(session.execute(select(OutboxItem).order_by(col(OutboxItem.id))).scalars())

    def customer_texts(self) -> list[str]:
        with Session(self.db) as session:
            return list(
                session.execute(select(col(Message.text)).where(col(Message.author) == "customer")).scalars()
            )

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until no inbox row waits (Telegram albums included) and no outbox row is due now."""

        def quiet() -> bool:
            with Session(self.db) as session:
                waiting = session.execute(
                    select(func.count()).select_from(InboxItem).where(col(InboxItem.status) == "pending")
                ).scalar_one()
            return waiting == 0 and not self.bot.engine.inbox_signal.is_set()

        wait_until(quiet, timeout=timeout, what="the inbox to be worked off")


def consistency_problems(db: Engine) -> list[str]:
    """What is wrong in the database: rows in unknown states, processed rows without their time, shared refs."""
    problems: list[str] = []
    with Session(db) as session:
        for item in session.execute(select(InboxItem)).scalars():
            if item.status not in INBOX_STATUSES:
                problems.append(f"inbox {item.id} in status {item.status!r}")
            if item.status in ("done", "failed") and item.processed_at is None:
                problems.append(f"inbox {item.id} is {item.status} without processed_at")
        for out in session.execute(select(OutboxItem)).scalars():
            if out.status not in OUTBOX_STATUSES:
                problems.append(f"outbox {out.id} in status {out.status!r}")
            if out.status == "sent" and out.sent_at is None:
                problems.append(f"outbox {out.id} is sent without sent_at")
        for conversation in session.execute(select(Conversation)).scalars():
            if conversation.state not in CONVERSATION_STATES:
                problems.append(f"conversation {conversation.id} in state {conversation.state!r}")
        refs = []
        for case in session.execute(select(Case)).scalars():
            refs.append(case.ref)
            if case.status not in set(CaseStatus):
                problems.append(f"case {case.ref} in status {case.status!r}")
        if len(refs) != len(set(refs)):
            problems.append("two cases share a ref")
    return problems


def channel_values(
    database_url: str,
    folder: Path,
    *,
    telegram: str,
    slack: str,
    graph: str,
    wechat: str,
    framework: str,
    line: str,
    viber: str,
    callback: str,
) -> dict[str, Any]:
    """Settings for every HTTP channel, pointed at the fakes' base URLs."""
    return {
        "database_url": database_url,
        "data_dir": folder,
        "attachments_dir": folder / "attachments",
        "outbox_poll_seconds": 0.1,
        "public_url": PUBLIC_URL,
        "desk_token": SecretStr(DESK_TOKEN),
        "telegram_bot_token": SecretStr(TELEGRAM_TOKEN),
        "telegram_api_base_url": telegram,
        "telegram_webhook_secret": SecretStr(TELEGRAM_SECRET),
        "telegram_mode": "webhook",
        "slack_bot_token": SecretStr(SLACK_BOT_TOKEN),
        "slack_signing_secret": SecretStr(SLACK_SECRET),
        "slack_api_url": f"{slack}/api/",
        "slack_escalation_channel": ESCALATION,
        "slack_mode": "http",
        "whatsapp_access_token": SecretStr(WHATSAPP_ACCESS_TOKEN),
        "whatsapp_app_secret": SecretStr(WHATSAPP_APP_SECRET),
        "whatsapp_verify_token": SecretStr(VERIFY_TOKEN),
        "whatsapp_phone_number_id": PHONE_NUMBER_ID,
        "whatsapp_graph_url": f"{graph}/v23.0",
        "wechat_app_id": WECHAT_APP_ID,
        "wechat_app_secret": SecretStr(WECHAT_APP_SECRET),
        "wechat_token": SecretStr(WECHAT_TOKEN),
        "wechat_api_base_url": wechat,
        "teams_app_id": TEAMS_APP_ID,
        "teams_app_password": SecretStr(TEAMS_PASSWORD),
        "teams_openid_metadata_url": f"{framework}/v1/.well-known/openidconfiguration",
        "teams_token_url": f"{framework}/{{tenant}}/oauth2/v2.0/token",
        "teams_tenant_id": TEAMS_TENANT,
        "line_channel_secret": SecretStr(LINE_SECRET),
        "line_channel_access_token": SecretStr(LINE_TOKEN),
        "line_api_base_url": line,
        "line_data_api_base_url": line,
        "viber_auth_token": SecretStr(VIBER_TOKEN),
        "viber_api_base_url": viber,
        "viber_media_hosts": "127.0.0.1",
        "api_channels": {
            API_CHANNEL: ApiChannelSettings(
                secret=SecretStr(API_SECRET), callback_url=f"{callback}/callback", media_hosts=["127.0.0.1"]
            )
        },
        "fetch_insecure_hosts": "127.0.0.1",  # the fakes are on loopback, over http
    }


def channel_env(database_url: str, folder: Path, **urls: str) -> dict[str, str]:
    """The same settings as environment variables, for a `warranty-bot serve` process."""
    values = channel_values(database_url, folder, **urls)
    values.pop("api_channels")  # a mapping, not one variable: the generic API channel is tested in process
    return {
        name.upper(): value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        for name, value in values.items()
    }


@contextmanager
def tracebacks_without_carets() -> Iterator[None]:
    """Server threads log tracebacks while pytest formats a failure in the main thread. On CPython 3.11 both
    parse source with `ast.parse`, whose recursion counter is shared by the interpreter (cpython#106905),
    and pytest then dies with "SystemError: AST constructor recursion depth mismatch". The traceback module
    parses only to underline the failing expression (`^^^`); without that, server threads never parse."""
    original = getattr(traceback, "_extract_caret_anchors_from_line_segment", None)
    if original is None:  # other Pythons: nothing to work around
        yield
        return
    traceback._extract_caret_anchors_from_line_segment = lambda segment: None  # type: ignore[attr-defined]
    try:
        yield
    finally:
        traceback._extract_caret_anchors_from_line_segment = original  # type: ignore[attr-defined]


@contextmanager
def fakes() -> Iterator[tuple[FakeTelegram, FakeSlack, FakeGraph, FakeWeChat, BotFramework, dict[str, str]]]:
    """The fake APIs on loopback (LINE's, Viber's and the API channel's callback too), and their base URLs by
    name."""
    telegram = FakeTelegram(token=TELEGRAM_TOKEN)
    slack = FakeSlack(
        users={ENGINEER: "Li Wei", OUTSIDER: "Pat Outsider", MEMBER: "Ana Ruiz"},
        members=["U07WBOT9RZ2", ENGINEER, MEMBER],
    )
    graph = FakeGraph(access_token=WHATSAPP_ACCESS_TOKEN, phone_number_id=PHONE_NUMBER_ID)
    wechat = FakeWeChat(app_id=WECHAT_APP_ID, app_secret=WECHAT_APP_SECRET)
    framework = BotFramework(app_id=TEAMS_APP_ID, app_password=TEAMS_PASSWORD)
    with ExitStack() as stack:
        stack.enter_context(tracebacks_without_carets())
        urls = {
            "telegram": stack.enter_context(serve(telegram.app())),
            "slack": stack.enter_context(serve(fake_slack_app(slack))),
            "graph": stack.enter_context(serve(graph.app())),
            "wechat": stack.enter_context(serve(wechat.app())),
            "framework": stack.enter_context(serve(framework.app())),
            "line": stack.enter_context(serve(FakeLine(access_token=LINE_TOKEN).app())),
            "viber": stack.enter_context(serve(FakeViber(auth_token=VIBER_TOKEN).app())),
            "callback": stack.enter_context(serve(FakeCallback(secret=API_SECRET).app())),
        }
        yield telegram, slack, graph, wechat, framework, urls


@contextmanager
def running(database_url: str, folder: Path, **extra: Any) -> Iterator[Stack]:
    """The one server with every HTTP channel (web chat, local desk, Telegram webhook, Slack over HTTP,
    WhatsApp, WeChat, Teams, LINE, Viber, the generic API), the Slack desk receiving case events, registry
    loaded."""
    with fakes() as (telegram, slack, graph, wechat, framework, urls):
        settings = Settings(_env_file=None, **{**channel_values(database_url, folder, **urls), **extra})  # type: ignore[call-arg]
        bot = build(settings)
        import_registry(bot.db, REGISTRY, policy=bot.policy)
        app = create_app(bot)
        assert sorted(app.state.channels) == [
            "api",
            "line",
            "localdesk",
            "slack",
            "teams",
            "telegram",
            "viber",
            "webchat",
            "wechat",
            "whatsapp",
        ]
        try:
            with serve(app) as url:
                yield Stack(
                    bot=bot,
                    url=url,
                    telegram=telegram,
                    slack=slack,
                    graph=graph,
                    wechat=wechat,
                    framework=framework,
                    framework_url=urls["framework"],
                )
        finally:
            bot.db.dispose()
