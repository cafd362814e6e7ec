"""A customer's message turned into what it says: serials and what to do with them, the fault, proof, cause,
preference, yes/no and the global intents. Pure: the same text and lexicon always give the same reading.

The reading is context-free; the conversation decides what a "no" or a number answers from its own state.

A message is read once: `understand` remembers the readings of the last `MEMO_SIZE` texts (by what it reads of
them, with the lexicon and the policy), so the engine's look-up of a message's serials and the conversation's
reading of the same message share one reading. Readings are frozen, so sharing one is as good as a new one.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from typing import Literal, cast

from rapidfuzz import process
from rapidfuzz.distance import OSA

from bot.understanding.lexicon import Lexicon, Phrase
from bot.understanding.normalize import clean, fold, fold_with_origin
from policy import (
    Policy,
    SerialRangeError,
    find_serials,
    looks_like_serial_attempt,
    parse_serial,
    serial_spans,
)

Intent = Literal["human", "status", "restart", "help", "language", "thanks", "why", "complaint", "greeting"]
SerialAction = Literal["add", "replace", "remove"]
Proof = Literal["none", "absent", "sent", "has"]
Cause = Literal["normal", "damage", "misuse", "repair", "disaster", "unsure"]
Answer = Literal["yes", "no"]

# A token: a run of letters or digits (apostrophes inside, "don't"), or a clause-ending punctuation mark.
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[.!?;\n]")
_CLAUSE_END = frozenset(".!?;\n")
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
# Chinese and Arabic letters: not parts of a serial ("我们有3台机器坏了" is no attempt at one).
_NOT_LATIN = re.compile(r"[\u0600-\u06ff\u3400-\u9fff\uf900-\ufaff]")
_RATING = re.compile(r"^\s*(?:rate:)?([1-5])\s*(?:/\s*5)?\s*[*★⭐]*\s*$")
_STARS = re.compile(r"^\s*([★⭐]{1,5})\s*$")
_OPTION = re.compile(r"^\s*#?([0-9]{1,2})\s*[.)]?\s*$")
_ERROR_CODE = re.compile(r"^(?:[a-z]{1,3}-?)?[0-9]{1,4}[a-z]?$|^[a-z]{1,3}[0-9]{1,4}$")
_ZH_COUNT = re.compile(r"([0-9]{1,4}|[一二两三四五六七八九十]{1,3})\s*(?:台|个|件|套|只|部)")
_ZH_NUMERALS = {
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
    "十": 10,
}
MAX_READ = 4000
# Words that join two serials in a list, in the bot's languages (folded).
_JOINERS = frozenset({"", "and", "y", "e", "et", "и", "和", "及", "与", "و", "or", "o", "ou", "или"})
# Spelling repair: a word this far (edits, transpositions counted once) from a lexicon word is read as it.
_SHORTEST_REPAIRED = 5
# A cause or preference word is negated by a negation this many words before it, in the same clause.
_NEGATION_REACH = 4
_ZH_NEGATION_REACH = 3


@dataclass(frozen=True, kw_only=True)
class Reading:
    """What one message says. Empty fields: the message does not say it."""

    text: str  # the message, cleaned (`normalize.clean`), spaces inside serials closed
    serials: tuple[str, ...] = ()  # every serial mentioned, ranges expanded, in order
    serial_action: SerialAction | None = None  # what the customer does with them, when they say so
    removed: tuple[str, ...] = ()  # serials the customer takes back ("remove A", "not A")
    range_error: SerialRangeError | None = None
    serial_attempt: bool = False  # something like a serial that is not one (a typo, a short serial)
    units_stated: int | None = None  # "it's two units"
    fault: str = ""  # the fault description, greetings and serial phrases cut out
    fault_strength: int = 0  # content words in it (a fault word counts 2): how surely it describes a fault
    proof: Proof | None = None
    cause: Cause | None = None
    preference: Literal["repair", "discount"] | None = None
    answer: Answer | None = None
    intent: Intent | None = None
    rating: int | None = None
    option: int | None = None  # a typed option number ("2")
    consequential: bool = False  # asks for consequential damages (clause L1)
    repaired: bool = False  # a word was read through a spelling repair: less sure
    cause_repaired: bool = False  # the cause was read only through a spelling repair
    languages: tuple[str, ...] = ()  # lexicons whose phrases matched, most matches first


@dataclass(frozen=True)
class _Token:
    text: str  # folded, or the lexicon word it was repaired to
    start: int  # in the folded text
    end: int
    serial: bool
    repaired: bool


@dataclass(frozen=True)
class _Match:
    phrase: Phrase
    start: int  # in the folded text
    end: int
    first: int  # token indexes, first and one past the last (-1 for substring matches)
    last: int
    repaired: bool
    negated: bool = False


def understand(text: str, lexicon: Lexicon, policy: Policy) -> Reading:
    """Read one message (its first `MAX_READ` characters: the bot reads no more of one message)."""
    # The reading depends on nothing but the cleaned first characters: "hello" and "hello\n" share one.
    return _read(clean(text[:MAX_READ]).strip(), _Same(lexicon), _Same(policy))


# Readings remembered: a batch of 32 messages is read by the engine first, then by the conversation one by
# one; the web chat's thread reads too. functools.lru_cache is thread-safe (at worst two threads read the
# same new text both).
MEMO_SIZE = 256


@dataclass(frozen=True, eq=False)
class _Same:
    """An object as a cache key by identity (the key keeps it alive, so its id cannot be reused meanwhile):
    lexicons and policies hold mappings, so they cannot be hashed by value."""

    value: object

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.value is self.value


@functools.lru_cache(maxsize=MEMO_SIZE)
def _read(cleaned: str, same_lexicon: _Same, same_policy: _Same) -> Reading:
    lexicon, policy = cast(Lexicon, same_lexicon.value), cast(Policy, same_policy.value)
    base = _range_words(_join_split_serials(cleaned, policy), lexicon, policy)
    range_error: SerialRangeError | None = None
    try:
        serials = tuple(find_serials(base, policy))
    except SerialRangeError as error:
        serials, range_error = (), error
    serial_places = serial_spans(base, policy)
    spans = serial_places + _attempt_spans(base)
    folded, origin = fold_with_origin(base)
    tokens = _tokens(folded, origin, spans, lexicon)
    matches = _matches(folded, tokens, lexicon)
    consumed = _consumed(folded, matches, spans, origin)

    reading_intent = _intent(matches, tokens, consumed, folded, lexicon)
    strength, has_content = _content(tokens, folded, consumed, matches, lexicon)
    fault = _fault_text(base, matches, serial_places, origin) if has_content else ""
    languages: dict[str, int] = {}
    for match in matches:
        languages[match.phrase.language] = languages.get(match.phrase.language, 0) + 1
    return Reading(
        text=base,
        serials=serials,
        serial_action=_first_key(matches, "serial_action") if serials else None,  # type: ignore[arg-type]
        removed=_removed(matches, tokens, serials, base, policy, origin),
        range_error=range_error,
        serial_attempt=not serials
        and range_error is None
        and looks_like_serial_attempt(_NOT_LATIN.sub(" ", base)),
        units_stated=_units_stated(tokens, folded, lexicon),
        fault=fault,
        fault_strength=strength,
        proof=_proof(matches),
        cause=_cause(matches),
        cause_repaired=_cause([m for m in matches if not m.repaired]) is None and _cause(matches) is not None,
        preference=_preference(matches),
        answer=_answer(matches, tokens),
        intent=reading_intent,
        rating=_rating(base),
        option=int(m.group(1)) if (m := _OPTION.match(base)) else None,
        consequential=any(m.phrase.category == "consequential" for m in matches),
        repaired=any(m.repaired for m in matches),
        languages=tuple(sorted(languages, key=lambda lang: -languages[lang])),
    )


# --- preparing the text ----------------------------------------------------------------------------------

# Two to four short runs of letters and digits separated by spaces (word-bounded: linear on long text).
_ALNUM_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9A-Za-z]{1,12}(?:[ \t]+[0-9A-Za-z]{1,12}){1,3}(?![0-9A-Za-z])")


def _join_split_serials(text: str, policy: Policy) -> str:
    """`CSP 2604 D0013` is one serial typed with spaces: close them when no part is a serial by itself."""

    def join(match: re.Match[str]) -> str:
        parts = match.group(0).split()
        out: list[str] = []
        i = 0
        while i < len(parts):
            for j in range(len(parts), i + 1, -1):
                group = parts[i:j]
                if not any(parse_serial(p, policy) for p in group) and parse_serial("".join(group), policy):
                    out.append("".join(group))
                    i = j
                    break
            else:
                out.append(parts[i])
                i += 1
        return " ".join(out)

    return _ALNUM_RUN.sub(join, text)


def _range_words(text: str, lexicon: Lexicon, policy: Policy) -> str:
    """A word meaning "to" between two serials, in any language (`من A إلى B`), written as a range dash.

    The words between two consecutive serials are folded before they are looked up, as every lexicon word
    is: `إلى` is listed (and typed) with or without its hamza, `à` with or without its accent."""
    if not lexicon.range_to:
        return text
    serials = [m for m in re.finditer(r"[0-9A-Za-z-]+", text) if parse_serial(m.group(0), policy)]
    out: list[str] = []
    at = 0
    for before, after in itertools.pairwise(serials):
        between = text[before.end() : after.start()]
        words = " ".join(fold(between).split())
        if between[:1].isspace() and between[-1:].isspace() and words in lexicon.range_to:
            out.append(text[at : before.end()])
            out.append(" - ")
            at = after.start()
    out.append(text[at:])
    return "".join(out)


_ATTEMPT = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{5,}")


def _attempt_spans(text: str) -> list[tuple[int, int]]:
    """Where something like a serial is written that is not one ("ABC-123-XYZ"): not a fault description."""
    return [
        (m.start(), m.end())
        for m in _ATTEMPT.finditer(text)
        if looks_like_serial_attempt(m.group(0)) and not _ERROR_CODE.match(m.group(0).lower())
    ]


def _tokens(folded: str, origin: list[int], spans: list[tuple[int, int]], lexicon: Lexicon) -> list[_Token]:
    out: list[_Token] = []
    for m in _TOKEN.finditer(folded):
        word = m.group(0)
        at = origin[m.start()] if m.start() < len(origin) else 0
        serial = any(a <= at < b for a, b in spans)
        repaired = False
        if not serial and _SHORTEST_REPAIRED <= len(word) <= 24 and not any(c.isdigit() for c in word):
            word, repaired = _repair(word, lexicon)
        out.append(_Token(text=word, start=m.start(), end=m.end(), serial=serial, repaired=repaired))
    return out


def _repair(word: str, lexicon: Lexicon) -> tuple[str, bool]:
    """A misspelt word read as the lexicon word it is one edit from (two, for long words)."""
    return _repaired(word, _Same(lexicon))


@functools.lru_cache(maxsize=8192)
def _repaired(word: str, same_lexicon: _Same) -> tuple[str, bool]:
    """`_repair`, once per word (the wildcard patterns and the fuzzy search over the vocabulary cost most)."""
    lexicon = cast(Lexicon, same_lexicon.value)
    if word in lexicon.by_first_word or _known(word, lexicon):
        return word, False
    cutoff = 1 if len(word) < 9 else 2
    best = process.extractOne(word, lexicon.vocabulary, scorer=OSA.distance, score_cutoff=cutoff)
    if best is None or best[0][0] != word[0]:
        return word, False
    return str(best[0]), True


def _known(word: str, lexicon: Lexicon) -> bool:
    if (
        word in lexicon.known_words
        or word in lexicon.stopwords
        or word in lexicon.negations
        or word in lexicon.numbers
    ):
        return True
    return any(_plain_match(pattern, word) for pattern in lexicon.wildcard_words)


# --- matching phrases ------------------------------------------------------------------------------------


def _word_matches(pattern: str, word: str, same_lexicon: _Same) -> bool:
    return any(_plain_match(pattern, form) for form in _forms(word, same_lexicon))


@functools.lru_cache(maxsize=8192)
def _forms(word: str, same_lexicon: _Same) -> tuple[str, ...]:
    """The word, and the word without each clitic it starts with (two letters left at least): Arabic attaches
    conjunctions, prepositions and the article to the word: و + ال + فاتورة."""
    lexicon = cast(Lexicon, same_lexicon.value)
    stripped = [word[len(c) :] for c in lexicon.clitics if word.startswith(c) and len(word) - len(c) >= 2]
    return (word, *stripped)


def _plain_match(pattern: str, word: str) -> bool:
    if pattern.startswith("*") and pattern.endswith("*") and len(pattern) > 2:
        return pattern[1:-1] in word
    if pattern.endswith("*"):
        return word.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return word.endswith(pattern[1:])
    return word == pattern


def _matches(folded: str, tokens: list[_Token], lexicon: Lexicon) -> list[_Match]:
    """Every phrase found, longest first where two overlap; negated ones marked."""
    words = [t for t in tokens if t.text not in _CLAUSE_END]
    index = [i for i, t in enumerate(tokens) if t.text not in _CLAUSE_END]
    found: list[_Match] = []
    same = _Same(lexicon)
    for position, token in enumerate(words):
        if token.serial:
            continue
        for phrase in _starting_with(token.text, same):
            n = len(phrase.words)
            window = words[position : position + n]
            if len(window) < n or any(t.serial for t in window):
                continue
            if n > 1 and not all(
                _word_matches(p, t.text, same) for p, t in zip(phrase.words[1:], window[1:], strict=True)
            ):
                continue
            # A phrase does not run over the end of a sentence.
            first, last = index[position], index[position + n - 1]
            if any(tokens[k].text in _CLAUSE_END for k in range(first, last)):
                continue
            found.append(
                _Match(
                    phrase=phrase,
                    start=window[0].start,
                    end=window[-1].end,
                    first=first,
                    last=last + 1,
                    repaired=any(t.repaired for t in window),
                )
            )
    for phrase in lexicon.substring_phrases:
        start = folded.find(phrase.substring)
        while start != -1:
            found.append(
                _Match(
                    phrase=phrase,
                    start=start,
                    end=start + len(phrase.substring),
                    first=-1,
                    last=-1,
                    repaired=False,
                )
            )
            start = folded.find(phrase.substring, start + 1)
    kept: list[_Match] = []
    for match in sorted(found, key=lambda m: (-(m.end - m.start), m.start)):
        if all(match.end <= k.start or match.start >= k.end for k in kept):
            kept.append(match)
    kept.sort(key=lambda m: m.start)
    # A negation inside a fault phrase ("does not work", "не включается", "ما يشتغل") negates the fault, not
    # a cause said after it ("не включается после грозы" is a storm, not "no storm").
    in_fault = {
        k for m in kept if m.phrase.category == "fault_word" and m.first >= 0 for k in range(m.first, m.last)
    }
    return [_negate(m, tokens, folded, lexicon, in_fault) for m in kept]


@functools.lru_cache(maxsize=8192)
def _starting_with(word: str, same_lexicon: _Same) -> tuple[Phrase, ...]:
    """The word phrases whose first word matches `word` (as `_word_matches` matches it), in the order they are
    tried: those listed under the word, every wildcard phrase, those under the word without a clitic. One
    word's list is made once, not at each of its occurrences (the wildcards and clitics cost most)."""
    lexicon = cast(Lexicon, same_lexicon.value)
    candidates = [*lexicon.by_first_word.get(word, ()), *lexicon.wildcard_phrases]
    for clitic in lexicon.clitics:
        if word.startswith(clitic):
            candidates.extend(lexicon.by_first_word.get(word[len(clitic) :], ()))
    return tuple(p for p in candidates if _word_matches(p.words[0], word, same_lexicon))


def _negate(match: _Match, tokens: list[_Token], folded: str, lexicon: Lexicon, in_fault: set[int]) -> _Match:
    if match.phrase.category not in ("cause", "preference", "proof"):
        return match
    # A phrase that carries its own negation is not negated again: "je n'ai PAS DE FACTURE".
    if match.phrase.words and match.phrase.words[0] in lexicon.negations:
        return match
    negated = False
    if match.first >= 0:
        for k in range(match.first - 1, max(-1, match.first - 1 - _NEGATION_REACH), -1):
            word = tokens[k].text
            if word in _CLAUSE_END or word in lexicon.breaks or k in in_fault:
                break
            if word in lexicon.negations or word.endswith("n't"):
                negated = True
                break
    else:
        before = folded[max(0, match.start - _ZH_NEGATION_REACH - 1) : match.start]
        negated = any(n in before for n in lexicon.negation_substrings)
    if not negated:
        return match
    return _Match(
        phrase=match.phrase,
        start=match.start,
        end=match.end,
        first=match.first,
        last=match.last,
        repaired=match.repaired,
        negated=True,
    )


def _consumed(
    folded: str, matches: list[_Match], spans: list[tuple[int, int]], origin: list[int]
) -> list[bool]:
    """Which folded characters are taken by a phrase or a serial (the rest may describe the fault)."""
    taken = [False] * len(folded)
    for m in matches:
        for k in range(m.start, m.end):
            taken[k] = True
    for k, at in enumerate(origin):
        if any(a <= at < b for a, b in spans):
            taken[k] = True
    return taken


# --- what the matches mean -------------------------------------------------------------------------------


def _keys(matches: list[_Match], category: str, *, negated: bool | None = None) -> list[str]:
    return [
        m.phrase.key
        for m in matches
        if m.phrase.category == category and (negated is None or m.negated is negated)
    ]


def _first_key(matches: list[_Match], category: str) -> str | None:
    keys = _keys(matches, category)
    return keys[0] if keys else None


def _intent(
    matches: list[_Match], tokens: list[_Token], consumed: list[bool], folded: str, lexicon: Lexicon
) -> Intent | None:
    strong = _keys(matches, "intent")
    if strong:
        return strong[0]  # type: ignore[return-value]
    # A weak word ("agent", "status", "help") is an intent only when the message says nothing else.
    weak = _keys(matches, "weak_intent")
    others = [m for m in matches if m.phrase.category not in ("weak_intent", "greeting", "thanks")]
    content, _ = _content(tokens, folded, consumed, matches, lexicon)
    if weak and not others and content == 0:
        return weak[0]  # type: ignore[return-value]
    greetings = _keys(matches, "greeting")
    if greetings and not others and content == 0 and not any(t.serial for t in tokens):
        return "greeting"
    return None


def _content(
    tokens: list[_Token], folded: str, consumed: list[bool], matches: list[_Match], lexicon: Lexicon
) -> tuple[int, bool]:
    """How much of the message is left for a fault description: (strength, anything at all)."""
    strength = 0
    for token in tokens:
        if token.serial or token.text in _CLAUSE_END or all(consumed[token.start : token.end]):
            continue
        word = token.text
        if (
            word in lexicon.stopwords
            or word in lexicon.negations
            or word in lexicon.breaks
            or word.endswith("n't")
        ):
            continue
        if _HAN.search(word):
            chars = [
                c for k, c in enumerate(folded[token.start : token.end]) if not consumed[token.start + k]
            ]
            strength += sum(1 for c in chars if _HAN.match(c) and c not in lexicon.stop_chars) // 2
        elif _ERROR_CODE.match(word) and any(c.isalpha() for c in word):
            strength += 2  # an error code (E07, F3) describes the fault by itself
        elif not word.isdigit():
            strength += 1
    strength += 2 * len(_keys(matches, "fault_word"))
    return strength, strength > 0


def _fault_text(base: str, matches: list[_Match], spans: list[tuple[int, int]], origin: list[int]) -> str:
    """The message without its serials, an opening greeting and the words that introduce a serial
    ("my serial number is"); the rest is the customer's own description, line breaks kept."""
    cut = [False] * len(base)
    for a, b in spans:
        for k in range(a, b):
            cut[k] = True
    starts = {a for a, _ in spans}
    for m in matches:
        if m.phrase.category not in ("greeting", "serial_word") or m.end <= m.start:
            continue
        first, last = origin[m.start], origin[m.end - 1] + 1
        if m.phrase.category == "greeting":
            line_start = base.rfind("\n", 0, first) + 1
            wanted = not base[line_start:first].strip(" \t,.!:;-")
        else:
            rest = re.match(r"[\s:#.\-–=]*", base[last:])
            after = last + (rest.end() if rest else 0)
            wanted = after in starts or after >= len(base) or base[after] == "\n"
        if wanted:
            for k in range(first, last):
                cut[k] = True
    # "A and B", "A, B y C": the words joining serials go with them.
    ordered = sorted(spans)
    for (_, end), (start, _) in itertools.pairwise(ordered):
        if fold(base[end:start]).strip(" \t,;/&+") in _JOINERS:
            for k in range(end, start):
                cut[k] = True
    kept = "".join(" " if cut[k] else c for k, c in enumerate(base))
    lines = []
    for line in kept.splitlines():
        line = re.sub(r"[ \t]{2,}", " ", line)
        # Punctuation left at the edges, Arabic (، ؛ ؟) and Chinese (、 。) marks too.
        line = re.sub(r"\s+([,.;:!?،؛؟、。])", r"\1", line)
        line = re.sub(r"^[\s,.;:!?،؛؟、。\-–—]+|[\s,;:،؛、\-–—]+$", "", line)
        if re.search(r"\w", line):
            lines.append(line)
    return "\n".join(lines).strip()


def _cause(matches: list[_Match]) -> Cause | None:
    specific = [k for k in _keys(matches, "cause", negated=False) if k not in ("normal", "unsure")]
    if specific:
        return specific[0]  # type: ignore[return-value]
    plain = _keys(matches, "cause", negated=False)
    negated = _keys(matches, "cause", negated=True)
    if "normal" in plain or any(k not in ("normal", "unsure") for k in negated):
        return "normal"
    if "unsure" in plain:
        return "unsure"
    return None


def _proof(matches: list[_Match]) -> Proof | None:
    plain = _keys(matches, "proof", negated=False)
    negated = _keys(matches, "proof", negated=True)
    # "I lost it" names no document; said with one ("perdi o certificado"), it is the lost proof itself.
    if "none" in plain or "has" in negated or "sent" in negated or ("absent" in plain and "has" in plain):
        return "none"
    if "absent" in plain:
        return "absent"
    if "sent" in plain:
        return "sent"
    if "has" in plain:
        return "has"
    return None


def _preference(matches: list[_Match]) -> Literal["repair", "discount"] | None:
    for m in matches:
        if m.phrase.category == "preference":
            if not m.negated:
                return m.phrase.key  # type: ignore[return-value]
            return "discount" if m.phrase.key == "repair" else "repair"
    return None


def _answer(matches: list[_Match], tokens: list[_Token]) -> Answer | None:
    """Yes or no: said first, or said alone."""
    answers = [m for m in matches if m.phrase.category == "answer"]
    if not answers:
        return None
    words = [t for t in tokens if t.text not in _CLAUSE_END]
    first = answers[0]
    if (first.first in (-1, 0) and (first.first == 0 or first.start <= 1)) or len(words) <= 3:
        return first.phrase.key  # type: ignore[return-value]
    return None


def _removed(
    matches: list[_Match],
    tokens: list[_Token],
    serials: tuple[str, ...],
    base: str,
    policy: Policy,
    origin: list[int],
) -> tuple[str, ...]:
    """Serials named right after a "remove" phrase, or after a negation ("not A, B")."""
    removes = [m for m in matches if m.phrase.category == "serial_action" and m.phrase.key == "remove"]
    if not removes or not serials:
        return ()
    out: list[str] = []
    for m in removes:
        following = [t for t in tokens if t.start >= m.end and t.text not in _CLAUSE_END][:3]
        for token in following:
            if token.serial:
                raw = re.match(r"[0-9A-Za-z-]+", base[origin[token.start] :])
                parsed = parse_serial(raw.group(0), policy) if raw else None
                if parsed is not None and parsed.serial in serials:
                    out.append(parsed.serial)
                break
    return tuple(dict.fromkeys(out))


def _units_stated(tokens: list[_Token], folded: str, lexicon: Lexicon) -> int | None:
    zh = _ZH_COUNT.search(folded)
    if zh:
        number = zh.group(1)
        return int(number) if number.isdigit() else _zh_number(number)
    words = [t for t in tokens if t.text not in _CLAUSE_END]
    for k, token in enumerate(words):
        value = lexicon.numbers.get(token.text)
        if value is not None and _is_unit_word(token.text, lexicon):
            return value  # a word that counts by itself (Arabic dual: جهازين)
        if value is None and token.text.isdigit() and not token.serial:
            value = int(token.text) if len(token.text) <= 4 else None
        if value is None:
            continue
        for following in words[k + 1 : k + 3]:
            if _is_unit_word(following.text, lexicon):
                return value
    return None


def _is_unit_word(word: str, lexicon: Lexicon) -> bool:
    return any(_plain_match(p, word) for p in lexicon.unit_words)


def _zh_number(text: str) -> int | None:
    if text == "十":
        return 10
    if text.startswith("十"):
        return 10 + _ZH_NUMERALS.get(text[1:], 0)
    if len(text) == 2 and text.endswith("十"):
        return _ZH_NUMERALS.get(text[0], 0) * 10
    if len(text) == 3 and text[1] == "十":
        return _ZH_NUMERALS.get(text[0], 0) * 10 + _ZH_NUMERALS.get(text[2], 0)
    return _ZH_NUMERALS.get(text) if len(text) == 1 else None


def _rating(text: str) -> int | None:
    match = _RATING.match(text)
    if match:
        return int(match.group(1))
    stars = _STARS.match(text)
    return len(stars.group(1)) if stars else None
