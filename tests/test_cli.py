"""The command line, run in-process against an emulator served by a child process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from kling_async._cli import main


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """`python -m kling_async.testing` on a free port; yields its gateway base URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kling_async.testing",
            "--port",
            "0",
            "--polls-to-start",
            "0",
            "--polls-to-finish",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
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


@pytest.fixture
def gateway_env(served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials as a user would set them for a gateway."""
    monkeypatch.setenv("KLING_API_KEY", "test-key")
    monkeypatch.setenv("KLING_BASE_URL", served)
    monkeypatch.delenv("KLING_ACCESS_KEY", raising=False)
    monkeypatch.delenv("KLING_SECRET_KEY", raising=False)


def test_demo_runs_against_the_built_in_emulator(capsys: pytest.CaptureFixture[str]) -> None:
    """`demo` needs no account: three tasks, one retried create, one failure shown."""
    assert 0 == main(["demo", "--step", "0.01"])

    out = capsys.readouterr().out
    assert "3 tasks created" in out
    assert "1 retried" in out
    assert "failed  (content risk control)" in out
    assert out.count("succeed") == 2


@pytest.mark.usefixtures("gateway_env")
def test_extend_wait_get_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    """extend --wait prints the task twice (submitted, then done); get and list find it."""
    assert 0 == main(["extend", "vid-1", "--prompt", "wider", "--wait", "--json"])
    submitted, finished = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert ("submitted", "succeed") == (submitted["status"], finished["status"])
    assert finished["videos"][0]["url"]

    assert 0 == main(["get", submitted["task_id"], "--json"])
    assert "succeed" == json.loads(capsys.readouterr().out)["status"]

    assert 0 == main(["wait", submitted["task_id"]])
    assert submitted["task_id"] in capsys.readouterr().out

    assert 0 == main(["list", "--page-size", "5", "--json"])
    listed = [json.loads(line)["task_id"] for line in capsys.readouterr().out.splitlines()]
    assert submitted["task_id"] in listed


@pytest.mark.usefixtures("gateway_env")
def test_errors_exit_1_and_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A Kling error is one line on stderr and exit 1; a bad argument is exit 2."""
    assert 1 == main(["get", "no-such-task"])
    assert "error: NotFoundError" in capsys.readouterr().err

    assert 2 == main(["extend", "vid-1", "--cfg-scale", "7"])
    assert "cfg_scale" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exited:
        main(["extend", "vid-1", "--timeout", "3"])
    assert 2 == exited.value.code
