"""The command line against emulators served by child processes.

Most commands run in-process (``main(argv)``, with instant poll and retry policies); what
needs a real process (Ctrl+C, stderr that is or is not a terminal) runs ``python -m
kling_async`` with this checkout first on ``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import kling_async
from kling_async import (
    KlingSession,
    PollPolicy,
    RetryPolicy,
    Task,
    TaskStatus,
    _cli,
    _cli_output,
    _cli_parser,
    _cli_progress,
    _cli_task,
)
from kling_async._cli import main
from kling_async.testing import Fault, KlingEmulator
from kling_async.testing.__main__ import main as emulator_main

ROOT = Path(kling_async.__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: it imports kling_async from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@contextlib.contextmanager
def serving(*command: str) -> Iterator[str]:
    """Run an emulator command on a free port; yield its gateway base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", *command, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert process.stdout is not None
    url = ""
    for line in process.stdout:
        if "gateway base URL:" in line:
            url = line.split("gateway base URL:")[1].strip()
            break
    try:
        assert url, "the emulator did not start"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """Tasks show submitted, processing, then the end, one query each; video `risky` fails."""
    with serving(
        "kling_async.testing",
        "--polls-to-start",
        "1",
        "--polls-to-finish",
        "1",
        "--fail-video",
        "risky",
        "--cash-deduction",
        "0.35",
        "--list-price",
        "0.50",
    ) as url:
        yield url


@pytest.fixture(scope="module")
def served_slow() -> Iterator[str]:
    """`kling-async emulator` (the same server as above): tasks stay submitted for an hour."""
    with serving("kling_async", "emulator", "--step-seconds", "3600") as url:
        yield url


@pytest.fixture(autouse=True)
def instant(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process commands poll and retry without sleeping; credentials come from nowhere."""
    options = {"poll_policy": PollPolicy.instant(), "retry_policy": RetryPolicy.instant()}
    monkeypatch.setattr(_cli_output, "SESSION_OPTIONS", options)
    for name in ("KLING_API_KEY", "KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def use(monkeypatch: pytest.MonkeyPatch, url: str) -> dict[str, str]:
    """Credentials as a user sets them for a gateway; returns them for a child process too."""
    env = {"KLING_API_KEY": "test-key", "KLING_BASE_URL": url}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def gateway(served: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return use(monkeypatch, served)


@pytest.fixture
def slow_gateway(served_slow: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return use(monkeypatch, served_slow)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def task_count(capsys: pytest.CaptureFixture[str]) -> int:
    status, out, _ = run(capsys, "list", "--page-size", "500", "--json")
    assert 0 == status
    return len(out.splitlines())


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- what the commands print ----------------------------------------------------------------


def test_demo_runs_against_the_built_in_emulator(capsys: pytest.CaptureFixture[str]) -> None:
    """`demo` needs no account: three tasks, one retried create, one failure shown."""
    status, out, _ = run(capsys, "demo", "--step", "0.01")

    assert 0 == status
    assert "3 tasks created" in out
    assert "1 retried" in out
    assert "failed  (content risk control)" in out
    assert out.count("succeed") == 2


@pytest.mark.usefixtures("gateway")
def test_extend_wait_json_prints_one_object_the_final_state(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--json: stdout is exactly one JSON object for the task, its final state."""
    status, out, _ = run(capsys, "extend", "vid-1", "--prompt", "wider", "--wait", "--json")

    assert 0 == status
    [finished] = [json.loads(line) for line in out.splitlines()]
    assert "succeed" == finished["status"]
    assert finished["videos"][0]["url"]
    assert "vid-1" == finished["parent_video"]["id"]


@pytest.mark.usefixtures("gateway")
def test_get_wait_and_list_print_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """get and wait print one JSON object; list prints JSON Lines, newest first."""
    _, out, _ = run(capsys, "extend", "vid-2", "--json")
    created = json.loads(out)
    assert "submitted" == created["status"]

    status, out, _ = run(capsys, "wait", created["task_id"], "--json")
    assert (0, "succeed") == (status, json.loads(out)["status"])

    status, out, _ = run(capsys, "get", created["task_id"], "--json")
    assert (0, "succeed") == (status, json.loads(out)["status"])

    status, out, _ = run(capsys, "list", "--page-size", "5", "--json")
    listed = [json.loads(line)["task_id"] for line in out.splitlines()]
    assert (0, created["task_id"]) == (status, listed[0])


@pytest.mark.usefixtures("gateway")
def test_text_output_is_one_line_per_task(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json: `<id>  <status>  -> <url> <duration>s  cost <what it cost>`."""
    status, out, _ = run(capsys, "extend", "vid-3", "--wait", "--quiet")

    assert 0 == status
    [line] = out.splitlines()
    task_id, state, video, cost = line.split("  ")
    arrow, url, duration = video.split()
    assert ("succeed", "->", "9.1s") == (state, arrow, duration)
    assert "cost 1 unit, 0.35 cash (list price 0.50)" == cost
    assert url.startswith("http://127.0.0.1:")
    assert task_id.isdigit()


@pytest.mark.usefixtures("gateway")
def test_extend_wait_prints_the_cost_as_decimal_strings_in_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--json: ``cost`` holds units, cash and list price as decimal strings (never floats)."""
    status, out, _ = run(capsys, "extend", "vid-3", "--wait", "--quiet", "--json")

    assert 0 == status
    assert {"units": "1", "cash": "0.35", "list_price": "0.50"} == json.loads(out)["cost"]
    status, out, _ = run(capsys, "extend", "vid-3", "--quiet", "--json")  # not finished
    assert None is json.loads(out)["cost"]


@pytest.mark.usefixtures("gateway")
def test_a_failed_task_prints_its_state_then_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """The final state goes to stdout, the reason to stderr, and the exit status is 1."""
    status, out, err = run(capsys, "extend", "risky", "--wait")

    assert 1 == status
    assert "failed  (content risk control)" in out
    assert "failed: content risk control" in err.splitlines()[-1]
    assert "resume" not in err


@pytest.mark.usefixtures("gateway")
def test_a_kling_error_is_one_line_on_stderr_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An API error: `error: <message>` on one line (no Python class name), nothing on stdout."""
    status, out, err = run(capsys, "get", "no-such-task")

    assert (1, "") == (status, out)
    [line] = err.splitlines()
    assert line.startswith("error: task no-such-task does not exist (HTTP 404, code 1203")
    assert "NotFoundError" not in line


# -- defect 1: every argument is checked before anything is sent ---------------------------


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--wait", "--timeout", "-1"], "argument --timeout: must be a number of seconds > 0"),
        (["--wait", "--timeout", "nan"], "argument --timeout: must be a number of seconds > 0"),
        (["--wait", "--timeout", "inf"], "argument --timeout: must be a number of seconds > 0"),
        (["--timeout", "3"], "--timeout bounds --wait; pass --wait too"),
        (["--cfg-scale", "7"], "argument --cfg-scale: must be a number from 0 to 1"),
        (["--prompt", "x" * 2501], "--prompt: at most 2500 characters allowed, got 2501"),
        (["--negative-prompt", "x" * 2501], "--negative-prompt: at most 2500 characters"),
        (["--callback-url", "ftp://x"], "--callback-url: must be an http(s) URL"),
        (["--parent-task-id", " "], "--parent-task-id: must not be empty"),
        (["--external-task-id", ""], "--external-task-id: must not be empty"),
    ],
)
def test_a_bad_extend_argument_creates_no_task(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Exit 2 with extend's usage and the flag named, and the emulator saw no create."""
    before = task_count(capsys)

    status, out, err = run(capsys, "extend", "vid-x", *argv)

    assert (2, "") == (status, out)
    assert err.startswith("usage: kling-async extend ")
    assert message in err.splitlines()[-1]
    assert before == task_count(capsys)


# -- defect 2: the emulator's options ------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "99999"],
        ["--port", "-1"],
        ["--port", "http"],
        ["--step-seconds", "-1"],
        ["--step-seconds", "nan"],
        ["--polls-to-start", "-1"],
        ["--polls-to-finish", "1.5"],
        ["--max-running", "-1"],
    ],
)
def test_a_bad_emulator_option_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Exit 2, the option named on the last line, no traceback, nothing served."""
    status = emulator_main(argv)

    out, err = capsys.readouterr()
    assert (2, "") == (status, out)
    last = err.splitlines()[-1]
    assert last.startswith(f"python -m kling_async.testing: error: argument {argv[0]}: must be")
    assert argv[1] in last


def test_the_emulator_process_refuses_a_bad_port_without_a_traceback() -> None:
    """`python -m kling_async.testing --port 99999` exits 2; so does `kling-async emulator`."""
    for command in (["kling_async.testing"], ["kling_async", "emulator"]):
        done = subprocess.run(
            [sys.executable, "-m", *command, "--port", "99999"],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=30,
        )
        assert 2 == done.returncode
        assert "Traceback" not in done.stderr
        assert "error: argument --port: must be a port number from 0 to 65535" in done.stderr


# -- defect 3: list --pages 0 --------------------------------------------------------------


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pages", "0"], "argument --pages: must be a whole number from 1 to 1000, got '0'"),
        (["--page-size", "501"], "argument --page-size: must be a whole number from 1 to 500"),
    ],
)
def test_list_names_the_flag_in_a_sentence(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """The message names --pages (not max_pages) and reads as a sentence."""
    status, _, err = run(capsys, "list", *argv)

    assert 2 == status
    assert f"kling-async list: error: {message}" in err.splitlines()[-1]
    assert "max_pages" not in err


# -- defect 4: messages speak CLI ----------------------------------------------------------


@pytest.mark.usefixtures("gateway")
def test_plain_http_refusal_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """The SDK's `allow_insecure_http=True` is `--allow-insecure-http` to a CLI user."""
    status, _, err = run(capsys, "get", "1", "--base-url", "http://example.com/kling")

    assert 2 == status
    assert err.splitlines()[-1].endswith("use https:// or pass --allow-insecure-http")
    assert "allow_insecure_http" not in err


@pytest.mark.skipif(sys.platform != "linux", reason="connects to 0.0.0.0, Linux's loopback")
def test_allow_insecure_http_lets_plain_http_through(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str]
) -> None:
    """With --allow-insecure-http a non-loopback http:// base URL is used."""
    url = gateway["KLING_BASE_URL"].replace("127.0.0.1", "0.0.0.0")
    _, out, _ = run(capsys, "extend", "vid-4", "--json")
    task_id = json.loads(out)["task_id"]

    status, out, _ = run(capsys, "get", task_id, "--base-url", url, "--allow-insecure-http")

    assert 0 == status
    assert out.startswith(task_id)


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--base-url", "ftp://x/kling"], {}, "--base-url must be an http(s) URL"),
        ([], {"KLING_BASE_URL": "ftp://x/kling"}, "KLING_BASE_URL must be an http(s) URL"),
        (
            [],
            {"KLING_API_KEY": "", "KLING_ACCESS_KEY": "ak"},
            "KLING_ACCESS_KEY and KLING_SECRET_KEY go together",
        ),
        ([], {"KLING_API_KEY": ""}, "no credentials: set KLING_API_KEY (a gateway's key) or"),
    ],
)
def test_sdk_refusals_name_flags_and_variables(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    """Base URL and credential problems name the flag or the variable the user set."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    status, _, err = run(capsys, "get", "1", *argv)

    assert 2 == status
    assert err.startswith("usage: kling-async get ")
    assert f"kling-async get: error: {message}" in err.splitlines()[-1]
    assert "_key" not in err
    assert "base_url" not in err


def test_demo_step_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """`demo --step -1` is about --step, not the emulator's step_seconds."""
    status, _, err = run(capsys, "demo", "--step", "-1")

    assert 2 == status
    assert "kling-async demo: error: argument --step: must be a number of seconds > 0" in err
    assert "step_seconds" not in err


@pytest.mark.usefixtures("slow_gateway")
def test_a_timeout_says_how_to_resume_the_wait(capsys: pytest.CaptureFixture[str]) -> None:
    """WaitTimeoutError names the `kling-async wait` command; stdout keeps the task id."""
    status, out, err = run(capsys, "extend", "vid-5", "--wait", "--timeout", "0.05", "--json")

    assert 1 == status
    last = json.loads(out)
    assert "submitted" == last["status"]
    line = err.splitlines()[-1]
    assert line.startswith(f"error: task {last['task_id']} was still submitted")
    assert line.endswith(f"resume the wait with 'kling-async wait {last['task_id']} --json'")
    assert "handle" not in err


def test_in_flags_translates_python_names_only_as_whole_words() -> None:
    """`base_url`, `timeout` and `connect_timeout` become flags; `my_timeout` stays."""
    args = _cli_parser.build_parser()[0].parse_args(["get", "1", "--base-url", "https://x"])

    translated = _cli_output.in_flags(
        "base_url, timeout, connect_timeout, my_timeout, allow_insecure_http=True", args
    )

    assert "--base-url, --timeout, --connect-timeout, my_timeout, --allow-insecure-http" == (
        translated
    )


# -- defect 5: names, --version, `kling-async emulator` ------------------------------------


def test_help_and_version_say_kling_async(capsys: pytest.CaptureFixture[str]) -> None:
    """--help shows the prog name `kling-async`; --version prints the package version."""
    status, out, _ = run(capsys, "--help")
    assert (0, "usage: kling-async ") == (status, out[:19])
    assert "emulator" in out

    status, out, _ = run(capsys, "extend", "--help")
    assert (0, "usage: kling-async extend ") == (status, out[:26])

    status, out, _ = run(capsys, "--version")
    assert (0, f"kling-async {kling_async.__version__}\n") == (status, out)


def test_python_m_kling_async_is_the_same_command() -> None:
    """`python -m kling_async --version` runs this CLI."""
    status, out, _ = run_process("--version", env={})

    assert (0, f"kling-async {kling_async.__version__}\n") == (status, out)


def test_kling_async_emulator_has_the_emulators_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`kling-async emulator --help` lists exactly what `python -m kling_async.testing` takes."""

    def options(help_text: str) -> set[str]:
        return {word.strip("[],") for word in help_text.split() if word.startswith(("--", "[--"))}

    assert 0 == emulator_main(["--help"])
    standalone = capsys.readouterr().out
    status, out, _ = run(capsys, "emulator", "--help")

    assert 0 == status
    assert out.startswith("usage: kling-async emulator ")
    assert options(standalone) == options(out)
    assert {"--port", "--step-seconds", "--fail-video"} <= options(out)


# -- defect 6: a command's usage error shows that command's usage ---------------------------


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    "argv",
    [
        ["extend", "vid-x", "--bogus"],
        ["extend"],
        ["extend", "vid-x", "--cfg-scale", "x"],
        ["get", "1", "2"],
        ["wait", "1", "--timeout", "0"],
        ["list", "--pages"],
    ],
)
def test_a_usage_error_shows_the_commands_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Exit 2; stderr starts with `usage: kling-async <command>` and ends with one error line."""
    status, out, err = run(capsys, *argv)

    assert (2, "") == (status, out)
    assert err.startswith(f"usage: kling-async {argv[0]} ")
    assert err.splitlines()[-1].startswith(f"kling-async {argv[0]}: error: ")


# -- defect 7: progress on stderr, Ctrl+C ---------------------------------------------------


@pytest.mark.usefixtures("gateway")
def test_extend_wait_shows_each_status_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """Plain progress: the task id, then one line per status with the elapsed time."""
    status, out, err = run(capsys, "extend", "vid-6", "--wait")

    assert 0 == status
    [result] = out.splitlines()
    task_id = result.split()[0]
    expected = [
        f"waiting for task {task_id} (Ctrl+C stops waiting; the task keeps running)",
        "0:00  submitted",
        "0:00  processing",
        "0:00  succeed",
    ]
    assert expected == err.splitlines()


@pytest.mark.usefixtures("gateway")
def test_quiet_shows_no_progress(capsys: pytest.CaptureFixture[str]) -> None:
    """--quiet: nothing on stderr when all goes well."""
    status, out, err = run(capsys, "extend", "vid-7", "--wait", "--quiet")

    assert (0, "") == (status, err)
    assert "succeed" in out


def test_plain_progress_repeats_a_status_at_most_every_heartbeat() -> None:
    """Between status changes a `still <status>` line comes at most once per heartbeat."""
    now = [100.0]
    stream = io.StringIO()
    display = _cli_task.task_display("t1", heartbeat=30)
    progress = _cli_progress.PlainView(display, None, stream, clock=lambda: now[0])
    progress.update(Task(task_id="t1", status=TaskStatus.SUBMITTED))
    for second in range(1, 100):
        now[0] = 100.0 + second
        progress.tick()
        if second == 45:
            progress.update(Task(task_id="t1", status=TaskStatus.PROCESSING))

    expected = [
        "waiting for task t1 (Ctrl+C stops waiting; the task keeps running)",
        "0:00  submitted",
        "0:30  still submitted",
        "0:45  processing",
        "1:15  still processing",
    ]
    assert expected == stream.getvalue().splitlines()


def test_the_clock_reads_minutes_and_hours() -> None:
    """Elapsed time is m:ss, and h:mm:ss past an hour."""
    assert ["0:00", "0:59", "1:05", "1:00:00"] == [
        _cli_output.clock_text(s) for s in (0.4, 59.9, 65, 3600)
    ]


def test_without_rich_a_terminal_gets_plain_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal without rich installed, progress is plain lines, not a crash."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setitem(sys.modules, "rich.console", None)  # makes the import fail

    view = _cli_progress.progress_view(_cli_task.task_display("t1"), None, quiet=False)
    assert isinstance(view, _cli_progress.PlainView)


def cli(*argv: str, env: dict[str, str], **options: Any) -> subprocess.Popen[str]:
    """`python -m kling_async ...` as its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "kling_async", *argv],
        env=child_env(**env),
        text=True,
        **options,
    )


def run_process(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    """`python -m kling_async ...` to its end, with stdout and stderr piped."""
    done = subprocess.run(
        [sys.executable, "-m", "kling_async", *argv],
        capture_output=True,
        text=True,
        env=child_env(**env),
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


def finished_task(capsys: pytest.CaptureFixture[str], video_id: str) -> str:
    """The id of a task made and waited for in-process (instantly)."""
    status, out, _ = run(capsys, "extend", video_id, "--wait", "--json")
    assert 0 == status
    task_id: str = json.loads(out)["task_id"]
    return task_id


def test_progress_is_plain_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str]
) -> None:
    """Piped stderr gets plain lines without escape codes, even with rich installed."""
    task_id = finished_task(capsys, "vid-8")

    status, out, err = run_process("wait", task_id, env=gateway)

    assert 0 == status
    assert "\x1b" not in err + out
    assert [f"waiting for task {task_id}", "0:00  succeed"] == [
        line.split(" (")[0] for line in err.splitlines()
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_a_terminal_gets_the_rich_view(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str]
) -> None:
    """With rich installed and stderr a terminal: a live view, a ✓ line; stdout stays plain."""
    pytest.importorskip("rich")
    import pty

    task_id = finished_task(capsys, "vid-9")
    controller, terminal = pty.openpty()
    process = cli(
        "wait",
        task_id,
        env={**gateway, "TERM": "xterm-256color", "COLUMNS": "120"},
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    shown = bytearray()
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(controller, 4096):
            shown += chunk
    os.close(controller)
    out, _ = process.communicate(timeout=60)
    screen = shown.decode("utf-8", "replace")

    assert 0 == process.returncode
    assert "\x1b[" in screen  # drawn with escape codes
    assert f"✓ task {task_id}  succeed" in screen.replace("\x1b[1m", "").replace("\x1b[0m", "")
    assert "waiting for task" not in screen  # not the plain lines
    assert out.startswith(f"{task_id}  succeed")


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_ctrl_c_prints_the_command_that_resumes_the_wait(slow_gateway: dict[str, str]) -> None:
    """Ctrl+C during `extend --wait`: exit 130, the task on stdout, the resume command."""
    process = cli(
        "extend",
        "vid-10",
        "--wait",
        env=slow_gateway,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # A runner may start us with SIGINT ignored, and children inherit that; a shell's
        # foreground command does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stderr is not None
    seen: list[str] = []
    for line in process.stderr:
        seen.append(line)
        if line.endswith("  submitted\n"):  # the first poll answered: now it is waiting
            break
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # never leave it running
        process.kill()
        process.communicate()
        raise

    task_id = seen[0].split()[3]
    assert 130 == process.returncode
    assert f"{task_id}  submitted\n" == out
    assert [
        f"interrupted: stopped waiting for task {task_id}; it keeps running",
        f"resume with: kling-async wait {task_id}",
    ] == err.splitlines()[-2:]


def test_a_closed_stdout_ends_the_command_quietly(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str]
) -> None:
    """`kling-async list | head -0`: exit 1 without a traceback (also after Ctrl+C in a pipe)."""
    finished_task(capsys, "vid-11")
    process = cli("list", env=gateway, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.close()  # the reader is gone before the first line
    _, err = process.communicate(timeout=60)

    assert (1, "") == (process.returncode, err)


# -- defect 8: -v shows the retries; the error is one line ---------------------------------


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize("verbose", [["-v"], []])
def test_verbose_shows_the_retries_then_one_error_line(
    capsys: pytest.CaptureFixture[str], verbose: list[str]
) -> None:
    """Server down: under -v the SDK's INFO lines say it retries; the error is one line."""
    url = f"http://127.0.0.1:{free_port()}/kling"

    status, out, err = run(capsys, *verbose, "get", "1", "--base-url", url)

    assert (1, "") == (status, out)
    lines = err.splitlines()
    retries = [line for line in lines if " INFO retrying GET " in line]
    assert bool(verbose) == bool(retries)
    assert lines[-1].startswith("error: could not connect to http://127.0.0.1:")
    assert len(lines) == len(retries) + 1


def test_verbose_logging_ends_with_the_command() -> None:
    """main() leaves the `kling_async` logger as it found it."""
    import logging

    logger = logging.getLogger("kling_async")
    handlers, level = list(logger.handlers), logger.level

    with _cli._logging(2):
        assert logging.DEBUG == logger.level

    assert (handlers, level) == (logger.handlers, logger.level)


# -- defect 9: --base-url "" ---------------------------------------------------------------


@pytest.mark.usefixtures("gateway")
def test_an_empty_base_url_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`--base-url ""` is refused, not silently replaced by the default."""
    status, _, err = run(capsys, "get", "1", "--base-url", "")

    assert 2 == status
    assert "kling-async get: error: argument --base-url: must not be empty" == err.splitlines()[-1]


def test_argument_types_refuse_what_the_sdk_would() -> None:
    """The argparse types: positive finite seconds, 0..1 fractions, bounded counts."""
    assert 2.5 == _cli_output.seconds_argument("2.5")
    assert 0.5 == _cli_parser._fraction("0.5")
    assert 500 == _cli_parser._count(500)("500")
    for check, text in [
        (_cli_output.seconds_argument, "0"),
        (_cli_output.seconds_argument, str(math.inf)),
        (_cli_parser._fraction, "-0.1"),
        (_cli_parser._count(500), "501"),
        (_cli_parser._count(500), "1.0"),
        (_cli_parser._text, "  "),
    ]:
        with pytest.raises(Exception, match="must"):
            check(text)


# -- hardening: what the server says cannot rewrite the terminal -----------------------------


@contextlib.contextmanager
def emulator_thread(**options: Any) -> Iterator[KlingEmulator]:
    """A KlingEmulator on its own event loop in a thread, so that `main()` (which runs its own
    loop) can talk to it in-process and the test can count what it received."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        box["stop"] = asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        async with KlingEmulator(**options) as emulator:
            box["emulator"] = emulator
            started.set()
            await box["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(30), "the emulator did not start"
    try:
        yield box["emulator"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


# A task_status_msg that clears the screen, retitles the window, rings, returns the cursor to
# hide what came before, and reverses the rest (U+202E), in 7-bit and 8-bit (C1) forms.
HOSTILE = (
    "content risk control\x1b[2J\x1b[H\x1b]0;pwned\x07\x07\r"
    "OK everything succeeded\x9b31m\u202edesrever\x85\x00"
)
# What may not reach a terminal from a server: C0 but newline, DEL, C1, bidi controls.
UNSAFE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def test_a_hostile_status_message_reaches_the_terminal_cleaned(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ESC, BEL, CR, C1 and U+202E in task_status_msg are stripped from stdout, the progress and
    the error line; --json keeps the message exactly, JSON-escaped."""
    with emulator_thread(polls_to_start=0, polls_to_finish=0) as emulator:
        emulator.fail_video("evil", HOSTILE)
        use(monkeypatch, emulator.gateway_url)

        status, out, err = run(capsys, "extend", "evil", "--wait")
        json_status, json_out, json_err = run(capsys, "extend", "evil", "--wait", "--json", "-q")

    assert (1, 1) == (status, json_status)
    assert [] == UNSAFE.findall(out + err + json_out + json_err)
    assert "failed  (content risk control OK everything succeededdesrever )" in out
    assert "  failed  (content risk control" in err  # the progress line
    assert "failed: content risk control OK everything succeeded" in err.splitlines()[-1]
    assert HOSTILE == json.loads(json_out)["status_message"]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_a_hostile_status_message_is_cleaned_in_the_rich_view(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal (rich): no sequence of the server's reaches the screen."""
    pytest.importorskip("rich")
    import pty

    with emulator_thread(polls_to_start=0, polls_to_finish=0) as emulator:
        emulator.fail_video("evil", HOSTILE)
        env = use(monkeypatch, emulator.gateway_url)
        _, out, _ = run(capsys, "extend", "evil", "--json", "-q")
        task_id = json.loads(out)["task_id"]
        controller, terminal = pty.openpty()
        process = cli(
            "wait",
            task_id,
            env={**env, "TERM": "xterm-256color", "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
        os.close(terminal)
        shown = bytearray()
        with contextlib.suppress(OSError):
            while chunk := os.read(controller, 4096):
                shown += chunk
        os.close(controller)
        out, _ = process.communicate(timeout=60)
    screen = shown.decode("utf-8", "replace")

    assert 1 == process.returncode
    assert "content risk control OK everything succeeded" in screen
    for sequence in ("\x1b[2J", "\x1b[H", "\x1b]0;pwned", "\x07", "\x9b", "\u202e", "\x85"):
        assert sequence not in screen + out


# -- hardening: failures said in words ----------------------------------------------------------


@contextlib.contextmanager
def raw_server(*, reply: bytes | None) -> Iterator[int]:
    """A TCP server on loopback that answers each connection with ``reply`` and closes it, or
    (None) reads and never answers; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    done = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            if reply is None:
                held.append(connection)
                continue
            with connection:
                connection.settimeout(2)
                with contextlib.suppress(OSError):
                    connection.recv(4096)
                    connection.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(10)
        listener.close()
        for connection in held:
            connection.close()


@pytest.mark.parametrize("case", ["refused", "dns", "tls", "timeout"])
def test_a_failed_connection_is_said_in_words(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """`error: could not connect to URL: connection refused` and the like: no class name, no
    `ssl:default`, no OpenSSL source line, no errno."""
    monkeypatch.setenv("KLING_API_KEY", "test-key")
    options = dict(_cli_output.SESSION_OPTIONS, read_timeout=0.2)
    monkeypatch.setattr(_cli_output, "SESSION_OPTIONS", options)
    with contextlib.ExitStack() as stack:
        if case == "refused":
            base, reason = f"http://127.0.0.1:{free_port()}/kling", "could not connect to {}: "
            reason += "connection refused"
        elif case == "dns":
            base = "https://no-such-host.invalid/kling"
            reason = "could not connect to {}: the host name was not found (DNS)"
        elif case == "tls":
            port = stack.enter_context(raw_server(reply=b"HTTP/1.1 400 Bad Request\r\n\r\n"))
            base = f"https://127.0.0.1:{port}/kling"
            reason = "could not connect to {}: the TLS handshake failed: the server does not "
            reason += "speak TLS there (http://?)"
        else:
            base = f"http://127.0.0.1:{stack.enter_context(raw_server(reply=None))}/kling"
            reason = "no reply from {}: nothing arrived for 0.2 s"

        status, out, err = run(capsys, "get", "1", "--base-url", base)

    url = f"{base}/v1/videos/video-extend/1"
    assert (1, "") == (status, out)
    assert [f"error: {reason.format(url)}"] == err.splitlines()
    for internal in ("Error", "ssl:default", "_ssl.c", "[SSL", "Errno", "Connect call"):
        assert internal not in err


# -- hardening: a wait that times out reports the state at the deadline ------------------------


def test_a_wait_that_times_out_queries_once_at_the_deadline(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Default policies (a query at once, the next after 15 s): a task done before --timeout
    runs out is found done by one query at the deadline and reported so (exit 0), not as
    "still submitted"."""
    monkeypatch.setattr(_cli_output, "SESSION_OPTIONS", {})
    with emulator_thread(step_seconds=0.1) as emulator:  # done 0.2 s after its create
        use(monkeypatch, emulator.gateway_url)

        status, out, err = run(capsys, "extend", "v-deadline", "--wait", "--timeout", "2", "--json")
        queries = emulator.count("query")

    assert (0, "succeed") == (status, json.loads(out)["status"]), err
    assert 2 == queries


def test_a_failed_query_at_the_deadline_says_how_old_the_state_is(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The query at the deadline fails: the last known state is shown with its age."""
    monkeypatch.setattr(_cli_output, "SESSION_OPTIONS", {})
    with emulator_thread(step_seconds=3600) as emulator:
        emulator.inject(Fault.delay(0), route="query")  # the wait's first query: answered
        emulator.inject(Fault.business(1200, status=400), route="query")  # the deadline's
        use(monkeypatch, emulator.gateway_url)

        status, out, err = run(capsys, "extend", "v-stale", "--wait", "--timeout", "1", "--json")
        queries = emulator.count("query")

    task_id = json.loads(out)["task_id"]
    assert (1, 2) == (status, queries)
    line = err.splitlines()[-1]
    assert re.match(
        rf"error: stopped waiting for task {task_id} after 1 s: it was submitted as of \d+ s ago"
        r" \(the query at the deadline failed: .*\); it keeps running on the server; resume",
        line,
    ), line


def test_get_wait_and_list_take_a_task_s_family(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str]
) -> None:
    """A text-to-video is queried, waited on and listed on its own routes with --family; on
    the extend's routes (the default) it is not found."""

    async def make() -> str:
        async with KlingSession() as session:  # the gateway's credentials from the environment
            return (await session.text_to_video("a lighthouse")).task_id

    task_id = anyio.run(make)
    status, out, _ = run(capsys, "wait", task_id, "--family", "text2video", "--json", "--quiet")
    assert (0, "succeed") == (status, json.loads(out)["status"])
    status, out, _ = run(capsys, "get", task_id, "--family", "text2video", "--json")
    assert (0, task_id) == (status, json.loads(out)["task_id"])
    status, out, _ = run(capsys, "list", "--family", "text2video", "--json")
    assert (0, [task_id]) == (status, [json.loads(line)["task_id"] for line in out.splitlines()])
    status, _, err = run(capsys, "get", task_id)
    assert 1 == status
    assert "not found" in err.lower() or "404" in err
    status, _, err = run(capsys, "list", "--family", "nope")
    assert 2 == status
    assert "video-extend, text2video, image2video" in err
