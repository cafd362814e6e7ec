"""Text as the understanding layer reads it: one normalisation for what customers type on any keyboard.

Two forms are made of a message:
- `clean(text)`: the text a person would read, with invisible and look-alike characters settled (NFKC, so
  full-width `ＣＳＰ１` is `CSP1`; Arabic-Indic and Persian digits as ASCII digits; bidi and zero-width marks
  removed). Serials and the fault description are taken from this form.
- `fold(text)`: `clean` then case folding, accents removed and Arabic letter variants unified, for matching
  lexicon phrases. `fold_with_origin` also says, for each folded character, where it came from in the clean
  text, so that a phrase found in the folded form can be cut out of the clean one.
"""

from __future__ import annotations

import re
import unicodedata

# Arabic-Indic (U+0660..) and Extended Arabic-Indic / Persian (U+06F0..) digits.
_DIGITS = str.maketrans(
    {**{0x0660 + n: str(n) for n in range(10)}, **{0x06F0 + n: str(n) for n in range(10)}}
)
# Bidi controls (LRM, RLM, ALM, embeddings, overrides, isolates), zero-width characters, BOM, soft hyphen.
_INVISIBLE = re.compile("[\u00ad\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
# Typographic apostrophes and quotes as customers' phones type them.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u00b4": "'", "`": "'"})
# Arabic: short vowels and other marks, tatweel; alef, yeh and teh marbuta variants folded to one letter.
_ARABIC_MARKS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")
_ARABIC_LETTERS = str.maketrans(
    {"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ى": "ي", "ة": "ه", "ؤ": "و", "ئ": "ي"}
)
# Arabic and Chinese punctuation that NFKC keeps.
_PUNCTUATION = str.maketrans({"،": ",", "؛": ";", "؟": "?", "、": ",", "。": ".", "…": "..."})


def clean(text: str) -> str:
    """The message with full-width forms, foreign digits and invisible marks settled; nothing else changed."""
    text = unicodedata.normalize("NFKC", text)
    return _INVISIBLE.sub("", text.translate(_DIGITS).translate(_APOSTROPHES))


def fold_with_origin(cleaned: str) -> tuple[str, list[int]]:
    """The folded form of already-cleaned text, and for each of its characters the index it came from."""
    out: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(cleaned):
        folded = _fold_char(char)
        out.append(folded)
        origin.extend([index] * len(folded))
    return "".join(out), origin


def fold(text: str) -> str:
    """A phrase or a message as it is matched: `clean`, case-folded, accents and Arabic marks removed."""
    return fold_with_origin(clean(text))[0]


def _fold_char(char: str) -> str:
    if char.isascii():
        return char.lower()
    char = char.translate(_PUNCTUATION)
    if _ARABIC_MARKS.fullmatch(char):
        return ""
    char = char.translate(_ARABIC_LETTERS)
    # Latin, Greek and Cyrillic accents go (é -> e, ё -> е); Arabic and Chinese letters stay as they are.
    decomposed = unicodedata.normalize("NFD", char.casefold())
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", base) if base else ""
