"""The one renderer: jinja2 templates per language, with locale formatting of dates and money (Babel).

Customer text only ever enters as data (a variable's value), never as template source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from babel.dates import format_date
from babel.numbers import format_currency, format_decimal
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound, select_autoescape

from bot.conversation import Reply
from bot.messages import Button
from policy import Decision, Policy, render_reasons

TEMPLATES = Path(str(resources.files("templates")))
FALLBACK = "en"


@dataclass(frozen=True, kw_only=True)
class Rendered:
    text: str
    buttons: tuple[Button, ...] = ()


class Renderer:
    """Renders replies in a customer's language; falls back to English for a template not yet translated."""

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

    def languages(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("_"))

    def render(self, reply: Reply, *, language: str, extra: Mapping[str, Any] | None = None) -> Rendered:
        text = self.text(reply.template, language=language, **{**reply.params, **(extra or {})})
        buttons = tuple(
            Button(label=self.label(choice.label, language=language, **choice.params), value=choice.value)
            for choice in reply.choices
        )
        return Rendered(text=text, buttons=buttons)

    def text(self, template: str, *, language: str, **params: Any) -> str:
        lang = self._lang(f"{template}.j2", language)
        context = self._context(lang)
        return self.env.get_template(f"{lang}/{template}.j2").render({**context, **params}).strip()

    def label(self, name: str, *, language: str, **params: Any) -> str:
        lang = self._lang("labels.j2", language)
        module = self.env.get_template(f"{lang}/labels.j2").make_module(self._context(lang))
        macro = getattr(module, name, None)
        if macro is None and lang != FALLBACK:
            macro = getattr(
                self.env.get_template(f"{FALLBACK}/labels.j2").make_module(self._context(FALLBACK)), name
            )
        if macro is None:
            raise KeyError(f"no label {name!r} in templates/{lang}/labels.j2")
        return str(macro(**params)).strip()

    def _lang(self, name: str, language: str) -> str:
        try:
            self.env.get_template(f"{language}/{name}")
            return language
        except TemplateNotFound:
            return FALLBACK

    def _context(self, language: str) -> dict[str, Any]:
        policy = self.policy

        def reasons(decision: Decision) -> list[str]:
            return render_reasons(decision, policy, language)

        def clause(clause_id: str) -> str:
            found = policy.clauses.get(clause_id)
            return f"{clause_id} ({found.title})" if found else clause_id

        return {
            "lang": language,
            "policy": policy,
            "reasons": reasons,
            "clause": clause,
            "date": lambda d: self._date(d, language),
            "money": lambda a, c: self._money(a, c, language),
            "number": lambda n: self._number(n, language),
        }

    @staticmethod
    def _date(value: date | str | None, language: str = FALLBACK) -> str:
        if value is None:
            return "—"
        if isinstance(value, str):
            value = date.fromisoformat(value)
        return format_date(value, format="long", locale=_locale(language))

    @staticmethod
    def _money(amount: Decimal | str | None, currency: str | None, language: str = FALLBACK) -> str:
        if amount is None:
            return "—"
        return format_currency(Decimal(amount), currency or "USD", locale=_locale(language))

    @staticmethod
    def _number(value: int | Decimal, language: str = FALLBACK) -> str:
        return format_decimal(value, locale=_locale(language))


def _locale(language: str) -> str:
    return {"zh": "zh_Hans_CN", "pt": "pt_BR", "ar": "ar"}.get(language, language)
