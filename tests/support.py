"""Helpers shared by test modules: the repository's folders, bounded waiting, a real `warranty-bot serve` process
with the web chat and desk APIs, the command line, and the engine in process on the `test` channel. Tests import
these from here (or a channel's from tests/fakes/), never from another test module (tests/test_layout.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from adapters.base import ChannelFactory
from bot.app import Bot, build
from bot.config import Settings
from bot.conversation import State
from bot.messages import InboundMessage, OutboundMessage
from bot.outbox import Delivered, Deliverer
from bot.server import create_app
from bot.store import Case, Conversation, InboxItem, Message, OutboxItem, StoredAttachment, make_engine
from bot.store.clock import utcnow
from tests.fakes.server import free_port, serve

T = TypeVar("T")

TESTS = Path(__file__).resolve().parent
ROOT = (
    TESTS.parent
)  # the repository: the working folder of `warranty-bot` processes that read docs/ or templates/
REGISTRY = TESTS / "data" / "registry-sample.csv"


def wait_until(
    probe: Callable[[], T | Literal[False] | None],
    *,
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call `probe` until it returns something truthy (so never None or False: the type says so); fail the
    test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {value!r}")
        time.sleep(interval)


@dataclass
class RunningChannel:
    """A channel's adapter served in front of the bot, for a channel's tests: what the bot stored and what the
    customer was sent (`sent`, from the channel's fake). Each channel's test module subclasses it."""

    bot: Bot
    url: str  # the bot's server

    def sent(self) -> list[Any]:
        """What the customer has received so far, as the channel's fake saw it."""
        raise NotImplementedError

    def post_signed(
        self, path: str, body: bytes, header: str, signature: str | None, sign: Callable[[bytes], str]
    ) -> httpx.Response:
        """POST a JSON webhook body to `path`, its `header` signed by `sign` ("valid"), as given, or left out
        (None)."""
        headers = {"content-type": "application/json"}
        if signature is not None:
            headers[header] = sign(body) if signature == "valid" else signature
        return httpx.post(f"{self.url}{path}", content=body, headers=headers, timeout=10)

    def inbox(self) -> list[InboxItem]:
        with Session(self.bot.db) as session:
            return list(session.execute(select(InboxItem).order_by(col(InboxItem.id))).scalars())

    def outbox(self) -> list[OutboxItem]:
        with Session(self.bot.db) as session:
            return list(session.execute(select(OutboxItem).order_by(col(OutboxItem.id))).scalars())

    def case_ref(self) -> str | None:
        with Session(self.bot.db) as session:
            case = session.execute(select(Case)).scalars().first()
            return case.ref if case else None

    def texts(self) -> list[str]:
        """The texts the customer has received so far."""
        raise NotImplementedError

    def stored_attachment(self) -> StoredAttachment:
        """The one file of the customer's that the bot stored."""
        with Session(self.bot.db) as session:
            stored: StoredAttachment = session.execute(select(StoredAttachment)).scalars().one()
            return stored

    def press_until_a_case(self, press: Callable[[int], str], numbers: range = range(10, 16)) -> list[str]:
        """Answer the bot's offered choices until a case is opened: `press(n)` sends the n-th answer (a
        customer's choice, see `choose`) and names it. The choices pressed."""
        pressed: list[str] = []
        for number in numbers:
            if self.case_ref():
                break
            sent = len(self.sent())
            pressed.append(press(number))
            self.settled(sent + 1, f"the bot's answer to {pressed[-1]}")
        return pressed

    def claimed(self) -> str:
        """The case the conversation opened, once the customer was told its reference, an engineer claimed it
        and the customer was told who, and everything went out without an error; its reference."""
        ref = wait_until(self.case_ref, what="a case")
        wait_until(
            lambda: any(ref in t for t in self.texts()), what="the case reference sent to the customer"
        )
        self.bot.desk.claim(ref, engineer="Ana Ruiz")
        wait_until(lambda: any("Ana Ruiz" in t and ref in t for t in self.texts()), what="the claim notice")
        wait_until(
            lambda: all(i.status == "sent" and i.last_error is None for i in self.outbox()), what="all sent"
        )
        return ref

    def settled(self, count: int, what: str) -> list[Any]:
        """What the customer received, once it is at least `count` messages and nothing waits in the outbox."""

        def probe() -> list[Any]:
            done = all(i.status != "pending" for i in self.outbox()) and len(self.sent()) >= count
            return self.sent() if done else []

        try:
            return wait_until(probe, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}; {self.trouble()}") from None

    def trouble(self) -> str:
        """What a test that timed out waiting is told of the bot's state."""
        rows = [(i.id, i.status, i.attempts, i.last_error, i.next_attempt_at) for i in self.outbox()]
        return f"outbox {rows}; inbox {[(i.id, i.status, i.error) for i in self.inbox()]}"


def check_body_signature(
    valid: Callable[[bytes, str | None, str], bool],
    sign: Callable[[bytes, str], str],
    secret: str,
    body: bytes,
) -> None:
    """A webhook's signature check (`valid(body, header, secret)`) takes `sign(body, secret)` and refuses a
    changed body, another secret's signature, none, and any signature when no secret is configured."""
    assert valid(body, sign(body, secret), secret)
    assert not valid(body + b" ", sign(body, secret), secret)
    assert not valid(body, sign(body, "another"), secret)
    assert not valid(body, None, secret)
    assert not valid(body, sign(body, secret), "")


def choose(offered: Sequence[str]) -> str:
    """Which of the bot's offered choices (their values) a customer who wants an engineer takes."""
    return next(v for v in ("cause:normal", "pref:repair", "cmd:human", *offered) if v in offered)


@contextmanager
def channel_served(
    settings: Settings, db: Engine, update: dict[str, Any], from_settings: ChannelFactory
) -> Iterator[tuple[Bot, str]]:
    """The bot on `db` with `settings` changed by `update`, and the server of the one channel `from_settings`
    makes of it: the bot and the server's URL."""
    bot = build(settings.model_copy(update=update), db=db)
    channel = from_settings(bot)
    assert channel is not None
    with serve(create_app(bot, channels=[channel])) as url:
        yield bot, url


def health_elsewhere(settings: Settings, from_settings: ChannelFactory) -> dict[str, Any]:
    """/healthz as another process on the same database answers it (a front whose senders run in worker
    processes): its own engine, bot and channel (`from_settings`), never started and never sending, so that
    all it can tell comes from the database."""
    db = make_engine(settings.database_url)
    try:
        bot = build(settings, db=db, migrate=False)
        channel = from_settings(bot)
        assert channel is not None
        with serve(create_app(bot, channels=[channel]), lifespan="off") as url:
            health: dict[str, Any] = httpx.get(f"{url}/healthz", timeout=10).json()
        return health
    finally:
        db.dispose()


TOKEN = "desk-secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERIAL = "CSP2604D0007"  # made April 2026: in warranty without proof until 2028-07-30
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


class Server:
    def __init__(self, workdir: Path, database_url: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "DESK_TOKEN": TOKEN,
            "LOG_LEVEL": "WARNING",
            "ATTACHMENTS_DIR": str(workdir / "files"),
            "OUTBOX_POLL_SECONDS": "0.1",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"server-{self.port}.log"

    def start(self) -> None:
        # Output goes to a file: a pipe nobody reads would fill up and stall the server.
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "serve", "--port", str(self.port)],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._healthy, timeout=30, what="the server to answer /healthz")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"server exited: {self.log_tail()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()  # not left behind for the next test
                self.process.wait(timeout=10)
                raise AssertionError(
                    f"the server did not stop within 20 s; its log ends:\n{self.log_tail()}"
                ) from None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of what the server wrote (LOG_LEVEL=WARNING: its warnings and errors)."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def new_sessions(self, count: int) -> list[str]:
        """The ids of `count` new web chat sessions."""
        return [httpx.post(f"{self.url}/api/webchat/sessions").json()["session_id"] for _ in range(count)]


S = TypeVar("S", bound=Server)


class Servers:
    """The `servers` fixture (tests/conftest.py): servers started for a test, all stopped after it."""

    def __init__(self) -> None:
        self.started: list[Server] = []

    def start(self, server: S) -> S:
        self.started.append(server)
        server.start()
        return server

    def stop(self) -> None:
        """Stop them all; each one's log goes to the test's captured output, which pytest shows when the
        test failed (a timeout's cause is often in the server's warnings)."""
        failures: list[AssertionError] = []
        for server in self.started:
            print(f"--- {server.log.name} ---\n{server.log_tail()}")
            try:
                server.stop()
            except AssertionError as failure:
                failures.append(failure)
        if failures:
            raise failures[0]


def messages(server: Server, session: str, after: int = 0) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/api/webchat/sessions/{session}/messages", params={"after": after})
    assert response.status_code == 200
    result: list[dict[str, Any]] = response.json()["messages"]
    return result


def send(server: Server, session: str, text: str, *, expect_reply: str | None = None) -> list[dict[str, Any]]:
    before = messages(server, session)
    response = httpx.post(f"{server.url}/api/webchat/sessions/{session}/messages", json={"text": text})
    assert response.status_code == 202, response.text

    def answered() -> list[dict[str, Any]] | None:
        new = [
            m
            for m in messages(server, session, before[-1]["id"] if before else 0)
            if m["author"] != "customer"
        ]
        if expect_reply is None:
            return new or None
        return new if any(expect_reply in m["text"] for m in new) else None

    # A server process's first reply waits for its worker process to load the language models: on a loaded
    # machine that alone took over 15 s once.
    return wait_until(answered, timeout=45, what=f"a reply to {text!r}")


# --- many web chat customers on a `serve` process, and what its database then holds (reliability, workers) ----

SCRIPT = [
    "hello",
    "CSP2604D0007",
    "The display shows E07 and it shuts down",
    "no invoice",
    "normal use",
    "any news?",
    "restart",
]


def post(server: Server, session: str, text: str, client_id: str) -> bool:
    """True when the server accepted the message (202); False when it could not answer (it was killed)."""
    try:
        response = httpx.post(
            f"{server.url}/api/webchat/sessions/{session}/messages",
            json={"text": text, "client_id": client_id},
            timeout=5,
        )
    except httpx.TransportError:
        return False
    assert response.status_code == 202, response.text
    return True


def conversation_texts(database_url: str, chat_id: str) -> list[str]:
    engine = make_engine(database_url)
    with Session(engine) as session:
        conversation = session.execute(
            select(Conversation).where(col(Conversation.chat_id) == chat_id)
        ).scalar_one()
        rows = session.execute(
            select(col(Message.text))
            .where(col(Message.conversation_id) == conversation.id, col(Message.author) == "customer")
            .order_by(col(Message.id))
        )
        texts = list(rows.scalars())
    engine.dispose()
    return texts


def settled(database_url: str) -> bool:
    engine = make_engine(database_url)
    with Session(engine) as session:
        pending_in: int = session.execute(
            select(func.count()).select_from(InboxItem).where(col(InboxItem.status) == "pending")
        ).scalar_one()
        pending_out: int = session.execute(
            select(func.count()).select_from(OutboxItem).where(col(OutboxItem.status) == "pending")
        ).scalar_one()
    engine.dispose()
    return pending_in == 0 and pending_out == 0


def nothing_lost(database_url: str, plan: Mapping[str, Sequence[tuple[str, str]]], *, cases: int) -> None:
    """Once every message is processed and every reply sent: each web chat session of `plan` (its messages as
    (client id, text)) holds its texts once and in order, all done and sent, with `cases` cases in all."""
    wait_until(
        lambda: settled(database_url),
        timeout=120,
        interval=0.5,
        what="every message processed and every reply sent",
    )
    for session, messages in plan.items():
        assert conversation_texts(database_url, session) == [text for _, text in messages]
    engine = make_engine(database_url)
    with Session(engine) as db:
        inbox = db.execute(select(func.count()).select_from(InboxItem)).scalar_one()
        assert inbox == sum(len(messages) for messages in plan.values())
        assert set(db.execute(select(col(InboxItem.status))).scalars()) == {"done"}
        assert set(db.execute(select(col(OutboxItem.status))).scalars()) == {"sent"}
        for conversation in db.execute(select(Conversation)).scalars():
            assert State.from_dict(conversation.data).name == conversation.state
        assert db.execute(select(func.count()).select_from(Case)).scalar_one() == cases
    engine.dispose()


def one_case_each(database_url: str, sessions: Sequence[str], script: Sequence[str]) -> None:
    """Once the workers are done: each session's conversation holds `script` in order, and one case."""
    wait_until(lambda: settled(database_url), timeout=120, interval=0.5, what="the workers to finish")
    engine = make_engine(database_url)
    with Session(engine) as db:
        cases = db.execute(
            select(col(Case.conversation_id), func.count()).group_by(col(Case.conversation_id))
        ).all()
        inbox = db.execute(select(func.count()).select_from(InboxItem)).scalar_one()
    engine.dispose()
    assert inbox == len(sessions) * len(script)
    assert len(cases) == len(sessions) and {count for _, count in cases} == {1}
    for session in sessions:
        assert conversation_texts(database_url, session) == list(script)


def accepted(database_url: str) -> int:
    engine = make_engine(database_url)
    with Session(engine) as session:
        count = int(session.execute(select(func.count()).select_from(InboxItem)).scalar_one())
    engine.dispose()
    return count


# --- the command line ----------------------------------------------------------------------------------------


def cli(
    *args: str, stdin: str = "", cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


# --- the engine in process, on the `test` channel (tests/bot/) ------------------------------------------

# Made in April 2026: without proof the warranty runs from 2026-05-31 to 2028-07-30, whatever today is here.
CLAIM = [f"{SERIAL} the display shows E07 and it shuts down under load", "proof:none", "cause:normal"]
# What people read of those messages: the buttons' labels, never their values.
CLAIM_AS_READ = [CLAIM[0], "I don't have them", "It failed in normal use"]


class Counter:
    value = 0


def inbound(
    text: str, *, chat: str = "chat-1", external_id: str | None = None, **extra: Any
) -> InboundMessage:
    Counter.value += 1
    return InboundMessage(
        channel="test",
        external_id=external_id or f"m{Counter.value}",
        sender_id=chat,
        chat_id=chat,
        text=text,
        received_at=utcnow(),
        sender_name="Ana",
        **extra,
    )


def say(bot: Bot, *texts: str, chat: str = "chat-1") -> None:
    for text in texts:
        bot.engine.accept(inbound(text, chat=chat))
    bot.engine.process_pending()


def bot_texts(bot: Bot, chat: str = "chat-1") -> list[str]:
    return [m["text"] for m in bot.engine.transcript("test", chat) if m["author"] != "customer"]


def customer_texts(bot: Bot, chat: str) -> list[str]:
    return [m["text"] for m in bot.engine.transcript("test", chat) if m["author"] == "customer"]


# A registry dated from today (tests/bot/test_decisions.py, test_fulfilment.py): write "\n".join([HEADER, *ROWS]).
TODAY = utcnow().date()
HEADER = (
    "order_id,customer,serial,serial_to,production_date,port_arrival_date,cargo_compensation,order_pieces,"
)
HEADER += "order_total,currency"


def days_ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


# Dates relative to today, so the decisions hold whatever day the tests run: 100 days after port arrival is
# covered, 1100 days (about 36 months) is past the 26-month term.
ROWS = [
    f"PO-12,Acme Fleet Ltd.,CSP2402A0100,CSP2402A0111,{days_ago(200)},{days_ago(100)},false,1000,1012.50,USD",
    f"PO-5,Acme Fleet Ltd.,CSP2402C0100,CSP2402C0104,{days_ago(200)},{days_ago(100)},false,1000,40000.00,USD",
    f"PO-OLD,Old Motors SA,CSP2402B0100,CSP2402B0134,{days_ago(1200)},{days_ago(1100)},false,500,40000.00,USD",
    f"PO-CARGO,Cargo Parts Co,CSP2403D0100,,{days_ago(200)},{days_ago(100)},true,1000,9000.00,USD",
]
FAULT = "all of them show E07 after a week"


def claim_to_the_end(bot: Bot, *texts: str, chat: str = "chat-1") -> str:
    """Say `texts`; a refusal that did not open a case yet is taken to a person. Returns the case's ref."""
    say(bot, *texts, chat=chat)
    if not bot.desk.list_cases():
        say(bot, "cmd:human", chat=chat)
    cases = bot.desk.list_cases()
    assert len(cases) == 1, cases
    return str(cases[0]["ref"])


# --- a channel's remote API in the engine's tests (the deliverer sends to it in-process) ---------------------


class ChannelApi:
    """A stand-in for a channel's remote API: records what it was sent; can fail on cue."""

    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.sent: list[OutboundMessage] = []
        self.failures = list(failures or [])

    async def send(self, message: OutboundMessage) -> Delivered:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(message)
        return Delivered(external_id=f"x{len(self.sent)}")


def deliver(bot: Bot, api: ChannelApi, rounds: int = 20) -> None:
    deliverer = Deliverer(bot.db, {"test": api}, max_attempts=3)
    for _ in range(rounds):
        if not asyncio.run(deliverer.deliver_due()):
            break
