"""The words customers use, per language, as data: `lexicon/<lang>.toml` beside this file.

A lexicon file lists phrases by what they mean (see `lexicon/en.toml` for every section, with comments).
Phrases are matched on folded text (`normalize.fold`): case, accents and Arabic letter variants do not
matter. A word ending in `*` matches every word that starts so (`оператор*`), one starting with `*` every word
that ends so, `*x*` every word containing x. Phrases in Chinese script match as substrings (no spaces).

All languages' lexicons are used together for every message: customers mix languages, and a short message
says too little for the language detector.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bot.understanding.normalize import fold

LEXICON_DIR = Path(str(resources.files("bot.understanding") / "lexicon"))

# What a phrase can mean: (category, key). Categories and their keys, as the files name them.
CATEGORIES: Mapping[str, tuple[str, ...]] = {
    "intent": ("human", "status", "restart", "help", "language", "thanks", "why", "complaint"),
    "weak_intent": ("human", "status", "restart", "help", "language", "thanks", "why", "complaint"),
    "greeting": ("greeting",),
    "serial_word": ("serial_word",),
    "fault_word": ("fault_word",),
    "serial_action": ("replace", "add", "remove"),
    "proof": ("none", "absent", "sent", "has"),
    "cause": ("normal", "damage", "misuse", "repair", "disaster", "unsure"),
    "preference": ("repair", "discount"),
    "answer": ("yes", "no"),
    "consequential": ("consequential",),
}
# Sections of a file that are word lists rather than phrases with a meaning.
WORD_LISTS = ("negations", "breaks", "stopwords", "range_to", "unit_words", "clitics")
# A misspelt word is read as a word of these categories only: a greeting or a serial phrase is never a guess.
_REPAIRED_INTO = frozenset({"intent", "proof", "cause", "preference", "consequential", "fault_word"})
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


class LexiconError(ValueError):
    """A lexicon file that cannot be used; the message names the file and the section."""


@dataclass(frozen=True, kw_only=True)
class Phrase:
    category: str
    key: str
    words: tuple[str, ...]  # folded words, with * wildcards; empty for a substring phrase
    substring: str  # folded text, for phrases in Chinese script
    language: str

    @property
    def length(self) -> int:
        return len(self.substring) if self.substring else sum(len(w.strip("*")) + 1 for w in self.words)


@dataclass(frozen=True, kw_only=True)
class Lexicon:
    phrases: tuple[Phrase, ...]
    negations: frozenset[str]
    negation_substrings: tuple[str, ...]  # Chinese negations, matched just before a phrase
    breaks: frozenset[str]
    stopwords: frozenset[str]
    stop_chars: frozenset[str]  # Chinese function characters, not counted as content
    range_to: frozenset[str]
    unit_words: tuple[str, ...]
    clitics: tuple[str, ...]  # prefixes written onto a word: Arabic و, ال, ب, …; French elisions l', d', …
    numbers: Mapping[str, int]
    languages: tuple[str, ...]
    # Derived indexes, for speed: phrases by their first word, and every plain word for spelling repair.
    by_first_word: Mapping[str, tuple[Phrase, ...]] = field(default_factory=dict)
    wildcard_phrases: tuple[Phrase, ...] = ()
    substring_phrases: tuple[Phrase, ...] = ()
    vocabulary: tuple[str, ...] = ()
    known_words: frozenset[str] = frozenset()
    wildcard_words: tuple[str, ...] = ()  # every `word*` pattern: a word it matches needs no repair


def load_lexicon(paths: Iterable[Path]) -> Lexicon:
    phrases: list[Phrase] = []
    lists: dict[str, set[str]] = {name: set() for name in WORD_LISTS}
    numbers: dict[str, int] = {}
    languages: list[str] = []
    for path in sorted(paths):
        language = path.stem
        languages.append(language)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise LexiconError(f"{path.name}: {error}") from error
        phrases.extend(_phrases(data, language, path.name))
        for name in WORD_LISTS:
            lists[name].update(fold(w) for w in _strings(data.get(name, []), f"{path.name}: {name}"))
        raw_numbers = data.get("numbers", {})
        if not isinstance(raw_numbers, dict):
            raise LexiconError(f"{path.name}: numbers must be a table of word = number")
        for word, value in raw_numbers.items():
            if not isinstance(value, int):
                raise LexiconError(f"{path.name}: numbers.{word} must be a whole number")
            numbers[fold(word)] = value
    by_first: dict[str, list[Phrase]] = {}
    wildcard: list[Phrase] = []
    substring: list[Phrase] = []
    vocabulary: set[str] = set()
    for phrase in phrases:
        if phrase.substring:
            substring.append(phrase)
        elif "*" in phrase.words[0]:
            wildcard.append(phrase)
        else:
            by_first.setdefault(phrase.words[0], []).append(phrase)
        if phrase.category in _REPAIRED_INTO:
            vocabulary.update(w for w in phrase.words if "*" not in w and len(w) >= 5)
    negations = lists["negations"]
    return Lexicon(
        phrases=tuple(phrases),
        negations=frozenset(n for n in negations if not _HAN.search(n)),
        negation_substrings=tuple(sorted((n for n in negations if _HAN.search(n)), key=len, reverse=True)),
        breaks=frozenset(lists["breaks"]),
        stopwords=frozenset(w for w in lists["stopwords"] if not _HAN.search(w)),
        stop_chars=frozenset("".join(w for w in lists["stopwords"] if _HAN.search(w))),
        range_to=frozenset(lists["range_to"]),
        unit_words=tuple(sorted(lists["unit_words"])),
        clitics=tuple(sorted(lists["clitics"], key=len, reverse=True)),
        numbers=numbers,
        languages=tuple(languages),
        by_first_word={word: tuple(found) for word, found in by_first.items()},
        wildcard_phrases=tuple(wildcard),
        substring_phrases=tuple(substring),
        vocabulary=tuple(sorted(vocabulary)),
        known_words=frozenset(w for p in phrases for w in p.words if "*" not in w),
        wildcard_words=tuple(
            sorted({w for p in phrases for w in p.words if "*" in w} | set(lists["unit_words"]))
        ),
    )


@functools.cache
def default_lexicon() -> Lexicon:
    """The lexicons shipped beside this module, every language together (loaded once per process)."""
    return load_lexicon(LEXICON_DIR.glob("*.toml"))


def _phrases(data: Mapping[str, Any], language: str, name: str) -> list[Phrase]:
    found: list[Phrase] = []
    for category, keys in CATEGORIES.items():
        section = data.get(category)
        if section is None:
            continue
        if len(keys) == 1 and isinstance(section, list):
            section = {keys[0]: section}
        if not isinstance(section, dict):
            raise LexiconError(f"{name}: [{category}] must be a table of lists")
        for key, values in section.items():
            if key not in keys:
                raise LexiconError(f"{name}: [{category}] has no key {key!r} (known: {', '.join(keys)})")
            for text in _strings(values, f"{name}: {category}.{key}"):
                found.append(_phrase(category, key, text, language, name))
    return found


def _phrase(category: str, key: str, text: str, language: str, name: str) -> Phrase:
    folded = fold(text).strip()
    if not folded:
        raise LexiconError(f"{name}: an empty phrase in {category}.{key}")
    if _HAN.search(folded):
        return Phrase(
            category=category, key=key, words=(), substring=folded.replace(" ", ""), language=language
        )
    words = tuple(re.findall(r"[^\s,.!?;:]+", folded))
    if not words:
        raise LexiconError(f"{name}: {text!r} in {category}.{key} has no word to match")
    return Phrase(category=category, key=key, words=words, substring="", language=language)


def _strings(values: object, where: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise LexiconError(f"{where} must be a list of strings")
    return list(values)
