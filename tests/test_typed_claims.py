"""Customers who only type, end to end: the web chat API of a real server process in every language, and
e-mail, where options are numbered text (issue 13). The dialogues are tests/data/dialogues/<lang>.toml."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, select
from sqlmodel import Session, col

from adapters import mail
from bot.app import build
from bot.config import Settings
from bot.registry import import_registry
from bot.server import create_app
from bot.store import OutboxItem
from tests.fakes.imap import Mailbox
from tests.fakes.mail import CUSTOMER, SmtpSink, customer_answer, email_settings, plain
from tests.fakes.server import serve
from tests.support import AUTH, Server, wait_until

DIALOGUES = Path(__file__).with_name("data") / "dialogues"
LANGUAGES = ("en", "zh", "es", "ru", "pt", "fr", "ar")
# The units the dialogues name: registered ones (with an order), so that only CSP2402A0999 needs proof.
REGISTRY_CSV = """order_id,customer,serial,serial_to,production_date,port_arrival_date,cargo_compensation,order_pieces,order_total,currency
PO-1,Solar Ege Enerji,CSP2402A0153,,2024-02-20,2024-03-10,false,1000,25000.00,USD
PO-1,Solar Ege Enerji,CSP2402A0154,,2024-02-20,2024-03-10,false,1000,25000.00,USD
PO-1,Solar Ege Enerji,CSP2402A0100,CSP2402A0139,2024-02-20,2024-03-10,false,1000,25000.00,USD
"""


def dialogue(language: str, number: int) -> dict[str, Any]:
    data = tomllib.loads((DIALOGUES / f"{language}.toml").read_text(encoding="utf-8"))
    found: dict[str, Any] = data["dialogue"][number - 1]
    return found


def _messages(server: Server, session: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{server.url}/api/webchat/sessions/{session}/messages").json()[
        "messages"
    ]
    return found


def test_every_language_typed_over_the_web_chat_reaches_a_case(tmp_path: Path, database_url: str) -> None:
    registry = tmp_path / "registry.csv"
    registry.write_text(REGISTRY_CSV)
    imported = subprocess.run(
        [sys.executable, "-m", "bot.cli", "registry", "import", str(registry)],
        env={**Server(tmp_path, database_url).env},
        cwd=tmp_path,
        capture_output=True,
    )
    assert imported.returncode == 0, imported.stderr
    server = Server(tmp_path, database_url)
    server.start()
    try:
        sessions: dict[str, str] = {}
        for language in LANGUAGES:
            # The unregistered unit without an invoice: serial, fault, proof and cause, all typed.
            session = httpx.post(f"{server.url}/api/webchat/sessions", json={"language": language}).json()[
                "session_id"
            ]
            sessions[language] = session
            for text in dialogue(language, 2)["turns"]:
                answered = len([m for m in _messages(server, session) if m["author"] == "bot"])
                assert (
                    httpx.post(
                        f"{server.url}/api/webchat/sessions/{session}/messages", json={"text": text}
                    ).status_code
                    == 202
                )

                def bot_answered(s: str = session, n: int = answered) -> bool:
                    return len([m for m in _messages(server, s) if m["author"] == "bot"]) > n

                wait_until(
                    bot_answered,
                    what=f"the bot's answer to {text!r} ({language})",
                )
        cases = wait_until(
            lambda: (
                (found := httpx.get(f"{server.url}/api/desk/cases", headers=AUTH).json()["cases"])
                and len(found) == len(LANGUAGES)
                and found
            ),
            what="a case per language",
        )
        for case in cases:
            details = httpx.get(f"{server.url}/api/desk/cases/{case['ref']}", headers=AUTH).json()
            assert [u["serial"] for u in details["units"]] == ["CSP2402A0999"]
            assert details["fault"]
            said = [m["text"] for m in details["messages"] if m["author"] == "customer"]
            assert not any(":" in t and t.split(":")[0] in ("cause", "proof", "cmd") for t in said), said
        for language, session in sessions.items():
            texts = [m["text"] for m in _messages(server, session) if m["author"] == "bot"]
            assert any("WR-" in t for t in texts), (language, texts)
    finally:
        server.stop()


def first_mail(subject: str, body: str) -> bytes:
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = f"Carlos Ruiz <{CUSTOMER}>"
    message["To"] = "CSP Warranty Support <support@warranty.example.com>"
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="solarege.example")
    message.set_content(body)
    return message.as_bytes()


def test_a_claim_by_email_answered_in_words_and_by_number(
    settings: Settings,
    db: Engine,
    imap: tuple[str, int],
    mailbox: Mailbox,
    smtp: SmtpSink,
) -> None:
    bot = build(email_settings(settings, imap, smtp), db=db)
    registry = Path(settings.data_dir) / "registry.csv"
    registry.write_text(REGISTRY_CSV)
    import_registry(db, registry, policy=bot.policy)
    channel = mail.from_settings(bot)
    assert channel is not None
    mailbox.append(
        first_mail(
            "Garantía",
            "Buenas, tengo un inversor con número de serie CSP2402A0999. "
            "El ventilador hace mucho ruido y luego se para.",
        )
    )
    with serve(create_app(bot, channels=[channel])):
        proof = smtp.wait_for(lambda m: "1." in plain(m), "the question about the invoice")
        sent = len(smtp.mails())
        mailbox.append(customer_answer(proof, "No tengo factura, la perdí."))
        cause = wait_until(lambda: smtp.mails()[sent:], what="the cause question")[0]
        assert "1." in plain(cause) and "6." in plain(cause)  # the causes as numbered options
        sent = len(smtp.mails())
        mailbox.append(customer_answer(cause, "1"))
        wait_until(lambda: smtp.mails()[sent:], what="the decision")
        case = wait_until(lambda: next(iter(bot.desk.list_cases()), None), what="a case")
        details = bot.desk.get_case(case["ref"])
        assert [u["serial"] for u in details["units"]] == ["CSP2402A0999"]
        said = [m["text"] for m in details["messages"] if m["author"] == "customer"]
        assert (
            said[-1].startswith("1 (") and "cause:" not in said[-1]
        )  # the engineer reads the option's label


def test_a_persons_mail_through_a_list_reaches_the_engineers_unanswered(
    settings: Settings, db: Engine, imap: tuple[str, int], mailbox: Mailbox, smtp: SmtpSink
) -> None:
    bot = build(email_settings(settings, imap, smtp), db=db)
    channel = mail.from_settings(bot)
    assert channel is not None
    listed = first_mail("Garantía", "CSP2402A0999: el ventilador hace mucho ruido y luego se para.")
    listed = b"List-Id: <soporte.solarege.example>\r\n" + listed
    mailbox.append(listed)
    with serve(create_app(bot, channels=[channel])):
        case = wait_until(lambda: next(iter(bot.desk.list_cases()), None), what="a case for the engineers")
        details = bot.desk.get_case(case["ref"])
        assert "ventilador" in details["fault"]
        assert any(a["action"] == "taken_without_answer" for a in details["audit"])
    assert smtp.mails() == []  # nothing was answered to the list
    with Session(db) as session:
        assert session.execute(select(OutboxItem).where(col(OutboxItem.channel) == "email")).first() is None
