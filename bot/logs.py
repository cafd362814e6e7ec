"""Logging set-up: one format, and a filter that masks phone numbers, email addresses and tokens."""

from __future__ import annotations

import logging
import re
from typing import Any

_MASKS = (
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"), "<email>"),
    (re.compile(r"\bbot\d+:[\w-]{20,}"), "bot<token>"),  # Telegram tokens inside URLs
    (re.compile(r"\b\d{6,12}:[\w-]{30,}\b"), "<token>"),
    (re.compile(r"\b(xox[abprs]|xapp)-[\w-]+"), "<token>"),
    # key=value, key: value, "key": "value" (JSON) and "Bearer value"
    (re.compile(r"(?i)\b(bearer|token|secret|password|access_token|api_key)(\"?\s*[=:]\s*\"?|\s+)[^\s&\"',]+"),
     r"\1\2<redacted>"),
    # International numbers (+44 7700 900123), national ones written in groups (07700 900123), and long
    # digit runs such as WhatsApp ids (447700900142); dates and times have too few digits in a row.
    (re.compile(r"\+\d[\d ()-]{6,}\d"), "<phone>"),
    (re.compile(r"(?<![\d-])0\d{2,4}[ -]\d{3,4}(?:[ -]?\d{3,4})?(?![\d-])"), "<phone>"),
    (re.compile(r"\(0\d{1,4}\)\s?\d{3,4}[ -]?\d{3,4}(?!\d)"), "<phone>"),
    (re.compile(r"(?<!\d)\d{9,15}(?!\d)"), "<phone>"),
)


def mask(text: str) -> str:
    """The text with phone numbers, email addresses and tokens replaced by placeholders."""
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


class MaskingFormatter(logging.Formatter):
    """Masks what a record says and its traceback; its time and level stay readable."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args
        record.msg, record.args = mask(record.getMessage()), None
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
