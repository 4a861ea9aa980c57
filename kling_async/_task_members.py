"""A task id with its family, as one string: how the fleet's shared sets name a task.

The fleet's interest set (``watched``) and its parallel-task slots (``slots``) hold task
ids, and the leader polls what they name: each on its family's routes (docs/fleet.md, "One
poller"). An extend is named by its bare id, as every version of this SDK wrote it, so an
entry with no family reads as an extend; a task of another family is ``<family>/<id>``.
Pure: values in, values out.
"""

from __future__ import annotations

from .models import TaskFamily

__all__ = ["lua_variants", "member", "read_member", "variants"]

# The families named with a prefix: every one but the extend (whose entries carry none).
_PREFIXED = tuple(family for family in TaskFamily if family is not TaskFamily.EXTEND)


def member(task_id: str, family: TaskFamily = TaskFamily.EXTEND) -> str:
    """The entry naming ``task_id`` of ``family``: the bare id for an extend."""
    if family is TaskFamily.EXTEND:
        return task_id
    return f"{family.value}/{task_id}"


def read_member(entry: str) -> tuple[str, TaskFamily]:
    """The task id and family an entry names; an entry without a family is an extend's."""
    head, slash, rest = entry.partition("/")
    if slash and rest:
        for family in _PREFIXED:
            if head == family.value:
                return rest, family
    return entry, TaskFamily.EXTEND


def variants(task_id: str) -> list[str]:
    """Every entry that may name ``task_id``, one per family (to remove it whatever its family)."""
    return [member(task_id, family) for family in TaskFamily]


def lua_variants(name: str) -> str:
    """A Lua argument list of every entry that may name the task id in the variable ``name``
    (as `variants`, for the scripts that remove a finished task's entries)."""
    return ", ".join([name, *(f"'{family.value}/' .. {name}" for family in _PREFIXED)])
