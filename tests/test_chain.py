"""Specification of a chain's pure decisions: its prompts, its source, its plan, its keys."""

from __future__ import annotations

import pytest

from kling_async import (
    ExtendRequest,
    ImageToVideo,
    InvalidArgumentError,
    Task,
    TaskResult,
    TaskStatus,
    TextToVideo,
    Video,
)
from kling_async._chain import (
    LinkPrompt,
    check_plan,
    link_key,
    link_prompts,
    next_request,
    source_seconds,
    source_video,
    stop_message,
)


def _task(status: TaskStatus, *videos: Video) -> Task:
    return Task(task_id="t1", status=status, result=TaskResult(videos=videos))


def test_prompts_are_strings_or_mappings_in_order() -> None:
    """A str is a prompt; a mapping gives a prompt and extend's other options."""
    links = link_prompts(["a", {"prompt": "b", "negative_prompt": "c", "cfg_scale": 0.5}])

    assert (
        LinkPrompt(prompt="a"),
        LinkPrompt(prompt="b", negative_prompt="c", cfg_scale=0.5),
    ) == links


@pytest.mark.parametrize(
    ("prompts", "words"),
    [
        ([], "must not be empty"),
        ([{"negative_prompt": "x"}], "prompts[0]: the 'prompt' key is required"),
        (["a", {"prompt": "b", "seed": 1, "model": 2}], "prompts[1]: unknown keys 'model', 'seed'"),
        (["a", "b", {"prompt": "c", "cfg_scale": 2}], "prompts[2]:"),
        (["x" * 2501], "prompts[0]:"),
    ],
)
def test_bad_prompts_are_value_errors_naming_the_item(prompts: object, words: str) -> None:
    """Prompts are checked as `extend` checks them, before any I/O, naming the item."""
    with pytest.raises(ValueError) as caught:
        link_prompts(prompts)

    assert words in str(caught.value)


@pytest.mark.parametrize("prompts", ["one prompt", [3], [{"prompt": 3}], None])
def test_prompts_of_the_wrong_type_are_type_errors(prompts: object) -> None:
    """A bare str (not a sequence of prompts) and non-text prompts are TypeErrors."""
    with pytest.raises(TypeError):
        link_prompts(prompts)


def test_the_source_video_of_each_kind_of_source() -> None:
    """A video id is itself, a succeeded task its video, a request nothing yet."""
    done = _task(TaskStatus.SUCCEED, Video(id="v9", duration=10.0))

    assert "v1" == source_video("v1")
    assert "v9" == source_video(done)
    assert None is source_video(TextToVideo(prompt="a cat"))
    assert None is source_video(ImageToVideo(image="https://example.com/a.png"))


@pytest.mark.parametrize(
    "task",
    [_task(TaskStatus.PROCESSING), _task(TaskStatus.FAILED), _task(TaskStatus.SUCCEED)],
    ids=["running", "failed", "no video"],
)
def test_a_task_source_must_have_succeeded_with_a_video(task: Task) -> None:
    """A chain cannot start from a task that has no video to extend."""
    with pytest.raises(ValueError, match="starts from a succeeded task"):
        source_video(task)


def test_a_source_of_another_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="source must be"):
        source_video(42)


def test_the_source_length_each_source_tells() -> None:
    """A request's duration (Kling's 5 s by default), a task's video's, else what is known."""
    assert 10.0 == source_seconds(TextToVideo(prompt="a", duration="10"), None)
    assert 5.0 == source_seconds(ImageToVideo(image="https://example.com/a.png"), None)
    assert 42.5 == source_seconds(_task(TaskStatus.SUCCEED, Video(id="v", duration=42.5)), 1.0)
    assert 60.0 == source_seconds("v1", 60.0)
    assert None is source_seconds("v1", None)


@pytest.mark.parametrize(
    ("seconds", "links", "refused"),
    [
        (5.0, 35, False),  # 180 s exactly: allowed
        (5.0, 36, True),  # 185 s
        (None, 36, False),  # unknown source: only the links count (180 s)
        (None, 37, True),
        (170.0, 2, False),
        (171.0, 2, True),
    ],
)
def test_a_plan_past_three_minutes_is_refused(
    seconds: float | None, links: int, refused: bool
) -> None:
    """Known source length + 5 s per link may not pass 180 s."""
    assert refused == (check_plan(seconds, links) is not None)


def test_a_refused_plan_names_its_numbers() -> None:
    error = check_plan(150.0, 7)

    assert isinstance(error, InvalidArgumentError)
    assert "prompts" == error.field
    assert "7 extends (5 s each at most) on a 150 s source could reach 185 s" in str(error)
    assert "180 s" in str(error)
    assert "nothing was sent" in str(error)


def test_each_link_is_keyed_under_the_chain_s_key() -> None:
    """The source is key/0, the extend for prompt i is key/i; unkeyed chains have none."""
    assert ("row-7/0", "row-7/12", None) == (link_key("row-7", 0), link_key("row-7", 12), None)
    assert None is link_key(None, 3)


def test_the_next_link_extends_the_video_the_previous_one_made() -> None:
    link = LinkPrompt(prompt="on", negative_prompt="blur", cfg_scale=0.3)

    expected = ExtendRequest(video_id="v5", prompt="on", negative_prompt="blur", cfg_scale=0.3)
    assert expected == next_request("v5", link)


def test_a_stop_message_says_where_and_how_to_go_on() -> None:
    keyed = stop_message(key="k", link=3, links=12, why="boom", finished=3, source_made=True)
    unkeyed = stop_message(key=None, link=0, links=4, why="no", finished=0, source_made=True)

    assert keyed.startswith("the chain stopped at link 3 of 12: boom; 2 of 12 links finished")
    assert "'k/3'" in keyed
    assert "the chain stopped at its source: no; 0 of 4 links finished" == unkeyed
