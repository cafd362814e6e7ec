"""Log masking (bot/logs.py): the ordinary ways people write phone numbers and e-mail addresses, in linear
time, and bounded log lines for untrusted values."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import pytest

from adapters.mail import ignore_reason, read_mail
from bot.logs import MAX_MESSAGE_CHARS, MaskingFormatter, excerpt, mask
from tests.support import ROOT

PHONES = [
    "+44 7700 900123",
    "+447700900123",
    "+44 (0) 7700 900123",
    "+44-7700-900123",
    "+1 (555) 123-4567",
    "+1-555-123-4567",
    "+1.555.123.4567",
    "(555) 123-4567",
    "555-123-4567",
    "555.123.4567",
    "555 123 4567",
    "5551234567",
    "07700 900123",
    "07700900123",
    "0044 7700 900123",
    "(020) 7946-0958",
    "020 7946 0958",
    "+33 6 12 34 56 78",
    "06 12 34 56 78",
    "+49 30 1234567",
    "030 12345678",
    "0151/12345678",
    "+86 138 0013 8000",
    "13800138000",
    "+91 98765 43210",
    "+7 (912) 345-67-89",
    "8 (912) 345-67-89",
    "+354 1234567",
    "01 234 5678",
    "٠٧٧٠٠ ٩٠٠١٢٣",  # Arabic-Indic digits
]
EMAILS = [
    "jane.doe@example.com",
    "Jane.Doe+warranty@Example.CO.UK",
    "j_doe-1@mail.sub.example.org",
    "<jane@example.com>",
    "mailto:jane@example.com",
    "josé@exämple.es",
    "jane%40example.com",
    "jane＠example.com",
    "jane (at) example (dot) com",
    "jane[at]example[dot]com",
    "jane [at] example.com",
    "jane{at}example{dot}com",
]


@pytest.mark.parametrize("phone", PHONES)
def test_phone_numbers_as_people_write_them_are_masked(phone: str) -> None:
    masked = mask(f"customer wrote: call {phone}, thanks")
    assert masked == "customer wrote: call <phone>, thanks", masked


@pytest.mark.parametrize("email", EMAILS)
def test_email_addresses_as_people_write_them_are_masked(email: str) -> None:
    masked = mask(f"from {email} today")
    assert "jane" not in masked.lower() and "doe" not in masked.lower() and "josé" not in masked, masked
    assert masked.startswith("from ") and masked.endswith(" today")
    assert "<email>" in masked


@pytest.mark.parametrize(
    "text",
    [
        "reminder for WR-2026-000042 not posted",
        "unit CSP2402A0153 arrived 2024-03-10",
        "case opened 2024-03-10 12:00:00 by the desk",
        "outbox row 42 dead after 8 attempts",
        "connected to 10.100.200.123 on port 5432",
        "took 0.1234 s",
        "version 3.11.4 of 2025/06/01",
        "mail UID 17 not taken: a mailing list",
        "see section 4.2 (page 12)",
        "ratio 3/4 of 120 units",
    ],
)
def test_what_operators_read_is_kept(text: str) -> None:
    assert mask(text) == text


def test_a_date_does_not_shield_the_phone_number_after_it() -> None:
    assert mask("2024-03-10 07700 900123") == "2024-03-10 <phone>"


def test_a_session_id_in_a_path_is_masked() -> None:
    path = "/api/webchat/sessions/pP6v4fGq3Zr0nXyTmA-8bL1s_cD2eF7h/messages"
    assert mask(f"unhandled error on POST {path}") == (
        "unhandled error on POST /api/webchat/sessions/<session>/messages"
    )


ADVERSARIAL = {
    "digits": "1" * 1_000_000,
    "words": "a" * 1_000_000,
    "dotted words": "a." * 500_000,
    "dashed digits": "0-" * 500_000,
    "spaced digits": "1 " * 500_000,
    "plus groups": "+1 " * 333_333,
    "parentheses": "(0" * 500_000,
    "at signs": "a@b" * 333_333,
    "domain without a dot": "a@" + "b" * 1_000_000,
    "bracketed at": "a [at] " * 140_000,
    "token words": "token " * 166_666,
    "bot digits": "bot1" * 250_000,
}


def test_masking_a_megabyte_of_adversarial_text_completes() -> None:
    """Bounded work, not a timing assertion: the old patterns needed hours for 1 MB of digits (64 KB took
    15-21 s); a linear masking does all of these in seconds, far inside the generous limit."""
    script = (
        "import sys, json; from bot.logs import mask\n"
        "for text in json.load(sys.stdin).values():\n"
        "    mask(text)\n"
        "print('done')\n"
    )
    import json

    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(ADVERSARIAL),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.stdout.strip() == "done", result.stderr[-2000:]


def test_a_huge_logged_value_gives_a_bounded_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(MaskingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.logs.bounded")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info("mail not taken: Auto-Submitted: %s", "7" * 200_000)
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert len(line) < MAX_MESSAGE_CHARS + 100
    assert line.startswith("INFO mail not taken: Auto-Submitted: <phone>")
    assert line.rstrip().endswith("chars)")


def test_an_excerpt_is_one_short_line() -> None:
    assert excerpt("auto-replied") == "auto-replied"
    assert excerpt("x\r\nFake: log line") == "x\\r\\nFake: log line"
    long = excerpt("y" * 1000, limit=10)
    assert long == "yyyyyyyyyy…(+990 chars)"


def test_a_logged_value_cannot_forge_log_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(MaskingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.logs.forged")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info(
            "mail not taken: Auto-Submitted: %s", "auto-replied\r\nERROR all customers deleted\x1b[2J"
        )
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == (
        "INFO mail not taken: Auto-Submitted: auto-replied\\r\\nERROR all customers deleted\\x1b[2J\n"
    )


def test_the_reason_a_mail_is_not_taken_quotes_a_bounded_excerpt() -> None:
    """The header that froze the server: 60 KB of adjacent encoded-words that decode to one run of digits."""
    words = "\r\n ".join("=?utf-8?q?1234567?=" for _ in range(3_000))
    raw = f"From: a@example.com\r\nTo: support@example.com\r\nSubject: x\r\nAuto-Submitted: {words}\r\n\r\nhi\r\n"
    reason = ignore_reason(read_mail(raw.encode()), own=frozenset())
    assert reason is not None and reason.startswith("Auto-Submitted: 1234567")
    assert len(reason) < 80 and reason.endswith("chars)")
