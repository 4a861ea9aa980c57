"""`kling-async chain`: exit codes, resume on re-run, the last video downloaded, against an
emulator on its own thread (in-process runs get instant policies, as in ``test_cli.py``)."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Iterator

import pytest

from kling_async import KlingSession, PollPolicy, RetryPolicy, TextToVideo, _cli_output
from kling_async._cli_chain import ChainSnapshot, chain_frame, default_key
from kling_async.testing import KlingEmulator

from .test_cli import emulator_thread, run, use


@pytest.fixture(autouse=True)
def instant(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process commands poll and retry without sleeping; credentials come from nowhere."""
    options = {"poll_policy": PollPolicy.instant(), "retry_policy": RetryPolicy.instant()}
    monkeypatch.setattr(_cli_output, "SESSION_OPTIONS", options)
    for name in ("KLING_API_KEY", "KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(_cli_output.TEST_POLL_VARIABLE, raising=False)


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[KlingEmulator]:
    with emulator_thread() as served:
        use(monkeypatch, served.gateway_url)
        yield served


def _creates(emulator: KlingEmulator) -> int:
    return sum(1 for request in list(emulator.requests) if request.route == "create")


def test_a_chain_runs_downloads_the_last_video_and_a_re_run_sends_nothing(
    emulator: KlingEmulator, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    """Three links (two --prompt, one from --prompts), the last video in --out; the same
    command again makes no task and fetches nothing again."""
    lines = tmp_path / "more.jsonl"
    lines.write_text(json.dumps({"prompt": "night falls", "cfg_scale": 0.4}) + "\n\n")
    out = tmp_path / "films"
    argv = ["chain", "v0", "--prompt", "beam", "--prompt", "ship", "--prompts", str(lines)]
    argv += ["--out", str(out), "--json"]

    status, stdout, err = run(capsys, *argv)
    again, stdout_again, _ = run(capsys, *argv)

    shown = json.loads(stdout)
    assert (0, 0) == (status, again)
    assert 3 == _creates(emulator)
    assert shown == json.loads(stdout_again)
    last = emulator.tasks[shown["task_id"]]
    assert "night falls" == last.prompt
    assert [out / f"{last.result_video_id}.mp4"] == [pathlib.Path(shown["file"])]
    assert emulator.media_content(last.result_video_id) == pathlib.Path(shown["file"]).read_bytes()
    assert (out / "kling-chain.journal.sqlite3").exists()
    assert "3/3 done" in err


def test_a_re_run_resumes_after_the_links_already_made(
    emulator: KlingEmulator, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    """Links 1-2 made under the key (as a stopped run leaves them): the command makes only
    link 3, on the video link 2 made."""
    journal = tmp_path / "j.sqlite3"

    async def first_two() -> None:
        async with KlingSession(
            "test-key",
            base_url=emulator.gateway_url,
            journal=journal,
            poll_policy=PollPolicy.instant(),
        ) as session:
            await session.chain("v0", ["a", "b"], key="film")

    asyncio.run(first_two())
    status, _, _ = run(
        capsys, "chain", "v0", "--prompt", "a", "--prompt", "b", "--prompt", "c",
        "--key", "film", "--journal", str(journal), "--out", str(tmp_path),
    )  # fmt: skip

    assert 0 == status
    assert 3 == _creates(emulator)
    assert ["a", "b", "c"] == [task.prompt for task in emulator.tasks.values()]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--prompt", "a"], "give exactly one source"),
        (["v0", "--text", "x", "--prompt", "a"], "got SOURCE and --text"),
        (["v0"], "give at least one --prompt"),
        (["v0", "--prompt", "a", "--duration", "5"], "--duration is the length"),
        (["v0", *["--prompt", "a"] * 37], "could reach 185 s"),
        (["v0", "--prompt", "x" * 2501], "--prompt: prompts[0]"),
        (["--image", "/no/such/file.png", "--prompt", "a"], "image"),
    ],
)
def test_a_command_line_that_cannot_run_exits_2_before_any_request(
    emulator: KlingEmulator,
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
    argv: list[str],
    words: str,
) -> None:
    status, _, err = run(capsys, "chain", *argv, "--out", str(tmp_path))

    assert 2 == status
    assert words in err
    assert 0 == len(emulator.requests)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("not json", "--prompts line 1: not JSON"),
        ('{"negative_prompt": "x"}', '--prompts line 1: an object with a "prompt" key'),
        ('{"prompt": "a", "seed": 4}', "unknown keys 'seed'"),
    ],
)
def test_a_bad_prompts_file_exits_2_naming_the_line(
    emulator: KlingEmulator,
    capsys: pytest.CaptureFixture[str],
    tmp_path: pathlib.Path,
    line: str,
    words: str,
) -> None:
    lines = tmp_path / "p.jsonl"
    lines.write_text(line + "\n")

    status, _, err = run(capsys, "chain", "v0", "--prompts", str(lines), "--out", str(tmp_path))

    assert (2, 0) == (status, len(emulator.requests))
    assert words in err


def test_a_failed_link_exits_1_and_says_how_to_resume(
    emulator: KlingEmulator, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    emulator.fail_video("risky")

    status, stdout, err = run(
        capsys, "chain", "risky", "--prompt", "a", "--prompt", "b", "--out", str(tmp_path)
    )

    assert 1 == status
    assert "" == stdout
    assert "the chain stopped at link 1 of 2" in err
    assert "content risk control" in err
    assert "resume with: kling-async chain risky --prompt a --prompt b" in err
    assert 1 == _creates(emulator)


def test_a_chain_from_text_makes_the_source_then_the_links(
    emulator: KlingEmulator, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    """stderr names the text-to-video task the chain made and how to query it (stdout has
    the last link only); that command finds it."""
    status, _, err = run(
        capsys, "chain", "--text", "a fox", "--prompt", "runs", "--out", str(tmp_path)
    )
    source = next(task for task in emulator.tasks.values() if task.prompt == "a fox")
    said = f"kling-async get {source.task_id} --family text2video"
    found, shown, _ = run(capsys, *said.split()[1:])

    assert 0 == status
    assert 2 == _creates(emulator)
    assert f"source: text2video task {source.task_id} ({said})" in err
    assert (0, source.task_id) == (found, shown.split()[0])


def test_the_default_key_is_the_source_and_prompts_hashed() -> None:
    """The same command line gives the same key; another source or prompt another."""
    key = default_key("v0", ["a", "b"])

    assert key == default_key("v0", ["a", "b"])
    assert key.startswith("chain-")
    assert 22 == len(key)
    assert len({key, default_key("v1", ["a", "b"]), default_key("v0", ["a", "c"])}) == 3
    assert default_key(TextToVideo(prompt="v0"), ["a"]) != default_key("v0", ["a"])


def test_a_chain_frame_shows_the_links_done_and_the_running_stage() -> None:
    frame = chain_frame(ChainSnapshot(finished=2, total=5, stage="link 3: processing", elapsed=61))

    assert "1:01  2/5 done  link 3: processing" == frame.line
    assert (2, 5) == (frame.done, frame.total)
