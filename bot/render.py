"""The one renderer: jinja2 templates per language, with locale formatting of dates and money (Babel).

Customer text only ever enters as data (a variable's value), never as template source.

Everything a customer reads is formatted here, once, by `Formats` for the customer's locale: template
variables (`date()`, `money()`, `number()`, `months()`, `percent()`) and the parameters of the policy's reason
texts alike, so one conversation shows one date style and one money style. Clause ids reach customers only
with their meaning (`clause("M5")` -> "1% of the order total off the next order (M5)"). Right-to-left messages
(Arabic) get every Latin or digit run isolated (U+2068 … U+2069), so serials, references, dates and amounts
keep their order and a line starting with a serial still lays out right to left, on every channel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

from babel.dates import format_date
from babel.numbers import format_currency, format_decimal, format_percent
from babel.units import format_unit
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound, select_autoescape

from bot.conversation import Reply
from bot.messages import Button
from policy import Decision, Policy, clause_meaning, language_chain, render_reasons

TEMPLATES = Path(str(resources.files("templates")))
FALLBACK = "en"

# Babel locale per language (or variant, see `normalize_language`). English is "en_001", CLDR's World English:
# day-month-year ("9 June 2026") for a worldwide B2B audience, where the bare "en" (US) would write
# "June 9, 2026", which half the world reads as the 6th of September. Spanish is "es" (1.250,50 US$), read
# the same in Spain and Latin America; "es_419" writes "USD1,250.50" without a space.
LOCALES: Mapping[str, str] = {
    "en": "en_001",
    "zh": "zh_Hans_CN",
    "es": "es",
    "ru": "ru",
    "pt": "pt_BR",
    "pt_PT": "pt_PT",
    "fr": "fr",
    "ar": "ar",
}
RIGHT_TO_LEFT = frozenset({"ar"})
# Long dates by CLDR, except Russian without "г." ("9 июня 2026"): CLDR's "9 июня 2026 г." ends a sentence
# in a double full stop ("… 2026 г..").
DATE_PATTERNS: Mapping[str, str] = {"ru": "d MMMM y"}

FSI, PDI = "\u2068", "\u2069"  # FIRST STRONG ISOLATE … POP DIRECTIONAL ISOLATE
_ISOLATED = re.compile("[\u2066\u2067\u2068][^\u2069]*\u2069")
# A run of left-to-right material: Latin letters and digits, with the punctuation that joins them inside a
# serial, a reference, an amount or an English sentence ("CSP2402A0153", "WR-2026-000042", "1,250.50 US$").
_LTR_RUN = re.compile(
    r"[A-Za-z0-9\u00c0-\u024f]"
    r"(?:[A-Za-z0-9\u00c0-\u024f .,:;/_+\-–#&'\"\u00a0\u202f$€£¥%@]*[A-Za-z0-9\u00c0-\u024f$€£¥%])?"
)
_RTL_LETTER = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc]")


def normalize_language(language: str) -> str:
    """A language code or a variant tag as templates and locales name it: "pt-pt" -> "pt_PT", "ES" -> "es"."""
    base, _, region = language.replace("-", "_").partition("_")
    return f"{base.lower()}_{region.upper()}" if region else base.lower()


def isolate_ltr(text: str) -> str:
    """Wrap every left-to-right run of a right-to-left text in FSI … PDI (once; runs already isolated stay)."""
    if not _RTL_LETTER.search(text):
        return text  # nothing right-to-left around it: a button "5" or an English line needs no isolation
    out: list[str] = []
    position = 0
    for isolated in _ISOLATED.finditer(text):
        out.append(_LTR_RUN.sub(_wrap, text[position : isolated.start()]))
        out.append(isolated.group())
        position = isolated.end()
    out.append(_LTR_RUN.sub(_wrap, text[position:]))
    return "".join(out)


def _wrap(match: re.Match[str]) -> str:
    return FSI + match.group() + PDI


class Formats:
    """Dates, money and numbers for one locale: the only formatting customers see."""

    def __init__(self, language: str) -> None:
        self.language = normalize_language(language)
        self.locale = _locale(self.language)

    def date(self, value: date | str | None) -> str:
        if value is None:
            return "—"
        if isinstance(value, str):
            value = date.fromisoformat(value)
        return format_date(value, format=DATE_PATTERNS.get(self.locale, "long"), locale=self.locale)

    def weekday(self, value: str) -> str:
        """The day of the week of an ISO date in the locale's words ("Wednesday", "星期三"), for visit slots."""
        return format_date(date.fromisoformat(value[:10]), format="EEEE", locale=self.locale)

    def money(self, amount: Decimal | str | int | None, currency: str | None = None) -> str:
        """`money(Decimal("180"), "USD")`, or the engine's own "180.00 USD": the locale's one money format."""
        if amount is None:
            return "—"
        if isinstance(amount, str) and currency is None and " " in amount.strip():
            amount, currency = amount.strip().rsplit(" ", 1)
        try:
            value = Decimal(amount).quantize(Decimal("0.01"))
        except (InvalidOperation, ValueError):
            return str(amount)
        if not currency:
            return format_decimal(value, locale=self.locale, decimal_quantization=False)
        return format_currency(value, currency.upper(), locale=self.locale)

    def number(self, value: int | Decimal | str) -> str:
        return format_decimal(Decimal(value), locale=self.locale)

    def months(self, value: int | str) -> str:
        """A number of months with its unit and the language's plural: "1 month", "26 месяцев", "26 شهرًا"."""
        return format_unit(Decimal(value), "duration-month", length="long", locale=self.locale)

    def percent(self, value: Decimal | str | int) -> str:
        """`percent(1)` -> "1%", "1 %" in French: the value is a number of percent, not a fraction."""
        return format_percent(Decimal(value) / 100, locale=self.locale, decimal_quantization=False)

    def param(self, kind: str, value: str) -> str:
        """A reason text's parameter by its kind (policy/codes.py PARAM_KINDS)."""
        if kind == "date":
            return self.date(value)
        if kind == "money":
            return self.money(value)
        if kind == "months":
            return self.months(value)
        if kind == "percent":
            return self.percent(value)
        if kind == "count":
            return self.number(value)
        return value


@dataclass(frozen=True, kw_only=True)
class Rendered:
    text: str
    buttons: tuple[Button, ...] = ()


class Renderer:
    """Renders replies in a customer's language; falls back to English for a template not yet translated.

    A variant such as "pt_PT" (or "pt-PT") reads templates/pt_PT/ first, then templates/pt/, then English,
    and formats for its own locale; reason texts and clause meanings fall back the same way.
    """

    def __init__(self, policy: Policy, root: Path = TEMPLATES) -> None:
        self.policy = policy
        self.env = Environment(
            loader=FileSystemLoader(str(root)),
            undefined=StrictUndefined,
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),  # .j2 is plain text
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,  # templates ship with the package; no need to stat them on every message
            cache_size=1000,
        )
        self.root = root
        # Templates do not change while the bot runs (auto_reload off), so what they give is kept: the
        # template each name resolves to per language, each language's context, labels module and plain
        # labels (a conversation folds every offered label in every language for each message: engine._labels).
        # Plain dicts: a race between threads at worst computes one entry twice, with the same result.
        self._sources: dict[tuple[str, str], str] = {}
        self._contexts: dict[str, dict[str, Any]] = {}
        self._label_modules: dict[tuple[str, str], Any] = {}
        self._plain_labels: dict[tuple[str, str], str] = {}

    def languages(self) -> list[str]:
        """The template folders that are languages (a variant folder such as pt_PT is not one)."""
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith("_") and "_" not in p.name
        )

    def preload(self) -> None:
        """Compile every template and load every language's locale data now, not on a customer's message."""
        for name in self.env.list_templates(extensions=("j2",)):
            self.env.get_template(name)
        for folder in self.root.iterdir():
            if folder.is_dir() and not folder.name.startswith("_"):
                formats = self.formats(folder.name)
                formats.date(date(2026, 1, 31))
                formats.money(Decimal("1234.50"), "USD")

    def render(self, reply: Reply, *, language: str, extra: Mapping[str, Any] | None = None) -> Rendered:
        text = self.text(reply.template, language=language, **{**reply.params, **(extra or {})})
        buttons = tuple(
            Button(label=self.label(choice.label, language=language, **choice.params), value=choice.value)
            for choice in reply.choices
        )
        return Rendered(text=text, buttons=buttons)

    def text(self, template: str, *, language: str, **params: Any) -> str:
        language = normalize_language(language)
        source = self._source(f"{template}.j2", language)
        context = self._context(language)
        return self._finish(self.env.get_template(source).render({**context, **params}).strip(), language)

    def label(self, name: str, *, language: str, **params: Any) -> str:
        language = normalize_language(language)
        if not params and (name, language) in self._plain_labels:
            return self._plain_labels[name, language]
        for candidate in self._chain(language):
            module = self._labels_module(candidate, language)
            macro = getattr(module, name, None) if module is not None else None
            if macro is not None:
                text = self._finish(str(macro(**params)).strip(), language)
                if not params:
                    self._plain_labels[name, language] = text
                return text
        raise KeyError(f"no label {name!r} in templates/{language}/labels.j2")

    def _labels_module(self, candidate: str, language: str) -> Any:
        """The labels template of `candidate` as a module made for `language` (None: the folder has none)."""
        key = (candidate, language)
        if key not in self._label_modules:
            try:
                template = self.env.get_template(f"{candidate}/labels.j2")
            except TemplateNotFound:
                self._label_modules[key] = None
            else:
                self._label_modules[key] = template.make_module(self._context(language))
        return self._label_modules[key]

    def formats(self, language: str) -> Formats:
        return Formats(language)

    def reasons(self, decision: Decision, language: str) -> list[str]:
        """The decision's reasons in `language`, every date and amount formatted for its locale."""
        return render_reasons(decision, self.policy, language, formatter=self.formats(language).param)

    def other_reasons(self, decision: Decision, language: str) -> list[str]:
        """An M1 refusal's reasons beyond the cargo compensation the template states itself and the warranty
        dates, which do not apply to an order without after-sales service (an "in warranty until" there misleads)."""
        texts = self.reasons(decision, language)
        return [text for text, r in zip(texts, decision.reasons, strict=True) if r.code not in _SAID_BY_CARGO]

    def clause(self, clause_id: str, language: str) -> str:
        """A clause as customers read it: its meaning, then the id engineers use ("factory repair (M3)")."""
        meaning = clause_meaning(self.policy, clause_id, language)
        if meaning is None:
            return clause_id
        return f"{meaning}（{clause_id}）" if language.startswith("zh") else f"{meaning} ({clause_id})"

    def _chain(self, language: str) -> list[str]:
        return list(language_chain(language))

    def _source(self, name: str, language: str) -> str:
        if (name, language) not in self._sources:
            self._sources[name, language] = self._find_source(name, language)
        return self._sources[name, language]

    def _find_source(self, name: str, language: str) -> str:
        for candidate in self._chain(language):
            try:
                self.env.get_template(f"{candidate}/{name}")
                return f"{candidate}/{name}"
            except TemplateNotFound:
                continue
        return f"{FALLBACK}/{name}"

    @staticmethod
    def _finish(text: str, language: str) -> str:
        return isolate_ltr(text) if language.split("_")[0] in RIGHT_TO_LEFT else text

    def _context(self, language: str) -> dict[str, Any]:
        """What every template of `language` sees (the same dict each time: renders copy it, never change it)."""
        if language not in self._contexts:
            self._contexts[language] = self._make_context(language)
        return self._contexts[language]

    def _make_context(self, language: str) -> dict[str, Any]:
        formats = self.formats(language)

        def meanings(ids: Iterable[str]) -> list[str]:
            return [self.clause(clause_id, language) for clause_id in ids]

        return {
            "lang": language,
            "policy": self.policy,
            "reasons": lambda decision: self.reasons(decision, language),
            "other_reasons": lambda decision: self.other_reasons(decision, language),
            "clause": lambda clause_id: self.clause(clause_id, language),
            "meanings": meanings,
            "date": formats.date,
            "weekday": formats.weekday,
            "money": formats.money,
            "number": formats.number,
            "months": formats.months,
            "percent": formats.percent,
        }


# The reasons an M1 refusal does not list: the cargo compensation (decision.j2 says it once, in full) and the
# warranty dates (moot when the order has no after-sales service).
_SAID_BY_CARGO = frozenset(
    {"cargo_compensation", "cargo_compensation_pieces", "in_warranty", "in_warranty_serial", "expired",
     "expired_serial", "expired_serial_no_arrival"}
)  # fmt: skip


def _locale(language: str) -> str:
    for candidate in language_chain(language):
        if candidate in LOCALES:
            return LOCALES[candidate]
    return language
