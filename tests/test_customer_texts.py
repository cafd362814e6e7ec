"""What customers read, in every language: no ISO dates, raw codes or bare clause ids, one money format,
French spacing, and every Latin run isolated in Arabic. Every template is rendered with the realistic values of
tests/test_i18n.py (and every branch listed there), plus decisions with every reason the engine gives."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from bot.conversation import LANGUAGES
from bot.render import FSI, LOCALES, PDI, Formats, Renderer, isolate_ltr
from policy import CLAUSE_IDS, PARAM_KINDS, REASON_PARAMS, Circumstances, Claim, Proof, evaluate
from tests.template_cases import ENGLISH, POLICY, RENDERER, TODAY, VALUES, contexts, decision_group

VARIANTS = (*LANGUAGES, "pt_PT")
ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
# Button values, status and outcome codes, reason codes and template syntax: none is for customers.
RAW_CODE = re.compile(
    r"\b(?:cause|cmd|lang|pref|proof|rate):[a-z]+\b"
    r"|\b(?:waiting_customer|in_service|not_covered|archived|port_arrival|serial_production)\b"
    r"|\b(?:" + "|".join(sorted(REASON_PARAMS)) + r")\b"
    r"|[{}]"
)
CLAUSE_ID = re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(CLAUSE_IDS) + r")(?![A-Za-z0-9])")


def _claim(serial: str, **fields: Any) -> Any:
    return evaluate(Claim(serial=serial, claim_date=TODAY, **fields), POLICY)


# One decision per reason code the engine writes into decisions, with money in it.
DECISIONS = {
    "in_warranty": _claim("CSP2402A0153", port_arrival_date=date(2024, 4, 10), proof=Proof.registry),
    "in_warranty_serial": _claim("CSP2501A0001"),
    "expired": _claim("CSP2312A0001", port_arrival_date=date(2024, 1, 1), proof=Proof.documents),
    "expired_serial": _claim("CSP2001A0001"),
    # Documents shown but no port arrival known: the serial's dates, without X2's words (issue 14).
    "expired_serial_no_arrival": _claim("CSP2001A0001", proof=Proof.documents),
    "cargo_compensation": _claim("CSP2402A0153", cargo_compensation=True),
    "cargo_compensation_pieces": _claim("CSP2402A0153", cargo_compensation=True, order_pieces=1000),
    "altered_certificate": _claim("CSP2402A0153", proof=Proof.altered),
    "misuse": _claim("CSP2402A0153", circumstances=Circumstances(misuse=True)),
    "human_damage": _claim("CSP2402A0153", circumstances=Circumstances(human_damage=True)),
    "force_majeure": _claim("CSP2402A0153", circumstances=Circumstances(force_majeure=True)),
    "unauthorized_repair": _claim("CSP2402A0153", circumstances=Circumstances(unauthorized_repair=True)),
    "unreadable_serial": _claim("XX-UNREADABLE"),
    "production_after_claim": _claim("CSP2712A0001"),
    "arrival_before_production": _claim("CSP2402A0154", port_arrival_date=date(2023, 12, 1), proof=Proof.registry),
    "claim_before_start": _claim("CSP2602A0001"),
    "discount_amount": _claim("CSP2402A0153", port_arrival_date=date(2024, 4, 10), proof=Proof.registry, units=12,
                              order_total=Decimal("125000.00"), currency="USD", prefers_discount=True),
    "discount_offered": _claim("CSP2402A0153", port_arrival_date=date(2024, 4, 10), proof=Proof.registry, units=12),
}  # fmt: skip


def test_the_decisions_give_every_reason_the_engine_writes() -> None:
    codes = {reason.code for decision in DECISIONS.values() for reason in decision.reasons}
    assert codes == set(REASON_PARAMS) - {"freight_customer"}
    for code, decision in DECISIONS.items():
        assert code in {reason.code for reason in decision.reasons}, code


def renders(language: str) -> list[tuple[str, str]]:
    """(what, text) for every template and branch, and a decision per reason, in `language`."""
    out = []
    for template in ENGLISH:
        for number, context in enumerate(contexts(template)):
            out.append((f"{template}#{number}", RENDERER.text(template, language=language, **context)))
    for code, decision in DECISIONS.items():
        groups = [decision_group(decision, "CSP2402A0153")]
        out.append((f"decision:{code}", RENDERER.text("decision", language=language, units=1, groups=groups)))
    return out


def test_every_parameter_has_a_kind() -> None:
    assert set(PARAM_KINDS) == set().union(*REASON_PARAMS.values())


@pytest.mark.parametrize("language", VARIANTS)
def test_no_iso_dates_or_raw_codes(language: str) -> None:
    for what, text in renders(language):
        assert not ISO_DATE.search(text), (what, text)
        assert not RAW_CODE.search(text), (what, RAW_CODE.search(text), text)


@pytest.mark.parametrize("language", VARIANTS)
def test_clause_ids_come_with_their_meaning(language: str) -> None:
    cited = [RENDERER.clause(clause_id, language) for clause_id in CLAUSE_IDS]
    assert all(CLAUSE_ID.search(text) for text in cited)
    for what, text in renders(language):
        # The "meaning (W1)" the renderer writes, isolated in Arabic like everything else.
        for shown in sorted(cited, key=len, reverse=True):
            text = text.replace(isolate_ltr(shown) if language == "ar" else shown, "")
        plain = text.replace(FSI, "").replace(PDI, "")
        assert not CLAUSE_ID.search(plain), (what, text)


@pytest.mark.parametrize("language", VARIANTS)
def test_clause_meanings_are_translated(language: str) -> None:
    if language == "en":
        return
    english = {RENDERER.clause(clause_id, "en") for clause_id in CLAUSE_IDS}
    same = english.intersection(RENDERER.clause(clause_id, language) for clause_id in CLAUSE_IDS)
    assert same <= {"force majeure (X6)"}  # French for it too


AMOUNTS = [(Decimal("1250.00"), "USD"), (Decimal("80.50"), "EUR"), (Decimal("1250.00"), "USD")]


@pytest.mark.parametrize("language", VARIANTS)
def test_one_money_format(language: str) -> None:
    # The engine's own "1250.00 USD" and every other locale's style of the same amounts must not show up
    # next to this locale's: one conversation, one way of writing money.
    own = Formats(language)
    others = {Formats(other) for other in LOCALES if Formats(other).locale != own.locale}
    amounts = [*AMOUNTS, (Decimal("1250.00"), "USD"), (Decimal("12.50"), "USD")]
    for what, text in renders(language):
        text = text.replace(FSI, "").replace(PDI, "")
        for amount, currency in amounts:
            mine = own.money(amount, currency)
            foreign = {f"{amount} {currency}", f"{currency} {amount}", f"{currency}{amount}"}
            foreign |= {other.money(amount, currency) for other in others} - {mine}
            for alternative in foreign:
                assert alternative not in text.replace(mine, ""), (what, alternative, text)
    assert own.money("1250.00 USD") == own.money(Decimal("1250"), "USD")


def test_amounts_in_reasons_and_templates_look_the_same() -> None:
    decision = DECISIONS["discount_amount"]
    for language in VARIANTS:
        formats = Formats(language)
        text = RENDERER.text(
            "decision", language=language, units=12, groups=[decision_group(decision, "CSP2402A0153")]
        )
        assert formats.money(Decimal("1250.00"), "USD").replace(FSI, "") in text.replace(FSI, "").replace(
            PDI, ""
        )
        assert formats.money(Decimal("125000.00"), "USD") in text.replace(FSI, "").replace(PDI, "")


def test_english_dates_are_day_month_year() -> None:
    assert Formats("en").date(date(2028, 7, 31)) == "31 July 2028"
    text = RENDERER.text(
        "decision", language="en", units=1, groups=[decision_group(DECISIONS["in_warranty"], "X")]
    )
    assert "9 June 2026" in text and "June 9" not in text


def test_units_and_percent_follow_the_language() -> None:
    assert [Formats(lang).months(1) for lang in ("en", "ru", "ar")] == ["1 month", "1 месяц", "شهر"]
    assert [Formats(lang).months(26) for lang in ("en", "ru", "zh")] == ["26 months", "26 месяцев", "26个月"]
    assert Formats("fr").percent("1") == "1\u00a0%" and Formats("en").percent("1") == "1%"
    assert Formats("ru").date(date(2026, 3, 2)) == "2 марта 2026"  # no "г." to end a sentence in "г.."


def test_french_spacing() -> None:
    # What engineers wrote (and the English explanation of a bad range) is theirs, not French typography.
    theirs = [VALUES[name] for name in ("error", "question", "reason", "text")]
    for what, text in renders("fr"):
        for value in theirs:
            text = text.replace(value, "")
        assert not re.search(r" [:;?!»]|« ", text), (what, text)
        assert not re.search(r"\w[:;?!]", re.sub(r"https?://\S+", "", text)), (what, text)


def test_arabic_isolates_every_latin_run() -> None:
    for what, text in renders("ar"):
        outside = re.sub(f"{FSI}[^{PDI}]*{PDI}", "", text)
        assert not re.search("[A-Za-z0-9]", outside), (what, outside)
        assert text.count(FSI) == text.count(PDI), what


def test_an_arabic_line_starting_with_a_serial_starts_inside_an_isolate() -> None:
    text = RENDERER.text(
        "decision",
        language="ar",
        units=1,
        groups=[decision_group(DECISIONS["expired_serial"], "CSP2001A0001")],
    )
    line = next(line for line in text.splitlines() if "CSP2001A0001" in line)
    assert line.startswith(FSI + "CSP2001A0001" + PDI)


def test_isolation_is_applied_once_and_leaves_other_languages_alone() -> None:
    once = isolate_ltr("البلاغ WR-2026-000042: خصم ‏1,250.00 US$")
    assert once == f"البلاغ {FSI}WR-2026-000042{PDI}: خصم ‏{FSI}1,250.00 US${PDI}"
    assert isolate_ltr(once) == once
    assert isolate_ltr("5") == "5"  # nothing right-to-left around it (a rating button)
    assert FSI not in RENDERER.text("case_closed", language="en", case_ref="WR-2026-000042")
    assert RENDERER.label("rate", language="ar", n=5) == "5"


def test_customer_text_stays_data_in_arabic() -> None:
    # What engineers or customers wrote is isolated like the rest, never interpreted.
    text = RENDERER.text("engineer_reply", language="ar", text="{{ 7*7 }} check the DC breaker",
                         engineer="Li Wei", case_ref="WR-2026-000042")  # fmt: skip
    assert "{{ 7*7 }}" in text.replace(FSI, "").replace(PDI, "") and "49" not in text


def test_portuguese_of_portugal_is_a_variant() -> None:
    text = RENDERER.text(
        "decision", language="pt-PT", units=1, groups=[decision_group(DECISIONS["expired_serial"], "X")]
    )
    assert "fatura de compra" in text and "nota fiscal" not in text
    assert RENDERER.text("greeting", language="pt_PT") == RENDERER.text("greeting", language="pt-pt")
    assert Formats("pt_PT").money(Decimal("1250"), "EUR") == "1\u00a0250,00\u00a0€"
    brazil = RENDERER.text("refusal_case_opened", language="pt", **contexts("refusal_case_opened")[0])
    portugal = RENDERER.text("refusal_case_opened", language="pt_PT", **contexts("refusal_case_opened")[0])
    assert "você" in brazil.lower() and "você" not in portugal.lower()


@pytest.mark.parametrize("language", VARIANTS)
def test_every_refusal_says_what_the_customer_can_still_do(language: str) -> None:
    refusals = [code for code, decision in DECISIONS.items() if decision.outcome.value == "not_covered"]
    assert len(refusals) >= 8
    for code in refusals:
        groups = [decision_group(DECISIONS[code], "CSP2402A0153")]
        text = RENDERER.text("decision", language=language, units=1, groups=groups)
        assert "➡️" in text or "⬅️" in text, (code, text)
    for template in ("refusal_case_opened", "method_not_covered"):
        text = RENDERER.text(template, language=language, **contexts(template)[0])
        assert len(text.splitlines()[-1]) > 40, text


def test_cargo_compensation_refusal_suggests_no_port_arrival_date() -> None:
    for language in VARIANTS:
        groups = [decision_group(DECISIONS["cargo_compensation_pieces"], "CSP2402A0153")]
        text = RENDERER.text("decision", language=language, units=1, groups=groups)
        text += RENDERER.text("refusal_case_opened", language=language, **contexts("refusal_case_opened")[1])
        for port in (
            "port arrival",
            "到港日期不对",
            "llegada al puerto",
            "прибытия в порт",
            "chegada ao porto",
            "arrivée au port",
            "الوصول إلى الميناء",
        ):
            assert port not in text.split("➡️")[-1].split("⬅️")[-1], (language, text)


@pytest.mark.parametrize("language", VARIANTS)
def test_a_cargo_compensation_refusal_says_why_once(language: str) -> None:
    """M1 (issue 19): the decision says once that the order's extra pieces replace every service, lists no
    warranty dates ("in warranty until" next to "not covered" misleads), and the closing message does not
    repeat it; another exclusion found besides is still given."""
    formats = RENDERER.formats(language)
    m1, w1 = RENDERER.clause("M1", language), RENDERER.clause("W1", language)
    closing = RENDERER.text("refusal_case_opened", language=language, case_ref="WR-2026-000043", refused=True,
                            review=False, clauses=["M1", "W1", "W2"], documents_help=False, cargo=True)  # fmt: skip
    cases = [
        (DECISIONS["cargo_compensation_pieces"], "1000"),
        (DECISIONS["cargo_compensation"], None),
        (_claim("CSP2001A0002", cargo_compensation=True, order_pieces=750, circumstances=Circumstances(misuse=True)),
         "750"),
    ]  # fmt: skip
    for decision, order_pieces in cases:
        assert decision.warranty_end is not None
        groups = [decision_group(decision, "CSP2402A0153")]
        text = RENDERER.text("decision", language=language, units=1, groups=groups) + "\n" + closing
        plain = text.replace(FSI, "").replace(PDI, "")
        assert formats.date(decision.warranty_end) not in plain, text
        assert w1.replace(FSI, "").replace(PDI, "") not in plain, text
        assert plain.count(m1.replace(FSI, "").replace(PDI, "")) == 1, text
        assert plain.count("❌") == 1, text
        if order_pieces is not None:
            assert plain.count(formats.number(int(order_pieces))) == 1, text
    misuse_text = RENDERER.reasons(DECISIONS["misuse"], language)[0]
    groups = [decision_group(cases[2][0], "CSP2001A0002")]
    assert misuse_text in RENDERER.text("decision", language=language, units=1, groups=groups)


def test_values_cover_the_renderer_names() -> None:
    # Guard for tests/test_i18n.py: a renderer function that a reply parameter may shadow.
    assert "clause" in VALUES and isinstance(Renderer(POLICY).clause("L1", "en"), str)


def test_the_portuguese_of_portugal_templates_match_the_language_they_vary() -> None:
    from bot.render import TEMPLATES
    from tests.template_cases import macros, variables

    names = sorted(path.stem for path in (TEMPLATES / "pt_PT").glob("*.j2") if path.stem != "labels")
    assert names == ENGLISH  # every message, so that no Brazilian "você" is left
    for template in names:
        assert variables("pt_PT", template) == variables("pt", template), template
    for name, macro in macros("pt_PT").items():
        assert macro.arguments == macros("pt")[name].arguments, name
