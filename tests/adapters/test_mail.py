"""The email channel against a real SMTP server (aiosmtpd) and a fake IMAP4rev1 server, both on loopback."""

from __future__ import annotations

import dataclasses
import datetime
import imaplib
import ipaddress
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from sqlalchemy import Engine, select
from sqlmodel import Session, col

from adapters import mail
from bot.app import Bot, build
from bot.attachments import AttachmentStore
from bot.config import Settings
from bot.messages import Button, OutboundMessage
from bot.outbox import PermanentFailure, RetryLater, Unreachable
from bot.registry import import_registry
from bot.server import create_app
from bot.store import InboxItem, OutboxItem, session_scope
from bot.store.clock import utcnow
from bot.store.kv import kv_get, kv_put
from tests.fakes.imap import Mailbox, imap_server
from tests.fakes.mail import (
    CONFIG,
    CUSTOMER,
    IMAP_PASSWORD,
    PAYLOADS,
    SMTP_PASSWORD,
    SMTP_USER,
    SUPPORT,
    SmtpSink,
    config_values,
    customer_answer,
    email_settings,
    header,
    no_store,
    parse,
    plain,
    smtp_server,
)
from tests.fakes.oauth import FakeTokenEndpoint
from tests.fakes.server import serve
from tests.support import REGISTRY, ROOT, wait_until


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def html_part(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("html",))
    assert body is not None
    return str(body.get_content())


def inbox_ids(db: Engine) -> list[str]:
    with Session(db) as session:
        return list(session.execute(select(col(InboxItem.external_id)).order_by(col(InboxItem.id))).scalars())


def processed(db: Engine, external_id: str) -> bool:
    with Session(db) as session:
        item = session.execute(
            select(InboxItem).where(col(InboxItem.external_id) == external_id)
        ).scalar_one_or_none()
        return item is not None and item.status == "done"


# --- end to end ----------------------------------------------------------------------------------------


def test_claim_by_email_end_to_end(
    settings: Settings, db: Engine, imap: tuple[str, int], mailbox: Mailbox, smtp: SmtpSink
) -> None:
    bot = build(email_settings(settings, imap, smtp), db=db)
    import_registry(db, REGISTRY, policy=bot.policy)
    claim = payload("customer_claim.eml")
    claim_id = str(parse(claim)["Message-ID"])
    mailbox.append(claim)
    channel = mail.from_settings(bot)
    assert channel is not None
    normal_use = bot.renderer.label("cause_normal", language="en")

    with serve(create_app(bot, channels=[channel])):
        question = smtp.wait_for(lambda m: f"1. {normal_use}" in plain(m), "the cause question")
        assert smtp.received[0][1] == [CUSTOMER] and smtp.received[0][0] == SUPPORT
        assert smtp.logins and smtp.logins[0] == SMTP_USER
        assert (
            header(question, "Subject")
            == "Re: Warranty claim: inverter CSP2402A0153 - error E07, shuts down under load"
        )
        assert header(question, "In-Reply-To") == claim_id
        assert header(question, "Auto-Submitted") == "auto-replied"
        assert f"<li>{normal_use}</li>" in html_part(question)

        # Answered with the option's number; then asked for a person, which makes a case whatever the decision.
        sent = len(smtp.mails())
        mailbox.append(customer_answer(question, "1"))
        decided = wait_until(lambda: smtp.mails()[sent:], what="the answer to the cause")[0]
        assert "CSP2402A0153" in plain(decided)  # the decision names the unit
        mailbox.append(customer_answer(decided, "human"))
        case = wait_until(lambda: next(iter(bot.desk.list_cases()), None), what="a case")
        ref = case["ref"]
        in_case = smtp.wait_for(lambda m: f"[{ref}]" in header(m, "Subject"), "a reply with the case ref")
        assert (
            header(in_case, "Subject")
            == f"Re: [{ref}] Warranty claim: inverter CSP2402A0153 - error E07, shuts down under load"
        )
        assert claim_id in header(in_case, "References").split()
        assert ref in header(in_case, "Message-ID")  # answers find their case by our Message-ID
        details = bot.desk.get_case(ref)
        assert [a["name"] for a in details["attachments"]] == ["EX-2024-0311.pdf"]
        assert details["units"][0]["serial"] == "CSP2402A0153"

        # The customer's answer in the same thread reaches the case without the quoted mail and signature.
        reply = payload("customer_reply.eml")
        mailbox.append(reply)
        reply_id = str(parse(reply)["Message-ID"])
        wait_until(lambda: processed(db, reply_id), what="the customer's reply processed")
        said = [m["text"] for m in bot.desk.get_case(ref)["messages"] if m["author"] == "customer"]
        assert said[-1].startswith("Hello,\n\nwith about 1 kW connected the display shows 11.2 V")
        assert "Dear Yusuf" not in said[-1] and "wrote:" not in said[-1] and "Best regards" not in said[-1]

        # An out-of-office answer is neither taken nor answered; the mail after it is.
        auto = payload("auto_reply.eml")
        mailbox.append(auto)
        after = customer_answer(in_case, "The photo follows tomorrow.")
        mailbox.append(after)
        wait_until(
            lambda: processed(db, str(parse(after)["Message-ID"])), what="the mail after the auto-reply"
        )
        assert str(parse(auto)["Message-ID"]) not in inbox_ids(db)
        assert all(m["In-Reply-To"] != parse(auto)["Message-ID"] for m in smtp.mails())

        # An engineer's reply goes out in the customer's thread.
        bot.desk.reply(ref, engineer="Li Wei", text="Please send the <photo> & the cable size.")
        relayed = smtp.wait_for(lambda m: "Li Wei" in plain(m), "the engineer's reply")
        assert header(relayed, "In-Reply-To") == parse(after)["Message-ID"]
        assert "Please send the <photo> & the cable size." in plain(relayed)
        assert "Please send the &lt;photo&gt; &amp; the cable size." in html_part(relayed)
        # A person wrote it: not marked as an auto-reply (the customer's server may then drop or not answer it).
        assert relayed["Auto-Submitted"] is None and question["Auto-Submitted"] == "auto-replied"
    assert sorted(set(mailbox.fetched_uids())) == mailbox.fetched_uids()  # every mail fetched once


def test_a_restart_neither_loses_nor_repeats_mail(
    settings: Settings, db: Engine, imap: tuple[str, int], mailbox: Mailbox, smtp: SmtpSink
) -> None:
    bot = build(email_settings(settings, imap, smtp, imap_poll_seconds=0.2), db=db)
    claim = payload("customer_claim.eml")
    mailbox.append(claim)
    channel = mail.from_settings(bot)
    assert channel is not None
    with serve(create_app(bot, channels=[channel])):
        wait_until(lambda: processed(db, str(parse(claim)["Message-ID"])), what="the claim processed")

    # Mail that arrives while the bot is down; the server has no IDLE this time, so the reader polls.
    mailbox.idle = False
    reply, later = payload("customer_reply.eml"), customer_answer(smtp.mails()[-1], "CSP2402A0154 too")
    mailbox.append(reply)
    mailbox.append(later)
    sessions_before = mailbox.sessions
    channel = mail.from_settings(bot)
    assert channel is not None
    with serve(create_app(bot, channels=[channel])):
        wait_until(
            lambda: processed(db, str(parse(later)["Message-ID"])), what="the mail sent during the restart"
        )
    fetched_after = [uid for session, uid in mailbox.fetched if session > sessions_before]
    assert fetched_after == [2, 3]
    assert inbox_ids(db) == [str(parse(m)["Message-ID"]) for m in (claim, reply, later)]
    assert not any("IDLE" in command for session, command in mailbox.commands if session > sessions_before)


def test_unread_mail_is_taken_once_even_across_a_failure_and_a_rebuilt_mailbox(
    bot: Bot, imap: tuple[str, int], mailbox: Mailbox
) -> None:
    config = dataclasses.replace(CONFIG, imap=dataclasses.replace(CONFIG.imap, host=imap[0], port=imap[1]))
    reader = mail.MailboxReader(bot, config)
    mailbox.append(payload("customer_claim.eml"), seen=True)  # read by a person before the bot was set up
    mailbox.append(payload("customer_reply.eml"))
    third = mailbox.append(customer_answer(parse(payload("customer_reply.eml")), "One more thing"))
    mailbox.fail_fetch = {third}
    with imaplib.IMAP4(*imap) as connection:
        connection.login(SUPPORT, IMAP_PASSWORD)
        connection.select("INBOX")
        with pytest.raises(imaplib.IMAP4.error):  # the first start stops halfway through the unread mail
            reader.sync(connection, mailbox.uidvalidity, mailbox.next_uid)
        assert mailbox.fetched_uids() == [2]
        mailbox.fail_fetch = set()
        reader.sync(connection, mailbox.uidvalidity, None)  # ... and goes on where it stopped
        assert mailbox.fetched_uids() == [2, third]
        mailbox.rebuild(uidvalidity=mailbox.uidvalidity + 1)  # all read now: a rebuild must take nothing
        reader.sync(connection, mailbox.uidvalidity, mailbox.next_uid)
        reader.sync(connection, mailbox.uidvalidity, None)
        assert mailbox.fetched_uids() == [2, third]
        fourth = mailbox.append(customer_answer(parse(payload("customer_reply.eml")), "And another"))
        reader.sync(connection, mailbox.uidvalidity, None)
        assert mailbox.fetched_uids() == [2, third, fourth]
    assert len(inbox_ids(bot.db)) == 3


# --- receiving: loops, parsing ---------------------------------------------------------------------------


def with_header(raw: bytes, line: str) -> bytes:
    return line.encode() + b"\r\n" + raw


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Auto-Submitted: auto-generated", "Auto-Submitted"),
        ("Precedence: bulk", "Precedence"),
        ("Precedence: list", "Precedence"),
        ("Precedence: junk", "Precedence"),
    ],
)
def test_automated_mail_is_never_answered(header: str, reason: str) -> None:
    found = mail.ignore_reason(
        mail.read_mail(with_header(payload("customer_claim.eml"), header)), own=CONFIG.own_addresses
    )
    assert found is not None and reason in found


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("X-Auto-Response-Suppress: All", "X-Auto-Response-Suppress"),
        ("List-Id: <solar.lists.example>", "list"),
        ("List-Unsubscribe: <mailto:leave@lists.example>", "list"),
    ],
)
def test_a_persons_mail_from_a_list_or_asking_for_no_answer_is_taken_quietly(
    header: str, reason: str
) -> None:
    read = mail.read_mail(with_header(payload("customer_claim.eml"), header))
    assert mail.ignore_reason(read, own=CONFIG.own_addresses) is None
    assert reason in str(mail.quiet_reason(read))


def test_the_sample_auto_reply_bounces_and_our_own_mail_are_ignored() -> None:
    assert mail.ignore_reason(mail.read_mail(payload("auto_reply.eml")), own=CONFIG.own_addresses)
    claim = payload("customer_claim.eml")
    bounce = claim.replace(
        b"From: Yusuf Demir <yusuf.demir@solarege.example>",
        b"From: Mail Delivery System <MAILER-DAEMON@mx.solarege.example>",
    )
    assert "daemon" in str(mail.ignore_reason(mail.read_mail(bounce), own=CONFIG.own_addresses))
    ours = claim.replace(
        b"From: Yusuf Demir <yusuf.demir@solarege.example>", f"From: <{SUPPORT.upper()}>".encode()
    )
    assert mail.ignore_reason(mail.read_mail(ours), own=CONFIG.own_addresses) == "our own address"
    empty_return = claim.replace(b"Return-Path: <yusuf.demir@solarege.example>", b"Return-Path: <>")
    assert mail.ignore_reason(mail.read_mail(empty_return), own=CONFIG.own_addresses)
    report = EmailMessage()
    report["From"] = "someone@example.org"
    report.set_content("delivered")
    report.make_mixed()
    report.replace_header("Content-Type", 'multipart/report; report-type=delivery-status; boundary="b"')
    assert (
        mail.ignore_reason(mail.read_mail(report.as_bytes()), own=CONFIG.own_addresses)
        == "a delivery or read report"
    )
    assert (
        mail.ignore_reason(mail.read_mail(with_header(claim, "Auto-Submitted: no")), own=CONFIG.own_addresses)
        is None
    )


def test_a_claim_mail_becomes_one_inbound_message(tmp_path: Path) -> None:
    store = AttachmentStore(root=tmp_path, max_bytes=100_000, allowed_types=frozenset({"application/pdf"}))
    raw = payload("customer_claim.eml")
    message = mail.to_inbound(mail.read_mail(raw), raw, config=CONFIG, store=store)
    assert (message.chat_id, message.sender_id, message.sender_name) == (CUSTOMER, CUSTOMER, "Yusuf Demir")
    assert message.external_id == "<3c9a1f07-5e2b-4d8a-b6c4-0f2e8d7a91b3@solarege.example>"
    assert message.locale_hint == "en-GB"
    # The subject leads a first mail; the text part is preferred; the signature is gone.
    assert message.text.startswith(
        "Warranty claim: inverter CSP2402A0153 - error E07, shuts down under load\n\nHello,"
    )
    assert "Serial number: CSP2402A0153" in message.text and "warehouse in İzmir" in message.text
    assert "Best regards" not in message.text and "<p>" not in message.text
    [invoice] = message.attachments
    assert (invoice.name, invoice.mime, invoice.kind) == ("EX-2024-0311.pdf", "application/pdf", "document")
    assert store.path(invoice.ref).read_bytes().startswith(b"%PDF-")


def test_attachments_over_the_limits_are_refused_not_lost(tmp_path: Path) -> None:
    raw = payload("customer_claim.eml")
    small = AttachmentStore(root=tmp_path, max_bytes=100, allowed_types=frozenset({"application/pdf"}))
    # A first mail's From may be forged: the refusal names the file without repeating what the sender wrote.
    [refused] = mail.to_inbound(mail.read_mail(raw), raw, config=CONFIG, store=small).attachments
    assert (refused.kind, refused.name, refused.ref) == ("rejected", "attachment-1.pdf", "too_large")
    [named] = mail.to_inbound(
        mail.read_mail(raw), raw, config=CONFIG, store=small, answers_us=True
    ).attachments
    assert (named.kind, named.name, named.ref) == ("rejected", "EX-2024-0311.pdf", "too_large")
    store = AttachmentStore(root=tmp_path, max_bytes=100_000, allowed_types=frozenset({"application/pdf"}))
    truncated = mail.to_inbound(
        mail.read_mail(raw[:4000]), raw[:4000], config=CONFIG, store=store, truncated=True
    )
    assert [(a.kind, a.ref) for a in truncated.attachments] == [("rejected", "too_large")]
    assert "CSP2402A0153" in truncated.text


def test_a_reply_loses_its_quote_and_finds_its_case() -> None:
    raw = payload("customer_reply.eml")
    message = mail.to_inbound(mail.read_mail(raw), raw, config=CONFIG, store=no_store())
    assert message.text.replace("\r\n", "\n") == (
        "Hello,\n\nwith about 1 kW connected the display shows 11.2 V on the battery, and\nE07 comes 2-3 seconds "
        "later. The battery is a 12 V 200 Ah LiFePO4, cable\n25 mm², 1.5 m each way. I will send a photo of the "
        "display tomorrow."
    )
    assert message.raw["case_ref"] == "WR-2026-000042"  # from the subject
    by_id = raw.replace(b"Subject: Re: [WR-2026-000042] Your", b"Subject: Re: Your").replace(
        b"In-Reply-To: <177788893312.2211.4478102937465530128@warranty.example.com>",
        b"In-Reply-To: <177788893312.2211.4478102937465530128.WR-2026-000077@warranty.example.com>",
    )
    assert (
        mail.to_inbound(mail.read_mail(by_id), by_id, config=CONFIG, store=no_store()).raw["case_ref"]
        == "WR-2026-000077"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "1\n\nEl lun, 4 may 2026 a las 13:02, Soporte (<s@example.com>) escribió:\n> ¿Cómo apareció la falla?\n",
            "1",
        ),
        ("请看附件。\n\n-----原始邮件-----\n发件人: support@example.com\n主题: 保修\n", "请看附件。"),
        (
            "Units:\n- CSP2402A0153\n- CSP2402A0154\n\nOn Mon, 4 May 2026, Support wrote:\n> old\n",
            "Units:\n- CSP2402A0153\n- CSP2402A0154",
        ),
        (
            "Yes\n\n________________________________\nFrom: Support <s@example.com>\nSent: Monday, 4 May 2026 13:02\n"
            "To: Yusuf\nSubject: Re: case\n\nold text\n",
            "Yes",
        ),
    ],
)
def test_quoted_text_is_cut_in_the_ways_mail_clients_quote(body: str, expected: str) -> None:
    assert mail._latest_reply(body) == expected


def test_an_html_only_mail_is_read_as_text() -> None:
    message = EmailMessage()
    message["From"] = f"Yusuf <{CUSTOMER}>"
    message["Subject"] = "Re: your case"
    message["Message-ID"] = "<html-only@solarege.example>"
    message.set_content(
        "<div>Display shows <b>E07</b> &amp; stops<br>at 1.2&nbsp;kW</div><style>p{}</style>"
        '<div class="gmail_quote">On Mon, Support wrote:<blockquote><p>How did it fail?</p>'
        "</blockquote></div>",
        subtype="html",
    )
    raw = message.as_bytes()
    assert (
        mail.to_inbound(mail.read_mail(raw), raw, config=CONFIG, store=no_store()).text
        == "Display shows E07 & stops\nat 1.2 kW"
    )


# --- sending ---------------------------------------------------------------------------------------------


def test_a_reply_is_threaded_escaped_and_marked_auto_replied() -> None:
    thread = mail.Thread(
        to_name="Yusuf Demir",
        message_id="<m3@solarege.example>",
        references=("<m1@solarege.example>", "<o2@warranty.example.com>"),
        subject="Re: [WR-2026-000042] Your warranty case",
        case_ref="WR-2026-000042",
    )
    message = OutboundMessage(
        channel="email",
        chat_id=CUSTOMER,
        text="You wrote: <script>x</script> & more",
        buttons=(Button(label="It failed <b>", value="cause:normal"),),
    )
    composed = parse(mail.compose(message, thread=thread, config=CONFIG).as_bytes())
    assert header(composed, "Subject") == "Re: [WR-2026-000042] Your warranty case"
    assert header(composed, "To") == f"Yusuf Demir <{CUSTOMER}>"
    assert header(composed, "In-Reply-To") == "<m3@solarege.example>"
    assert (
        header(composed, "References")
        == "<m1@solarege.example> <o2@warranty.example.com> <m3@solarege.example>"
    )
    assert header(composed, "Auto-Submitted") == "auto-replied"
    assert plain(composed) == "You wrote: <script>x</script> & more\n\n1. It failed <b>\n"
    markup = html_part(composed)
    assert "&lt;script&gt;x&lt;/script&gt; &amp; more" in markup and "<script>" not in markup
    assert "<li>It failed &lt;b&gt;</li>" in markup
    first = mail.compose(message, thread=mail.Thread(subject="Warranty claim"), config=CONFIG)
    assert header(first, "Subject") == "Re: Warranty claim" and header(first, "In-Reply-To") == ""


def _sender(
    bot: Bot, port: int, security: str = "none", user: str = "", password: str = ""
) -> mail.MailSender:
    smtp = mail.MailServer(host="127.0.0.1", port=port, security=security, user=user, password=password)
    return mail.MailSender(bot, dataclasses.replace(CONFIG, smtp=smtp))


async def test_smtp_refusals_map_to_outbox_outcomes(bot: Bot) -> None:
    with smtp_server() as sink:
        sink.refuse = {
            "gone@example.org": "550 5.1.1 no such user",
            "busy@example.org": "451 4.3.0 try later",
        }
        sender = _sender(bot, sink.port)
        with pytest.raises(Unreachable, match="550"):
            await sender.send(OutboundMessage(channel="email", chat_id="gone@example.org", text="hi"))
        with pytest.raises(RetryLater, match="451"):
            await sender.send(OutboundMessage(channel="email", chat_id="busy@example.org", text="hi"))
        with pytest.raises(PermanentFailure, match="own address"):
            await sender.send(OutboundMessage(channel="email", chat_id=SUPPORT, text="hi"))
        delivered = await sender.send(OutboundMessage(channel="email", chat_id="ok@example.org", text="hi"))
        assert delivered.external_id == sink.mails()[0]["Message-ID"]
    with pytest.raises(RetryLater):  # nobody listens any more
        await sender.send(OutboundMessage(channel="email", chat_id="ok@example.org", text="hi"))


async def test_replies_to_one_address_are_rate_limited(bot: Bot, smtp: SmtpSink) -> None:
    sender = _sender(bot, smtp.port)  # at most 3 an hour
    with session_scope(bot.db) as session:
        for minutes in (50, 20, 5):
            session.add(
                OutboxItem(
                    channel="email",
                    chat_id=CUSTOMER,
                    payload={"text": "x"},
                    status="sent",
                    sent_at=utcnow() - datetime.timedelta(minutes=minutes),
                )
            )
        session.add(
            OutboxItem(
                channel="email",
                chat_id=CUSTOMER,
                payload={"text": "x"},
                status="sent",
                sent_at=utcnow() - datetime.timedelta(minutes=70),
            )
        )
    with pytest.raises(RetryLater) as limited:
        await sender.send(OutboundMessage(channel="email", chat_id=CUSTOMER, text="one too many"))
    assert limited.value.after is not None and 9 * 60 <= limited.value.after <= 10 * 60 + 5
    await sender.send(OutboundMessage(channel="email", chat_id="other@example.org", text="fine"))
    assert len(smtp.mails()) == 1


async def test_starttls_is_used_when_configured(
    bot: Bot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certificate, key = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # the default context trusts our test CA
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    with smtp_server(tls_context=context, require_starttls=True) as sink:
        sender = _sender(bot, sink.port, security="starttls", user=SMTP_USER, password=SMTP_PASSWORD)
        await sender.send(OutboundMessage(channel="email", chat_id="ok@example.org", text="over TLS"))
        assert plain(sink.mails()[0]) == "over TLS\n" and sink.logins == [SMTP_USER]


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = folder / "cert.pem", folder / "key.pem"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certificate_path, key_path


def test_settings_decide_whether_email_runs(bot: Bot) -> None:
    assert mail.from_settings(bot) is None
    half = build(bot.settings.model_copy(update={"imap_host": "127.0.0.1"}), db=bot.db)
    assert mail.from_settings(half) is None
    wrong = build(
        bot.settings.model_copy(
            update={"imap_host": "h", "smtp_host": "h", "email_from": SUPPORT, "smtp_security": "ssl"}
        ),
        db=bot.db,
    )
    with pytest.raises(ValueError, match="SMTP_SECURITY"):
        mail.from_settings(wrong)


# --- OAuth 2.0 (XOAUTH2) against a loopback token endpoint, IMAP and SMTP servers that check the SASL string --


CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN = (
    "5c2f0a1e-7f3b-4c1e-9d2a-000000000017",
    "app-secret~17",
    "1//0refresh17",
)


@contextmanager
def token_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTokenEndpoint]:
    """The fake authority over https (msal accepts nothing else), its certificate trusted by the bot's httpx."""
    certificate, key = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    endpoint = FakeTokenEndpoint(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, mailbox=SUPPORT
    )
    with serve(endpoint.app(), ssl_certfile=str(certificate), ssl_keyfile=str(key)) as url:
        endpoint.base_url = url.replace("http://", "https://", 1)
        yield endpoint


def oauth_settings(
    settings: Settings, imap: tuple[str, int], smtp: SmtpSink, endpoint: FakeTokenEndpoint, provider: str
) -> Settings:
    url = endpoint.base_url if provider == "microsoft" else f"{endpoint.base_url}/token"
    return email_settings(
        settings,
        imap,
        smtp,
        imap_password=None,
        smtp_password=None,
        smtp_user=SUPPORT,
        email_oauth=provider,
        email_oauth_client_id=CLIENT_ID,
        email_oauth_client_secret=SecretStr(CLIENT_SECRET),
        email_oauth_tenant=endpoint.tenant,
        email_oauth_refresh_token=SecretStr(REFRESH_TOKEN) if provider == "google" else None,
        email_oauth_url=url,
    )


@pytest.mark.parametrize("provider", ["microsoft", "google"])
def test_a_mailbox_without_passwords_is_read_and_answered_over_xoauth2(
    settings: Settings,
    db: Engine,
    mailbox: Mailbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
) -> None:
    with token_endpoint(tmp_path, monkeypatch) as endpoint, smtp_server(oauth=endpoint.valid) as smtp:
        mailbox.oauth = endpoint.valid  # basic auth off: LOGIN is refused, as Microsoft 365 and Gmail do
        with imap_server(mailbox) as imap:
            bot = build(oauth_settings(settings, imap, smtp, endpoint, provider), db=db)
            mailbox.append(payload("customer_claim.eml"))
            channel = mail.from_settings(bot)
            assert channel is not None
            with serve(create_app(bot, channels=[channel])):
                first = smtp.wait_for(
                    lambda m: m["To"] is not None and CUSTOMER in str(m["To"]), "the first reply"
                )
                assert mailbox.authentications == ["ok"] and smtp.oauth_attempts[0] == (SUPPORT, True)
                grant = "client_credentials" if provider == "microsoft" else "refresh_token"
                assert {g for _, g in endpoint.requests} == {grant}

                # The token is revoked (or expired early): the next reply is refused once, then sent with a new one.
                endpoint.revoke_all()
                issued = len(endpoint.issued)
                mailbox.append(customer_answer(first, "It is CSP2402A0153, bought in March"))
                wait_until(lambda: len(smtp.mails()) >= 2, what="a reply after the token was revoked")
                assert (SUPPORT, False) in smtp.oauth_attempts and smtp.oauth_attempts[-1] == (SUPPORT, True)
                assert len(endpoint.issued) == issued + 1
    assert all(CLIENT_SECRET not in str(m) and REFRESH_TOKEN not in str(m) for m in smtp.mails())


def test_a_reconnect_after_the_token_was_revoked_asks_for_a_new_one(
    bot: Bot, mailbox: Mailbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with token_endpoint(tmp_path, monkeypatch) as endpoint:
        mailbox.oauth = endpoint.valid
        with imap_server(mailbox) as imap:
            config = mail.MailSettings(
                **{
                    **config_values(),
                    "imap": mail.MailServer(host=imap[0], port=imap[1], security="none", user=SUPPORT),
                    "oauth": "google",
                    "oauth_client_id": CLIENT_ID,
                    "oauth_client_secret": CLIENT_SECRET,
                    "oauth_refresh_token": REFRESH_TOKEN,
                    "oauth_url": f"{endpoint.base_url}/token",
                }
            )
            tokens = mail.OAuthTokens(config)
            reader = mail.MailboxReader(bot, config, tokens=tokens)
            reader._connect().logout()
            reader._connect().logout()  # the held token is reused while it is valid
            assert len(endpoint.issued) == 1
            endpoint.revoke_all()
            reader._connect().logout()
            assert mailbox.authentications == ["ok", "ok", "refused", "ok"] and len(endpoint.issued) == 2
            with pytest.raises(imaplib.IMAP4.error):  # a password login is refused: basic auth is off
                mail.MailboxReader(bot, config)._connect()

            wrong = mail.OAuthTokens(
                mail.MailSettings(**{**config.__dict__, "oauth_refresh_token": "1//0revoked"})
            )
            with pytest.raises(mail.OAuthError) as refused:
                wrong.token()
            assert "invalid_grant" in refused.value.reason and "1//0revoked" not in str(refused.value)
            tokens.close()
            wrong.close()


def test_microsoft_tokens_come_from_msal_at_the_configured_authority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with token_endpoint(tmp_path, monkeypatch) as endpoint:
        config = mail.MailSettings(
            **{
                **config_values(),
                "oauth": "microsoft",
                "oauth_client_id": CLIENT_ID,
                "oauth_client_secret": CLIENT_SECRET,
                "oauth_tenant": endpoint.tenant,
                "oauth_url": endpoint.base_url,
            }
        )
        tokens = mail.OAuthTokens(config)
        first = tokens.token()
        assert (
            tokens.token() == first and len(endpoint.issued) == 1
        )  # msal's cache holds it until near expiry
        assert tokens.token(fresh=True) != first and len(endpoint.issued) == 2
        assert endpoint.requests[-1] == (f"/{endpoint.tenant}/oauth2/v2.0/token", "client_credentials")
        wrong = mail.OAuthTokens(mail.MailSettings(**{**config.__dict__, "oauth_client_secret": "guessed"}))
        with pytest.raises(mail.OAuthError, match="invalid_client"):
            wrong.token()
        tokens.close()
        wrong.close()
    assert mail.xoauth2("a@b.example", "tok") == b"user=a@b.example\x01auth=Bearer tok\x01\x01"


@pytest.mark.parametrize(
    ("provider", "missing"),
    [("microsoft", "EMAIL_OAUTH_TENANT"), ("google", "EMAIL_OAUTH_REFRESH_TOKEN"), ("yahoo", "EMAIL_OAUTH")],
)
def test_oauth_settings_are_checked_at_start(bot: Bot, provider: str, missing: str) -> None:
    configured = build(
        bot.settings.model_copy(
            update={
                "imap_host": "h",
                "smtp_host": "h",
                "email_from": SUPPORT,
                "imap_user": SUPPORT,
                "email_oauth": provider,
                "email_oauth_client_id": CLIENT_ID,
                "email_oauth_client_secret": SecretStr(CLIENT_SECRET),
            }
        ),
        db=bot.db,
    )
    with pytest.raises(ValueError, match=missing):
        mail.from_settings(configured)


# --- mail abuse: e-mail is unauthenticated ------------------------------------------------------------------


def _mail(body: str = "CSP2402A0153 shows E07", *, headers: tuple[str, ...] = (), files: int = 0) -> bytes:
    message = EmailMessage(policy=email_policy.SMTP)
    message["From"] = f"Yusuf Demir <{CUSTOMER}>"
    message["To"] = SUPPORT
    message["Subject"] = "Warranty claim"
    message["Message-ID"] = make_msgid(domain="solarege.example")
    message.set_content(body)
    for number in range(files):
        message.add_attachment(
            b"%PDF-1.4 tiny", maintype="application", subtype="pdf", filename=f"f{number}.pdf"
        )
    raw = message.as_bytes()
    return b"".join(line.encode() + b"\r\n" for line in headers) + raw


def test_the_reply_parser_reads_a_bounded_start_of_a_crafted_mail(tmp_path: Path) -> None:
    # "On On On … wrot": the reply parser backtracked for about cubic time (15 KB: 12.5 s, holding the GIL, so a
    # thread could not help). Run in a child process so that a stall fails this test instead of hanging it.
    raw = _mail("On " * 33_000 + "wrot")
    (tmp_path / "crafted.eml").write_bytes(raw)
    script = (
        "import sys; from adapters import mail; from tests.fakes.mail import CONFIG, no_store; "
        "raw = open(sys.argv[1], 'rb').read(); "
        "print(len(mail.to_inbound(mail.read_mail(raw), raw, config=CONFIG, store=no_store()).text))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "crafted.eml")],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:  # a watchdog, not a timing assertion: before, this took about an hour
        pytest.fail("the reply parser did not finish on a crafted mail")
    assert int(done.stdout) <= mail.REPLY_PARSER_MAX_CHARS + len("Warranty claim\n\n")


def test_a_mail_that_stopped_the_reader_twice_is_left_for_a_person(
    bot: Bot, imap: tuple[str, int], mailbox: Mailbox
) -> None:
    config = dataclasses.replace(CONFIG, imap=dataclasses.replace(CONFIG.imap, host=imap[0], port=imap[1]))
    reader = mail.MailboxReader(bot, config)
    poison, after = mailbox.append(_mail("first")), mailbox.append(_mail("second"))
    # What two starts that died while taking `poison` leave behind (killed by a stall, an out-of-memory kill).
    kv_put(
        bot.db,
        reader.state_key,
        {
            "uidvalidity": mailbox.uidvalidity,
            "last_uid": 0,
            "pending": [],
            "taking": poison,
            "attempts": mail.POISON_ATTEMPTS,
        },
    )
    with imaplib.IMAP4(*imap) as connection:
        connection.login(SUPPORT, IMAP_PASSWORD)
        connection.select("INBOX")
        reader.sync(connection, mailbox.uidvalidity, None)
        assert mailbox.fetched_uids() == [after]
        assert "\\Seen" not in mailbox.mails[0].flags  # unread: a person sees it
        reader.sync(connection, mailbox.uidvalidity, None)  # and it is not tried again
        assert mailbox.fetched_uids() == [after]
    stored = kv_get(bot.db, reader.state_key)
    assert stored is not None and stored[0]["last_uid"] == after and "taking" not in stored[0]


def test_a_mail_that_stopped_the_reader_once_is_tried_again(
    bot: Bot, imap: tuple[str, int], mailbox: Mailbox
) -> None:
    config = dataclasses.replace(CONFIG, imap=dataclasses.replace(CONFIG.imap, host=imap[0], port=imap[1]))
    reader = mail.MailboxReader(bot, config)
    uid = mailbox.append(_mail("a deploy restarted the bot while this was read"))
    kv_put(
        bot.db,
        reader.state_key,
        {"uidvalidity": mailbox.uidvalidity, "last_uid": 0, "pending": [], "taking": uid, "attempts": 1},
    )
    with imaplib.IMAP4(*imap) as connection:
        connection.login(SUPPORT, IMAP_PASSWORD)
        connection.select("INBOX")
        reader.sync(connection, mailbox.uidvalidity, None)
    assert mailbox.fetched_uids() == [uid] and len(inbox_ids(bot.db)) == 1


def test_untrusted_header_values_reach_the_log_as_short_single_lines() -> None:
    digits = " ".join(f"=?utf-8?q?{n:02d}?=" for n in range(10_000))  # decodes to one long run of digits
    reason = mail.ignore_reason(
        mail.read_mail(_mail(headers=(f"Auto-Submitted: {digits}",))), own=frozenset()
    )
    assert reason is not None and reason.startswith("Auto-Submitted:")
    assert len(reason) <= 100 and "\n" not in reason


@pytest.mark.parametrize(
    ("results", "ignored"),
    [
        (
            "mx.warranty.example.com; spf=pass smtp.mailfrom=solarege.example; dkim=pass header.d=solarege.example;"
            " dmarc=pass header.from=solarege.example",
            False,
        ),
        (
            "mx.warranty.example.com; spf=fail smtp.mailfrom=solarege.example; dkim=none;"
            " dmarc=fail (p=REJECT sp=REJECT dis=NONE) header.from=solarege.example",
            True,
        ),
        (
            "mx.warranty.example.com; spf=softfail smtp.mailfrom=solarege.example; dkim=pass header.d=solarege.example",
            False,
        ),
        (
            "mx.warranty.example.com; spf=fail smtp.mailfrom=solarege.example; dkim=fail header.d=solarege.example",
            True,
        ),
    ],
)
def test_a_forged_sender_is_not_answered_when_the_receiving_server_says_so(
    results: str, ignored: bool
) -> None:
    # The receiving server's header is on top; one the forger added below it says nothing.
    forged = "forger.example; spf=pass; dkim=pass; dmarc=pass"
    raw = _mail(headers=(f"Authentication-Results: {results}", f"Authentication-Results: {forged}"))
    reason = mail.ignore_reason(mail.read_mail(raw), own=frozenset())
    assert (reason is not None) == ignored
    assert reason is None or "forged" in reason
    assert mail.ignore_reason(mail.read_mail(_mail()), own=frozenset()) is None  # no header: nothing to go by


def test_a_mail_of_many_tiny_files_keeps_a_bounded_number(tmp_path: Path) -> None:
    raw = _mail(files=300)
    store = AttachmentStore(root=tmp_path, max_bytes=100_000, allowed_types=frozenset({"application/pdf"}))
    inbound = mail.to_inbound(mail.read_mail(raw), raw, config=CONFIG, store=store)
    assert len(inbound.attachments) == mail.MAX_ATTACHMENTS
    assert len(list(tmp_path.rglob("*.pdf"))) <= mail.MAX_ATTACHMENTS


async def test_a_message_id_that_decodes_to_cr_lf_does_not_poison_the_customers_replies(
    bot: Bot, smtp: SmtpSink
) -> None:
    forged = _mail().replace(
        b"Message-ID: <", b"Message-ID: =?utf-8?q?=3Cx=0D=0ABcc=3A_victim=40evil.example=3E?= <"
    )
    inbound = mail.to_inbound(mail.read_mail(forged), forged, config=CONFIG, store=no_store())
    assert all("\r" not in str(v) and "\n" not in str(v) for v in inbound.raw.values())
    bot.engine.accept(inbound)
    # A row stored before this fix, with the raw header value, must not poison the thread either.
    with session_scope(bot.db) as session:
        session.add(
            InboxItem(
                channel="email",
                external_id="old-row",
                chat_id=CUSTOMER,
                status="done",
                payload={
                    "sender_name": "Yusuf\r\nBcc: x@evil.example",
                    "raw": {
                        "message_id": "<a@b>\r\nBcc: victim@evil.example",
                        "references": "<c@d>\r\n",
                        "subject": "Hi\r\nX: y",
                    },
                },
            )
        )
    sender = _sender(bot, smtp.port)
    await sender.send(OutboundMessage(channel="email", chat_id=CUSTOMER, text="Your case is open"))
    [sent] = smtp.mails()
    assert smtp.received[0][1] == [CUSTOMER]
    assert sent["In-Reply-To"] == "<a@b>" and sent["Bcc"] is None and sent["X"] is None


# --- mail as real clients write it ------------------------------------------------------------------------


REAL_CLIENTS = [
    # sample, (address, name), words the bot must get, words it must not, files kept
    (
        "outlook_ru_reply.eml",
        ("ivan.petrov@solnce.example.ru", "Иван Петров"),
        "серийный номер CSP2402A0153",
        "пришлите серийный номер",
        [],
    ),
    (
        "outlook_ar_reply.eml",
        ("ahmed@alfaris.example.sa", "أحمد الفارسي"),
        "الرقم التسلسلي هو CSP2402A0153",
        "يرجى إرسال",
        [],
    ),
    (
        "outlook_ja_iso2022jp.eml",
        ("hanako.sato@solar-tokyo.example.jp", "佐藤 花子"),
        "①シリアル番号：CSP2402A0153",
        "\ufffd",
        ["請求書①.pdf"],
    ),
    ("qq_gb2312.eml", ("1234567890@qq.com", "李喆"), "客户是李喆，地址在镕城路", "\ufffd", ["发票-喆.pdf"]),
    (
        "163_gb2312.eml",
        ("wangrong_solar@163.com", "王镕"),
        "充到80%就停止充电",
        "\ufffd",
        ["购机发票（王镕）.pdf"],
    ),
    (
        "big5_hkscs.eml",
        ("tai.man.chan@solar-hk.example.hk", "陳大文"),
        "係咪保養範圍㗎？啲發票",
        "\ufffd",
        [],
    ),
    (
        "gmail_wrapped_reply.eml",
        ("marta.kowalska.solar@gmail.com", "Marta Kowalska"),
        "installed on 12 April 2024",
        "support@warranty.example.com",
        [],
    ),  # the attribution wrapped before the address leaves no fragment
    (
        "apple_mail_reply.eml",
        ("lucas.martin@icloud.com", "Lucas Martin"),
        "still shows E07 after the restart",
        "Could you send",
        ["IMG_0042.jpeg"],
    ),  # a photo Apple Mail put inline is the customer's, and kept
    (
        "webform_reply_to.eml",
        ("kofi.mensah@ghanasolar.example.com.gh", "Kofi Mensah"),
        "CSP2311B0872",
        "noreply",
        [],
    ),
]


@pytest.mark.parametrize(
    ("sample", "who", "said", "not_said", "files"), REAL_CLIENTS, ids=[case[0] for case in REAL_CLIENTS]
)
def test_mail_from_real_clients_is_read_as_written(
    tmp_path: Path, sample: str, who: tuple[str, str], said: str, not_said: str, files: list[str]
) -> None:
    raw = payload(sample)
    message = mail.read_mail(raw)
    assert mail.ignore_reason(message, own=CONFIG.own_addresses) is None
    store = AttachmentStore(
        root=tmp_path,
        max_bytes=1_000_000,
        allowed_types=frozenset({"application/pdf", "image/jpeg", "image/png"}),
    )
    inbound = mail.to_inbound(message, raw, config=CONFIG, store=store, answers_us=True)
    assert (inbound.chat_id, inbound.sender_name) == who
    assert said in inbound.text and not_said not in inbound.text
    assert "\ufffd" not in inbound.raw["subject"] and "=?" not in inbound.raw["subject"]
    assert [
        a.name for a in inbound.attachments if a.kind != "rejected"
    ] == files  # a signature logo is no photo


@pytest.mark.parametrize("sample", ["auto_reply_subject_zh.eml", "auto_reply_x_loop.eml"])
def test_auto_replies_without_the_standard_headers_are_not_answered(sample: str) -> None:
    assert mail.ignore_reason(mail.read_mail(payload(sample)), own=CONFIG.own_addresses) is not None


def test_iso_2022_jp_with_outlooks_extensions_and_labelled_charsets_decode() -> None:
    assert (
        mail.decode_bytes(b"\x1b$B-!$N7o\x1b(B OK", "iso-2022-jp") == "①の件 OK"
    )  # NEC row 13 in JIS X 0208
    assert mail.decode_bytes("喆".encode("gbk"), "gb2312") == "喆"
    assert mail.decode_bytes("㗎".encode("big5hkscs"), "big5") == "㗎"
    assert mail.decode_bytes(b"\xff\xfe", "x-unknown") == "\ufffd\ufffd"  # an unknown label never raises


def test_files_inside_outlooks_winmail_dat_are_unpacked(tmp_path: Path) -> None:
    # tnefparse's umlaut.tnef example inside an Outlook mail: before, the one winmail.dat was refused.
    raw = payload("outlook_winmail_dat.eml")
    store = AttachmentStore(root=tmp_path, max_bytes=1_000_000, allowed_types=frozenset({"image/jpeg"}))
    inbound = mail.to_inbound(mail.read_mail(raw), raw, config=CONFIG, store=store, answers_us=True)
    assert [(a.kind, a.name) for a in inbound.attachments] == [
        ("photo", "TBZ PARIV GmbH.jpg"),
        ("photo", "image003.jpg"),
        ("rejected", "UmlautAnhang-äüö.txt"),
    ]
    assert "rating plate" in inbound.text
