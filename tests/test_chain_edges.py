"""Chains at their edges: a chain key re-run with another source refuses before paying for
anything; a --prompts file's bad line is named; a stop message claims a kept failure only
when the journal keeps one."""

from __future__ import annotations

import pathlib

import anyio
import pytest

from kling_async import ChainError, RetryPolicy, TextToVideo
from kling_async._chain import foreign_source
from kling_async.testing import KlingEmulator

from .helpers import official

pytestmark = pytest.mark.anyio


async def test_a_chain_key_used_from_a_video_refuses_a_text_source_before_paying(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The key's links were made from a video id (no ``key/0``): the same key run from a
    TextToVideo must not pay for a source whose first link the journal then refuses."""
    journal = tmp_path / "chain.sqlite3"
    async with official(emu, journal=journal, retry_policy=RetryPolicy()) as session:
        await session.chain("v0", ["a", "b"], key="film")
        again = session.chain(TextToVideo(prompt="a lighthouse"), ["a", "b"], key="film")
        with pytest.raises(ChainError) as caught:
            await again

    assert caught.value.link == 0
    assert "film/1" in str(caught.value)
    assert 2 == emu.count("create") == len(emu.tasks)  # no text-to-video paid


def test_foreign_source_refuses_only_a_first_link_without_its_source() -> None:
    assert foreign_source("k", source_recorded=True, first_recorded=True) is None
    assert foreign_source("k", source_recorded=False, first_recorded=False) is None
    assert foreign_source("k", source_recorded=True, first_recorded=False) is None
    said = foreign_source("k", source_recorded=False, first_recorded=True)
    assert said is not None
    assert "'k/1'" in said
    assert "nothing was sent" in said


def test_a_bad_field_in_a_prompts_file_names_its_line_not_a_prompt_index(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    """With --prompt options before it, ``prompts[2]`` names no line of the file: the error
    names the flag and the line the user must edit."""
    from .test_cli import run

    lines = tmp_path / "p.jsonl"
    lines.write_text('{"prompt": "ok"}\n{"prompt": "x", "cfg_scale": 7}\n')

    status, _, err = run(
        capsys, "chain", "v0", "--prompt", "a", "--prompts", str(lines), "--out", str(tmp_path)
    )

    assert status == 2
    assert "--prompts line 2: cfg_scale" in err
    assert "prompts[2]" not in err


async def test_a_keyed_chain_stopped_by_a_close_does_not_say_its_link_failed(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """Closing the session stops a keyed chain at a link that did not fail: the message must
    not say its key "gives its failure again" (a re-run resumes that link's task)."""
    emu.auto_advance = False  # link 1 never finishes
    async with official(emu, journal=tmp_path / "j.sqlite3") as session:
        chain = session.chain("v0", ["a", "b"], key="film")
        while not chain.links:
            await anyio.sleep(0.01)
    with pytest.raises(ChainError) as caught:
        await chain

    assert "resumes" in str(caught.value)
    assert "failure again" not in str(caught.value)
