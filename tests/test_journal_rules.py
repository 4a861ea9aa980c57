"""The journal's state machine as values: claim outcomes, moves, settling, resuming."""

from __future__ import annotations

import ast
import pathlib

import pytest

import kling_async
from kling_async._journal import ClaimOutcome, EntryState, canonical, fingerprint
from kling_async._journal_rules import (
    MARK_CREATED,
    MARK_NOT_SENT,
    MARK_REFUSED,
    MARK_SENDING,
    WITH_TASK,
    Move,
    carries_stamp,
    existing_outcome,
    is_pending,
    missed_move,
    settle_refusal,
    to_record,
)
from kling_async.models import ExtendRequest

REQUEST = ExtendRequest(video_id="video-1", prompt="a cat")
STAMPED = ExtendRequest(video_id="video-1", prompt="a cat", external_task_id="stamp-1")
S = EntryState


@pytest.mark.parametrize(
    ("state", "owner_alive", "expected"),
    [
        (S.CREATED, False, ClaimOutcome.EXISTING),
        (S.CREATED, True, ClaimOutcome.EXISTING),
        (S.FINISHED, False, ClaimOutcome.EXISTING),
        (S.REFUSED, False, ClaimOutcome.REFUSED),
        (S.REFUSED, True, ClaimOutcome.REFUSED),
        (S.GONE, False, ClaimOutcome.GONE),
        (S.INTENT, True, ClaimOutcome.BUSY),
        (S.SENDING, True, ClaimOutcome.BUSY),
        (S.INTENT, False, ClaimOutcome.FRESH),
        (S.SENDING, False, ClaimOutcome.IN_DOUBT),
    ],
)
def test_a_claim_of_a_recorded_key_follows_the_table(
    state: EntryState, owner_alive: bool, expected: ClaimOutcome
) -> None:
    """A task or a refusal is final; a live owner's key is busy; else it is taken over."""
    assert expected == existing_outcome(state, owner_alive=owner_alive)


@pytest.mark.parametrize(
    ("move", "source", "target", "releases"),
    [
        (MARK_SENDING, S.INTENT, S.SENDING, False),
        (MARK_NOT_SENT, S.SENDING, S.INTENT, False),
        (MARK_CREATED, S.SENDING, S.CREATED, True),
        (MARK_REFUSED, S.SENDING, S.REFUSED, True),
    ],
)
def test_each_owned_move_goes_from_one_state_to_one_state(
    move: Move, source: EntryState, target: EntryState, releases: bool
) -> None:
    """The moves of the diagram; only those that end the create let the key go."""
    assert (source, target, releases) == (move.source, move.target, move.releases)


@pytest.mark.parametrize(
    ("state", "owner", "expected"),
    [
        (None, None, "mark_created('k'): the key was never claimed"),
        ("sending", None, "mark_created('k'): this journal instance does not own the key"),
        ("sending", "other", "mark_created('k'): this journal instance does not own the key"),
        ("intent", "me", "mark_created('k'): the key is intent, not sending"),
        ("sending", "me", None),
    ],
)
def test_a_missed_move_is_explained(state: str | None, owner: str | None, expected: str) -> None:
    """A move on a key never claimed, owned elsewhere or in another state is a session bug;
    a key fit for the move means the task id was the obstacle (None)."""
    error = missed_move(MARK_CREATED, "k", state=state, owner=owner, token="me")
    assert expected == (None if error is None else str(error))


def test_a_stamped_record_matches_the_request_carrying_its_stamp() -> None:
    """A resume claims ``entry.request`` (stamp on it): it is the bare request again."""
    assert carries_stamp(STAMPED, stamped=True, recorded_external_id="stamp-1")
    assert not carries_stamp(STAMPED, stamped=False, recorded_external_id="stamp-1")
    assert not carries_stamp(STAMPED, stamped=True, recorded_external_id="stamp-2")
    assert not carries_stamp(REQUEST, stamped=True, recorded_external_id="stamp-1")


@pytest.mark.parametrize(
    ("request_", "stamp", "via_stamp", "expected"),
    [
        (REQUEST, None, False, (REQUEST, False)),
        (REQUEST, "stamp-1", False, (STAMPED, True)),
        (STAMPED, None, True, (STAMPED, True)),
        (STAMPED, "stamp-9", True, (STAMPED, True)),
    ],
)
def test_a_fresh_claim_records_the_request_with_its_stamp(
    request_: ExtendRequest,
    stamp: str | None,
    via_stamp: bool,
    expected: tuple[ExtendRequest, bool],
) -> None:
    """The record's own stamp is kept; else a given stamp goes on; else none."""
    assert expected == to_record(request_, stamp, via_stamp=via_stamp)


@pytest.mark.parametrize(
    ("state", "owner_alive", "expected"),
    [
        ("sending", False, None),
        ("gone", False, None),
        ("sending", True, "key 'k' is being created by a live journal instance"),
        (
            "created",
            False,
            "key 'k' is created (task t-1): only a key in doubt (sending) or whose task is "
            "gone can be settled",
        ),
        (
            "intent",
            False,
            "key 'k' is intent: only a key in doubt (sending) or whose task is gone can be settled",
        ),
    ],
)
def test_only_a_key_in_doubt_or_gone_can_be_settled(
    state: str, owner_alive: bool, expected: str | None
) -> None:
    """Settling is the caller's decision for a key in doubt or gone, never a live one."""
    task_id = "t-1" if state == "created" else None
    error = settle_refusal("k", state=state, task_id=task_id, owner_alive=owner_alive)
    assert expected == (None if error is None else str(error))


@pytest.mark.parametrize(
    ("state", "owner_alive", "expected"),
    [
        (S.CREATED, False, True),
        (S.SENDING, False, True),
        (S.SENDING, True, False),
        (S.INTENT, False, False),
        (S.FINISHED, False, False),
        (S.REFUSED, False, False),
        (S.GONE, False, False),
    ],
)
def test_resume_picks_up_created_tasks_and_abandoned_sends(
    state: EntryState, owner_alive: bool, expected: bool
) -> None:
    """A task not seen finished, or a send in doubt that nobody alive is still making."""
    assert expected == is_pending(state, owner_alive=owner_alive)


def test_the_states_with_a_task_are_created_finished_and_gone() -> None:
    """Those records must name a task id."""
    assert {S.CREATED, S.FINISHED, S.GONE} == WITH_TASK


def test_a_request_s_identity_ignores_how_a_number_is_written() -> None:
    """1 and 1.0 are the same cfg_scale; None fields are left out; keys are sorted."""
    one = ExtendRequest(video_id="v", prompt="p", cfg_scale=1)
    assert canonical(ExtendRequest(video_id="v", prompt="p", cfg_scale=1.0)) == canonical(one)
    assert '{"cfg_scale":1.0,"prompt":"p","video_id":"v"}' == canonical(one)


def test_a_request_s_identity_can_leave_its_stamp_out() -> None:
    """The stamp the session adds is not part of the request's identity."""
    assert fingerprint(REQUEST) == fingerprint(STAMPED, without_external_id=True)
    assert fingerprint(REQUEST) != fingerprint(STAMPED)


@pytest.mark.parametrize("module", ["_journal", "_journal_rules"])
def test_the_vocabulary_and_the_rules_do_no_io(module: str) -> None:
    """A shared-store journal reuses them: no sqlite3, thread, file lock or event loop."""
    path = pathlib.Path(kling_async.__file__).with_name(f"{module}.py")
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert set() == imported & {"sqlite3", "threading", "fcntl", "os", "anyio", "aiohttp", "time"}
