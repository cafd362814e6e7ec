"""Serial numbers: normalising, parsing, ranges, and finding serials in what customers paste."""

from __future__ import annotations

from datetime import date

import pytest

from policy import (
    ParsedSerial,
    SerialRangeError,
    default_policy,
    expand_range,
    find_serials,
    looks_like_serial_attempt,
    normalize_serial,
    parse_serial,
)

POLICY = default_policy()


def family(first: int, last: int, head: str = "CSP2402A") -> list[str]:
    return [f"{head}{n:04d}" for n in range(first, last + 1)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("csp-2402-a0153", "CSP2402A0153"),
        (" CSP 2402 A0153 ", "CSP2402A0153"),
        ("csp2402a0153", "CSP2402A0153"),
        ("ＣＳＰ２４０２Ａ０１５３", "CSP2402A0153"),  # full-width, from a Chinese input method
        ("\u0421SP2402\u0410015\u0417", "CSP2402A015\u0417"),  # Cyrillic С and А fold; З is no look-alike
        ("csp\u20112402\u2010a0153", "CSP2402A0153"),  # non-breaking and Unicode hyphens
    ],
)
def test_normalize_serial(text: str, expected: str) -> None:
    assert normalize_serial(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("csp-2402-a0153", ParsedSerial(serial="CSP2402A0153", model="CSP", production_date=date(2024, 2, 29),
                                        seq="A0153")),
        ("AB2312ABCD", ParsedSerial(serial="AB2312ABCD", model="AB", production_date=date(2023, 12, 31),
                                    seq="ABCD")),
        ("WXYZ250112345678", ParsedSerial(serial="WXYZ250112345678", model="WXYZ",
                                          production_date=date(2025, 1, 31), seq="12345678")),
        ("CSP2302A0001", ParsedSerial(serial="CSP2302A0001", model="CSP", production_date=date(2023, 2, 28),
                                      seq="A0001")),
        ("hello", None),
        ("", None),
        ("CSP2413A0153", None),  # month 13
        ("CSP2400A0153", None),  # month 00
        ("CSP2402A01", None),  # sequence too short
        ("CSP2402A0153X0153", None),  # sequence too long
        ("C2402A0153", None),  # model too short
        ("CSP2402A0153!", None),
    ],
)  # fmt: skip
def test_parse_serial(text: str, expected: ParsedSerial | None) -> None:
    assert parse_serial(text, POLICY) == expected


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        ("CSP2402A0153", "CSP2402A0156", family(153, 156)),
        ("csp-2402-a0098", "CSP2402A0102", family(98, 102)),
        ("CSP2402A0153", "CSP2402A0153", ["CSP2402A0153"]),
        ("AB24010001", "AB24010003", ["AB24010001", "AB24010002", "AB24010003"]),
        ("AB2401X999", "AB2401X1001", ["AB2401X999", "AB2401X1000", "AB2401X1001"]),
        ("CSP2402A0001", "CSP2402A1000", family(1, 1000)),  # exactly max_range_units
    ],
)
def test_expand_range(first: str, last: str, expected: list[str]) -> None:
    assert expand_range(first, last, POLICY) == expected


@pytest.mark.parametrize(
    ("first", "last", "problem"),
    [
        ("CSP2402A0153", "CSQ2402A0156", "not_same_family"),  # model
        ("CSP2402A0153", "CSP2403A0156", "not_same_family"),  # month
        ("CSP2402A0153", "CSP2502A0156", "not_same_family"),  # year
        ("CSP2402A0153", "CSP2402B0156", "not_same_family"),  # sequence prefix
        ("AB2401ABCD", "AB2401ABCE", "not_same_family"),  # no numeric tail
        ("CSP2402A0156", "CSP2402A0153", "reversed"),
        ("CSP2402A0001", "CSP2402A1001", "too_long"),
        ("hello", "CSP2402A0153", "unreadable"),
    ],
)
def test_expand_range_refuses(first: str, last: str, problem: str) -> None:
    with pytest.raises(SerialRangeError) as caught:
        expand_range(first, last, POLICY)
    assert caught.value.problem == problem


def test_range_error_says_what_is_wrong() -> None:
    with pytest.raises(SerialRangeError) as caught:
        expand_range("CSP2402A0001", "CSP2402A5000", POLICY)
    assert str(caught.value) == "CSP2402A0001 to CSP2402A5000: more than 1000 serials in one range"


TABLE = (
    "Serial\tFault\tQty\n"
    "CSP2402A0153\tno power\t1\n"
    "CSP2402A0154\tnoise\t2\n"
    "csp-2402-a0160\tleaks\t1\n"
)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CSP2402A0153", ["CSP2402A0153"]),
        ("my serial is csp-2402-a0153, thanks", ["CSP2402A0153"]),
        ("CSP2402A0153, CSP2402A0154;CSP2402A0155\nCSP2402A0156 CSP2402A0157\tCSP2402A0158",
         family(153, 158)),
        (TABLE, ["CSP2402A0153", "CSP2402A0154", "CSP2402A0160"]),
        ("CSP2402A0153-CSP2402A0156", family(153, 156)),
        ("CSP2402A0153 - CSP2402A0156", family(153, 156)),
        ("CSP2402A0153 -CSP2402A0156", family(153, 156)),
        ("CSP2402A0153- CSP2402A0156", family(153, 156)),
        ("CSP2402A0153 to CSP2402A0156", family(153, 156)),
        ("CSP2402A0153 TO CSP2402A0156", family(153, 156)),
        ("CSP2402A0153..CSP2402A0156", family(153, 156)),
        ("CSP2402A0153 .. CSP2402A0156", family(153, 156)),
        ("CSP2402A0153\u2013CSP2402A0156", family(153, 156)),  # en dash
        ("CSP2402A0153 \u2014 CSP2402A0156", family(153, 156)),  # em dash
        ("CSP2402A0153~CSP2402A0156", family(153, 156)),
        ("CSP2402A0153 hasta CSP2402A0156", family(153, 156)),
        ("csp-2402-a0153 - csp-2402-a0156", family(153, 156)),
        ("csp-2402-a0153-csp-2402-a0156", family(153, 156)),
        ("csp-2402-a0153 to csp-2402-a0156", family(153, 156)),
        ("csp-2402-a0153\u2013csp-2402-a0156", family(153, 156)),
        ("from CSP2402A0153 to CSP2402A0155 and CSP2402A0200", [*family(153, 155), "CSP2402A0200"]),
        ("序列号CSP2402A0153至CSP2402A0155，CSP2402A0200", [*family(153, 155), "CSP2402A0200"]),
        ("CSP2402A0155, CSP2402A0153 - CSP2402A0156, CSP2402A0153", ["CSP2402A0155", *family(153, 154),
                                                                   "CSP2402A0156"]),
        ("CSP2402A0153 csp-2402-a0153 CSP2402A0153.", ["CSP2402A0153"]),
        # Bullets are a list, not a range: a range never spans lines.
        ("- CSP2402A0153\n- CSP2402A0156", ["CSP2402A0153", "CSP2402A0156"]),
        # Serials of different families joined like a range are two serials.
        ("CSP2402A0153 - CSP2403B0001", ["CSP2402A0153", "CSP2403B0001"]),
        ("CSP2402A0153-CSP2403B0001", ["CSP2402A0153", "CSP2403B0001"]),
        ("CSP2402A0153 - broken screen", ["CSP2402A0153"]),
        ("SN-CSP2402A0153", ["CSP2402A0153"]),
        ("CSP2402A0153 to 0156", ["CSP2402A0153"]),
        ("hello, my pump is broken since 2024-03-10, call +86-138-0000-0000", []),
        ("", []),
    ],
)  # fmt: skip
def test_find_serials(text: str, expected: list[str]) -> None:
    assert find_serials(text, POLICY) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("CSP2402A0001 - CSP2402A2000", "too_long"),
        ("CSP2402A0156 to CSP2402A0153", "reversed"),
    ],
)
def test_find_serials_refuses_to_guess(text: str, problem: str) -> None:
    with pytest.raises(SerialRangeError) as caught:
        find_serials(text, POLICY)
    assert caught.value.problem == problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CSP24O2A0153", True),  # letter O for zero: unreadable, but clearly a serial
        ("my serial is XYZ-123", True),
        ("CSP2402A0153", True),
        ("hello", False),
        ("my order number is 123456", False),
        ("help me please", False),
        ("AB12", False),
        ("", False),
    ],
)
def test_looks_like_serial_attempt(text: str, expected: bool) -> None:
    assert looks_like_serial_attempt(text) == expected


def test_find_serials_stays_fast_on_a_long_hyphenated_chunk() -> None:
    text = "-".join(["ab12"] * 5_000) + " CSP2402A0153"
    assert find_serials(text, POLICY) == ["CSP2402A0153"]
