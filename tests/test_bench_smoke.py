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
        "(a) as deployed: replies delivered/s ≥ 1.0× the peer (python-telegram-bot with AIORateLimiter)",
        "(b) unpaced pipeline: replies delivered/s ≥ 1.0× the peer (python-telegram-bot unpaced)",
        "(a) as deployed: accepted/s ≥ 1.0× the floor",
        "(b) unpaced pipeline: accepted/s ≥ 1.0× the floor",
        "(a) as deployed: end-to-end p99 ≤ 2× the peer's",
        "(b) unpaced pipeline: end-to-end p99 ≤ 2× the peer's",
        "(a) as deployed: first message after start",
        "(b) unpaced pipeline: first message after start",
        "engine alone",
        "registry import",
        "importer peak RSS",
    ):
        assert target in targets
    # A figure with no target is not "met": its row says so.
    for_reading = [line for line in targets.splitlines() if "(no target; for reading)" in line]
    assert len(for_reading) == 2 and all(line.endswith("| – |") for line in for_reading)
    assert done.stdout.count("### 0. Targets") == 1  # printed once, after the tables it sums up
    assert "| 1st message after start ms | 10th message ms |" in report
    # Every table has at least one data row on SQLite, and the claims did what the script says.
    rows = [line for line in report.splitlines() if line.startswith("| sqlite |")]
    assert len(rows) >= 8
    engine_rows = [r for r in rows if re.match(r"\| sqlite \| [12] \| \d+ \|", r)]
    assert engine_rows and all(r.split("|")[7].strip() not in ("0", "") for r in engine_rows)  # cases opened
    webhook = [
        line.split("|")
        for line in report.splitlines()
        if line.startswith(("| ours |", "| floor |", "| python-telegram-bot |"))
    ]
    # Both pairs: ours paced and unpaced, the floor, and the peer with AIORateLimiter and without.
    assert [(row[1].strip(), row[2].strip().split(":")[0]) for row in webhook] == [
        ("ours", "Telegram's limits"),
        ("ours", "none (both limits 0)"),
        ("floor", "–"),
        ("python-telegram-bot", "AIORateLimiter()"),
        ("python-telegram-bot", "none (python-telegram-bot's default)"),
    ]
    for row in (webhook[0], webhook[1], webhook[3], webhook[4]):
        assert row[8].strip() == "14/14"  # every reply of both blast conversations reached the fake Bot API
    ratios = [line for line in report.splitlines() if line.startswith("| sqlite | (")]
    assert [r.split("|")[2:4] for r in ratios] == [
        [" (a) as deployed ", " floor "],
        [" (a) as deployed ", " python-telegram-bot with AIORateLimiter "],
        [" (b) unpaced pipeline ", " floor "],
        [" (b) unpaced pipeline ", " python-telegram-bot unpaced "],
    ]
    assert "nproc" in report and "load average" in report
