"""The in-process task-state store: one state per task id, alive while someone uses it."""

from __future__ import annotations

import gc

from kling_async._task_state import LocalTaskStates, TaskState, TaskStates


def test_one_state_per_task_id_made_on_first_use() -> None:
    """get() makes a state once; find() never makes one."""
    states: TaskStates = LocalTaskStates()
    assert states.find("t1") is None
    first = states.get("t1")
    assert (first, first, 1) == (states.get("t1"), states.find("t1"), len(states))
    assert [first] == list(states)


def test_a_state_nobody_holds_is_let_go() -> None:
    """The store holds states weakly: finished creates nobody uses keep no memory."""
    states = LocalTaskStates()
    held: TaskState | None = states.get("held")
    states.get("dropped")
    gc.collect()
    assert (["held"], 1) == ([state.task_id for state in states], len(states))
    assert held is states.find("held")
