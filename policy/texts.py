"""The words customers read from the policy file: reason texts and the clauses' short meanings, per language.

Pure: formatting for a locale (Babel) is the caller's. `render_reasons` hands every parameter to a
`ParamFormatter` with its kind (codes.PARAM_KINDS); bot/render.py passes its own, the one formatter of dates,
money and numbers that templates use too. Without one, parameters stay as the engine wrote them (ISO dates,
"250.00 USD"): that is for engineers and the JSON contract, never for customers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from policy.codes import PARAM_KINDS
from policy.model import Decision, Policy

# (kind, value as the engine wrote it) -> the text shown.
ParamFormatter = Callable[[str, str], str]


def language_chain(language: str) -> Iterator[str]:
    """The languages to try for a text, most specific first: "pt_PT" -> "pt_PT", "pt", "en"."""
    tag = language.replace("-", "_")
    if "_" in tag:
        yield tag
    base = tag.split("_")[0].lower()
    yield base
    if base != "en":
        yield "en"


def _lookup(tables: Mapping[str, Mapping[str, str]], language: str, key: str) -> str | None:
    for candidate in language_chain(language):
        text = tables.get(candidate, {}).get(key)
        if text is not None:
            return text
    return None


def raw_param(kind: str, value: str) -> str:
    """The engineer's form of a parameter: ISO dates and "250.00 USD" as the engine wrote them."""
    if kind == "months":
        return f"{value} month" if value == "1" else f"{value} months"
    if kind == "percent":
        return f"{value}%"
    return value


def render_reasons(
    decision: Decision, policy: Policy, language: str = "en", *, formatter: ParamFormatter = raw_param
) -> list[str]:
    """The decision's reasons as text in `language`, each parameter passed through `formatter` by its kind.

    English stands in for a missing language or code; a variant ("pt_PT") falls back to its language first.
    """
    texts: list[str] = []
    for reason in decision.reasons:
        template = _lookup(policy.reason_texts, language, reason.code)
        assert template is not None  # the loader insists on every code in English
        params = {name: formatter(PARAM_KINDS[name], value) for name, value in reason.params.items()}
        texts.append(template.format_map(params))
    return texts


def clause_meaning(policy: Policy, clause_id: str, language: str = "en") -> str | None:
    """What a clause means for a customer, in a few words of `language` (English when not translated)."""
    return _lookup(policy.clause_meanings, language, clause_id)
