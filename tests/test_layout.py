"""The tests are arranged as the code is, and no test leans on another.

tests/adapters/test_<module>.py tests adapters/<module>.py; tests/bot/ and tests/policy/ test bot/ and policy/
(tests/bot/test_desk.py bot/desk.py, test_outbox.py bot/outbox.py, and so on); tests/understanding/ the
reader and its corpus; the modules at the top of tests/ test the whole server (security, fuzz, limits,
reliability, the browsers, the languages). No module under tests/ imports a test module (tests/**/test_*.py),
by any spelling of the import: what tests share lives beside each fake in tests/fakes/ (a channel's
credentials, signers and samples), in tests/support.py, or in a conftest.py. A test module that imported
another would run the other's module code, fixtures included, and tie the two together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def dotted(path: Path) -> str:
    """The module name of a file (or the package name of a folder) under the repository root."""
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def find_test_modules(tests: Path = TESTS) -> frozenset[str]:
    return frozenset(dotted(path) for path in tests.rglob("test_*.py"))


def imported(source: str, package: str) -> Iterator[tuple[int, str]]:
    """(line, module) of what `source`, a module of `package`, imports: `from a import b` gives `a` and `a.b`
    (b may be a module), relative imports are resolved, and importlib's and pytest_plugins' names count too."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value
        elif isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytest_plugins" for target in node.targets
        ):
            for constant in ast.walk(node.value):
                if isinstance(constant, ast.Constant) and isinstance(constant.value, str):
                    yield node.lineno, constant.value


def offences(source: str, package: str, tests: frozenset[str]) -> list[str]:
    """The imports of test modules in `source`: by their full name, or by the bare name that pytest's default
    import mode (which puts a test's folder on sys.path) would also resolve."""
    bare = {name.rsplit(".", 1)[-1]: name for name in tests}
    found = set()
    for line, name in imported(source, package):
        if name in tests:
            found.add((line, name))
        elif name in bare:
            found.add((line, f"{name} (that is {bare[name]})"))
    return [f"line {line}: {name}" for line, name in sorted(found)]


def test_no_module_under_tests_imports_a_test_module() -> None:
    tests = find_test_modules()
    problems = [
        f"{path.relative_to(ROOT)} {offence}"
        for path in sorted(TESTS.rglob("*.py"))
        for offence in offences(path.read_text(encoding="utf-8"), dotted(path.parent), tests)
    ]
    assert not problems, "test modules imported (move what they share to tests/fakes or tests/support):\n" + (
        "\n".join(problems)
    )


@pytest.mark.parametrize(
    ("package", "source", "found"),
    [
        ("tests", "from tests.test_mail import CONFIG", ["line 1: tests.test_mail"]),
        ("tests", "from tests.adapters.test_slack import signed", ["line 1: tests.adapters.test_slack"]),
        ("tests", "import tests.adapters.test_slack as s", ["line 1: tests.adapters.test_slack"]),
        ("tests.bot", "from tests.bot import test_decisions", ["line 1: tests.bot.test_decisions"]),
        ("tests.bot", "from .test_decisions import FAULT", ["line 1: tests.bot.test_decisions"]),
        ("tests.bot", "from . import test_decisions", ["line 1: tests.bot.test_decisions"]),
        ("tests.adapters", "from ..bot.test_decisions import FAULT", ["line 1: tests.bot.test_decisions"]),
        (
            "tests.adapters",
            "from test_slack import signed",
            ["line 1: test_slack (that is tests.adapters.test_slack)"],
        ),
        ("tests", "x = 1\nimportlib.import_module('tests.test_mail')", ["line 2: tests.test_mail"]),
        ("tests", "pytest_plugins = ['tests.bot.test_decisions']", ["line 1: tests.bot.test_decisions"]),
        ("tests", "from tests.fakes.slack import SECRET, signed", []),
        ("tests", "from tests.support import wait_until\nimport tests.conftest", []),
        ("tests.bot", "from tests.bot.test_decisions_data import FAULT", []),
        ("tests", "# from tests.test_mail import CONFIG\ntext = 'tests.test_mail'", []),
    ],
)
def test_the_import_check_finds_every_spelling(package: str, source: str, found: list[str]) -> None:
    tests = frozenset({"tests.test_mail", "tests.adapters.test_slack", "tests.bot.test_decisions"})
    assert offences(source, package, tests) == found


def test_channel_tests_live_in_tests_adapters_named_after_their_module() -> None:
    adapters = {path.stem for path in (ROOT / "adapters").glob("*.py")} - {"__init__"}
    misplaced = sorted(f"tests/test_{name}.py" for name in adapters if (TESTS / f"test_{name}.py").exists())
    assert not misplaced, f"channel tests outside tests/adapters/: {misplaced}"
    unknown = sorted(
        path.name
        for path in (TESTS / "adapters").glob("test_*.py")
        if path.stem.removeprefix("test_") not in adapters
    )
    assert not unknown, f"tests/adapters/ files named after no module of adapters/: {unknown}"
