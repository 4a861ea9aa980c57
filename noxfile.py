"""Checks a contributor runs: `nox` (tests, lint, typing, docs); `nox -s bench` measures speed."""

from __future__ import annotations

import nox

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
    session.install("-e", ".", "mypy", "pytest")  # pytest: the emulator fixture is typed
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs with warnings as errors."""
    session.install("-e", ".", "mkdocs>=1.6", "mkdocstrings[python]>=0.25")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def bench(session: nox.Session) -> None:
    """Client CPU per request (bench_cycle), callback-to-wait latency (bench_callbacks) and
    waiting at scale (bench_batch), in one run; bench_callbacks fails it on a missed target.

    ``nox -s bench -- cycle ARGS``, ``-- callbacks ARGS`` or ``-- batch ARGS`` runs one
    benchmark with its arguments (``-- batch --tasks 200 --min 5 --max 15`` is a quick batch
    run); other posargs go to bench_cycle, as before. The full batch run takes about ten
    minutes.
    """
    session.install("-e", ".")
    if session.posargs:
        first, *rest = session.posargs
        if first in ("cycle", "callbacks", "batch"):
            session.run("python", f"bench/bench_{first}.py", *rest)
        else:
            session.run("python", "bench/bench_cycle.py", *session.posargs)
        return
    session.run("python", "bench/bench_cycle.py")  # one request at a time
    session.run("python", "bench/bench_cycle.py", "--concurrency", "16")  # a batch
    session.run("python", "bench/bench_callbacks.py")  # 200 waits ended by callbacks
    session.run("python", "bench/bench_batch.py")  # 1,000 tasks of 30-90 s, every mode
