"""The email channel: customer mail read from an IMAP mailbox (IDLE or polling), replies sent over SMTP.

Receiving runs in one thread with the stdlib's imaplib (IDLE where the server offers it, polling otherwise);
the mailbox's UIDVALIDITY and the last UID taken are kept in the database, so that a restart neither loses
nor repeats mail (and a repeat would still be caught by the inbox's unique `Message-ID`). Sending uses
smtplib in a worker thread. The stdlib was chosen over aioimaplib (GPL-3.0, which the proprietary bot cannot
ship) and aiosmtplib (one more dependency for one short blocking call per reply).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import dataclasses
import hashlib
import html
import imaplib
import logging
import mimetypes
import re
import select
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from email import policy as email_policy
from email.header import decode_header
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime, formataddr, getaddresses, make_msgid, parseaddr
from html.parser import HTMLParser
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import unquote_to_bytes

import httpx
import msal
import tnefparse
from mailparser_reply import EmailMessage as ReplyParser
from pydantic import SecretStr
from sqlalchemy import Engine
from starlette.routing import BaseRoute

from adapters.base import SendingChannel
from bot import channels
from bot.app import Bot
from bot.attachments import AttachmentRejected, AttachmentStore
from bot.engine import last_inbound
from bot.logs import excerpt
from bot.messages import Attachment, InboundMessage, OutboundMessage
from bot.outbox import Delivered, PermanentFailure, RetryLater, Unreachable, sent_any, sent_times
from bot.store.clock import utcnow

CHANNEL = "email"
SECURITIES = ("tls", "starttls", "none")
IMAP_TIMEOUT_SECONDS = 60.0
SMTP_TIMEOUT_SECONDS = 60.0
IDLE_TICK_SECONDS = 0.5  # how often a waiting IDLE looks at the stop flag
MAX_REFERENCES = 20  # a References header keeps the thread's first id and the latest ones
POISON_ATTEMPTS = 2  # starts that may stop while taking one mail before it is left for a person
# The reply parser backtracks in about cubic time on crafted text ("On On On … wrot": 15 KB took 12.5 s,
# holding the GIL, so every channel stalled). It reads at most this much, the start of the mail, where the
# newest words are; measured worst case here: 0.4 s. The bot reads no more than MAX_TEXT_CHARS (4000) anyway.
REPLY_PARSER_MAX_CHARS = 4000
MAX_ATTACHMENTS = 10  # files kept from one mail; more are dropped (a mail of 500 tiny files is an attack)
# An image the HTML shows inline and smaller than this is a logo or a signature picture; a photo the customer
# pasted or Apple Mail put inline (IMG_0042.jpeg) is larger, and is kept.
INLINE_DECORATION_BYTES = 32 * 1024
MAX_HTML_SCAN = 1_000_000  # characters of HTML searched for inline images
MAX_LOGGED_HEADER = 40  # characters of an untrusted header value that reach the log
# Languages whose "On … wrote:" lines the reply parser knows (it adds English itself).
REPLY_LANGUAGES = ("en", "es", "fr", "zh", "de", "it", "nl", "pl", "cs", "da", "sv", "ja", "ko")

log = logging.getLogger(__name__)

C = TypeVar("C", bound="_Upgradable")


@dataclass(frozen=True, kw_only=True)
class MailServer:
    """A mail server the channel logs in to: the IMAP server it reads, or the SMTP server it sends through."""

    host: str
    port: int
    security: str  # one of SECURITIES
    user: str = ""  # empty: no login (an SMTP relay that takes mail from us unasked)
    password: str = ""


@dataclass(frozen=True, kw_only=True)
class MailSettings:
    """What the email channel needs from the settings."""

    imap: MailServer
    mailbox: str  # the IMAP mailbox read
    poll_seconds: float
    smtp: MailServer
    from_header: str  # as configured: "CSP Warranty Support <support@example.com>" or a bare address
    address: str  # our own address, lower-cased
    replies_per_hour: int
    case_ref_prefix: str
    max_mail_bytes: int  # larger mails are read only in part: text kept, files refused as too large
    # OAuth 2.0 (SASL XOAUTH2) instead of passwords: "microsoft" (Entra ID client credentials) or "google"
    # (a refresh token); empty for password login.
    oauth: str = ""
    oauth_client_id: str = ""
    oauth_client_secret: str = ""
    oauth_tenant: str = ""
    oauth_refresh_token: str = ""
    oauth_url: str = (
        ""  # the Microsoft authority host or Google's token endpoint; empty for the provider's own
    )

    @property
    def own_addresses(self) -> frozenset[str]:
        own = {self.address}
        if "@" in self.imap.user:
            own.add(self.imap.user.lower())
        return frozenset(own)

    @property
    def case_ref(self) -> re.Pattern[str]:
        return re.compile(rf"\b{re.escape(self.case_ref_prefix)}-\d{{4}}-\d{{6,}}\b", re.IGNORECASE)


# --- verify: mail we never answer ------------------------------------------------------------------------

_LIST_PRECEDENCE = {"bulk", "list", "junk", "auto_reply"}
# Auto-replies that carry none of the standard headers, by the subjects their clients give them.
_AUTO_SUBJECT = re.compile(
    r"^\s*(out of (the )?office|automatic reply|auto(matic)?[- ]?reply|auto[- ]?response|autoreply|"
    r"abwesenheitsnotiz|automatische antwort|r[ée]ponse automatique|absence du bureau|respuesta autom[áa]tica|"
    r"fuera de la oficina|resposta autom[áa]tica|risposta automatica|автоматический ответ|автоответ|"
    r"رد تلقائي|自动回复|自動回覆|自動回复|自动答复|自動応答|不在通知|자동 응답)\s*[:：]",
    re.IGNORECASE,
)
MAX_ADDRESS = 254  # RFC 5321's limit for a path, without its angle brackets
MAX_MESSAGE_ID = 255  # the inbox's external id column
_DAEMONS = {"mailer-daemon", "postmaster"}


def quiet_reason(mail: Message) -> str | None:
    """Why a person's `mail` is taken for the engineers but never answered automatically, or None.

    Outlook's `X-Auto-Response-Suppress` asks for no automatic answer, and a list (`List-Id`, as a Google Group
    support address adds to every mail) must not be answered to all its members; the mail is still a person's.
    """
    if mail.get("X-Auto-Response-Suppress") is not None:
        return "X-Auto-Response-Suppress"
    if mail.get("List-Id") is not None or mail.get("List-Unsubscribe") is not None:
        return "a mailing list"
    return None


def ignore_reason(mail: Message, *, own: frozenset[str]) -> str | None:
    """Why `mail` must be neither answered nor relayed (auto-reply, bounce, list, our own), or None.

    Answering any of these is how mail loops start (RFC 3834); they are left in the mailbox for people.
    """
    auto_submitted = _header(mail, "Auto-Submitted").split(";")[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        return f"Auto-Submitted: {excerpt(auto_submitted, MAX_LOGGED_HEADER)}"  # the sender's words, logged
    if mail.get("X-Autoreply") is not None or mail.get("X-Autorespond") is not None:
        return "X-Autoreply"
    if mail.get("X-Loop") is not None:
        return "X-Loop (a mail that went round a loop already)"
    if _AUTO_SUBJECT.match(_header(mail, "Subject")):
        return "an auto-reply's subject"
    precedence = str(mail.get("Precedence", "")).strip().lower()
    if precedence in _LIST_PRECEDENCE:
        return f"Precedence: {excerpt(precedence, MAX_LOGGED_HEADER)}"
    return_path = mail.get("Return-Path")
    if return_path is not None and str(return_path).strip() in ("<>", ""):
        return "empty Return-Path (a bounce or an auto-reply)"
    if mail.get_content_type() == "multipart/report":
        return "a delivery or read report"
    failed = authentication_failure(mail)
    if failed:
        return f"the sender's domain did not vouch for it ({failed}): a forged From is never answered"
    sender = _sender(mail)[1]
    if not sender:
        return "no sender address"
    if len(sender) > MAX_ADDRESS or not sender.isprintable():
        # It becomes the chat id: stored, it would fail on PostgreSQL and block the mail after it.
        return "a sender address that is not one"
    if sender.split("@")[0] in _DAEMONS:
        return "a mail daemon"
    if sender in own:
        return "our own address"
    return None


_AUTH_RESULT = re.compile(r"\b(spf|dkim|dmarc)\s*=\s*([a-z]+)", re.IGNORECASE)


def authentication_failure(mail: Message) -> str | None:
    """What the receiving server found wrong with the sender (RFC 8601 `Authentication-Results`), or None.

    Only the topmost header counts: it is the one our own mail server added last; ones below it came with the
    mail and can say anything. A DMARC failure, or without DMARC an SPF failure with no DKIM pass, means the
    From is probably forged; answering it would send our reply (backscatter) to someone who never wrote.
    No header at all (a server that does not check) leaves the mail as it is.
    """
    try:
        values = mail.get_all("Authentication-Results") or []
    except (IndexError, ValueError):
        return None
    if not values:
        return None
    results: dict[str, set[str]] = {}
    for method, result in _AUTH_RESULT.findall(str(values[0])):
        results.setdefault(method.lower(), set()).add(result.lower())
    if "fail" in results.get("dmarc", set()):
        return "dmarc=fail"
    if (
        "dmarc" not in results
        and "fail" in results.get("spf", set())
        and "pass" not in results.get("dkim", set())
    ):
        return "spf=fail, no dkim=pass"
    return None


# --- parse ----------------------------------------------------------------------------------------------


def read_mail(raw: bytes) -> EmailMessage:
    return BytesParser(policy=email_policy.default).parsebytes(raw)


def to_inbound(
    mail: EmailMessage,
    raw: bytes,
    *,
    config: MailSettings,
    store: AttachmentStore,
    truncated: bool = False,
    answers_us: bool = False,
) -> InboundMessage:
    """The customer's mail as an inbound message: latest reply only, files kept within the store's limits.

    `answers_us`: the mail answers one of our own mails, so its sender has read ours; until then (a first mail,
    whose From anyone can write) the names of refused files are not repeated in our reply.
    """
    name, address = _sender(mail)
    message_id = next(iter(_message_ids(_header(mail, "Message-ID"))), "")
    # A mail without a usable Message-ID still needs a stable key, or a restart mid-mailbox could take it twice.
    external_id = message_id or f"sha256:{hashlib.sha256(raw).hexdigest()}"
    in_reply_to = next(iter(_message_ids(_header(mail, "In-Reply-To"))), "")
    references = " ".join(_message_ids(_header(mail, "References"))[-MAX_REFERENCES:])
    subject = _one_line(_header(mail, "Subject"))
    body_part = mail.get_body(preferencelist=("plain", "html"))
    body = _latest_reply(_part_text(body_part)) if body_part is not None else ""
    is_reply = bool(in_reply_to or references) or bool(_REPLY_PREFIX.match(subject))
    # A first mail's subject often says it all ("CSP2402A0153 shows E07"); a reply's subject is ours.
    text = f"{subject}\n\n{body}".strip() if subject and not is_reply else body
    return InboundMessage(
        channel=CHANNEL,
        external_id=external_id,
        sender_id=address,
        chat_id=address,
        text=text,
        attachments=_attachments(mail, body_part, store, truncated=truncated, quote_names=answers_us),
        received_at=utcnow(),
        locale_hint=_header(mail, "Content-Language").split(",")[0].strip() or None,
        sender_name=name or None,
        raw={
            "message_id": message_id,
            "in_reply_to": in_reply_to,
            "references": references,
            "subject": subject[:300],
            "case_ref": _thread_case_ref(mail, config),
        },
    )


_IMAGE_PLACEHOLDER = re.compile(r"^\[image: [^\]\n]{0,200}\]\s*$", re.MULTILINE)
_REPLY_PREFIX = re.compile(
    r"^\s*((re|aw|sv|vs|antw|rif|r|回复|答复|ответ)\s*(\[\d+\])?\s*[:：]\s*)+", re.IGNORECASE
)
_SEPARATOR = re.compile(
    r"^\s*-{3,}\s*[^-\s].*?-{3,}\s*$"
)  # "-----Original Message-----", "-----原始邮件-----"


def _latest_reply(text: str) -> str:
    """The customer's newest words: quoted mail, attribution lines and signatures taken away."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if len(text) > REPLY_PARSER_MAX_CHARS:
        cut = text.rfind("\n", 0, REPLY_PARSER_MAX_CHARS)
        text = text[: cut if cut > REPLY_PARSER_MAX_CHARS // 2 else REPLY_PARSER_MAX_CHARS].rstrip()
    try:
        # Hyphen lists stay: customers list serials as "- CSP…" and the parser would take them for a signature.
        replies = (
            ReplyParser(text=text, languages=list(REPLY_LANGUAGES), keep_hyphen_lists=True).read().replies
        )
    except Exception:  # a parser bug must not lose the customer's mail: fall back to our own cut
        log.warning("reply parser failed; keeping the whole text", exc_info=True)
        replies = []
    latest = replies[0].body.strip() if replies else text
    latest = _IMAGE_PLACEHOLDER.sub("", latest).strip() or latest  # Gmail's "[image: Logo]" for a picture
    if replies and not latest:
        latest = replies[0].full_body.strip()  # only a "signature": it is all they wrote
    return _cut_quote(latest).strip() or latest


# Outlook's header block above a quoted mail ("From: … / Sent: … / To: … / Subject: …") in the languages the
# reply parser does not know (Russian, Arabic, …) and the ones it does; a "From" line followed within three
# lines by a "Sent"/"Date"/"To" line starts the quote.
_OUTLOOK_FROM = re.compile(
    r"^\s*\*?\s*(from|von|de|da|van|od|från|fra|lähettäjä|от|من|发件人|寄件者|差出人|보낸 사람|kimden|feladó)\s*\*?\s*[:：]",
    re.IGNORECASE,
)
_OUTLOOK_NEXT = re.compile(
    r"^\s*\*?\s*(sent|date|to|gesendet|datum|an|envoyé|enviado|inviato|verzonden|wysłano|skickat|sendt|"
    r"отправлено|дата|кому|تم الإرسال|التاريخ|إلى|发送时间|日期|收件人|寄件日期|送信日時|받은 사람|보낸 날짜|"
    r"gönderildi|elküldve)\s*\*?\s*[:：]",
    re.IGNORECASE,
)
_RULE = re.compile(r"^\s*[_=—–-]{8,}\s*$")  # Outlook's "________________________________" above the block


def _cut_quote(text: str) -> str:
    """Cut what the parser missed: a trailing `>` block with its attribution line, an "original" separator, or
    Outlook's header block in any language."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if _OUTLOOK_FROM.match(line) and any(
            _OUTLOOK_NEXT.match(rest) for rest in lines[index + 1 : index + 4]
        ):
            kept = lines[:index]
            while kept and (not kept[-1].strip() or _RULE.match(kept[-1])):
                kept.pop()
            if kept:
                lines = kept
            break
    # Where the trailing block of quoted (or blank) lines starts: found once, from the end, so this is linear.
    tail = len(lines)
    while tail > 0 and (not lines[tail - 1].strip() or lines[tail - 1].lstrip().startswith(">")):
        tail -= 1
    for index, line in enumerate(lines):
        if _SEPARATOR.match(line):
            return "\n".join(lines[:index])
        if line.lstrip().startswith(">") and index >= tail:
            kept = lines[:index]
            while kept and not kept[-1].strip():
                kept.pop()
            if kept and kept[-1].rstrip().endswith((":", "：")):
                kept.pop()
            return "\n".join(kept)
    return "\n".join(lines)


# Charsets as mail clients label them, read as the supersets they really send: Chinese clients (QQ, 163,
# Foxmail, Outlook) label GBK and GB18030 text "gb2312"; Hong Kong and Taiwan mail labelled "big5" holds
# HKSCS characters; Outlook's "iso-2022-jp" holds NEC and IBM extensions (①, ㈱, Roman numerals), read through
# cp932 (`_iso2022jp_outlook`); "shift_jis" is Windows' cp932; Korean "euc-kr" is cp949.
_READ_AS: dict[tuple[str, ...], tuple[str, ...]] = {  # labels -> the charsets to read them as, in order
    ("gb2312", "gbk", "x-gbk", "cp936", "gb_2312-80", "euc-cn", "x-euc-cn"): ("gb18030",),
    ("big5", "big-5", "cn-big5", "x-x-big5"): ("big5hkscs", "cp950"),
    ("iso-2022-jp", "csiso2022jp"): ("iso2022_jp_2004", "iso2022_jp_ext", "iso2022_jp_2"),
    ("shift_jis", "shift-jis", "sjis", "x-sjis"): ("cp932",),
    ("ks_c_5601-1987", "euc-kr"): ("cp949",),
    ("us-ascii", "ascii"): ("utf-8", "cp1252"),
    ("iso-8859-1",): ("cp1252",),
}
CHARSETS: dict[str, tuple[str, ...]] = {label: read for labels, read in _READ_AS.items() for label in labels}


_ISO2022JP = re.compile(rb"\x1b(\$[@B]|\([BJI])")


def _iso2022jp_outlook(data: bytes) -> str:
    """ISO-2022-JP as Outlook writes it (CP50220): JIS X 0208 with NEC's row 13 and IBM's extensions inside,
    and half-width katakana. Each two-byte JIS code becomes Shift_JIS and is read as cp932, which has them all."""
    out: list[str] = []
    mode = b"(B"
    position = 0
    for match in [*_ISO2022JP.finditer(data), None]:
        end = match.start() if match is not None else len(data)
        chunk = data[position:end]
        if mode in (b"$@", b"$B"):
            if len(chunk) % 2 or any(not 0x21 <= b <= 0x7E for b in chunk):
                raise UnicodeDecodeError("iso-2022-jp", data, position, end, "not JIS X 0208")
            sjis = bytearray()
            for j1, j2 in zip(chunk[::2], chunk[1::2], strict=True):
                s1 = (j1 + 1) // 2 + 0x70
                s1 += 0x40 if s1 >= 0xA0 else 0
                s2 = (j2 + 0x1F + (j2 >= 0x60)) if j1 % 2 else j2 + 0x7E
                sjis += bytes((s1, s2))
            out.append(bytes(sjis).decode("cp932"))
        elif mode == b"(I":
            out.append(bytes(b + 0x80 for b in chunk).decode("cp932"))
        else:
            out.append(chunk.decode("ascii"))
        if match is not None:
            mode, position = match.group(1), match.end()
    return "".join(out)


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Text in the charset a mail names, read as what clients that name it really send; never raises."""
    label = (charset or "utf-8").strip().strip('"').lower()
    if label in ("iso-2022-jp", "csiso2022jp"):
        try:
            return _iso2022jp_outlook(data)
        except UnicodeDecodeError:
            pass  # other escapes (JIS X 0212, 0213): the codecs below
    for codec in (*CHARSETS.get(label, ()), label, "utf-8", "gb18030"):
        try:
            return data.decode(codec)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("utf-8", "replace")


def _decoded_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    return decode_bytes(payload, part.get_content_charset()) if isinstance(payload, bytes) else ""


def _part_text(part: Message) -> str:
    text = _decoded_text(part)
    return html_to_text(text) if part.get_content_type() == "text/html" else text


class _HtmlText(HTMLParser):
    """HTML to plain text: blocks become lines, quoted blocks get `> `, scripts and styles vanish."""

    _BLOCKS: ClassVar[frozenset[str]] = frozenset(
        {
            "p",
            "div",
            "br",
            "li",
            "tr",
            "ul",
            "ol",
            "table",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "hr",
            "pre",
            "blockquote",
            "section",
            "article",
            "header",
            "footer",
        }
    )
    _HIDDEN: ClassVar[frozenset[str]] = frozenset({"script", "style", "head", "title", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = [""]
        self.hidden = 0
        self.quoted = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self.hidden += 1
        elif tag in self._BLOCKS:
            self._newline()
            if tag == "blockquote":
                self.quoted += 1
            elif tag == "li":
                self.lines[-1] = "- "

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self._BLOCKS:
            if tag == "blockquote":
                self.quoted = max(0, self.quoted - 1)
            self._newline()

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.lines[-1] += re.sub(r"\s+", " ", data.replace("\xa0", " "))

    def _newline(self) -> None:
        self.lines.append("> " * self.quoted)

    def text(self) -> str:
        lines = [line.strip() for line in self.lines]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(markup: str) -> str:
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    return parser.text()


def _attachments(
    mail: EmailMessage,
    body_part: Message | None,
    store: AttachmentStore,
    *,
    truncated: bool,
    quote_names: bool = True,
) -> tuple[Attachment, ...]:
    found: list[Attachment] = []

    def rejected(name: str, reason: str) -> Attachment:
        if (
            not quote_names
        ):  # "attachment-2.pdf": the customer still knows which one, no attacker text is sent
            suffix = name.rpartition(".")[2] if "." in name else ""
            name = f"attachment-{len(found) + 1}" + (
                f".{suffix}" if suffix.isalnum() and len(suffix) <= 5 else ""
            )
        return store.rejected(name, reason)

    cids = _inline_images(mail)
    for part in mail.walk():
        if part.is_multipart() or part is body_part:
            continue
        mime = part.get_content_type()
        content_id = _header(part, "Content-ID").strip("<> ")
        if content_id and content_id in cids and part.get_content_disposition() != "attachment":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes) and len(payload) < INLINE_DECORATION_BYTES:
                continue  # a logo or a signature picture inside the HTML: part of the mail, not a photo
        filename = _header_filename(part)
        if (
            filename is None
            and part.get_content_disposition() != "attachment"
            and not mime.startswith("image/")
        ):
            continue  # the other half of multipart/alternative, or text that is part of the body
        if len(found) >= MAX_ATTACHMENTS:
            log.warning("mail with more than %s files: the rest are not kept", MAX_ATTACHMENTS)
            break
        name = filename or f"attachment-{len(found) + 1}"
        if truncated:
            # Only the start of an oversized mail was read: no file in it can be whole.
            found.append(rejected(name, "too_large"))
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes) or not data:
            continue
        files = [(name, mime, data)]
        if mime == "application/ms-tnef" or name.lower() == "winmail.dat":
            # Outlook's rich-text wrapper: the customer's files are inside it.
            files = _tnef_files(data) or files
        for file_name, file_mime, file_data in files:
            if len(found) >= MAX_ATTACHMENTS:
                break
            kind = (
                "photo"
                if file_mime.startswith("image/")
                else "voice"
                if file_mime.startswith("audio/")
                else "document"
            )
            try:
                found.append(store.save(file_data, name=file_name, mime=file_mime, kind=kind))
            except AttachmentRejected as error:
                found.append(rejected(file_name, error.reason))
    return tuple(found)


def _tnef_files(data: bytes) -> list[tuple[str, str, bytes]]:
    """The files inside a TNEF `winmail.dat` (name, type by the name's extension, bytes); [] if unreadable."""
    try:
        tnef = tnefparse.TNEF(data)
        files = [
            (_one_line(a.long_filename() or "") or f"attachment-{n}", a.data)
            for n, a in enumerate(tnef.attachments[:MAX_ATTACHMENTS], start=1)
        ]
    except Exception:  # a damaged or hostile wrapper: refused as the file it is, not a failed mail
        log.warning("winmail.dat could not be unpacked")
        return []
    return [
        (name, mimetypes.guess_type(name)[0] or "application/octet-stream", content)
        for name, content in files
        if isinstance(content, bytes) and content
    ]


def _inline_images(mail: Message) -> set[str]:
    """The Content-IDs the mail's HTML shows inline (`<img src="cid:…">`)."""
    return {
        cid
        for part in mail.walk()
        if part.get_content_type() == "text/html"
        for cid in re.findall(
            r"""cid:([^"'>\s]+)""", _decoded_text(part)[:MAX_HTML_SCAN], flags=re.IGNORECASE
        )
    }


_RFC2231_NAME = re.compile(r"""(?:file)?name\*\s*=\s*"?([\w.-]*)'[\w-]*'([^";\s]+)""", re.IGNORECASE)
_PLAIN_NAME = re.compile(r"""(?:file)?name\s*=\s*"([^"]*)"|(?:file)?name\s*=\s*([^";\s]+)""", re.IGNORECASE)


def _header_filename(part: Message) -> str | None:
    """The file's name, its charset read as `decode_bytes` reads it (RFC 2231 or Outlook's encoded words)."""
    raw = f"{_raw(part, 'Content-Disposition')};{_raw(part, 'Content-Type')}"
    found = _RFC2231_NAME.search(raw)
    if found:
        name = decode_bytes(unquote_to_bytes(found.group(2)), found.group(1) or "utf-8")
    else:
        plain = _PLAIN_NAME.search(raw)
        if plain is None:
            try:
                name = part.get_filename() or ""
            except (IndexError, ValueError, LookupError):
                return None
        else:
            value = plain.group(1) if plain.group(1) is not None else plain.group(2)
            try:
                name = "".join(
                    decode_bytes(c, s) if isinstance(c, bytes) else c for c, s in decode_header(value)
                )
            except (ValueError, IndexError, binascii.Error):
                name = value
    return _one_line(name) or None


def _raw(part: Message, name: str) -> str:
    raw = next((value for key, value in part.raw_items() if key.lower() == name.lower()), "")
    if isinstance(raw, str) and any("\udc80" <= c <= "\udcff" for c in raw):
        return decode_bytes(raw.encode("ascii", "surrogateescape"), "utf-8")
    return str(raw)


def _thread_case_ref(mail: Message, config: MailSettings) -> str | None:
    """The case this mail belongs to: from our Message-IDs it answers, else the subject, else a plus-address."""
    pattern = config.case_ref
    for header in ("In-Reply-To", "References"):
        for message_id in reversed(_header(mail, header).split()):
            found = pattern.search(message_id.split("@")[0])
            if found:
                return found.group(0).upper()
    for value in (_header(mail, "Subject"), *(a for _, a in getaddresses(mail.get_all("To", [])))):
        found = pattern.search(value)
        if found:
            return found.group(0).upper()
    return None


_NO_REPLY = re.compile(
    r"^(no-?reply|do-?not-?reply|noreply-\w+|webform|forms?|wordpress|website|mailer)([+.-].*)?$",
    re.IGNORECASE,
)


def _address(value: str) -> tuple[str, str]:
    """(display name, lower-case address) of an address header's text; a name may hold a comma ("Wang, Li")."""
    found = re.search(r"<([^<>\s]+@[^<>\s]+)>\s*$", value)
    if found is None:
        name, address = parseaddr(value)
        return name.strip(), address.strip().lower()
    name = value[: found.start()].strip().strip('"').strip()
    return name, found.group(1).strip().lower()


def _sender(mail: Message) -> tuple[str, str]:
    """Who to answer: the From's name and address, or the Reply-To address when the From cannot be answered.

    A web form's mail comes from noreply@ with the customer in Reply-To. A Reply-To is used when the From is
    such an address or is of the same domain; one that sends a stranger's mail elsewhere is not followed.
    """
    name, address = _address(_header(mail, "From"))
    reply_to = getaddresses([_header(mail, "Reply-To")]) if _header(mail, "Reply-To") else []
    if len(reply_to) == 1 and "@" in reply_to[0][1]:
        other_name, other = _address(_header(mail, "Reply-To"))
        local, _, domain = address.partition("@")
        if other != address and (_NO_REPLY.match(local) or other.rpartition("@")[2] == domain):
            return (other_name or ("" if _NO_REPLY.match(local) else name.strip())), other
    return name.strip(), address


def _header(mail: Message, name: str) -> str:
    """A header's text, its encoded words read with the charsets of `decode_bytes` (the first one of that name)."""
    raw = next((value for key, value in mail.raw_items() if key.lower() == name.lower()), None)
    if raw is None:
        return ""
    if not isinstance(raw, str):  # a header object set by code, not parsed from bytes
        return str(raw).strip()
    if any("\udc80" <= c <= "\udcff" for c in raw):  # 8-bit bytes in a header (some clients send raw GBK)
        raw = decode_bytes(raw.encode("ascii", "surrogateescape"), "utf-8")
    raw = re.sub(r"\r?\n(?=[ \t])", "", raw)  # unfolded (RFC 5322 section 2.2.3)
    try:
        parts = decode_header(raw)
    except (ValueError, IndexError, binascii.Error):
        return raw.strip()
    return "".join(
        decode_bytes(chunk, charset) if isinstance(chunk, bytes) else chunk for chunk, charset in parts
    ).strip()


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# A Message-ID as it may be written back into our replies' headers: printable ASCII, no spaces or brackets inside.
_MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")


def _one_line(value: str) -> str:
    """A header value safe to store and to write into a header again: no CR, LF or other control characters.

    An encoded word can decode to CR/LF; written back into a reply's header it would make every reply to that
    customer fail (or, with a lax library, add headers of the sender's choosing).
    """
    return " ".join(_CONTROL.sub(" ", value).split())


def _message_ids(value: str) -> list[str]:
    """The well-formed Message-IDs in a header value; anything else in it is dropped."""
    return _MESSAGE_ID.findall(value)


# --- OAuth 2.0 for IMAP and SMTP (SASL XOAUTH2) ----------------------------------------------------------------

OAUTH_PROVIDERS = ("", "microsoft", "google")
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
MICROSOFT_SCOPE = "https://outlook.office365.com/.default"  # IMAP.AccessAsApp and SMTP.SendAsApp
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL)
TOKEN_MARGIN_SECONDS = 120.0  # a token this close to expiry is renewed before use
OAUTH_TIMEOUT_SECONDS = 30.0


class OAuthError(Exception):
    """The token endpoint refused or could not be reached; `reason` is its error code, never a secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OAuthTokens:
    """Access tokens for the mailbox, renewed before they expire and on demand when a server refuses one.

    Microsoft: msal's client-credentials flow (an app registration with IMAP.AccessAsApp / SMTP.SendAsApp),
    whose token cache renews the token. Google: the OAuth refresh-token grant, one form POST. Both over httpx
    (msal takes it as its HTTP client), so one HTTP stack and one trust store serve the whole bot.
    """

    def __init__(self, config: MailSettings, *, http: httpx.Client | None = None) -> None:
        self.config = config
        self._http = http or httpx.Client(timeout=OAUTH_TIMEOUT_SECONDS)
        self._lock = threading.Lock()  # the IMAP thread and the SMTP sender share one token
        self._msal: msal.ConfidentialClientApplication | None = None
        self._token = ""
        self._expires = 0.0

    def token(self, *, fresh: bool = False) -> str:
        """A valid access token; `fresh` discards the one held (a server refused it: revoked or expired)."""
        with self._lock:
            if self.config.oauth == "microsoft":
                return self._microsoft(fresh)
            return self._google(fresh)

    def _microsoft(self, fresh: bool) -> str:
        c = self.config
        if self._msal is None or fresh:  # a new app has an empty cache: the next call asks Entra ID again
            authority = (c.oauth_url or MICROSOFT_AUTHORITY).rstrip("/") + "/" + c.oauth_tenant
            # instance_discovery=False: the authority is used as configured (a national cloud, or a test's
            # loopback one) instead of being checked against login.microsoftonline.com's list.
            self._msal = msal.ConfidentialClientApplication(
                c.oauth_client_id,
                client_credential=c.oauth_client_secret,
                authority=authority,
                http_client=self._http,
                instance_discovery=False,
            )
        try:
            result = self._msal.acquire_token_for_client(scopes=[MICROSOFT_SCOPE])
        except (httpx.HTTPError, ValueError) as error:
            raise OAuthError(f"Microsoft token endpoint: {type(error).__name__}") from None
        token = result.get("access_token") if isinstance(result, dict) else None
        if not isinstance(token, str) or not token:
            reason = result.get("error", "no access_token") if isinstance(result, dict) else "no answer"
            raise OAuthError(f"Microsoft token endpoint: {reason}")
        return token

    def _google(self, fresh: bool) -> str:
        if self._token and not fresh and time.monotonic() < self._expires - TOKEN_MARGIN_SECONDS:
            return self._token
        c = self.config
        try:
            response = self._http.post(
                c.oauth_url or GOOGLE_TOKEN_URL,
                data={
                    "grant_type": "refresh_token",
                    "client_id": c.oauth_client_id,
                    "client_secret": c.oauth_client_secret,
                    "refresh_token": c.oauth_refresh_token,
                },
            )
            answer = response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise OAuthError(f"Google token endpoint: {type(error).__name__}") from None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if response.status_code != 200 or not isinstance(token, str) or not token:
            reason = answer.get("error", "no access_token") if isinstance(answer, dict) else "no answer"
            raise OAuthError(f"Google token endpoint: HTTP {response.status_code} {str(reason)[:80]}")
        expires_in = answer.get("expires_in")
        self._token = token
        self._expires = time.monotonic() + (
            float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        )
        return token

    def close(self) -> None:
        self._http.close()


def xoauth2(user: str, token: str) -> bytes:
    """The SASL XOAUTH2 initial response (Google's and Microsoft's documented format), before base64."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


class _XOAuth2:
    """An authobject for imaplib: the SASL string first, then an empty answer to the server's error challenge."""

    def __init__(self, user: str, token: str) -> None:
        self.initial = xoauth2(user, token)
        self.calls = 0

    def __call__(self, challenge: bytes | None = None) -> bytes:
        self.calls += 1
        return self.initial if self.calls == 1 else b""

    def text(self, challenge: bytes | None = None) -> str:
        """The same for smtplib, which wants text."""
        return self(challenge).decode()


class _Upgradable(Protocol):
    def starttls(self, *args: Any, **kwargs: Any) -> object: ...


@dataclass(frozen=True)
class _MailProtocol(Generic[C]):
    """How to reach an IMAP or SMTP server, as its security setting says: TLS from the start ("tls"), upgraded
    by STARTTLS ("starttls"; closed if the upgrade fails), or plain (a loopback test server)."""

    plain: Callable[..., C]  # (host, port, timeout=)
    secure: Callable[..., C]  # the same, with the TLS context as `context_arg`
    context_arg: str  # what the library calls the TLS context, in `secure` and in `starttls`
    close: Callable[[C], object]
    timeout: float

    def connect(self, server: MailServer) -> C:
        tls = {self.context_arg: ssl.create_default_context()}
        if server.security == "tls":
            return self.secure(server.host, server.port, timeout=self.timeout, **tls)
        connection = self.plain(server.host, server.port, timeout=self.timeout)
        if server.security == "starttls":
            try:
                connection.starttls(**tls)
            except BaseException:
                self.close(connection)
                raise
        return connection


# (plain, secure, context_arg, close, timeout)
_IMAP = _MailProtocol(
    imaplib.IMAP4, imaplib.IMAP4_SSL, "ssl_context", imaplib.IMAP4.shutdown, IMAP_TIMEOUT_SECONDS
)
_SMTP = _MailProtocol(smtplib.SMTP, smtplib.SMTP_SSL, "context", smtplib.SMTP.close, SMTP_TIMEOUT_SECONDS)


def _imap_oauth_login(imap: imaplib.IMAP4, user: str, tokens: OAuthTokens) -> None:
    def login(token: str) -> None:
        imap.authenticate("XOAUTH2", _XOAuth2(user, token))

    _oauth_login("IMAP", tokens, login, imaplib.IMAP4.error)


def _smtp_oauth_login(smtp: smtplib.SMTP, user: str, tokens: OAuthTokens) -> None:
    def login(token: str) -> None:
        smtp.auth("XOAUTH2", _XOAuth2(user, token).text, initial_response_ok=True)

    smtp.ehlo_or_helo_if_needed()
    _oauth_login("SMTP", tokens, login, smtplib.SMTPAuthenticationError)


def _oauth_login(
    server: str, tokens: OAuthTokens, login: Callable[[str], None], refused: type[Exception]
) -> None:
    """Log in with the token we have; when the server refuses it, once more with a new one."""
    for fresh in (False, True):
        try:
            login(tokens.token(fresh=fresh))
            return
        except refused:
            if fresh:
                raise
            log.info("%s refused the OAuth token; asking for a new one", server)


# --- receive: the mailbox reader ------------------------------------------------------------------------


class MailboxReader:
    """Takes new mail from the IMAP mailbox into the inbox, in UID order, remembering where it stopped."""

    def __init__(self, bot: Bot, config: MailSettings, *, tokens: OAuthTokens | None = None) -> None:
        self.bot = bot
        self.config = config
        self.tokens = tokens
        self.stop = threading.Event()
        self.state_key = _key(
            "email:imap:", f"{config.imap.user}@{config.imap.host}:{config.imap.port}/{config.mailbox}"
        )

    def run(self) -> None:
        """Read until stopped; connection failures are retried with a growing pause."""
        pause = 1.0
        while not self.stop.is_set():
            try:
                with self._connect() as imap:
                    pause = 1.0
                    self._serve(imap)
            except (OSError, imaplib.IMAP4.error, ssl.SSLError) as error:
                log.warning("IMAP connection failed: %s; retrying in %.0f s", type(error).__name__, pause)
            except OAuthError as error:
                log.warning("IMAP OAuth token not obtained (%s); retrying in %.0f s", error.reason, pause)
            except Exception:
                log.exception("mailbox reader failed; retrying in %.0f s", pause)
            self.stop.wait(pause)
            pause = min(pause * 2, max(self.config.poll_seconds, 1.0))

    def _connect(self) -> imaplib.IMAP4:
        server = self.config.imap
        imap = _IMAP.connect(server)
        try:
            if self.tokens is not None:
                _imap_oauth_login(imap, server.user, self.tokens)
            else:
                imap.login(server.user, server.password)
        except Exception:
            imap.shutdown()
            raise
        return imap

    def _serve(self, imap: imaplib.IMAP4) -> None:
        status, _ = imap.select(_quoted(self.config.mailbox))
        if status != "OK":
            raise imaplib.IMAP4.error(f"cannot select mailbox {self.config.mailbox!r}")
        uidvalidity = _int_response(imap, "UIDVALIDITY")
        uidnext = _int_response(imap, "UIDNEXT")
        if uidvalidity is None:
            raise imaplib.IMAP4.error("the server gave no UIDVALIDITY")
        # Some servers announce IDLE only once logged in: ask again rather than trust the greeting.
        status, data = imap.capability()
        idle = (
            status == "OK" and b"IDLE" in b" ".join(d for d in data if isinstance(d, bytes)).upper().split()
        )
        while not self.stop.is_set():
            imap.response("EXISTS")  # forget what was announced before this sync: the sync sees it
            self.sync(imap, uidvalidity, uidnext)
            uidnext = None
            if imap.response("EXISTS")[1] != [None]:
                continue  # mail arrived during the sync; IDLE would not announce it again
            if idle:
                self._idle(imap, self.config.poll_seconds)
            else:
                self.stop.wait(self.config.poll_seconds)

    def sync(self, imap: imaplib.IMAP4, uidvalidity: int, uidnext: int | None) -> None:
        """Take every mail after the last one taken; on a first start (or a rebuilt mailbox) the unread ones."""
        stored = channels.kv_get(self.bot.db, self.state_key)
        state = stored[0] if stored else {}
        if state.get("uidvalidity") == uidvalidity:
            last = int(state.get("last_uid", 0))
            pending = [int(uid) for uid in state.get("pending", [])]
            # "n:*" always matches the highest UID, even one below n (RFC 3501), hence the filter.
            uids = pending + [uid for uid in _search(imap, "UID", f"{last + 1}:*") if uid > last]
        else:
            if state:
                log.warning(
                    "mailbox UIDVALIDITY changed; taking its unread mail again (duplicates are ignored)"
                )
            # The unread mail is remembered as pending, so that a crash halfway through loses none of it.
            pending = uids = _search(imap, "UNSEEN")
            last = (uidnext - 1) if uidnext else max(_search(imap, "ALL"), default=0)
            channels.kv_put(
                self.bot.db,
                self.state_key,
                {"uidvalidity": uidvalidity, "last_uid": last, "pending": pending},
            )
        # A mail that was being taken when the process last stopped: a second stop on it marks it as poison
        # (a parser stall, a crash), handled by a person instead of stopping the reader on every start.
        taking, attempts = state.get("taking"), int(state.get("attempts", 0))
        for uid in sorted(set(uids)):
            if self.stop.is_set():
                return
            tries = attempts + 1 if uid == taking else 1
            record = {"uidvalidity": uidvalidity, "last_uid": last, "pending": pending}
            if tries > POISON_ATTEMPTS:
                log.error(
                    "mail UID %s stopped the mailbox reader %s times; left unread for a person", uid, attempts
                )
            else:
                channels.kv_put(self.bot.db, self.state_key, {**record, "taking": uid, "attempts": tries})
                try:
                    self._take(imap, uid)
                except BaseException:
                    channels.kv_put(
                        self.bot.db, self.state_key, record
                    )  # it raised, the process did not die: not poison
                    raise
            last = max(last, uid)
            pending = [p for p in pending if p != uid]
            channels.kv_put(
                self.bot.db,
                self.state_key,
                {"uidvalidity": uidvalidity, "last_uid": last, "pending": pending},
            )

    def _take(self, imap: imaplib.IMAP4, uid: int) -> None:
        size = _fetch_size(imap, uid)
        truncated = size is not None and size > self.config.max_mail_bytes
        item = f"(BODY.PEEK[]<0.{self.config.max_mail_bytes}>)" if truncated else "(BODY.PEEK[])"
        raw = _fetch_body(imap, uid, item)
        if raw is None:
            return  # deleted meanwhile
        try:
            mail = read_mail(raw)
            reason = ignore_reason(mail, own=self.config.own_addresses)
            inbound = (
                None
                if reason
                else to_inbound(
                    mail,
                    raw,
                    config=self.config,
                    store=self.bot.attachments,
                    truncated=truncated,
                    answers_us=_answers_us(self.bot.db, mail),
                )
            )
            quiet = quiet_reason(mail)
            if inbound is not None and quiet:
                inbound = dataclasses.replace(inbound, raw={**inbound.raw, "quiet": quiet})
        except OSError:
            raise  # the attachment folder, not the mail: try again later
        except Exception:
            # A mail the parser chokes on must not block every mail after it: a person reads it instead.
            log.exception("mail UID %s could not be read; left unread for a person", uid)
            return
        if inbound is None:
            log.info("mail UID %s not taken: %s", uid, reason)
            return
        accepted = self.bot.engine.accept(inbound)
        if truncated:
            log.warning(
                "mail UID %s is larger than %s bytes; only its text was kept", uid, self.config.max_mail_bytes
            )
        log.debug("mail UID %s taken (duplicate: %s)", uid, accepted.duplicate)
        with contextlib.suppress(imaplib.IMAP4.error):  # a read-only mailbox: the UID we keep is what counts
            imap.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Seen)")

    def _idle(self, imap: imaplib.IMAP4, seconds: float) -> None:
        """Wait in IDLE (RFC 2177) until new mail, the stop flag, or `seconds`; then end IDLE cleanly.

        imaplib of Python 3.11 has no IDLE, so it is spoken here on imaplib's own socket. A line the server sent
        in the same packet as "+ idling" may sit in imaplib's buffer unseen; then the next round's search,
        at most `seconds` later, takes that mail.
        """
        tag = b"Z1"  # imaplib's tags are four letters A-P and a number: this one cannot clash
        imap.send(tag + b" IDLE\r\n")
        first = imap.readline()
        if not first.startswith(b"+"):
            raise imaplib.IMAP4.error(f"IDLE refused: {first[:80]!r}")
        sock = imap.sock
        waited = 0.0
        while not self.stop.is_set() and waited < seconds:
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            ready = pending or bool(select.select([sock], [], [], IDLE_TICK_SECONDS)[0])
            if not ready:
                waited += IDLE_TICK_SECONDS
                continue
            line = imap.readline()
            if not line:
                raise imaplib.IMAP4.abort("connection closed during IDLE")
            if re.match(rb"\* \d+ (EXISTS|RECENT)", line):
                break
        imap.send(b"DONE\r\n")
        for _ in range(10_000):  # the server may still send untagged lines before it ends IDLE
            line = imap.readline()
            if not line:
                raise imaplib.IMAP4.abort("connection closed while ending IDLE")
            if line.startswith(tag + b" "):
                return
        raise imaplib.IMAP4.abort("no end of IDLE")


def _quoted(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _int_response(imap: imaplib.IMAP4, code: str) -> int | None:
    _, data = imap.response(code)
    for value in data or ():
        if isinstance(value, bytes) and value.strip().isdigit():
            return int(value)
    return None


def _search(imap: imaplib.IMAP4, *criteria: str) -> list[int]:
    status, data = imap.uid("SEARCH", *criteria)
    if status != "OK":
        raise imaplib.IMAP4.error(f"UID SEARCH failed: {status}")
    return [int(uid) for chunk in data if isinstance(chunk, bytes) for uid in chunk.split() if uid.isdigit()]


def _fetch_size(imap: imaplib.IMAP4, uid: int) -> int | None:
    status, data = imap.uid("FETCH", str(uid), "(RFC822.SIZE)")
    for chunk in data if status == "OK" else ():
        found = re.search(rb"RFC822\.SIZE (\d+)", chunk if isinstance(chunk, bytes) else b"")
        if found:
            return int(found.group(1))
    return None


def _fetch_body(imap: imaplib.IMAP4, uid: int, item: str) -> bytes | None:
    status, data = imap.uid("FETCH", str(uid), item)
    if status != "OK":
        raise imaplib.IMAP4.error(f"UID FETCH {uid} failed: {status}")
    for chunk in data:
        if isinstance(chunk, tuple) and len(chunk) == 2 and isinstance(chunk[1], bytes):
            return chunk[1]
    return None


# --- send -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Thread:
    """What a reply needs to join the customer's thread: their last mail's ids and subject, and the case."""

    to_name: str | None = None
    message_id: str | None = None
    references: tuple[str, ...] = ()
    subject: str = ""
    case_ref: str | None = None


def compose(
    message: OutboundMessage, *, thread: Thread, config: MailSettings, by_person: bool = False
) -> EmailMessage:
    """Our reply as a mail: text and HTML parts (customer text escaped), threading headers, Auto-Submitted.

    `by_person`: an engineer wrote it, so it is not marked `Auto-Submitted: auto-replied` (RFC 3834 is for
    what software writes); it still asks Exchange for no out-of-office answer.
    """
    mail = EmailMessage(policy=email_policy.SMTP)
    mail["From"] = config.from_header
    mail["To"] = formataddr((thread.to_name or "", message.chat_id))
    mail["Subject"] = _reply_subject(thread, config)
    mail["Date"] = format_datetime(utcnow())
    domain = config.address.rpartition("@")[2] or "localhost"
    # The case ref inside our Message-ID lets an answer find its case even when the subject was rewritten.
    mail["Message-ID"] = make_msgid(idstring=thread.case_ref, domain=domain)
    if thread.message_id:
        mail["In-Reply-To"] = thread.message_id
        chain = [*thread.references, thread.message_id]
        if len(chain) > MAX_REFERENCES:
            chain = [chain[0], *chain[-(MAX_REFERENCES - 1) :]]
        mail["References"] = " ".join(chain)
    if not by_person:
        mail["Auto-Submitted"] = "auto-replied"
    mail["X-Auto-Response-Suppress"] = "All"  # asks Exchange not to answer us with out-of-office mail
    options = channels.numbered(message.buttons)
    text = message.text + ("\n\n" + "\n".join(options) if options else "")
    mail.set_content(text + "\n", subtype="plain", charset="utf-8")
    mail.add_alternative(_html(message), subtype="html", charset="utf-8")
    return mail


def _reply_subject(thread: Thread, config: MailSettings) -> str:
    base = _REPLY_PREFIX.sub("", thread.subject).strip()
    base = config.case_ref.sub("", base).replace("[]", "").strip(" -:") if thread.case_ref else base
    base = base or "Warranty support"
    return f"Re: [{thread.case_ref}] {base}" if thread.case_ref else f"Re: {base}"


def _html(message: OutboundMessage) -> str:
    paragraphs = "".join(
        f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>\n"
        for p in re.split(r"\n\s*\n", message.text.strip())
        if p.strip()
    )
    options = "".join(f"<li>{html.escape(b.label)}</li>" for b in message.buttons)
    listed = f"<ol>{options}</ol>\n" if options else ""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        f'<body style="font-family: sans-serif">\n{paragraphs}{listed}</body></html>\n'
    )


class MailSender:
    """Sends the outbox's replies over SMTP, at most `replies_per_hour` to one address."""

    def __init__(self, bot: Bot, config: MailSettings, *, tokens: OAuthTokens | None = None) -> None:
        self.bot = bot
        self.config = config
        self.tokens = tokens

    async def send(self, message: OutboundMessage) -> Delivered:
        address = message.chat_id.lower()
        if address in self.config.own_addresses:
            raise PermanentFailure("refusing to mail our own address")
        wait = await asyncio.to_thread(_rate_limited, self.bot.db, address, self.config.replies_per_hour)
        if wait is not None:
            raise RetryLater(
                f"more than {self.config.replies_per_hour} replies to this address in an hour", after=wait
            )
        thread = await asyncio.to_thread(_thread_of, self.bot.db, message)
        mail = compose(message, thread=thread, config=self.config, by_person=message.author == "engineer")
        for attachment in message.attachments:
            _attach(mail, attachment, self.bot.attachments)
        await asyncio.to_thread(self._submit, mail, address)
        return Delivered(external_id=str(mail["Message-ID"]))

    def _submit(self, mail: EmailMessage, address: str) -> None:
        c, server = self.config, self.config.smtp
        try:
            smtp = _SMTP.connect(server)
            with smtp:
                if self.tokens is not None:
                    _smtp_oauth_login(smtp, server.user or c.address, self.tokens)
                elif server.user:
                    smtp.login(server.user, server.password)
                refused = smtp.send_message(mail, from_addr=c.address, to_addrs=[address])
        except smtplib.SMTPRecipientsRefused as error:
            code, reply = next(iter(error.recipients.values()), (0, b""))
            raise _smtp_failure(code, reply, unreachable=True) from None
        except smtplib.SMTPResponseException as error:
            if isinstance(error, smtplib.SMTPAuthenticationError):
                raise RetryLater(f"SMTP login refused ({error.smtp_code})") from None
            raise _smtp_failure(error.smtp_code, error.smtp_error) from None
        except (smtplib.SMTPException, OSError) as error:
            raise RetryLater(f"SMTP: {type(error).__name__}") from None
        except OAuthError as error:
            raise RetryLater(f"SMTP OAuth token not obtained: {error.reason}") from None
        if refused:
            code, reply = next(iter(refused.values()))
            raise _smtp_failure(code, reply, unreachable=True)


def _smtp_failure(code: int, reply: bytes | str, *, unreachable: bool = False) -> Exception:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    summary = f"SMTP {code} {text[:200]}"
    if 500 <= code < 600:
        return Unreachable(summary) if unreachable else PermanentFailure(summary)
    return RetryLater(summary)


def _attach(mail: EmailMessage, attachment: Attachment, store: AttachmentStore) -> None:
    try:
        data = store.path(attachment.ref).read_bytes()
    except OSError:
        log.warning("attachment %s is missing from the store; sent without it", attachment.name)
        return
    maintype, _, subtype = attachment.mime.partition("/")
    mail.add_attachment(
        data, maintype=maintype or "application", subtype=subtype or "octet-stream", filename=attachment.name
    )


def _rate_limited(db: Engine, address: str, per_hour: int) -> float | None:
    """Seconds to wait when `address` already got `per_hour` replies in the last hour, else None."""
    times = sent_times(db, CHANNEL, address, utcnow() - timedelta(hours=1), per_hour)
    if len(times) < per_hour:
        return None
    return max(1.0, (min(times) + timedelta(hours=1) - utcnow()).total_seconds())


def _answers_us(db: Engine, mail: Message) -> bool:
    """Whether the mail answers a mail we sent (its In-Reply-To or References hold one of our Message-IDs)."""
    ids = _message_ids(_header(mail, "In-Reply-To") + " " + _header(mail, "References"))[-MAX_REFERENCES:]
    return sent_any(db, CHANNEL, ids)


def _thread_of(db: Engine, message: OutboundMessage) -> Thread:
    last = last_inbound(db, CHANNEL, message.chat_id.lower())
    raw = last.get("raw") or {}
    # Checked again here: a mail stored before these values were cleaned must not poison every reply.
    message_ids = _message_ids(str(raw.get("message_id") or ""))
    name = _one_line(str(last.get("sender_name") or ""))
    return Thread(
        to_name=name or None,
        message_id=message_ids[0] if message_ids else None,
        references=tuple(_message_ids(str(raw.get("references") or ""))),
        subject=_one_line(str(raw.get("subject") or "")),
        case_ref=message.case_ref or None,
    )


# --- shared state ---------------------------------------------------------------------------------------


def _key(prefix: str, name: str) -> str:
    return prefix + hashlib.sha256(name.encode()).hexdigest()[:48]


# --- the channel and its settings -----------------------------------------------------------------------


class MailChannel(SendingChannel):
    """Email: a mailbox reader in a thread, and an SMTP sender for the outbox."""

    name = CHANNEL
    one_reply_per_turn = True
    sends_files = True

    def __init__(self, bot: Bot, config: MailSettings) -> None:
        self.bot = bot
        self.config = config
        self.tokens = OAuthTokens(config) if config.oauth else None
        self.reader = MailboxReader(bot, config, tokens=self.tokens)
        self.outbox = MailSender(bot, config, tokens=self.tokens)
        self._thread: threading.Thread | None = None

    def routes(self) -> Sequence[BaseRoute]:
        return []

    async def start(self) -> None:
        self.reader.stop.clear()
        self._thread = threading.Thread(target=self.reader.run, name="imap", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self.reader.stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, IMAP_TIMEOUT_SECONDS)
            self._thread = None
        if self.tokens is not None:
            self.tokens.close()


def mail_settings(bot: Bot) -> MailSettings:
    s = bot.settings
    for name, value in (("IMAP_SECURITY", s.imap_security), ("SMTP_SECURITY", s.smtp_security)):
        if value not in SECURITIES:
            raise ValueError(f"{name} must be one of {', '.join(SECURITIES)}, not {value!r}")
    if s.email_oauth not in OAUTH_PROVIDERS:
        raise ValueError(f"EMAIL_OAUTH must be microsoft, google or empty, not {s.email_oauth!r}")
    secret = s.email_oauth_client_secret.get_secret_value() if s.email_oauth_client_secret else ""
    refresh = s.email_oauth_refresh_token.get_secret_value() if s.email_oauth_refresh_token else ""
    needed = {
        "microsoft": {
            "EMAIL_OAUTH_CLIENT_ID": s.email_oauth_client_id,
            "EMAIL_OAUTH_CLIENT_SECRET": secret,
            "EMAIL_OAUTH_TENANT": s.email_oauth_tenant,
            "IMAP_USER": s.imap_user,
        },
        "google": {
            "EMAIL_OAUTH_CLIENT_ID": s.email_oauth_client_id,
            "EMAIL_OAUTH_CLIENT_SECRET": secret,
            "EMAIL_OAUTH_REFRESH_TOKEN": refresh,
            "IMAP_USER": s.imap_user,
        },
    }.get(s.email_oauth, {})
    missing = [name for name, value in needed.items() if not value]
    if missing:
        raise ValueError(f"EMAIL_OAUTH={s.email_oauth} needs {', '.join(missing)}")
    _, address = parseaddr(s.email_from)
    if "@" not in address:
        raise ValueError(f"EMAIL_FROM must hold an email address, not {s.email_from!r}")
    Address(addr_spec=address)  # raises on an address SMTP would refuse
    return MailSettings(
        imap=_server(s.imap_host, s.imap_port, s.imap_security, s.imap_user, s.imap_password),
        mailbox=s.imap_mailbox,
        poll_seconds=s.imap_poll_seconds,
        smtp=_server(s.smtp_host, s.smtp_port, s.smtp_security, s.smtp_user, s.smtp_password),
        from_header=s.email_from,
        address=address.lower(),
        replies_per_hour=s.email_replies_per_hour,
        case_ref_prefix=s.case_ref_prefix,
        max_mail_bytes=s.max_body_bytes + 2 * s.attachment_max_bytes,
        oauth=s.email_oauth,
        oauth_client_id=s.email_oauth_client_id,
        oauth_client_secret=secret,
        oauth_tenant=s.email_oauth_tenant,
        oauth_refresh_token=refresh,
        oauth_url=s.email_oauth_url,
    )


def _server(host: str, port: int, security: str, user: str, password: SecretStr | None) -> MailServer:
    secret = password.get_secret_value() if password else ""
    return MailServer(host=host, port=port, security=security, user=user, password=secret)


def from_settings(bot: Bot) -> MailChannel | None:
    """The email channel when IMAP_HOST, SMTP_HOST and EMAIL_FROM are set; None otherwise."""
    s = bot.settings
    if not (s.imap_host and s.smtp_host and s.email_from):
        if s.imap_host or s.smtp_host or s.email_from:
            log.warning("email is half configured: IMAP_HOST, SMTP_HOST and EMAIL_FROM are all needed")
        return None
    return MailChannel(bot, mail_settings(bot))
