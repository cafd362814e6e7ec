"""Every utterance of the corpus read as it must be, in every language (see corpus.py for the format)."""

from __future__ import annotations

import pytest

from bot.understanding import default_lexicon, understand
from policy import default_policy
from tests.understanding.corpus import Case, differences, load

POLICY = default_policy()
CASES = load()


def test_every_language_has_a_corpus_of_at_least_thirty_cases() -> None:
    counts = {
        lang: sum(1 for c in CASES if c.language == lang)
        for lang in ("en", "zh", "es", "ru", "pt", "fr", "ar")
    }
    assert all(n >= 30 for n in counts.values()), counts


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True)] if c.known_miss else []) for c in CASES],
)
def test_utterance_is_read_as_meant(case: Case) -> None:
    reading = understand(case.text, default_lexicon(), POLICY)
    assert differences(case, reading) == [], case.text
