"""Checks a contributor runs: `nox` (tests, lint, typing, docs); `nox -s bench` measures speed."""

from __future__ import annotations

import nox
from nox.command import CommandFailed

nox.options.sessions = ["tests", "lint", "typing", "docs"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (warnings are errors, anyio pinned to asyncio; see pyproject)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on the package."""
    # pytest: the emulator fixture is typed; the extras: the modules that import them
    session.install("-e", ".[redis,callbacks,mcp]", "mypy", "pytest")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs with warnings as errors."""
    session.install("-e", ".", "mkdocs>=1.6", "mkdocstrings[python]>=0.25")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


BENCHMARKS = ("cycle", "batch", "journal", "burst", "callbacks", "fleet")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark in ``bench/``; fails when any target is missed.

    Each benchmark prints its figures beside their targets, exits 1 when one is missed and,
    run with its default settings, records them in ``bench/results/<name>.json``. Then
    ``bench/tables.py`` writes the docs' "Measured" tables from those records (commit both).
    ``nox -s bench -- NAME ARGS`` (NAME one of `BENCHMARKS`) runs one benchmark with its
    arguments and records nothing unless given ``--record``; ``-- batch --tasks 200 --min 5
    --max 15`` is a quick batch run. The full batch run takes about ten minutes.
    """
    session.install("-e", ".[redis]")  # the fleet's benchmark starts its own redis-server
    if session.posargs:
        first, *rest = session.posargs
        if first not in BENCHMARKS:
            session.error(f"unknown benchmark {first!r}: choose one of {', '.join(BENCHMARKS)}")
        session.run("python", f"bench/bench_{first}.py", *rest)
        return
    runs = [
        ["bench/bench_cycle.py"],  # one request at a time
        ["bench/bench_cycle.py", "--concurrency", "16"],  # a batch
        ["bench/bench_journal.py"],  # the journal's cost per keyed create
        ["bench/bench_burst.py"],  # 100 waits meet 2 s of 1302s
        ["bench/bench_callbacks.py"],  # callback-to-wait latency, 200 tasks
        ["bench/bench_batch.py"],  # 1,000 tasks of 30-90 s, every mode
        ["bench/bench_fleet.py"],  # the same on 4 processes and one Redis (about an hour)
    ]
    failed = []
    for args in runs:
        try:
            session.run("python", *args)
        except CommandFailed:  # a missed target (exit 1) or a crash: run the others first
            failed.append(" ".join(args))
    session.run("python", "bench/tables.py")
    if failed:
        session.error(f"missed a target (or failed): {'; '.join(failed)}")
