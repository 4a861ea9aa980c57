"""Review of chains over keyed source creates: a chain key re-run with another source must
refuse before paying for anything."""

from __future__ import annotations

import pathlib

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
