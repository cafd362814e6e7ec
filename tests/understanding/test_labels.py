"""The bot's own button labels, typed back by a customer, read as what the button means, in every language.

On email and WeChat the buttons are numbered text, and customers often type the label instead of the number;
the labels are read from templates/<lang>/labels.j2, so a changed label without its lexicon entry fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.understanding import default_lexicon, understand
from policy import default_policy

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
LANGUAGES = ("en", "zh", "es", "ru", "pt", "fr", "ar")
_MACRO = re.compile(r"{% macro (\w+)\(\) %}(.*?){% endmacro %}")
# What each button means, as the reading's field and the values that mean it ("no proof" is "none" or
# "absent": the label says the customer has none, with or without naming the document).
MEANING: dict[str, tuple[str, tuple[str, ...]]] = {
    "proof_sent": ("proof", ("sent",)),
    "proof_none": ("proof", ("absent", "none")),
    "cause_normal": ("cause", ("normal",)),
    "cause_damage": ("cause", ("damage",)),
    "cause_misuse": ("cause", ("misuse",)),
    "cause_repair": ("cause", ("repair",)),
    "cause_disaster": ("cause", ("disaster",)),
    "cause_unsure": ("cause", ("unsure",)),
    "prefer_repair": ("preference", ("repair",)),
    "prefer_discount": ("preference", ("discount",)),
    "talk_to_person": ("intent", ("human",)),
}


def _labels() -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    for lang in LANGUAGES:
        text = (TEMPLATES / lang / "labels.j2").read_text(encoding="utf-8")
        found.extend((lang, name, label) for name, label in _MACRO.findall(text) if name in MEANING)
    return found


LABELS = _labels()


def test_every_language_has_every_button_label() -> None:
    for lang in LANGUAGES:
        assert {name for lg, name, _ in LABELS if lg == lang} == set(MEANING), lang


@pytest.mark.parametrize(("lang", "name", "label"), LABELS, ids=[f"{lg}-{n}" for lg, n, _ in LABELS])
def test_a_label_typed_back_reads_as_its_button(lang: str, name: str, label: str) -> None:
    reading = understand(label, default_lexicon(), default_policy())
    field, values = MEANING[name]
    assert getattr(reading, field) in values, (lang, label, reading)
    # It says nothing else: no fault, and no yes/no from a label that begins with "No" or "لا".
    assert (reading.fault, reading.answer) == ("", None), (lang, label, reading)
