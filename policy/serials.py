"""Serial numbers: normalise and parse them, expand ranges, find every serial in a customer's free text."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from typing import Literal

from policy.dates import last_day_of_month
from policy.model import Policy

RangeProblem = Literal["unreadable", "not_same_family", "reversed", "too_long"]


class SerialRangeError(ValueError):
    """A serial range that cannot be expanded; `problem` says why, for the bot to explain."""

    def __init__(self, first: str, last: str, problem: RangeProblem, message: str) -> None:
        super().__init__(f"{first} to {last}: {message}")
        self.first = first
        self.last = last
        self.problem: RangeProblem = problem
        self.message = message


@dataclass(frozen=True, kw_only=True)
class ParsedSerial:
    """A readable serial: its model, production date (last day of the month it names) and sequence."""

    serial: str
    model: str
    production_date: date
    seq: str


# Customers on Cyrillic or Greek keyboards type look-alike letters; a serial is always Latin.
_CONFUSABLES = str.maketrans(
    "АВЕКМНОРСТУХІЅЈΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",  # Cyrillic, then Greek
    "ABEKMHOPCTYXISJABEZHIKMNOPTYX",
)
# Hyphen look-alikes that NFKC leaves alone, treated as the plain hyphen a serial may contain.
_HYPHENS = str.maketrans({"\u2010": "-", "\u2011": "-"})
_SPACES_AND_HYPHENS = re.compile(r"[\s-]+")


def normalize_serial(text: str) -> str:
    """Upper-case a serial and remove spaces and hyphens (`csp-2402-a0153` -> `CSP2402A0153`).

    Full-width characters and Cyrillic/Greek look-alike letters are folded to ASCII first.
    """
    folded = unicodedata.normalize("NFKC", text).translate(_HYPHENS).upper().translate(_CONFUSABLES)
    return _SPACES_AND_HYPHENS.sub("", folded)


def parse_serial(text: str, policy: Policy) -> ParsedSerial | None:
    """Read a serial by the policy's pattern; None when it does not match or names no real month."""
    serial = normalize_serial(text)
    match = policy.serial_pattern.fullmatch(serial)
    if match is None:
        return None
    try:
        year = 2000 + int(match["yy"])
        month = int(match["mm"])
    except ValueError:
        # A custom pattern may let non-digits through; such a serial names no date.
        return None
    if not 1 <= month <= 12:
        return None
    return ParsedSerial(
        serial=serial, model=match["model"], production_date=last_day_of_month(year, month), seq=match["seq"]
    )


_NUMERIC_TAIL = re.compile(r"^(?P<prefix>.*?)(?P<tail>\d+)$")


def expand_range(first: str, last: str, policy: Policy) -> list[str]:
    """List every serial from `first` to `last` inclusive, counting up the numeric tail of the sequence.

    Both ends must share model, year, month and the sequence's prefix; zero padding is kept.

    Raises:
        SerialRangeError: an end is unreadable, the ends are not of one family, the range runs backwards,
            or it holds more than `policy.max_range_units` serials.
    """
    a, b = parse_serial(first, policy), parse_serial(last, policy)
    if a is None or b is None:
        bad = first if a is None else last
        raise SerialRangeError(first, last, "unreadable", f"not a readable serial: {bad!r}")
    a_tail, b_tail = _NUMERIC_TAIL.match(a.seq), _NUMERIC_TAIL.match(b.seq)
    if (
        a_tail is None
        or b_tail is None
        or a.model != b.model
        or a.production_date != b.production_date
        or a_tail["prefix"] != b_tail["prefix"]
    ):
        message = "not serials of one model, month and batch"
        raise SerialRangeError(a.serial, b.serial, "not_same_family", message)
    start, stop = int(a_tail["tail"]), int(b_tail["tail"])
    if stop < start:
        raise SerialRangeError(a.serial, b.serial, "reversed", "the range runs backwards")
    if stop - start + 1 > policy.max_range_units:
        raise SerialRangeError(
            a.serial, b.serial, "too_long", f"more than {policy.max_range_units} serials in one range"
        )
    head = a.serial[: len(a.serial) - len(a_tail["tail"])]
    width = len(a_tail["tail"])
    return [f"{head}{n:0{width}d}" for n in range(start, stop + 1)]


# Free text is read as chunks (letters of alphabetic scripts, digits, hyphens) and range connectors;
# anything else (spaces, commas, CJK text, punctuation) only separates. Words meaning "to" in the
# customers' languages count as connectors. A range never spans lines, so "- A" bullets stay a list.
_CONNECTOR_WORDS = frozenset(
    {"to", "thru", "through", "till", "until", "hasta", "al", "a", "bis", "au", "à", "até", "до", "по"}
)
_LEXEME = re.compile(
    r"(?P<newline>[\n\r\u2028\u2029])"
    r"|(?P<conn>\.{2,}|[~\u2012\u2013\u2014\u2015\u2212\u81f3\u5230])"  # .. ~ dashes minus 至 到
    r"|(?P<chunk>[0-9A-Za-z\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff-]+)"
)

_Item = tuple[Literal["serial", "conn", "other"], str]
_CONN: _Item = ("conn", "")
_OTHER: _Item = ("other", "")


def _is_serial(text: str, policy: Policy) -> bool:
    return parse_serial(text, policy) is not None


def _chunk_items(chunk: str, policy: Policy) -> list[_Item]:
    """Read one chunk: a serial (hyphens and all), serials joined by hyphens (a range), or a word."""
    core = chunk.strip("-")
    if not core:
        return [_CONN]
    lead: list[_Item] = [_CONN] if chunk.startswith("-") else []
    trail: list[_Item] = [_CONN] if chunk.endswith("-") else []
    if core.lower() in _CONNECTOR_WORDS:
        return [_CONN]
    if _is_serial(core, policy):
        # A chunk that normalises to a valid serial is a serial, even when a hyphen split would also read.
        return [*lead, ("serial", normalize_serial(core)), *trail]
    return [*lead, *_segment(core.split("-"), policy), *trail]


# No serial is written longer than this; it bounds the work on a long hyphenated chunk (a pasted key, say).
_LONGEST_SERIAL_TEXT = 64


def _segment(parts: list[str], policy: Policy) -> list[_Item]:
    """Group hyphen-separated parts into serials, covering as many parts as possible with as few serials.

    `csp-2402-a0153-csp-2402-a0160` has one best reading: two serials joined by a hyphen (a range).
    """
    n = len(parts)
    # score[i]: (parts covered by serials, -serials used) for parts[i:]; group[i]: where the group at i ends
    # and whether it is a serial. Back-pointers, not item lists, keep this linear in the number of parts.
    score: list[tuple[int, int]] = [(0, 0)] * (n + 1)
    group: list[tuple[int, bool]] = [(n, False)] * (n + 1)
    for i in range(n - 1, -1, -1):
        score[i], group[i] = score[i + 1], (i + 1, False)
        for j in range(i + 1, n + 1):
            text = "-".join(parts[i:j])
            if len(text) > _LONGEST_SERIAL_TEXT:
                break
            option = (score[j][0] + j - i, score[j][1] - 1)
            if option > score[i] and _is_serial(text, policy):
                score[i], group[i] = option, (j, True)
    items: list[_Item] = []
    i = 0
    while i < n:
        end, is_serial = group[i]
        if not is_serial:
            items.append(_OTHER)
        else:
            items.append(("serial", normalize_serial("-".join(parts[i:end]))))
            # Two serials joined by a hyphen are a range's ends.
            if end < n and group[end][1]:
                items.append(_CONN)
        i = end
    return items


def _lex(text: str, policy: Policy) -> list[_Item]:
    folded = unicodedata.normalize("NFKC", text).translate(_HYPHENS)
    items: list[_Item] = []
    for m in _LEXEME.finditer(folded):
        if m["newline"] is not None:
            items.append(_OTHER)
        elif m["conn"] is not None:
            items.append(_CONN)
        else:
            items.extend(_chunk_items(m["chunk"], policy))
    return items


def find_serials(text: str, policy: Policy) -> list[str]:
    """Extract every serial from free text, expanding ranges; order kept, duplicates removed.

    Lists may be separated by commas, semicolons, newlines, spaces or tabs (pasted tables); ranges may be
    written `A-B`, `A - B`, `A to B`, `A..B`, `A–B` or `A~B`. Two serials of different families joined
    like a range are taken as two serials.

    Raises:
        SerialRangeError: a range runs backwards or is longer than `policy.max_range_units`: the customer
            must say what they meant rather than have the bot guess.
    """
    items = _lex(text, policy)
    found: dict[str, None] = {}
    i = 0
    while i < len(items):
        kind, serial = items[i]
        if kind != "serial":
            i += 1
            continue
        if i + 2 < len(items) and items[i + 1][0] == "conn" and items[i + 2][0] == "serial":
            try:
                expanded = expand_range(serial, items[i + 2][1], policy)
            except SerialRangeError as error:
                if error.problem != "not_same_family":
                    raise
                found[serial] = None
                i += 2
                continue
            found.update(dict.fromkeys(expanded))
            i += 3
            continue
        found[serial] = None
        i += 1
    return list(found)


_ATTEMPT_TOKEN = re.compile(r"[^\s,;|]+")


def looks_like_serial_attempt(text: str) -> bool:
    """Tell an unreadable serial from chit-chat: some token mixes letters and digits and has 6+ characters."""
    for token in _ATTEMPT_TOKEN.findall(unicodedata.normalize("NFKC", text)):
        core = normalize_serial(token.strip(".:!?()[]{}<>\"'"))
        if len(core) >= 6 and any(c.isalpha() for c in core) and any(c.isdigit() for c in core):
            return True
    return False


def serial_spans(text: str, policy: Policy) -> list[tuple[int, int]]:
    """Where the serials of `text` are written, with the range words between them ("A to B"), as
    (start, end) character offsets of the NFKC-normalised text; for cutting them out of a description."""
    folded = unicodedata.normalize("NFKC", text).translate(_HYPHENS)
    lexemes: list[tuple[str, int, int]] = []
    for m in _LEXEME.finditer(folded):
        if m["newline"] is not None:
            lexemes.append(("other", m.start(), m.end()))
        elif m["conn"] is not None:
            lexemes.append(("conn", m.start(), m.end()))
        else:
            kinds = {kind for kind, _ in _chunk_items(m["chunk"], policy)}
            kind = "serial" if "serial" in kinds else "conn" if kinds == {"conn"} else "other"
            lexemes.append((kind, m.start(), m.end()))
    spans: list[tuple[int, int]] = []
    for i, (kind, start, end) in enumerate(lexemes):
        between = 0 < i < len(lexemes) - 1 and lexemes[i - 1][0] == "serial" and lexemes[i + 1][0] == "serial"
        if kind == "serial" or (kind == "conn" and between):
            spans.append((start, end))
    return spans
