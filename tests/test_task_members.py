"""A task id with its family as one entry of the fleet's shared sets (``watched``, ``slots``):
pure values, no Redis."""

from __future__ import annotations

import pytest

from kling_async._redis_poller import named_tasks
from kling_async._task_members import lua_variants, member, read_member, variants
from kling_async.models import TaskFamily


@pytest.mark.parametrize("family", list(TaskFamily))
def test_an_entry_reads_back_as_its_task_id_and_family(family: TaskFamily) -> None:
    """Every family's entry names its task id and family again."""
    assert ("8402", family) == read_member(member("8402", family))


def test_an_extend_s_entry_is_its_bare_id_as_earlier_versions_wrote_it() -> None:
    """An extend is named as before families existed, and a source names its family."""
    assert "8402" == member("8402", TaskFamily.EXTEND)
    assert "text2video/8402" == member("8402", TaskFamily.TEXT2VIDEO)
    assert "image2video/8402" == member("8402", TaskFamily.IMAGE2VIDEO)


@pytest.mark.parametrize("entry", ["8402", "video-extend/8402", "other/8402", "text2video/", "a/b"])
def test_an_entry_without_a_known_family_reads_as_an_extend(entry: str) -> None:
    """An entry an earlier version wrote (a bare id), or one naming no family this version
    knows, is an extend's, whole."""
    assert (entry, TaskFamily.EXTEND) == read_member(entry)


def test_variants_name_a_task_under_every_family() -> None:
    """Removing a finished task's entries removes it whatever family named it."""
    assert ["7", "text2video/7", "image2video/7"] == variants("7")
    assert "a, 'text2video/' .. a, 'image2video/' .. a" == lua_variants("a")


def test_the_leader_follows_each_task_once_on_its_family() -> None:
    """Interest and slots name tasks with their families; a task named under two (two
    processes disagree) is polled as the one not an extend."""
    entries = ["1", "text2video/2", "image2video/3", "2", "4", "image2video/4"]
    expected = {
        "1": TaskFamily.EXTEND,
        "2": TaskFamily.TEXT2VIDEO,
        "3": TaskFamily.IMAGE2VIDEO,
        "4": TaskFamily.IMAGE2VIDEO,
    }
    assert expected == named_tasks(entries)
