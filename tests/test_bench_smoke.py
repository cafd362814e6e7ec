"""The benchmarks still run: `python -m bench --quick` on SQLite plays every benchmark at its smallest size
and writes its Markdown tables (no timing is asserted; the numbers of a smoke run mean nothing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_of_every_benchmark_writes_the_tables(tmp_path: Path) -> None:
    out = tmp_path / "performance.md"
    out.write_text(
        "# Performance\n\nanalysis kept\n\n<!-- bench:results:start -->\nold\n<!-- bench:results:end -->\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--databases", "sqlite", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,  # a generous bound: the machine running the suite may be shared and loaded
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = out.read_text()
    assert "analysis kept" in report and "\nold\n" not in report
    for number in range(0, 6):
        assert f"### {number}. " in report
    # The targets table comes first, with a row for each target the smoke run measured on SQLite.
    assert report.index("### 0. Targets") < report.index("### 1. ")
    targets = report[report.index("### 0. Targets") : report.index("### 1. ")]
    for target in (
        "the python-telegram-bot peer",
        "the floor",
        "first message after start",
        "engine alone",
        "registry import",
        "importer peak RSS",
    ):
        assert target in targets
    assert "| 1st message after start ms | 10th message ms |" in report
    # Every table has at least one data row on SQLite, and the claims did what the script says.
    rows = [line for line in report.splitlines() if line.startswith("| sqlite |")]
    assert len(rows) >= 8
    engine_rows = [r for r in rows if re.match(r"\| sqlite \| [12] \| \d+ \|", r)]
    assert engine_rows and all(r.split("|")[7].strip() not in ("0", "") for r in engine_rows)  # cases opened
    webhook = [
        line
        for line in report.splitlines()
        if line.startswith(("| ours |", "| floor |", "| python-telegram-bot |"))
    ]
    assert len(webhook) == 3
    ours = webhook[0].split("|")
    assert ours[7].strip() == "14/14"  # every reply of both blast conversations reached the fake Bot API
    assert "nproc" in report and "load average" in report
