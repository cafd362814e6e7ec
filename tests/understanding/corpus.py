"""The utterance corpus: real-shaped customer messages per language and what each must be read as.

Each `corpus/<lang>.toml` holds `[[case]]` tables: `text`, and the fields of the reading it must give
(`serials`, `serial_action`, `removed`, `units_stated`, `fault`, `proof`, `cause`, `preference`, `answer`,
`intent`, `rating`, `option`, `consequential`). A field left out must be empty in the reading, so each case
checks the whole reading. `fault` is true (some description), false, or a text the description must contain.
`slot` names what the case is about (for the accuracy table); `known_miss = true` marks a case the reader
gets wrong today: it runs as an expected failure, and the table counts it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.understanding import Reading

CORPUS = Path(__file__).parent / "corpus"
FIELDS = (
    "serials",
    "serial_action",
    "removed",
    "units_stated",
    "fault",
    "proof",
    "cause",
    "preference",
    "answer",
    "intent",
    "rating",
    "option",
    "consequential",
)


@dataclass(frozen=True)
class Case:
    language: str
    number: int
    text: str
    expected: dict[str, Any]
    slot: str
    known_miss: bool

    @property
    def id(self) -> str:
        return f"{self.language}-{self.number:03d}"


def load() -> list[Case]:
    cases: list[Case] = []
    for path in sorted(CORPUS.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        for number, raw in enumerate(data["case"], start=1):
            unknown = set(raw) - {*FIELDS, "text", "slot", "known_miss", "note"}
            if unknown:
                raise ValueError(f"{path.name} case {number}: unknown fields {sorted(unknown)}")
            expected = {name: raw[name] for name in FIELDS if name in raw}
            cases.append(
                Case(
                    language=path.stem,
                    number=number,
                    text=raw["text"],
                    expected=expected,
                    slot=raw.get("slot") or _slot(expected),
                    known_miss=bool(raw.get("known_miss", False)),
                )
            )
    return cases


def _slot(expected: dict[str, Any]) -> str:
    for name in (
        "intent",
        "serial_action",
        "units_stated",
        "proof",
        "cause",
        "preference",
        "answer",
        "rating",
    ):
        if name in expected:
            return name if name != "intent" else f"intent:{expected[name]}"
    if "consequential" in expected:
        return "consequential"
    if "serials" in expected:
        return "serials"
    return "fault"


def differences(case: Case, reading: Reading) -> list[str]:
    """What the reading gets wrong, one line a field; empty when it is right."""
    wrong: list[str] = []
    for name in FIELDS:
        got = getattr(reading, name)
        want = case.expected.get(name)
        if name == "fault":
            ok = _fault_ok(want, got)
        elif name in ("serials", "removed"):
            ok = list(got) == list(want or [])
        elif name == "consequential":
            ok = bool(got) == bool(want)
        else:
            ok = got == want
        if not ok:
            wrong.append(f"{name}: expected {want!r}, read {got!r}")
    return wrong


def _fault_ok(want: object, got: str) -> bool:
    if want is None or want is False:
        return got == ""
    if want is True:
        return got != ""
    return isinstance(want, str) and want.casefold() in got.casefold()
