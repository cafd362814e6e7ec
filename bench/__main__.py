"""`python -m bench`: run the benchmarks, show progress on stderr, write the results as Markdown tables."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import tempfile
import time
from pathlib import Path

from bench.common import DATABASES, REPO, Table, git_revision, machine, postgres_version, say
from bench.targets import targets

# name -> module; each module's run(databases, workdir, quick=...) returns a Table or a list of them.
BENCHMARKS: dict[str, str] = {
    "engine": "bench.engine",
    "webhook": "bench.webhook",
    "scale": "bench.scale",
    "claim500": "bench.claim500",
    "registry": "bench.registry",
}
DEFAULT_OUT = REPO / "docs" / "performance.md"
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smallest sizes: a smoke run of every code path in seconds, numbers meaningless",
    )
    parser.add_argument(
        "--only",
        default="",
        metavar="NAMES",
        help=f"comma-separated benchmarks to run (default all): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--databases",
        default=",".join(DATABASES),
        metavar="NAMES",
        help="comma-separated: sqlite, postgres (PostgreSQL is skipped when unreachable)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"Markdown file for the results (default: {DEFAULT_OUT.relative_to(REPO)} for a "
        "full run of every benchmark, none for --quick or --only; '-' for stdout only)",
    )
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    databases = tuple(d.strip() for d in args.databases.split(",") if d.strip())
    if any(d not in DATABASES for d in databases):
        parser.error(f"--databases takes {', '.join(DATABASES)}")
    notes = []
    if "postgres" in databases and postgres_version() is None:
        databases = tuple(d for d in databases if d != "postgres")
        notes.append("PostgreSQL was not reachable: its rows are missing.")
        say("bench: PostgreSQL not reachable, running SQLite only")

    out = args.out
    if out is None and not args.quick and names == list(BENCHMARKS):
        out = DEFAULT_OUT
    info = machine()
    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]).strip()
    say(
        f"bench: {', '.join(names)} on {', '.join(databases)}; nproc {info['nproc']}, "
        f"load average {info['load average (1, 5, 15 min) at start']}"
    )

    to_stdout = out is not None and str(out) == "-"
    started = time.monotonic()
    tables: list[Table] = []
    with tempfile.TemporaryDirectory(prefix="warranty-bench-") as tmp:
        for name in names:
            module = importlib.import_module(BENCHMARKS[name])
            say(f"bench: {name} ...")
            begun = time.monotonic()
            result: Table | list[Table] = module.run(databases, Path(tmp), quick=args.quick)
            made = result if isinstance(result, list) else [result]
            tables.extend(made)
            say(f"bench: {name} done in {time.monotonic() - begun:.0f} s")
            if not to_stdout:  # each table as it is made; with --out -, the whole report once at the end
                for table in made:
                    print(table.markdown() + "\n", flush=True)

    summary = targets(tables, databases)
    tables.insert(0, summary)
    report = render(info, command, tables, notes, time.monotonic() - started, quick=args.quick)
    if to_stdout:
        print(report, end="", flush=True)
        return 0
    print(summary.markdown() + "\n", flush=True)
    if out is not None:
        write(out, report)
        say(f"bench: results written to {out}")
    return 0


def render(
    info: dict[str, str], command: str, tables: list[Table], notes: list[str], seconds: float, *, quick: bool
) -> str:
    lines = [START, "", "## Results", ""]
    if quick:
        lines += ["**Quick smoke run: sizes too small for the numbers to mean anything.**", ""]
    lines += [
        f"Command: `{command}` (`make bench` runs `.venv/bin/python -m bench`); "
        f"revision {git_revision()}; the whole run took {seconds / 60:.1f} min.",
        "",
    ]
    lines += ["| machine | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in info.items()]
    lines.append("")
    lines += [f"- {note}" for note in notes]
    for table in tables:
        lines += [table.markdown(), ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write(path: Path, report: str) -> None:
    """Put the results between the markers of `path` (the analysis around them stays), or make the file."""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: report, existing, count=1)
    else:
        updated = (existing.rstrip() + "\n\n" if existing.strip() else "# Performance\n\n") + report
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(updated, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
