"""`kling-async journal show | settle | forget` against an emulator served by a child process.

Journals are written through `SQLiteJournal` as a batch would leave them: a create left
``sending`` by a process that died (claim, mark_sending, then close without an answer), a
task that vanished (``gone``), a refused request. Commands run in-process (``main(argv)``)
with instant policies, as in ``test_cli.py``, except where a live owner must be another
process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from kling_async import (
    ExtendRequest,
    PollPolicy,
    RetryPolicy,
    SQLiteJournal,
    _cli_output,
)

from .test_cli import child_env, cli, run, serving, task_count, use

PROMPT = "the camera pulls back"


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """The first query shows processing, the next the end."""
    with serving(
        "kling_async", "emulator", "--polls-to-start", "0", "--polls-to-finish", "1"
    ) as url:
        yield url


@pytest.fixture(autouse=True)
def instant(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process commands poll and retry without sleeping; credentials come from nowhere."""
    options = {"poll_policy": PollPolicy.instant(), "retry_policy": RetryPolicy.instant()}
    monkeypatch.setattr(_cli_output, "SESSION_OPTIONS", options)
    for name in ("KLING_API_KEY", "KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def gateway(served: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return use(monkeypatch, served)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def request(video_id: str) -> ExtendRequest:
    """The request a batch row ``{"key": ..., "video_id": ..., "prompt": PROMPT}`` makes."""
    return ExtendRequest(video_id=video_id, prompt=PROMPT)


async def leave_in_doubt(journal: SQLiteJournal, key: str, video_id: str) -> None:
    """What a process killed while its create was on the wire leaves: SENDING, no answer."""
    await journal.claim(key, request(video_id), now=now())
    await journal.mark_sending(key, now())


async def fill(
    path: Path,
    *,
    doubts: Iterable[str] = (),
    gone: Iterable[tuple[str, str]] = (),
    refused: Iterable[tuple[str, str]] = (),
    created: Iterable[tuple[str, str]] = (),
) -> None:
    """A journal with keys in doubt, gone (key, task id), refused (key, reason), created."""
    async with SQLiteJournal(path) as journal:
        for key in doubts:
            await leave_in_doubt(journal, key, f"{key}-video")
        for key, task_id in gone:
            await leave_in_doubt(journal, key, f"{key}-video")
            await journal.mark_created(key, task_id)
            later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
            await journal.mark_gone(task_id, "1203 task not found", before=later)
        for key, reason in refused:
            await leave_in_doubt(journal, key, f"{key}-video")
            await journal.mark_refused(key, reason, code=1301)
        for key, task_id in created:
            await leave_in_doubt(journal, key, f"{key}-video")
            await journal.mark_created(key, task_id)
    # Closing released the keys this instance owned: a SENDING row is now in doubt.


def write_journal(path: Path, **keys: Any) -> None:
    """`fill` from synchronous code."""
    anyio.run(functools.partial(fill, path, **keys))


def batch_file(path: Path, *keys: str) -> Path:
    rows = [{"key": key, "video_id": f"{key}-video", "prompt": PROMPT} for key in keys]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def journal_of(file: Path) -> Path:
    return file.with_name(file.name + ".journal.sqlite3")


def make_task(capsys: pytest.CaptureFixture[str], video_id: str) -> str:
    """A task for ``video_id`` on the emulator, as the lost create would have made it."""
    status, out, err = run(capsys, "extend", video_id, "--prompt", PROMPT, "--json")
    assert 0 == status, err
    task_id: str = json.loads(out)["task_id"]
    return task_id


# -- show -----------------------------------------------------------------------------------


def test_show_lists_what_needs_attention_and_counts_the_rest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """In doubt, gone (with why), refused (with why), unreadable (by key); then the counts."""
    path = tmp_path / "j.sqlite3"
    write_journal(
        path,
        doubts=["k-doubt"],
        gone=[("k-gone", "t-gone")],
        refused=[("k-refused", "content risk control")],
        created=[("k-ok", "t-ok"), ("k-bad", "t-bad")],
    )
    with sqlite3.connect(path) as db:  # a record a bug or a hand edit broke
        db.execute("UPDATE creates SET request = 'not json' WHERE key = 'k-bad'")
    db.close()

    status, out, err = run(capsys, "journal", "show", str(path))

    assert 0 == status, err
    lines = out.splitlines()
    assert lines[0].startswith("k-doubt  in doubt  video k-doubt-video, sent 20")
    assert lines[0].endswith(
        ": it may have made a (paid) task; settle it to that task, or forget it"
    )
    assert lines[1].startswith("k-bad  unreadable  journal ")
    assert "the record cannot be read" in lines[1]
    assert "k-gone  gone  task t-gone vanished on the server (1203 task not found)" == lines[2]
    assert (
        "k-refused  refused  video k-refused-video: the server refused it "
        "(1301 content risk control)" == lines[3]
    )
    assert "5 keys: 1 created, 1 in doubt, 1 unreadable, 1 gone, 1 refused" == lines[4]
    assert 5 == len(lines)
    assert f"kling-async journal settle {path} KEY TASK_ID" in err


def test_show_json_is_one_object_with_the_keys_and_the_counts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--json: the same report as one object, nothing on stderr."""
    path = tmp_path / "j.sqlite3"
    write_journal(path, doubts=["k1"], created=[("k2", "t2")])

    status, out, err = run(capsys, "journal", "show", str(path), "--json")

    assert (0, "") == (status, err)
    shown = json.loads(out)
    assert str(path) == shown["journal"]
    [key] = shown["keys"]
    assert ("k1", "in_doubt", "k1-video", None) == (
        key["key"],
        key["state"],
        key["video_id"],
        key["external_task_id"],
    )
    assert dt.datetime.fromisoformat(key["sent_at"]).tzinfo is not None
    assert {"created": 1, "in_doubt": 1} == {k: n for k, n in shown["counts"].items() if n}


def test_show_prints_server_text_without_control_characters(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A refusal reason with ESC, BEL and CR is shown escaped: it cannot rewrite the screen."""
    path = tmp_path / "j.sqlite3"
    write_journal(path, refused=[("k1", "bad\x1b[2J\x07\rOK everything succeeded")])

    status, out, _ = run(capsys, "journal", "show", str(path))

    assert 0 == status
    assert not {"\x1b", "\r", "\x07"} & set(out)
    assert "(1301 bad OK everything succeeded)" in out.splitlines()[0]


@pytest.mark.anyio
async def test_show_tells_a_create_in_progress_from_one_in_doubt(tmp_path: Path) -> None:
    """A SENDING key whose owner still runs is being created, not in doubt; only the dead
    process's key needs attention (`show` runs as its own process: the owner is alive here)."""
    path = tmp_path / "j.sqlite3"
    await fill(path, doubts=["dead"])
    async with SQLiteJournal(path) as journal:
        await leave_in_doubt(journal, "alive", "alive-video")
        done = await anyio.run_process(
            [sys.executable, "-m", "kling_async", "journal", "show", str(path)],
            env=child_env(),
            check=False,
        )

    out = done.stdout.decode()
    assert 0 == done.returncode
    assert out.splitlines()[0].startswith("dead  in doubt  ")
    assert (
        "alive  sending  video alive-video: a running process is creating it now"
        == out.splitlines()[1]
    )
    assert "2 keys: 1 in doubt, 1 sending" == out.splitlines()[2]


@contextlib.contextmanager
def swallowing() -> Iterator[tuple[str, threading.Event]]:
    """A loopback server that reads a request and never answers: a create on the wire.

    Yields its base URL and an event set once a POST's bytes have arrived."""
    received = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            held.append(connection)
            connection.settimeout(5)
            with contextlib.suppress(OSError):
                if connection.recv(65536).startswith(b"POST "):
                    received.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", received
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        server.close()


def test_show_lists_the_create_of_a_batch_killed_while_it_was_on_the_wire(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """SIGKILL while the create waits for its reply: `show` names the key in doubt."""
    file = batch_file(tmp_path / "rows.jsonl", "killed")
    with swallowing() as (url, received):
        batch = cli(
            "batch",
            str(file),
            env={"KLING_API_KEY": "test-key", "KLING_BASE_URL": url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert received.wait(timeout=30), "the batch sent no create"
        finally:
            batch.send_signal(signal.SIGKILL)
            batch.wait(timeout=10)

    status, out, err = run(capsys, "journal", "show", str(journal_of(file)))

    assert 0 == status, err
    first, summary = out.splitlines()
    assert first.startswith("killed  in doubt  video killed-video, sent 20")
    assert "1 key: 1 in doubt" == summary


def test_show_refuses_a_path_that_is_not_a_journal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No file: usage error (exit 2) and none is made; a file that is no journal: exit 1."""
    missing = tmp_path / "missing.sqlite3"
    status, _, err = run(capsys, "journal", "show", str(missing))
    assert 2 == status
    assert f"kling-async journal show: error: JOURNAL: no such file: '{missing}'" in err
    assert not missing.exists()

    other = tmp_path / "notes.txt"
    other.write_text("hello", encoding="utf-8")
    status, _, err = run(capsys, "journal", "show", str(other))
    assert 1 == status
    assert 1 == len(err.splitlines())
    assert err.startswith("error: ")


# -- settle ---------------------------------------------------------------------------------


def test_settle_records_the_task_and_the_next_batch_run_creates_nothing(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str], tmp_path: Path
) -> None:
    """A key in doubt, settled to the task its create made: the batch waits for that task."""
    file = batch_file(tmp_path / "rows.jsonl", "s1")
    write_journal(journal_of(file), doubts=["s1"])
    task_id = make_task(capsys, "s1-video")
    before = task_count(capsys)

    status, out, err = run(capsys, "journal", "settle", str(journal_of(file)), "s1", task_id)

    assert 0 == status, err
    assert f"s1  created  task {task_id}, video s1-video  (was sending)\n" == out
    status, out, err = run(capsys, "batch", str(file), "--json")
    assert 0 == status, err
    assert (task_id, "succeed") == (json.loads(out)["task_id"], json.loads(out)["status"])
    assert before == task_count(capsys)


def test_settle_to_a_task_of_another_video_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str], tmp_path: Path
) -> None:
    """Exit 2 with the reason; the key stays in doubt."""
    path = tmp_path / "j.sqlite3"
    write_journal(path, doubts=["s2"])
    other = make_task(capsys, "someone-elses-video")

    status, out, err = run(capsys, "journal", "settle", str(path), "s2", other)

    assert (2, "") == (status, out)
    assert (
        f"kling-async journal settle: error: task '{other}' extends video "
        "'someone-elses-video', but key 's2' was for video 's2-video'"
    ) == err.splitlines()[-1]
    status, out, _ = run(capsys, "journal", "show", str(path))
    assert out.startswith("s2  in doubt  ")


def test_settle_to_a_task_the_server_does_not_know_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str], tmp_path: Path
) -> None:
    """The query fails: nothing is recorded, one line on stderr."""
    path = tmp_path / "j.sqlite3"
    write_journal(path, doubts=["s3"])

    status, out, err = run(capsys, "journal", "settle", str(path), "s3", "no-such-task")

    assert (1, "") == (status, out)
    assert 1 == len(err.splitlines())
    assert err.startswith("error: ")
    assert err.rstrip().endswith("; nothing was recorded")


def test_settle_of_an_unknown_key_is_exit_1(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "j.sqlite3"
    write_journal(path, doubts=["s4"])

    status, _, err = run(capsys, "journal", "settle", str(path), "nope", "t1")

    assert 1 == status
    assert f"error: key 'nope' is not in journal {path}\n" == err


def test_settle_needs_credentials(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    write_journal(path, doubts=["s5"])

    status, _, err = run(capsys, "journal", "settle", str(path), "s5", "t1")

    assert 2 == status
    assert "error: no credentials: set KLING_API_KEY" in err


# -- forget ---------------------------------------------------------------------------------


def test_forget_a_gone_key_and_the_next_batch_run_creates_a_new_task(
    capsys: pytest.CaptureFixture[str], gateway: dict[str, str], tmp_path: Path
) -> None:
    """A GONE key stops the row (no create) until it is forgotten; then one new task."""
    file = batch_file(tmp_path / "rows.jsonl", "f1")
    write_journal(journal_of(file), gone=[("f1", "vanished-task")])
    before = task_count(capsys)
    status, out, _ = run(capsys, "batch", str(file), "--json")
    assert (1, "error") == (status, json.loads(out)["status"])
    assert before == task_count(capsys)

    status, out, err = run(capsys, "journal", "forget", str(journal_of(file)), "f1", "--yes")

    assert 0 == status, err
    assert "f1  forgotten  (was gone: task vanished-task vanished on the server)\n" == out
    assert "the next batch run of its file creates a new (paid) task for this key\n" == err
    status, out, err = run(capsys, "batch", str(file), "--json")
    assert 0 == status, err
    assert "vanished-task" != json.loads(out)["task_id"]
    assert before + 1 == task_count(capsys)


def test_forget_of_an_unknown_key_is_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "j.sqlite3"
    write_journal(path, doubts=["f2"])

    status, out, err = run(capsys, "journal", "forget", str(path), "nope", "--yes")

    assert (1, "") == (status, out)
    assert f"error: key 'nope' is not in journal {path}\n" == err


class Terminal(io.StringIO):
    """Typed answers on what looks like a terminal."""

    def isatty(self) -> bool:
        return True


def state_of(path: Path, key: str) -> str | None:
    async def read() -> str | None:
        async with SQLiteJournal(path) as journal:
            entry = await journal.get(key)
            return None if entry is None else entry.state.value

    return anyio.run(read)


def test_forget_asks_on_a_terminal_and_only_yes_forgets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The question says the next run pays; Enter (no) keeps the key, exit 1; y forgets it."""
    path = tmp_path / "j.sqlite3"
    write_journal(path, doubts=["f3"])

    monkeypatch.setattr(sys, "stdin", Terminal("\n"))
    status, out, err = run(capsys, "journal", "forget", str(path), "f3")
    assert (1, "") == (status, out)
    assert (
        "forget key 'f3' (in doubt: a create for video f3-video)? The next batch run creates, "
        "and pays for, a new task for it. [y/N] nothing forgotten\n"
    ) == err
    assert "sending" == state_of(path, "f3")

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    status, out, _ = run(capsys, "journal", "forget", str(path), "f3")
    assert 0 == status
    assert "f3  forgotten  (was in doubt: a create for video f3-video)\n" == out
    assert state_of(path, "f3") is None


def test_forget_without_yes_off_a_terminal_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No terminal to ask on and no --yes: nothing is forgotten, even with a 'y' piped in."""
    path = tmp_path / "j.sqlite3"
    write_journal(path, doubts=["f4"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))

    status, out, err = run(capsys, "journal", "forget", str(path), "f4")

    assert (2, "") == (status, out)
    assert err.rstrip().endswith("pass --yes to confirm when not on a terminal")
    assert "sending" == state_of(path, "f4")
