"""Logging set-up: one format, and a filter that masks phone numbers, email addresses and tokens."""

from __future__ import annotations

import logging
import re
from typing import Any

# Every pattern runs in linear time: a pattern that can start inside a run it already scanned (the old
# email pattern, `[\w.+-]+@` tried at each of 64 K digits) is quadratic, and a log line is written on the
# event loop's thread, so one long header froze every channel. Each one starts only at the start of a run
# (a lookbehind on its own class) or uses possessive quantifiers; tests/bot/test_logs.py checks 1 MB inputs.
_AT = r"(?:@|＠|%40|\s?[\[({]at[\])}]\s?)"
_DOT = r"(?:\.|\s?[\[({]dot[\])}]\s?)"
_EMAIL = re.compile(rf"(?i)(?<![\w.+%-])[\w.+-]++{_AT}[\w-]++(?:{_DOT}[\w-]++)+")
# A phone number candidate: an optional + or (, then digits and the separators people write between groups
# (space, dot, dash, slash, parentheses); possessive, so it never backtracks. `_phone` decides.
_PHONE_CANDIDATE = re.compile(r"(?<![\w+.\-/])\+?\(?\d[\d().\-/ ]*+")
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?![\d])")
_IP = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_DECIMAL = re.compile(r"\d+\.\d+")
_MASKS = (
    (_EMAIL, "<email>"),
    (re.compile(r"\bbot\d++:[\w-]{20,}+"), "bot<token>"),  # Telegram tokens inside URLs
    (re.compile(r"\b\d{6,12}+:[\w-]{30,}+"), "<token>"),
    (re.compile(r"\b(xox[abprs]|xapp)-[\w-]++"), "<token>"),
    # key=value, key: value, "key": "value" (JSON) and "Bearer value"
    (
        re.compile(
            r"(?i)\b(bearer|token|secret|password|access_token|api_key)(\"?\s*[=:]\s*\"?|\s+)[^\s&\"',]++"
        ),
        r"\1\2<redacted>",
    ),
    # A web chat session id is a bearer credential; it appears in the paths of the web chat's API.
    (re.compile(r"(/sessions/)[\w-]{16,}+"), r"\1<session>"),
)
# Long digit runs anywhere, such as WhatsApp ids inside other identifiers (447700900142); after the phone
# numbers, so that "+44 7700900123" goes as a whole.
_DIGIT_RUN = re.compile(r"(?<!\d)\d{9,}+")
MAX_MESSAGE_CHARS = 4000  # a log record's message past this is cut (the masking reads no more than this)
# A record's message is one line: a value with CR/LF in it (a mail header, a file name) cannot forge lines.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 127) if c != 9} | {10: "\\n", 13: "\\r"}


def _phone(match: re.Match[str]) -> str:
    candidate = match.group(0)
    core = candidate.rstrip(" .-/(")
    if core.endswith(")") and core.count("(") < core.count(")"):
        core = core[:-1]
    return _classify(core) + candidate[len(core) :]


def _classify(core: str) -> str:
    """`<phone>` for what reads as a phone number; dates, IP addresses and decimals stay as they are."""
    date = _DATE.match(core)
    if date:  # 2024-03-10 12:00 (the time is cut at the colon); what follows the date is read on its own
        rest = core[date.end() :]
        stripped = rest.lstrip(" .-/(")
        return (
            core[: date.end()] + rest[: len(rest) - len(stripped)] + (_classify(stripped) if stripped else "")
        )
    digits = sum(c.isdigit() for c in core)
    if _IP.fullmatch(core) or _DECIMAL.fullmatch(core):
        return core
    international = core.startswith(("+", "00", "(+"))
    national = core.lstrip("(").startswith("0")
    if digits >= 9 or (international and digits >= 7) or (national and digits >= 8):
        return "<phone>"
    return core


def mask(text: str) -> str:
    """The text with phone numbers, email addresses, tokens and session ids replaced by placeholders."""
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return _DIGIT_RUN.sub("<phone>", _PHONE_CANDIDATE.sub(_phone, text))


def excerpt(value: object, limit: int = 120) -> str:
    """An untrusted value as it may appear in a log line: one line, control characters escaped, at most
    `limit` characters (then `…` and how many more)."""
    text = str(value)
    cut = text[:limit]
    shown = cut.encode("unicode_escape").decode("ascii") if not cut.isprintable() else cut
    return shown if len(text) <= limit else f"{shown}…(+{len(text) - limit} chars)"


class MaskingFormatter(logging.Formatter):
    """Masks what a record says and its traceback; its time and level stay readable."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args
        message = record.getMessage()
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}…(+{len(message) - MAX_MESSAGE_CHARS} chars)"
        record.msg, record.args = mask(message).translate(_CONTROLS), None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = saved

    def formatException(self, ei: Any) -> str:
        return mask(super().formatException(ei))


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "telegram", "slack_bolt", "slack_sdk", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
