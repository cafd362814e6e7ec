"""The command line as a user runs it: real processes, real files, exit status 2 and one line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.config import Settings
from tests.support import ROOT, cli

EXAMPLE_CLAIM = {
    "serial": "CSP2402A0153",
    "claim_date": "2026-05-01",
    "port_arrival_date": "2024-03-10",
    "production_date": None,
    "proof": "registry",
    "circumstances": {
        "misuse": None,
        "human_damage": False,
        "force_majeure": None,
        "unauthorized_repair": None,
    },
    "cargo_compensation": False,
    "units": 1,
    "order_pieces": 1000,
    "order_total": "25000.00",
    "currency": "USD",
    "prefers_discount": False,
}
EXAMPLE_DECISION = {
    "outcome": "covered",
    "basis": "port_arrival",
    "production_date": "2024-02-29",
    "warranty_start": "2024-03-10",
    "warranty_end": "2026-05-09",
    "clauses": ["F1", "M2", "M3", "M4", "W1", "W2"],
    "methods": ["remote_guidance", "factory_repair", "door_to_door"],
    "discount_amount": None,
    "reasons": ["In warranty until 2026-05-09 (26 months from port arrival on 2024-03-10)."],
}


def test_policy_check_reproduces_the_contract_example(tmp_path: Path) -> None:
    result = cli("policy", "check", "-", stdin=json.dumps(EXAMPLE_CLAIM), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == EXAMPLE_DECISION


@pytest.mark.parametrize(
    ("claim_date", "outcome", "clauses"),
    [
        ("2026-05-09", "covered", ["F1", "M2", "M3", "M4", "W1", "W2"]),
        ("2026-05-10", "not_covered", ["W1", "W2", "X1"]),
    ],
)
def test_policy_check_reads_a_file(tmp_path: Path, claim_date: str, outcome: str, clauses: list[str]) -> None:
    path = tmp_path / "claim.json"
    path.write_text(json.dumps({**EXAMPLE_CLAIM, "claim_date": claim_date}))
    decision = json.loads(cli("policy", "check", str(path), cwd=tmp_path).stdout)
    assert (decision["outcome"], decision["clauses"]) == (outcome, clauses)


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"serial": "CSP2402A0153", "claim_date": "2026-13-01"}', "claim_date"),
        ('{"serial": "CSP2402A0153", "claim_date": "2026-05-01", "proof": "receipt"}', "proof"),
        ("[1, 2]", "JSON object"),
        ('{"claim_date": "2026-05-01"}', "serial"),
    ],
)
def test_policy_check_bad_input_exits_2_with_one_line(tmp_path: Path, stdin: str, message: str) -> None:
    result = cli("policy", "check", "-", stdin=stdin, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_policy_file_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "other.toml"
    bad.write_text(
        (ROOT / "policy" / "policy.toml").read_text().replace("term_months = 26", "term_months = -3")
    )
    result = cli("policy", "show", "--policy", str(bad), cwd=tmp_path)
    assert result.returncode == 2 and "term_months" in result.stderr and len(result.stderr.splitlines()) == 1
    missing = cli("policy", "show", "--policy", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert missing.returncode == 2 and "nope.toml" in missing.stderr


def test_policy_show_lists_every_clause(tmp_path: Path) -> None:
    result = cli("policy", "show", cwd=tmp_path)
    assert result.returncode == 0
    for clause in ("W1", "W2", "W3", "X1", "X7", "M1", "M5", "F1", "L1", "S1"):
        assert f"\n{clause} " in result.stdout


def test_registry_import_and_outbox_commands(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/w.db"}
    assert cli("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    imported = cli(
        "registry", "import", str(ROOT / "tests" / "data" / "registry-sample.csv"), cwd=tmp_path, env=env
    )
    assert imported.returncode == 0, imported.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "order_id,customer,serial,serial_to,production_date,port_arrival_date,cargo_compensation,"
        "order_pieces,order_total,currency\nPO-1,A,CSP2402A0153,,2024-02-30,,maybe,10,1.00,USD\n"
    )
    refused = cli("registry", "import", str(bad), cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "bad.csv:2: production_date" in refused.stderr
    assert "nothing was imported" in refused.stderr
    assert cli("registry", "import", str(tmp_path / "missing.csv"), cwd=tmp_path, env=env).returncode == 2
    many = tmp_path / "many.csv"
    many.write_text(
        "order_id,customer,serial,serial_to,production_date,port_arrival_date,cargo_compensation,"
        "order_pieces,order_total,currency\n"
        + "".join(f"PO-{n},A,CSP2402A{n:04},,2024-02-30,,maybe,10,1.00,USD\n" for n in range(1, 31))
    )
    refused = cli("registry", "import", str(many), cwd=tmp_path, env=env)
    assert refused.returncode == 2
    assert (
        refused.stderr.splitlines()[-1]
        == f"warranty-bot: 30 bad rows (60 problems) in {many}; nothing was imported"
    )
    assert "... and 40 more problems" in refused.stderr
    listed = cli("outbox", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0 and "0 dead message(s)" in listed.stderr


def test_console_chat_runs_a_claim(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/w.db"}
    script = "hello\nCSP2604D0007\nThe display shows E07 and it shuts down\n1\n1\n"
    result = cli("chat", stdin=script, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "[desk] new case WR-" in result.stdout
    assert "I've opened case WR-" in result.stdout


def test_bad_settings_exit_2(tmp_path: Path) -> None:
    result = cli("serve", cwd=tmp_path, env={"PORT": "not-a-port"})
    assert result.returncode == 2 and "PORT" in result.stderr and "Traceback" not in result.stderr


def test_every_setting_is_documented_in_env_example() -> None:
    documented = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert documented == {name.upper() for name in Settings.model_fields}


@pytest.mark.parametrize("args", [("nonsense",), ("policy", "check", "--language"), ("serve", "--port", "x")])
def test_usage_mistakes_are_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "see warranty-bot --help" in result.stderr


def test_help_explains_every_command(tmp_path: Path) -> None:
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("policy", "db", "registry", "outbox", "chat", "serve"):
        assert command in result.stdout


def test_registry_import_prints_a_table(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/w.db"}
    sample = str(ROOT / "tests" / "data" / "registry-sample.csv")
    first = cli("registry", "import", sample, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "ImportReport" not in first.stdout
    lines = first.stdout.splitlines()
    assert lines[0] == f"imported {sample}:"
    assert lines[1].split() == ["in", "file", "new", "updated", "unchanged"]
    assert lines[2].split() == ["orders", "5", "5", "0", "0"]
    assert lines[3].split() == ["units", "1252", "1252", "0", "0"]
    again = cli("registry", "import", sample, cwd=tmp_path, env=env).stdout.splitlines()
    assert again[2].split() == ["orders", "5", "0", "0", "5"] and again[3].split() == [
        "units",
        "1252",
        "0",
        "0",
        "1252",
    ]


def test_demo_loads_orders_dated_from_today_and_lists_serials_to_try(tmp_path: Path) -> None:
    from datetime import date

    from sqlmodel import Session

    from bot.registry import lookup
    from bot.store import make_engine
    from policy import Claim, Outcome, Proof, default_policy, evaluate

    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/w.db"}
    loaded = cli("demo", "--if-empty", cwd=tmp_path, env=env)
    assert loaded.returncode == 0, loaded.stderr
    tries = {line.split()[0]: line.split()[1] for line in loaded.stdout.splitlines() if line.startswith("  ")}
    assert set(tries) == {"covered", "expired", "distributor", "cargo"}
    assert "covered until" in loaded.stdout and "discount compensation offered" in loaded.stdout
    first, last = tries["distributor"].split("-")
    today = date.today()
    with Session(make_engine(env["DATABASE_URL"])) as session:
        found = lookup(session, [tries["covered"], tries["expired"], tries["cargo"], first, last])
    assert len(found) == 5

    def outcome(serial: str) -> Outcome:
        unit = found[serial]
        return evaluate(
            Claim(
                serial=serial,
                claim_date=today,
                port_arrival_date=unit.port_arrival_date,
                production_date=unit.production_date,
                proof=Proof.registry,
                cargo_compensation=unit.cargo_compensation,
            ),
            default_policy(),
        ).outcome

    assert outcome(tries["covered"]) is Outcome.covered and outcome(first) is Outcome.covered
    assert outcome(tries["expired"]) is Outcome.not_covered and outcome(tries["cargo"]) is Outcome.not_covered
    assert found[tries["cargo"]].cargo_compensation and int(last[-4:]) - int(first[-4:]) + 1 == 40
    # `make run` calls it every time: a registry of the demo alone is loaded again, a real one is left alone.
    assert cli("demo", "--if-empty", cwd=tmp_path, env=env).stdout == loaded.stdout
    assert (
        cli(
            "registry", "import", str(ROOT / "tests" / "data" / "registry-sample.csv"), cwd=tmp_path, env=env
        ).returncode
        == 0
    )
    skipped = cli("demo", "--if-empty", cwd=tmp_path, env=env)
    assert skipped.returncode == 0 and "1252 units" in skipped.stdout and "covered" not in skipped.stdout
    assert "covered until" in cli("demo", cwd=tmp_path, env=env).stdout
