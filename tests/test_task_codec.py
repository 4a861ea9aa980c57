"""The task codec: a task travels through the fleet's Redis as Kling's wire JSON, unchanged."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import pytest

from kling_async import sansio
from kling_async._task_codec import decode_task, encode_task, updated_millis
from kling_async.models import Cost, Task, TaskInfo, TaskResult, TaskStatus, Video
from kling_async.sansio import HTTPResponse

UTC = dt.timezone.utc


def _full() -> Task:
    return Task(
        task_id="t-1",
        status=TaskStatus.SUCCEED,
        status_message="ok, done",
        created_at=dt.datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC),
        updated_at=dt.datetime(2026, 1, 2, 3, 5, 6, 456000, tzinfo=UTC),
        info=TaskInfo(
            parent_video=Video(id="v-0", url="https://x/v0.mp4", duration=5.1),
            external_task_id="key-\u00e9",
        ),
        result=TaskResult(
            videos=(
                Video(
                    id="v-1",
                    url="https://x/v1.mp4",
                    duration=10.05,
                    watermark_url="https://x/v1-wm.mp4",
                ),
            )
        ),
        final_unit_deduction="1.5",
        cost=Cost(
            units=decimal.Decimal("1.5"),
            cash=decimal.Decimal("0.3500"),
            list_price=decimal.Decimal("1E+1"),
        ),
    )


@pytest.mark.parametrize(
    "task",
    [
        _full(),
        Task(task_id="t-2", status=TaskStatus.SUBMITTED),
        Task(task_id="t-3", status=TaskStatus("queueing"), status_message="new status"),
        Task(
            task_id="t-4",
            status=TaskStatus.PROCESSING,
            updated_at=dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        ),
    ],
    ids=["every field", "bare", "unknown status", "sub-millisecond time"],
)
def test_a_task_round_trips(task: Task) -> None:
    """decode_task(encode_task(task)) is the same task, every field."""
    assert task == decode_task(encode_task(task))
    assert task == decode_task(encode_task(task).encode())


def test_the_text_is_what_the_query_parser_reads() -> None:
    """The encoded text is Kling's task object: a query reply with it as data parses alike."""
    task = _full()
    body = json.dumps({"code": 0, "message": "SUCCEED", "data": json.loads(encode_task(task))})
    response = HTTPResponse(status=200, headers={}, body=body.encode())
    assert task == sansio.parse_task(response, dt.datetime.now(UTC), task_id="t-1")


def test_unknown_fields_are_tolerated() -> None:
    """A task object with fields the SDK does not know reads as the task it knows."""
    text = '{"task_id":"t-9","task_status":"processing","brand_new":{"x":1},"task_info":null}'
    assert Task(task_id="t-9", status=TaskStatus.PROCESSING) == decode_task(text)


@pytest.mark.parametrize("text", ["[1]", "{}", '{"task_id": 5}', "not json"])
def test_what_is_not_a_task_is_a_value_error(text: str) -> None:
    """Text that is not a task object raises ValueError."""
    with pytest.raises(ValueError):
        decode_task(text)


def test_updated_millis_orders_tasks() -> None:
    """updated_millis: Unix milliseconds of updated_at, -1 without one."""
    assert -1 == updated_millis(Task(task_id="t", status=TaskStatus.SUBMITTED))
    assert 1_767_323_106_456 == updated_millis(_full())
