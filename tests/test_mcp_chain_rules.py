"""The MCP chain tools' pure rules: the one source a call names, whether a key's journal
entries are this chain's (so a reused key is refused before anything is paid), and the
state of a chain known only from the journal."""

from __future__ import annotations

import datetime as dt

import pytest

from kling_async import ExtendRequest, ImageToVideo, TextToVideo
from kling_async._chain import LinkPrompt
from kling_async._journal import EntryState, JournalEntry
from kling_async._mcp_chain_rules import journal_mismatch, journal_state, same_request, source_kind
from kling_async._mcp_results import ToolProblem

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
LINKS = (LinkPrompt(prompt="p1"), LinkPrompt(prompt="p2", cfg_scale=0.5))


def entry(
    key: str,
    request: ExtendRequest | TextToVideo | ImageToVideo,
    state: EntryState = EntryState.CREATED,
) -> JournalEntry:
    return JournalEntry(
        key=key, request=request, stamped=True, state=state, claimed_at=NOW, task_id="t-" + key
    )


def extend(video_id: str, prompt: str, cfg_scale: float | None = None) -> ExtendRequest:
    return ExtendRequest(
        video_id=video_id, prompt=prompt, cfg_scale=cfg_scale, external_task_id="stamp"
    )


@pytest.mark.parametrize(
    ("video_id", "text", "image"),
    [(None, None, None), ("v1", "a fox", None), ("v1", None, "https://x/a.png")],
)
def test_exactly_one_source(video_id: str | None, text: str | None, image: str | None) -> None:
    with pytest.raises(ToolProblem, match="exactly one source"):
        source_kind(video_id, text, image)


def test_the_one_source_is_named() -> None:
    assert "text" == source_kind(None, "a fox", None)


def test_entries_of_the_same_chain_are_no_mismatch() -> None:
    entries = {1: entry("k/1", extend("v1", "p1")), 2: entry("k/2", extend("v9", "p2", 0.5))}
    assert journal_mismatch("k", "v1", LINKS, entries) is None
    assert journal_mismatch("k", "v1", LINKS, {}) is None


@pytest.mark.parametrize(
    ("source", "entries", "words"),
    [
        (
            "v1",
            {1: entry("k/1", extend("v1", "p1")), 2: entry("k/2", extend("v", "other"))},
            "link 2",
        ),
        ("v1", {1: entry("k/1", extend("v1", "p1", 0.9))}, "link 1"),
        ("v2", {1: entry("k/1", extend("v1", "p1"))}, "extends video v1"),
        ("v1", {0: entry("k/0", TextToVideo(prompt="a fox"))}, "made from a request"),
        (TextToVideo(prompt="a cat"), {0: entry("k/0", TextToVideo(prompt="a fox"))}, "k/0"),
        (TextToVideo(prompt="a fox"), {1: entry("k/1", extend("v1", "p1"))}, "video id"),
        ("v1", {3: entry("k/3", extend("v", "p3"))}, "more than the 2 prompts"),
    ],
    ids=[
        "a later prompt",
        "a cfg_scale",
        "a video",
        "a source",
        "a source request",
        "a video id",
        "more links",
    ],
)
def test_another_chain_under_the_key_is_named(
    source: str | TextToVideo, entries: dict[int, JournalEntry], words: str
) -> None:
    found = journal_mismatch("k", source, LINKS, entries)
    assert found is not None
    assert words in found
    assert "'k'" in found


def test_the_same_source_request_matches_its_journal_entry() -> None:
    fox = TextToVideo(prompt="a fox")
    stamped = TextToVideo(prompt="a fox", external_task_id="stamp")
    assert journal_mismatch("k", fox, LINKS, {0: entry("k/0", stamped)}) is None
    assert same_request(fox, LINKS, TextToVideo(prompt="a fox"), LINKS)
    assert not same_request(fox, LINKS, "v1", LINKS)
    assert not same_request("v1", LINKS, "v1", LINKS[:1])


def test_the_state_of_a_chain_known_only_from_the_journal() -> None:
    made = [entry("k/1", extend("v1", "p1"))]
    refused = [*made, entry("k/2", extend("v", "p2"), EntryState.REFUSED)]
    assert "unknown" == journal_state([], None)[0]
    assert "not_running" == journal_state(made, "succeed")[0]
    assert "chain_videos" in journal_state(made, "processing")[1]
    assert "stopped" == journal_state(made, "failed")[0]
    assert "stopped" == journal_state(refused, None)[0]
