"""Read and validate a policy file (TOML) into a `Policy`; the only module of the package that does I/O."""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from policy.codes import CLAUSE_IDS, REASON_PARAMS
from policy.model import Clause, Policy

SERIAL_GROUPS: tuple[str, ...] = ("model", "yy", "mm", "seq")

_TOP_LEVEL = frozenset(
    {
        "name",
        "term_months",
        "serial_fallback_offset_months",
        "serial_pattern",
        "discount_min_units",
        "discount_rate",
        "cargo_rate",
        "max_range_units",
        "clauses",
        "reasons",
        "meanings",
    }
)


class PolicyFileError(ValueError):
    """A policy file that cannot be read or breaks a rule; names the file and the offending field."""

    def __init__(self, path: Path, field: str | None, message: str) -> None:
        self.path = path
        self.field = field
        self.message = message
        where = f"{path}: {field}" if field else f"{path}"
        super().__init__(f"{where}: {message}")


def load_policy(path: Path) -> Policy:
    """Read the policy file at `path`.

    Raises:
        PolicyFileError: the file is missing, is not TOML, or a field is missing or invalid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyFileError(path, None, f"cannot read the file: {error}") from error
    try:
        # Decimal floats keep rates exact: 0.01 must not become 0.01000000000000000020816681711721685.
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as error:
        raise PolicyFileError(path, None, f"not valid TOML: {error}") from error
    return _Reader(path).policy(data)


@functools.cache
def default_policy() -> Policy:
    """The policy packaged with the code (CARSPA's published after-sales policy), read once."""
    with resources.as_file(resources.files("policy").joinpath("policy.toml")) as path:
        return load_policy(path)


class _Reader:
    """Validates parsed TOML field by field, raising `PolicyFileError` for the first bad one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str | None, message: str) -> PolicyFileError:
        return PolicyFileError(self.path, field, message)

    def policy(self, data: Mapping[str, object]) -> Policy:
        unknown = sorted(set(data) - _TOP_LEVEL)
        if unknown:
            raise self.fail(unknown[0], "unknown field")
        return Policy(
            name=self.text(data, "name"),
            term_months=self.integer(data, "term_months", minimum=1),
            serial_fallback_offset_months=self.integer(
                data, "serial_fallback_offset_months", minimum=0, default=1
            ),
            serial_pattern=self.pattern(data),
            discount_min_units=self.integer(data, "discount_min_units", minimum=1),
            discount_rate=self.rate(data, "discount_rate"),
            cargo_rate=self.rate(data, "cargo_rate"),
            max_range_units=self.integer(data, "max_range_units", minimum=1),
            clauses=self.clauses(data),
            reason_texts=self.reasons(data),
            clause_meanings=self.meanings(data),
        )

    def text(self, table: Mapping[str, object], key: str, prefix: str = "") -> str:
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(prefix + key, "must be a non-empty string")
        return value

    def integer(
        self, table: Mapping[str, object], key: str, *, minimum: int, default: int | None = None
    ) -> int:
        value = table.get(key, default)
        # bool is an int in Python, but `term_months = true` is a mistake, not 1.
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            kind = "positive" if minimum > 0 else "non-negative"
            raise self.fail(key, f"must be a {kind} integer")
        return value

    def rate(self, table: Mapping[str, object], key: str) -> Decimal:
        value = table.get(key)
        rate: Decimal | None = None
        if isinstance(value, Decimal):
            rate = value
        elif isinstance(value, str):
            try:
                rate = Decimal(value.strip())
            except InvalidOperation:
                rate = None
        if rate is None or not rate.is_finite() or not Decimal(0) <= rate <= Decimal(1):
            raise self.fail(key, "must be a decimal number between 0 and 1 (0.01 is 1%)")
        return rate

    def pattern(self, table: Mapping[str, object]) -> re.Pattern[str]:
        source = self.text(table, "serial_pattern")
        try:
            compiled = re.compile(source)
        except re.error as error:
            raise self.fail("serial_pattern", f"not a valid regular expression: {error}") from error
        missing = [group for group in SERIAL_GROUPS if group not in compiled.groupindex]
        if missing:
            raise self.fail(
                "serial_pattern",
                f"must have the named groups {', '.join(SERIAL_GROUPS)} (missing: {', '.join(missing)})",
            )
        return compiled

    def table(self, value: object, field: str) -> Mapping[str, object]:
        if not isinstance(value, dict):
            raise self.fail(field, "must be a table")
        return value

    def clauses(self, data: Mapping[str, object]) -> Mapping[str, Clause]:
        table = self.table(data.get("clauses"), "clauses")
        missing = [clause_id for clause_id in CLAUSE_IDS if clause_id not in table]
        if missing:
            raise self.fail("clauses", f"missing clause(s): {', '.join(missing)}")
        clauses: dict[str, Clause] = {}
        for clause_id, value in table.items():
            prefix = f"clauses.{clause_id}."
            entry = self.table(value, f"clauses.{clause_id}")
            unknown = sorted(set(entry) - {"title", "summary"})
            if unknown:
                raise self.fail(prefix + unknown[0], "unknown field")
            title, summary = self.text(entry, "title", prefix), self.text(entry, "summary", prefix)
            clauses[clause_id] = Clause(id=clause_id, title=title, summary=summary)
        return MappingProxyType(clauses)

    def reasons(self, data: Mapping[str, object]) -> Mapping[str, Mapping[str, str]]:
        table = self.table(data.get("reasons"), "reasons")
        if "en" not in table:
            raise self.fail("reasons.en", "missing: English texts are the fallback for every language")
        languages: dict[str, Mapping[str, str]] = {}
        for language, value in table.items():
            texts = self.table(value, f"reasons.{language}")
            templates: dict[str, str] = {}
            # Unknown codes first: a misspelt code is the likeliest cause of a missing one.
            for code in texts:
                field = f"reasons.{language}.{code}"
                if code not in REASON_PARAMS:
                    raise self.fail(field, "unknown reason code")
                templates[code] = self.template(self.text(texts, code, f"reasons.{language}."), code, field)
            if language == "en":
                missing = [code for code in REASON_PARAMS if code not in texts]
                if missing:
                    raise self.fail("reasons.en", f"missing reason code(s): {', '.join(missing)}")
            languages[language] = MappingProxyType(templates)
        return MappingProxyType(languages)

    def meanings(self, data: Mapping[str, object]) -> Mapping[str, Mapping[str, str]]:
        """`[meanings.<lang>]`: clause id -> what it means for a customer; English must word every clause."""
        table = self.table(data.get("meanings"), "meanings")
        if "en" not in table:
            raise self.fail("meanings.en", "missing: English meanings are the fallback for every language")
        languages: dict[str, Mapping[str, str]] = {}
        for language, value in table.items():
            entries = self.table(value, f"meanings.{language}")
            for clause_id in entries:
                if clause_id not in CLAUSE_IDS:
                    raise self.fail(f"meanings.{language}.{clause_id}", "unknown clause")
            if language == "en":
                missing = [clause_id for clause_id in CLAUSE_IDS if clause_id not in entries]
                if missing:
                    raise self.fail("meanings.en", f"missing clause(s): {', '.join(missing)}")
            prefix = f"meanings.{language}."
            languages[language] = MappingProxyType(
                {clause_id: self.text(entries, clause_id, prefix) for clause_id in entries}
            )
        return MappingProxyType(languages)

    def template(self, template: str, code: str, field: str) -> str:
        allowed = sorted(REASON_PARAMS[code])
        # Formatting with sample values catches unknown placeholders, positional fields and bad braces now,
        # not when a customer is waiting for an answer.
        try:
            template.format_map({name: "x" for name in allowed})
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as error:
            placeholders = ", ".join("{" + name + "}" for name in allowed) or "none"
            raise self.fail(
                field, f"not a valid template ({type(error).__name__}: {error}); placeholders: {placeholders}"
            ) from error
        return template
