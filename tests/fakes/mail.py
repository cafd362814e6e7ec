"""The far side of the email channel: a real SMTP server on loopback (aiosmtpd) that records what it receives
and checks the relay's login (password, or XOAUTH2 like Gmail and Microsoft 365), the support mailbox's
credentials (its IMAP server is tests/fakes/imap.py), a customer answering from a mail client, and the settings
that point the bot at both. The fixtures `smtp`, `mailbox` and `imap` are every test's (tests/conftest.py)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword
from pydantic import SecretStr

from adapters import mail
from bot.attachments import AttachmentStore
from bot.config import Settings
from tests.fakes.imap import Mailbox, imap_server
from tests.fakes.server import free_port
from tests.support import wait_until

PAYLOADS = Path(__file__).parent.parent / "payloads" / "email"
SUPPORT = (
    "support@warranty.example.com"  # the support mailbox: its IMAP user and the address replies come from
)
CUSTOMER = "yusuf.demir@solarege.example"
IMAP_PASSWORD = "imap-secret"
SMTP_USER, SMTP_PASSWORD = "relay-user", "smtp-secret"  # the SMTP relay's login


def parse(raw: bytes) -> EmailMessage:
    return BytesParser(policy=email_policy.default).parsebytes(raw)


def plain(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")


def header(message: EmailMessage, name: str) -> str:
    """A header as a mail client shows it (a folded header may start with the fold's space)."""
    return " ".join(str(message.get(name, "")).split())


# --- the SMTP server, and the support mailbox on the IMAP server ---------------------------------------------


@dataclass
class SmtpSink:
    """What the SMTP server received; RCPT answers can be set per address."""

    port: int = 0
    received: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    logins: list[str] = field(default_factory=list)
    # (user, token) -> valid: when set, only XOAUTH2 logs in (basic auth off, as Microsoft 365 will have it)
    oauth: Callable[[str, str], bool] | None = None
    oauth_attempts: list[tuple[str, bool]] = field(default_factory=list)  # (user, accepted)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        with self.lock:
            self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), parse(content)))
        return "250 2.0.0 queued"

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> AuthResult:
        """SASL XOAUTH2 (RFC 7628 style, as Gmail and Exchange Online answer): a refused token gets a 334 with a
        base64 JSON error, which the client must answer with an empty line before the 535."""
        if self.oauth is None:
            return AuthResult(
                success=False, handled=False, message="504 5.5.4 Unrecognized authentication type"
            )
        blob = base64.b64decode(args[1]) if len(args) > 1 else await server.challenge_auth("")
        if not isinstance(blob, bytes):
            return AuthResult(success=False, handled=True)
        fields = blob.decode(errors="replace").split("\x01")
        user = fields[0].removeprefix("user=") if fields[0].startswith("user=") else ""
        bearer = fields[1] if len(fields) == 4 and fields[2:] == ["", ""] else ""
        token = bearer.removeprefix("auth=Bearer ") if bearer.startswith("auth=Bearer ") else ""
        accepted = bool(user and token and self.oauth(user, token))
        with self.lock:
            self.oauth_attempts.append((user, accepted))
        if accepted:
            return AuthResult(success=True, auth_data=user)
        await server.challenge_auth(b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}')
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Username and Password not accepted"
        )

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if self.oauth is not None:
            return AuthResult(
                success=False, handled=False, message="535 5.7.139 basic authentication is disabled"
            )
        if isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        ):
            self.logins.append(auth_data.login.decode())
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def mails(self) -> list[EmailMessage]:
        with self.lock:
            return [message for _, _, message in self.received]

    def wait_for(self, predicate: Callable[[EmailMessage], bool], what: str) -> EmailMessage:
        return wait_until(lambda: next((m for m in self.mails() if predicate(m)), None), what=what)


@contextmanager
def smtp_server(*, oauth: Callable[[str, str], bool] | None = None, **options: Any) -> Iterator[SmtpSink]:
    sink = SmtpSink(port=free_port(), oauth=oauth)
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=sink.port,
        authenticator=sink.authenticate,
        auth_require_tls=False,
        **options,
    )
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with smtp_server() as sink:
        yield sink


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox(user=SUPPORT, password=IMAP_PASSWORD)


@pytest.fixture
def imap(mailbox: Mailbox) -> Iterator[tuple[str, int]]:
    with imap_server(mailbox) as address:
        yield address


def email_settings(settings: Settings, imap: tuple[str, int], smtp: SmtpSink, **extra: Any) -> Settings:
    return settings.model_copy(
        update={
            "imap_host": imap[0],
            "imap_port": imap[1],
            "imap_security": "none",
            "imap_user": SUPPORT,
            "imap_password": SecretStr(IMAP_PASSWORD),
            "imap_mailbox": "INBOX",
            "imap_poll_seconds": 30.0,
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_security": "none",
            "smtp_user": SMTP_USER,
            "smtp_password": SecretStr(SMTP_PASSWORD),
            "email_from": f"CSP Warranty Support <{SUPPORT}>",
            "outbox_poll_seconds": 0.1,
            **extra,
        }
    )


def customer_answer(to: EmailMessage, text: str) -> bytes:
    """The customer answers one of our mails from their mail client: quoted below, threaded."""
    answer = EmailMessage(policy=email_policy.SMTP)
    answer["From"] = f"Yusuf Demir <{CUSTOMER}>"
    answer["To"] = header(to, "From")
    answer["Subject"] = f"Re: {header(to, 'Subject')}"
    answer["Message-ID"] = make_msgid(domain="solarege.example")
    answer["In-Reply-To"] = header(to, "Message-ID")
    answer["References"] = f"{header(to, 'References')} {header(to, 'Message-ID')}".strip()
    answer["Content-Language"] = "en-GB"
    quoted = "\n".join(f"> {line}" for line in plain(to).splitlines())
    answer.set_content(f"{text}\n\nOn Mon, 4 May 2026 at 13:02, {header(to, 'From')} wrote:\n{quoted}\n")
    return answer.as_bytes()


def config_values() -> dict[str, Any]:
    """The email channel's own settings (adapters.mail.MailSettings) for tests that parse and compose mail."""
    return {
        "imap": mail.MailServer(
            host="127.0.0.1", port=143, security="none", user=SUPPORT, password=IMAP_PASSWORD
        ),
        "mailbox": "INBOX",
        "poll_seconds": 1.0,
        "smtp": mail.MailServer(host="127.0.0.1", port=25, security="none"),
        "from_header": f"CSP Warranty Support <{SUPPORT}>",
        "address": SUPPORT,
        "replies_per_hour": 3,
        "case_ref_prefix": "WR",
        "max_mail_bytes": 1_000_000,
    }


CONFIG = mail.MailSettings(**config_values())


def no_store() -> AttachmentStore:
    """An attachment store that takes nothing: every file is refused (parsing tests that store no file)."""
    return AttachmentStore(root=Path("/nonexistent"), max_bytes=1, allowed_types=frozenset())
