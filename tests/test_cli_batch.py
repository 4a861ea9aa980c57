"""`kling-async batch` and `extend --download`, end to end against emulators in child processes.

The batch runs as its own process (``python -m kling_async``) where it matters: SIGKILL, Ctrl+C,
stderr that is not a terminal. Those children poll every 0.05 s instead of the default
schedule (first poll after 15 s) through the test-only ``KLING_ASYNC_TEST_POLL_SECONDS``
environment variable (`kling_async._cli_output.TEST_POLL_VARIABLE`); in-process runs get instant
policies through ``_cli_output.SESSION_OPTIONS`` as in ``test_cli.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kling_async import (
    ExtendRequest,
    PollPolicy,
    RetryPolicy,
    _cli_batch_file,
    _cli_batch_state,
    _cli_output,
    _cli_progress,
)

from .test_cli import HOSTILE, UNSAFE, child_env, cli, emulator_thread, run, serving, use

FAST = {_cli_output.TEST_POLL_VARIABLE: "0.05"}


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """The first query shows processing, the next the end; video `risky` fails."""
    with serving(
        "kling_async",
        "emulator",
        "--polls-to-start",
        "0",
        "--polls-to-finish",
        "1",
        "--fail-video",
        "risky",
        "--cash-deduction",
        "0.35",
    ) as url:
        yield url


@pytest.fixture(autouse=True)
def instant(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process commands poll and retry without sleeping; credentials come from nowhere."""
    options = {"poll_policy": PollPolicy.instant(), "retry_policy": RetryPolicy.instant()}
    monkeypatch.setattr(_cli_output, "SESSION_OPTIONS", options)
    for name in ("KLING_API_KEY", "KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(_cli_output.TEST_POLL_VARIABLE, raising=False)


@pytest.fixture
def gateway(served: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return use(monkeypatch, served)


def tasks_on(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    """Every task the emulator behind KLING_BASE_URL holds (one list page of 500)."""
    status, out, _ = run(capsys, "list", "--page-size", "500", "--json")
    assert 0 == status
    return [json.loads(line) for line in out.splitlines()]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def rows_of(count: int, prefix: str, *, failing: int | None = None) -> list[dict[str, object]]:
    return [
        {
            "key": f"{prefix}-{n}",
            "video_id": "risky" if n == failing else f"{prefix}-video-{n}",
            "prompt": "the camera pulls back",
        }
        for n in range(count)
    ]


def results(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def batch_process(*argv: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "kling_async", "batch", *argv],
        capture_output=True,
        text=True,
        env=child_env(**env, **FAST),
        timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr


# -- a whole batch ----------------------------------------------------------------------------


def test_a_jsonl_batch_downloads_writes_results_and_counts_the_failure(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str], tmp_path: Path
) -> None:
    """30 rows, one failing: 29 files, 30 result lines in file order, exit 1 with the count."""
    file = write_jsonl(tmp_path / "rows.jsonl", rows_of(30, "a", failing=7))
    out, report = tmp_path / "out", tmp_path / "report.jsonl"

    status, stdout, stderr = batch_process(
        str(file), "--out", str(out), "--results", str(report), env=gateway
    )

    assert 1 == status
    lines = results(report)
    assert [f"a-{n}" for n in range(30)] == [line["key"] for line in lines]
    failed = lines[7]
    assert ("failed", "content risk control", None) == (
        failed["status"],
        failed["message"],
        failed["file"],
    )
    others = lines[:7] + lines[8:]
    assert {"succeed"} == {line["status"] for line in others}
    files = sorted(str(line["file"]) for line in others)
    assert sorted(str(path) for path in out.iterdir()) == files
    assert all(Path(name).stat().st_size > 0 for name in files)
    assert 30 == len(stdout.splitlines())
    assert stdout.splitlines()[7].startswith(f"a-7  {failed['task_id']}  failed")
    assert f"1 of 30 rows failed; results in {report}" == stderr.splitlines()[-1]
    assert "spent 29 units, 10.15 cash (30 rows reported a cost)" == stderr.splitlines()[-2]
    assert ("0", "0") == (failed["units"], failed["cash"])
    assert {("1", "0.35")} == {(line["units"], line["cash"]) for line in others}
    assert (tmp_path / "rows.jsonl.journal.sqlite3").exists()


def test_running_the_same_batch_again_sends_and_fetches_nothing(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str], tmp_path: Path
) -> None:
    """A finished batch re-run: the same tasks, no new create, no download fetched again."""
    file = write_jsonl(tmp_path / "rows.jsonl", rows_of(5, "b"))
    out = tmp_path / "out"
    assert 0 == batch_process(str(file), "--out", str(out), env=gateway)[0]
    first = results(tmp_path / "rows.jsonl.results.jsonl")
    stamps = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    before = len(tasks_on(capsys))

    status, _, stderr = batch_process(str(file), "--out", str(out), env=gateway)

    assert 0 == status
    assert first == results(tmp_path / "rows.jsonl.results.jsonl")
    assert before == len(tasks_on(capsys))
    assert stamps == {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    assert "downloaded 5/5 (0 B, 5 already there)" in stderr
    assert "all 5 rows succeeded; results in" in stderr.splitlines()[-1]


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(
    gateway: dict[str, str], tmp_path: Path
) -> None:
    """Piped stderr: a first line, count lines without escape codes; results on stdout only."""
    file = write_jsonl(tmp_path / "rows.jsonl", rows_of(3, "c"))

    status, stdout, stderr = batch_process(str(file), "--json", env=gateway)

    assert 0 == status
    assert "\x1b" not in stdout + stderr
    lines = stderr.splitlines()
    assert lines[0].startswith("batch of 3 rows (Ctrl+C stops waiting;")
    assert lines[-3].endswith("3/3 done  succeed 3  spent 3 units, 1.05 cash")
    assert ["c-0", "c-1", "c-2"] == [json.loads(line)["key"] for line in stdout.splitlines()]
    assert {"key", "task_id", "status", "message", "file", "units", "cash"} == set(
        json.loads(stdout.splitlines()[0])
    )


def test_a_quiet_batch_still_says_what_it_spent(gateway: dict[str, str], tmp_path: Path) -> None:
    """--quiet: no progress, but the summary keeps the cost line before the count."""
    file = write_jsonl(tmp_path / "rows.jsonl", rows_of(2, "q"))

    status, _, stderr = batch_process(str(file), "--quiet", env=gateway)

    assert 0 == status
    assert [
        "spent 2 units, 0.70 cash (2 rows reported a cost)",
        f"all 2 rows succeeded; results in {file}.results.jsonl",
    ] == stderr.splitlines()


def test_a_csv_batch_with_json_output(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str], tmp_path: Path
) -> None:
    """CSV with a header (empty cells are left out); --json: one object per row on stdout."""
    file = tmp_path / "rows.csv"
    file.write_text(
        "key,video_id,prompt,cfg_scale,watermark\n"
        "d-1,d-video-1,wider,0.5,true\n"
        'd-2,d-video-2,"a, b",,\n',
        encoding="utf-8",
    )

    status, out, err = run(capsys, "batch", str(file), "--json")

    assert 0 == status, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [("d-1", "succeed"), ("d-2", "succeed")] == [(r["key"], r["status"]) for r in rows]
    assert rows == results(tmp_path / "rows.csv.results.jsonl")


def test_a_file_without_a_known_suffix_is_sniffed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`{` first means JSON Lines, anything else CSV."""
    jsonl = write_jsonl(tmp_path / "rows.txt", rows_of(2, "e"))
    table = tmp_path / "table.txt"
    table.write_text("key,video_id\ne-1,v\n", encoding="utf-8")

    assert ["e-0", "e-1"] == [row.key for row in _cli_batch_file.read_rows(jsonl)]
    assert ["e-1"] == [row.key for row in _cli_batch_file.read_rows(table)]


# -- the file is checked before anything is sent ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("r.jsonl", '{"key": "k1", "video_id": "v"}\n{"video_id": "v"}\n', "line 2: every row"),
        (
            "r.jsonl",
            '{"key": "k1", "video_id": "v"}\n\n{"key": "k1", "video_id": "w"}\n',
            "line 3: key 'k1' repeats line 1",
        ),
        ("r.jsonl", '{"key": "k1", "video_id": "v", "cfg_scale": 2}\n', "line 1: cfg_scale: must"),
        ("r.jsonl", '{"key": "k1", "video": "v"}\n', "line 1: unknown field 'video'"),
        ("r.jsonl", '{"key": "k1", "video_id": "v"}\n{"key": \n', "line 2: not valid JSON"),
        ("r.jsonl", '["k1", "v"]\n', "line 1: expected a JSON object"),
        ("r.jsonl", '{"key": "k1", "video_id": "v", "prompt": 5}\n', "line 1: prompt must be a"),
        ("r.jsonl", '{"key": "k1"}\n', "line 1: video_id is missing"),
        ("r.jsonl", "\n", "r.jsonl: no rows"),
        ("r.csv", "key,video_id,colour\nk1,v,red\n", "line 1: unknown column 'colour'"),
        ("r.csv", "key,video_id\nk1,v\nk2,\n", "line 3: video_id is missing"),
        ("r.csv", "key,video_id,cfg_scale\nk1,v,high\n", "line 2: cfg_scale must be a number"),
        ("r.csv", "key,video_id,watermark\nk1,v,maybe\n", "line 2: watermark must be true"),
        (
            "r.csv",
            'key,video_id,prompt\nk1,v,"' + "x" * 2501 + '"\n',
            "line 2: prompt: at most 2500 characters",
        ),
        ("r.csv", "video_id\nv\n", "line 1: the header needs the columns key and video_id"),
    ],
)
def test_a_bad_file_is_one_usage_error_and_sends_nothing(
    capsys: pytest.CaptureFixture[str],
    gateway: dict[str, str],
    tmp_path: Path,
    name: str,
    content: str,
    message: str,
) -> None:
    """Exit 2 with batch's usage and the line named; no task, no journal, no results."""
    file = tmp_path / name
    file.write_text(content, encoding="utf-8")
    before = len(tasks_on(capsys))

    status, out, err = run(capsys, "batch", str(file))

    assert (2, "") == (status, out)
    assert err.startswith("usage: kling-async batch ")
    last = err.splitlines()[-1]
    assert last.startswith("kling-async batch: error: ")
    assert message in last
    assert before == len(tasks_on(capsys))
    assert [name] == [path.name for path in tmp_path.iterdir()]


def test_a_missing_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str], tmp_path: Path
) -> None:
    """A file that is not there: exit 2, said in one line."""
    status, _, err = run(capsys, "batch", str(tmp_path / "nope.jsonl"))

    assert 2 == status
    assert f"kling-async batch: error: cannot read {tmp_path / 'nope.jsonl'}" in err


# -- crashes and Ctrl+C -----------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGKILL")
def test_a_batch_killed_mid_way_resumes_without_paying_twice(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGKILL once tasks exist, then the same command: one task per row, every row done."""
    file = write_jsonl(tmp_path / "rows.jsonl", rows_of(30, "f"))
    out = tmp_path / "out"
    # A create killed before it reached the server is sent again only once its window
    # (2 x read + connect timeout) has closed: short timeouts keep that window short.
    argv = ["batch", str(file), "--out", str(out), "--concurrency", "2"]
    argv += ["--connect-timeout", "0.5", "--read-timeout", "0.5"]
    with serving("kling_async", "emulator", "--step-seconds", "0.5") as url:
        env = use(monkeypatch, url)
        process = cli(
            *argv,
            env={**env, **FAST},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while len(tasks_on(capsys)) < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            process.kill()
            process.wait(timeout=10)
        killed_mid_way = not (tmp_path / "rows.jsonl.results.jsonl").exists()

        status, _, err = batch_process(*argv[1:], env=env)
        tasks = tasks_on(capsys)

    assert -signal.SIGKILL == process.returncode
    assert killed_mid_way  # before the results were written
    assert 0 == status, err
    lines = results(tmp_path / "rows.jsonl.results.jsonl")
    assert [f"f-{n}" for n in range(30)] == [line["key"] for line in lines]
    assert {"succeed"} == {line["status"] for line in lines}
    assert 30 == len(tasks) == len({task["parent_video"]["id"] for task in tasks})  # type: ignore[index]
    assert {task["task_id"] for task in tasks} == {line["task_id"] for line in lines}
    assert 30 == len(list(out.iterdir()))


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_ctrl_c_says_how_to_resume_and_exits_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ctrl+C while waiting: exit 130, `resume with: <the same command>`, no results file."""
    file = write_jsonl(tmp_path / "rows.jsonl", rows_of(3, "g"))
    with serving("kling_async", "emulator", "--step-seconds", "3600") as url:
        env = use(monkeypatch, url)
        process = cli(
            "batch",
            str(file),
            "--concurrency",
            "3",
            env={**env, **FAST},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 30
            while len(tasks_on(capsys)) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=10)

    assert 130 == process.returncode
    assert "" == out
    assert [
        "interrupted: 0 of 3 rows done; the submitted tasks keep running",
        f"resume with: kling-async batch {file} --concurrency 3",
    ] == err.splitlines()[-2:]
    assert not (tmp_path / "rows.jsonl.results.jsonl").exists()


# -- progress -------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_a_terminal_gets_the_live_view(gateway: dict[str, str], tmp_path: Path) -> None:
    """Stderr a terminal, rich installed: a live view that ends as one ✓ line; stdout plain."""
    pytest.importorskip("rich")
    import pty

    file = write_jsonl(tmp_path / "rows.jsonl", rows_of(3, "i"))
    controller, terminal = pty.openpty()
    process = cli(
        "batch",
        str(file),
        "--out",
        str(tmp_path / "out"),
        env={**gateway, **FAST, "TERM": "xterm-256color", "COLUMNS": "120"},
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
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)

    assert 0 == process.returncode
    assert "\x1b[" in screen  # drawn with escape codes
    assert "✓ batch 3/3 done in 0:0" in plain
    assert "succeed 3  |  downloaded 3/3" in plain
    assert "batch of 3 rows" not in plain  # not the plain lines
    assert "\x1b" not in out
    assert ["i-0", "i-1", "i-2"] == [line.split()[0] for line in out.splitlines()]


def test_plain_progress_prints_changes_at_a_bounded_rate() -> None:
    """A changed line at most every interval, a repeat every heartbeat, the last at close."""
    now = [0.0]
    batch = _cli_batch_state.Run(
        [
            _cli_batch_file.Row(line=n, key=f"k{n}", request=ExtendRequest(video_id="v"))
            for n in range(2)
        ],
        clock=lambda: now[0],
    )
    stream = io.StringIO()
    display = _cli_batch_state.batch_display(len(batch.outcomes))
    progress = _cli_progress.PlainView(display, batch.snapshot(), stream, clock=lambda: now[0])
    first, second = batch.outcomes
    for tick in range(1, 401):  # 100 s in quarter seconds
        now[0] = tick / 4
        if tick == 2:
            first.status = second.status = "submitted"
        if tick == 3:
            first.status = "succeed"
        progress.update(batch.snapshot())
        progress.tick()
    second.status = "failed"
    progress.update(batch.snapshot())
    progress.close()

    assert [
        "batch of 2 rows (Ctrl+C stops waiting; the tasks keep running and the same command "
        "resumes)",
        "0:00  0/2 done  pending 2",
        "0:02  1/2 done  submitted 1, succeed 1  ETA 0:02",
        "0:32  1/2 done  submitted 1, succeed 1  ETA 0:32",
        "1:02  1/2 done  submitted 1, succeed 1  ETA 1:02",
        "1:32  1/2 done  submitted 1, succeed 1  ETA 1:32",
        "1:40  2/2 done  succeed 1, failed 1",
    ] == stream.getvalue().splitlines()


# -- extend --wait --download -----------------------------------------------------------------


@pytest.mark.usefixtures("gateway")
def test_extend_wait_download_saves_the_result_and_prints_its_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--json gets a "file" field; text output gets the path on its own line; DIR is made."""
    folder = tmp_path / "new" / "videos"

    status, out, err = run(capsys, "extend", "h-1", "--wait", "--download", str(folder), "--json")

    assert 0 == status, err
    shown = json.loads(out)
    assert Path(shown["file"]).parent == folder
    assert Path(shown["file"]).stat().st_size > 0
    assert "downloading " in err

    status, out, _ = run(capsys, "extend", "h-2", "--wait", "--download", str(folder), "-q")
    task_line, path = out.splitlines()
    assert (0, "succeed") == (status, task_line.split()[1])
    assert Path(path).is_file()


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--download", "{dir}"], "--download saves the result of --wait; pass --wait too"),
        (["--wait", "--download", "{file}"], "--download: cannot use"),
    ],
)
def test_a_bad_download_argument_creates_no_task(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    """Exit 2 before anything is sent: --download needs --wait and a usable folder."""
    (tmp_path / "file").write_text("x")
    argv = [a.format(dir=tmp_path, file=tmp_path / "file") for a in argv]
    before = len(tasks_on(capsys))

    status, _, err = run(capsys, "extend", "h-3", *argv)

    assert 2 == status
    assert message in err.splitlines()[-1]
    assert before == len(tasks_on(capsys))


def test_the_test_poll_variable_sets_a_fast_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """KLING_ASYNC_TEST_POLL_SECONDS polls every N s; unset or junk changes nothing."""
    monkeypatch.setattr(_cli_output, "SESSION_OPTIONS", {})
    assert {} == _cli_output.session_options()
    monkeypatch.setenv(_cli_output.TEST_POLL_VARIABLE, "junk")
    assert {} == _cli_output.session_options()
    monkeypatch.setenv(_cli_output.TEST_POLL_VARIABLE, "0.05")
    policy = _cli_output.session_options()["poll_policy"]
    assert (0.05, 0.05, 0.05) == (policy.first_delay, policy.interval, policy.max_delay)
    assert os.environ[_cli_output.TEST_POLL_VARIABLE] == "0.05"


# -- rows without a result ------------------------------------------------------------------


def test_a_refused_create_is_an_error_row_and_is_not_sent_again(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The gateway refuses a row: `error` with the reason, exit 1; the re-run sends nothing."""
    file = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            {"key": "j-1", "video_id": "j-video-1", "parent_task_id": "p-1"},
            {"key": "j-2", "video_id": "j-video-2"},  # no parent task: refused
        ],
    )
    with serving("kling_async", "emulator", "--require-parent-task-id") as url:
        use(monkeypatch, url)
        status, out, err = run(capsys, "batch", str(file), "--json")
        again, _, _ = run(capsys, "batch", str(file), "--json")
        tasks = tasks_on(capsys)

    first, second = (json.loads(line) for line in out.splitlines())
    assert (1, 1) == (status, again)
    assert "succeed" == first["status"]
    assert ("error", None) == (second["status"], second["task_id"])
    assert "task_id is required" in second["message"]
    assert "1 of 2 rows failed; results in" in err.splitlines()[-1]
    assert 1 == len(tasks)


@pytest.mark.usefixtures("gateway")
def test_a_key_edited_to_another_request_is_an_error_row(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The journal knows the key with another prompt: that row is `error`, nothing is sent."""
    file = write_jsonl(tmp_path / "rows.jsonl", rows_of(1, "k"))
    assert 0 == run(capsys, "batch", str(file))[0]
    before = len(tasks_on(capsys))
    write_jsonl(file, [{**rows_of(1, "k")[0], "prompt": "something else"}])

    status, out, _ = run(capsys, "batch", str(file), "--json")

    [row] = [json.loads(line) for line in out.splitlines()]
    assert (1, "error") == (status, row["status"])
    assert "k-0" in row["message"]
    assert before == len(tasks_on(capsys))


def test_a_batch_larger_than_the_parallel_task_limit_finishes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Kling's limit (1303) holds creates back; each finished row frees a slot for the next."""
    file = write_jsonl(tmp_path / "rows.jsonl", rows_of(9, "m"))
    with serving("kling_async", "emulator", "--step-seconds", "0.1", "--max-running", "3") as url:
        env = use(monkeypatch, url)
        status, _, err = batch_process(str(file), env=env)
        tasks = tasks_on(capsys)

    assert 0 == status, err
    assert 9 == len(tasks)
    assert {"succeed"} == {
        line["status"] for line in results(tmp_path / "rows.jsonl.results.jsonl")
    }


# -- hardening: outputs checked, inputs bounded, before the first create ------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--results", "{tmp}/missing/dir/r.jsonl"], "--results: the folder '{tmp}/missing/dir'"),
        (["--results", "{tmp}"], "--results: '{tmp}' is a folder"),
        (["--journal", "{tmp}/missing/j.sqlite3"], "--journal: the folder '{tmp}/missing'"),
        (["--out", "{tmp}/rows.jsonl"], "--out: cannot use '{tmp}/rows.jsonl' as a folder"),
    ],
)
def test_an_unwritable_output_is_a_usage_error_before_any_create(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    message: str,
) -> None:
    """Each output path is checked first: exit 2, one line naming the flag, no create sent."""
    file = write_jsonl(tmp_path / "rows.jsonl", rows_of(3, "o"))
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    with emulator_thread() as emulator:
        use(monkeypatch, emulator.gateway_url)

        status, out, err = run(capsys, "batch", str(file), *argv)
        creates = emulator.count("create")

    assert (2, "", 0) == (status, out, creates)
    assert err.startswith("usage: kling-async batch ")
    assert f"kling-async batch: error: {message.format(tmp=tmp_path)}" in err.splitlines()[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"key": "k1", "video_id": "v"}\n{"key": "k2", "video_id": ' + "[" * 100_000 + "\n",
            "line 2: the JSON is nested too deeply",
        ),
        ('{"key": "k\\ud800", "video_id": "v"}\n', "line 1: 'k\\\\ud800' is not valid Unicode"),
        ('{"key": "k1", "video_id": "v\\udfff"}\n', "line 1: 'v\\\\udfff' is not valid Unicode"),
        ("/dev/zero", "/dev/zero: line 1 is longer than 1 MiB: not a batch file"),
    ],
    ids=["nested", "surrogate-key", "surrogate-value", "dev-zero"],
)
def test_a_hostile_batch_file_is_a_usage_error_before_any_create(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str, message: str
) -> None:
    """Deep nesting, a lone surrogate, an endless file: exit 2 with one line, no traceback, no
    create (as its own process: stdout is a strict UTF-8 pipe, and /dev/zero could hang)."""
    if content == "/dev/zero":
        if not Path("/dev/zero").exists():
            pytest.skip("no /dev/zero")
        file = Path("/dev/zero")
    else:
        file = tmp_path / "rows.jsonl"
        file.write_text(content, encoding="utf-8")
    with emulator_thread() as emulator:
        env = use(monkeypatch, emulator.gateway_url)

        status, out, err = batch_process(str(file), env=env, timeout=30)
        creates = emulator.count("create")

    assert (2, "", 0) == (status, out, creates)
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("kling-async batch: error: ")
    assert message in err.splitlines()[-1]


def test_a_file_larger_than_the_cap_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Past MAX_FILE_BYTES the file is refused without being read to its end."""
    monkeypatch.setattr(_cli_batch_file, "MAX_FILE_BYTES", 1000)
    file = write_jsonl(tmp_path / "rows.jsonl", rows_of(40, "z"))

    status, _, err = run(capsys, "batch", str(file))

    assert 2 == status
    assert f"{file}: larger than 0 MiB: split it" in err.splitlines()[-1]


# -- hardening: what the progress and the files say ---------------------------------------------


def test_result_files_are_named_by_the_rows_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--out`: each file is named after its row's key (made safe), not the video id."""
    keys = ["shot-01", "shot 02", "../escape", "Shot-01"]
    file = write_jsonl(
        tmp_path / "rows.jsonl", [{"key": key, "video_id": f"v{n}"} for n, key in enumerate(keys)]
    )
    out = tmp_path / "out"
    stems = _cli_batch_file.file_stems(keys)
    with emulator_thread(polls_to_start=0, polls_to_finish=0) as emulator:
        use(monkeypatch, emulator.gateway_url)

        status, stdout, err = run(capsys, "batch", str(file), "--out", str(out), "--json")

    assert 0 == status, err
    files = {row["key"]: Path(row["file"]) for row in map(json.loads, stdout.splitlines())}
    assert {key: out / f"{stems[key]}.mp4" for key in keys} == files
    assert sorted(files.values()) == sorted(out.iterdir())
    assert re.fullmatch(r"shot_02-[0-9a-f]{8}", stems["shot 02"])
    assert re.fullmatch(r"___escape-[0-9a-f]{8}", stems["../escape"])
    assert stems["shot-01"].startswith("shot-01-")  # one file ignoring case: both get the digest
    assert stems["Shot-01"].startswith("Shot-01-")


def test_file_stems_are_safe_short_and_distinct() -> None:
    """Only [A-Za-z0-9._-], never `.`/`..`/hidden, at most 100 + 9 characters, all distinct
    even ignoring case; a key that is already safe keeps its name."""
    keys = ["plain_key-1.v2", "..", ".", ".hidden", "a/b", "a\\b", "x" * 300, "é", "A", "a", "-rf"]
    stems = _cli_batch_file.file_stems(keys)

    assert "plain_key-1.v2" == stems["plain_key-1.v2"]
    assert len({stem.casefold() for stem in stems.values()}) == len(keys)
    for stem in stems.values():
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,108}", stem), stem
    assert stems == _cli_batch_file.file_stems(list(reversed(keys)))  # the keys alone decide


def test_the_download_count_and_bytes_agree() -> None:
    """Two of six downloads have all their bytes but are not in place yet: 0/6 done, and the
    bytes are said to be those of the 2 in progress."""
    rows = [
        _cli_batch_file.Row(line=n, key=f"k{n}", request=ExtendRequest(video_id="v"))
        for n in range(6)
    ]
    batch = _cli_batch_state.Run(rows, clock=lambda: 0.0)
    batch.downloads = 6
    batch.received("k0", 262_144, 262_144)
    batch.received("k1", 262_144, 262_144)
    assert "downloaded 0/6 (0 B, 2 in progress: 524.3 kB of 524.3 kB)" in _cli_batch_state.describe(
        batch.snapshot()
    )

    batch.fetched("k0", ok=True)
    batch.fetched("k1", ok=False)
    assert "downloaded 1/6, 1 failed (262.1 kB)" in _cli_batch_state.describe(batch.snapshot())


def test_one_row_is_one_row(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str], tmp_path: Path
) -> None:
    """`batch of 1 row`, `1 row succeeded`: the plural only for more than one."""
    file = write_jsonl(tmp_path / "rows.jsonl", rows_of(1, "p"))

    status, _, err = batch_process(str(file), env=gateway)

    assert 0 == status
    assert err.startswith("batch of 1 row (Ctrl+C")
    assert err.splitlines()[-1].startswith("1 row succeeded; results in ")


def test_a_hostile_status_message_is_cleaned_in_the_rows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A row's message on stdout and stderr is cleaned; the results file keeps it exactly."""
    file = write_jsonl(tmp_path / "rows.jsonl", [{"key": "q-1", "video_id": "evil"}])
    with emulator_thread(polls_to_start=0, polls_to_finish=0) as emulator:
        emulator.fail_video("evil", HOSTILE)
        env = use(monkeypatch, emulator.gateway_url)

        status, out, err = batch_process(str(file), env=env)

    assert 1 == status
    assert [] == UNSAFE.findall(out + err)
    assert "failed  (content risk control OK everything succeeded" in out
    assert HOSTILE == results(tmp_path / "rows.jsonl.results.jsonl")[0]["message"]
