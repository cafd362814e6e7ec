"""The policy file: the packaged default, and a bad file naming the field at fault."""

from __future__ import annotations

import re
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest

from policy import (
    CLAUSE_IDS,
    REASON_PARAMS,
    PolicyFileError,
    default_policy,
    load_policy,
)

DEFAULT_TEXT = resources.files("policy").joinpath("policy.toml").read_text(encoding="utf-8")


def test_default_policy_is_carspa() -> None:
    policy = default_policy()
    assert (policy.name, policy.term_months, policy.serial_fallback_offset_months) == ("CARSPA", 26, 1)
    rates = (policy.discount_min_units, policy.discount_rate, policy.cargo_rate)
    assert rates == (10, Decimal("0.01"), Decimal("0.01"))
    assert policy.max_range_units == 1000
    assert policy.serial_pattern.pattern == (
        r"^(?P<model>[A-Z]{2,4})(?P<yy>\d{2})(?P<mm>0[1-9]|1[0-2])(?P<seq>[A-Z0-9]{4,8})$"
    )
    assert sorted(policy.clauses) == sorted(CLAUSE_IDS)
    assert all(clause.id == clause_id for clause_id, clause in policy.clauses.items())
    assert sorted(policy.reason_texts["en"]) == sorted(REASON_PARAMS)
    assert policy.reason_texts["en"]["in_warranty"] == (
        "In warranty until {warranty_end} ({term_months} from port arrival on {warranty_start})."
    )
    assert sorted(policy.clause_meanings["en"]) == sorted(CLAUSE_IDS)


def test_default_policy_is_read_once() -> None:
    assert default_policy() is default_policy()


def test_the_default_file_loads_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(DEFAULT_TEXT, encoding="utf-8")
    assert load_policy(path) == default_policy()


def edited(old: str, new: str) -> str:
    assert old in DEFAULT_TEXT
    return DEFAULT_TEXT.replace(old, new, 1)


def without_table(header: str) -> str:
    """The default text without the TOML table `[header]` and its keys."""
    return re.sub(rf"^\[{re.escape(header)}\]\n(?:[^\[\n].*\n|\n)*", "", DEFAULT_TEXT, count=1, flags=re.M)


BAD_FILES = [
    ("term zero", edited("term_months = 26", "term_months = 0"), "term_months", "must be a positive integer"),
    ("term string", edited("term_months = 26", 'term_months = "26"'), "term_months",
     "must be a positive integer"),
    ("term bool", edited("term_months = 26", "term_months = true"), "term_months",
     "must be a positive integer"),
    ("term missing", edited("term_months = 26\n", ""), "term_months", "must be a positive integer"),
    ("offset negative", edited("serial_fallback_offset_months = 1", "serial_fallback_offset_months = -1"),
     "serial_fallback_offset_months", "must be a non-negative integer"),
    ("min units float", edited("discount_min_units = 10", "discount_min_units = 10.5"), "discount_min_units",
     "must be a positive integer"),
    ("max range zero", edited("max_range_units = 1000", "max_range_units = 0"), "max_range_units",
     "must be a positive integer"),
    ("rate too big", edited("discount_rate = 0.01", "discount_rate = 1.5"), "discount_rate",
     "must be a decimal number between 0 and 1 (0.01 is 1%)"),
    ("rate negative", edited("cargo_rate = 0.01", "cargo_rate = -0.01"), "cargo_rate",
     "must be a decimal number between 0 and 1 (0.01 is 1%)"),
    ("rate text", edited("cargo_rate = 0.01", 'cargo_rate = "one percent"'), "cargo_rate",
     "must be a decimal number between 0 and 1 (0.01 is 1%)"),
    ("name empty", edited('name = "CARSPA"', 'name = ""'), "name", "must be a non-empty string"),
    ("unknown field", edited("term_months = 26", "term_months = 26\nterm_month = 26"), "term_month",
     "unknown field"),
    ("pattern group", edited("(?P<mm>", "(?P<month>"), "serial_pattern",
     "must have the named groups model, yy, mm, seq (missing: mm)"),
    ("pattern not a string", re.sub(r"^serial_pattern = .*$", "serial_pattern = 5", DEFAULT_TEXT, flags=re.M),
     "serial_pattern", "must be a non-empty string"),
    ("clause missing", without_table("clauses.X3"), "clauses", "missing clause(s): X3"),
    ("clause title", edited('title = "Warranty term"', 'title = ""'), "clauses.W1.title",
     "must be a non-empty string"),
    ("clause field", edited('title = "Warranty term"', 'title = "Warranty term"\ntext = "x"'),
     "clauses.W1.text", "unknown field"),
    ("clauses missing", without_table("clauses.W1").replace("[clauses.", "[gone."), "gone",
     "unknown field"),
    ("reasons missing", re.sub(r"^\[reasons\.\w+\]\n(?:[^\[\n].*\n|\n)*", "", DEFAULT_TEXT, flags=re.M), "reasons",
     "must be a table"),
    ("english missing", edited("[reasons.en]", "[reasons.xx]"), "reasons.en",
     "missing: English texts are the fallback for every language"),
    ("reason missing", edited("\nexpired = ", "\nexpire = "), "reasons.en.expire", "unknown reason code"),
    ("reason code missing", re.sub(r"^expired = .*\n", "", DEFAULT_TEXT, flags=re.M), "reasons.en",
     "missing reason code(s): expired"),
    ("reason empty", edited('human_damage = "The', 'human_damage = "" #'), "reasons.en.human_damage",
     "must be a non-empty string"),
    ("meaning of no clause", edited('W1 = "warranty of 2 years', 'W9 = "warranty of 2 years'), "meanings.en.W9",
     "unknown clause"),
    ("english meanings missing", edited("[meanings.en]", "[meanings.xx]"), "meanings.en",
     "missing: English meanings are the fallback for every language"),
    ("meaning missing", edited('X5 = "damage caused by people"\n', ""), "meanings.en", "missing clause(s): X5"),
    ("meaning empty", edited('X6 = "force majeure"', 'X6 = " "'), "meanings.en.X6", "must be a non-empty string"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "field", "message"), [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES]
)
def test_bad_policy_file_names_the_field(tmp_path: Path, text: str, field: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)
    assert (caught.value.field, caught.value.message) == (field, message)
    assert str(caught.value) == f"{path}: {field}: {message}"


@pytest.mark.parametrize(
    ("old", "new", "field", "start"),
    [
        ("(?P<mm>", "(?P<mm>(", "serial_pattern", "not a valid regular expression: "),
        ("{warranty_end} (", "{warranty_ende} (", "reasons.en.in_warranty",
         "not a valid template (KeyError: 'warranty_ende'); placeholders: {claim_date}, {term_months},"),
        ("{warranty_end} (", "{} (", "reasons.en.in_warranty", "not a valid template (ValueError: "),
        ("{warranty_end} (", "{warranty_end (", "reasons.en.in_warranty",
         "not a valid template (ValueError: "),
        ('misuse = "The', 'misuse = "{serial} The', "reasons.en.misuse",
         "not a valid template (KeyError: 'serial'); placeholders: none"),
    ],
)  # fmt: skip
def test_bad_pattern_or_template(tmp_path: Path, old: str, new: str, field: str, start: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(edited(old, new), encoding="utf-8")
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)
    assert caught.value.field == field
    assert caught.value.message.startswith(start), caught.value.message


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("term_months = = 26\n", encoding="utf-8")
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)
    assert caught.value.field is None
    assert str(caught.value).startswith(f"{path}: not valid TOML: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(PolicyFileError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}: cannot read the file: ")


def test_optional_offset_and_other_languages(tmp_path: Path) -> None:
    text = edited("serial_fallback_offset_months = 1\n", "") + (
        '\n[reasons.de]\nin_warranty = "Garantie bis {warranty_end}."\n'
    )
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    policy = load_policy(path)
    assert policy.serial_fallback_offset_months == 1
    assert dict(policy.reason_texts["de"]) == {"in_warranty": "Garantie bis {warranty_end}."}


def test_rates_are_exact_and_may_be_strings(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(edited("discount_rate = 0.01", 'discount_rate = "0.015"'), encoding="utf-8")
    policy = load_policy(path)
    assert (policy.discount_rate, policy.cargo_rate) == (Decimal("0.015"), Decimal("0.01"))
