"""Specification of what a task cost: `Task.cost` from queries, list pages and callbacks,
junk read as absent, and `SessionStatistics` summing each finished task once."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import anyio
import pytest
from aiohttp import web

from kling_async import CallbackReceiver, Cost, PollPolicy, Task, TaskStatus, sansio
from kling_async._spending import Spending
from kling_async._task_codec import decode_task, encode_task
from kling_async.callbacks import parse_callback
from kling_async.testing import KlingEmulator

from .helpers import official

NOW = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
PRICED = {"cash_deduction": "0.35", "list_price": "0.50"}
FULL = Cost(units=Decimal("1"), cash=Decimal("0.35"), list_price=Decimal("0.50"))


def reply(**fields: Any) -> sansio.HTTPResponse:
    """A query reply whose finished task carries ``fields`` (raw JSON values)."""
    data = {"task_id": "t-1", "task_status": "succeed", **fields}
    body = json.dumps({"code": 0, "message": "SUCCEED", "request_id": "r", "data": data})
    return sansio.HTTPResponse(status=200, body=body.encode())


def raw_reply(text: str) -> sansio.HTTPResponse:
    """A query reply whose task's cost fields are spelled as ``text`` (JSON, verbatim)."""
    body = '{"code":0,"data":{"task_id":"t-1","task_status":"succeed",' + text + "}}"
    return sansio.HTTPResponse(status=200, body=body.encode())


# -- parsing --------------------------------------------------------------------------------


def test_a_reply_without_deductions_has_no_cost() -> None:
    """Older replies carry no deduction: the cost is None."""
    assert None is sansio.parse_task(reply(), NOW).cost


def test_both_deductions_read_as_exact_decimals() -> None:
    """Units, quota (cash) and list price come out as the decimals the strings spell."""
    task = sansio.parse_task(
        reply(
            final_unit_deduction="2.5",
            final_balance_deduction={"quota": "0.10", "list_price": "0.3"},
        ),
        NOW,
    )
    assert Cost(units=Decimal("2.5"), cash=Decimal("0.10"), list_price=Decimal("0.3")) == (
        task.cost
    )
    assert "2.5" == task.final_unit_deduction  # kept as the server spelled it


def test_json_numbers_are_read_without_a_float() -> None:
    """A JSON fraction is read as text: 18 significant digits survive (a float keeps 17)."""
    task = sansio.parse_task(
        raw_reply(
            '"final_unit_deduction":3,'
            '"final_balance_deduction":{"quota":123456789.123456789,"list_price":0.1}'
        ),
        NOW,
    )
    expected = Cost(
        units=Decimal(3), cash=Decimal("123456789.123456789"), list_price=Decimal("0.1")
    )
    assert expected == task.cost


@pytest.mark.parametrize(
    "value",
    [
        *("NaN", "Infinity", "-Infinity", "sNaN", "abc", "", "  ", "-1", "1e18", "1e-19"),
        *(True, None, [], ["1"], {}, {"value": "1"}, [[{"x": []}]]),
    ],
)
def test_a_value_that_is_not_a_finite_amount_is_absent(value: Any) -> None:
    """A word, NaN, infinity, a negative, junk shapes: absent, never an error."""
    task = sansio.parse_task(
        reply(
            final_unit_deduction="1", final_balance_deduction={"quota": value, "list_price": value}
        ),
        NOW,
    )
    assert Cost(units=Decimal("1")) == task.cost
    alone = sansio.parse_task(reply(final_balance_deduction={"quota": value}), NOW)
    assert None is alone.cost


@pytest.mark.parametrize(
    "balance", ["0.35", 0.35, [], ["0.35"], [{"quota": "0.35"}], None, True, {"quota": {"a": 1}}]
)
def test_a_balance_of_an_unknown_shape_is_absent(balance: Any) -> None:
    """``final_balance_deduction`` that is not an object (or nests junk) reads as no cash."""
    task = sansio.parse_task(reply(final_balance_deduction=balance), NOW)
    assert None is task.cost


@pytest.mark.parametrize("text", ['"NaN"', "NaN", "Infinity", "-0.0", "1E400", "[]", "{}"])
def test_odd_json_spellings_of_the_units_never_fail_a_reply(text: str) -> None:
    """JSON's NaN and Infinity (which Python's reader accepts), huge exponents: no error."""
    task = sansio.parse_task(raw_reply(f'"final_unit_deduction":{text}'), NOW)
    assert TaskStatus.SUCCEED == task.status
    assert task.cost in (None, Cost(units=Decimal(0)))


def test_a_callback_body_is_read_by_the_same_rules() -> None:
    """The receiver's parser reads the bare task object's cost, junk as absent."""
    body = {
        "task_id": "t-1",
        "task_status": "succeed",
        "final_unit_deduction": "2",
        "final_balance_deduction": {"quota": "0.70", "list_price": "NaN"},
    }
    task = parse_callback(json.dumps(body).encode())
    assert task is not None
    assert Cost(units=Decimal("2"), cash=Decimal("0.70")) == task.cost


def test_the_fleet_codec_carries_the_cost() -> None:
    """A parsed task, encoded for the fleet's Redis and decoded, keeps its cost exactly."""
    task = sansio.parse_task(
        reply(
            final_unit_deduction="1.50",
            final_balance_deduction={"quota": "0.3500", "list_price": "1E+1"},
        ),
        NOW,
    )
    assert task == decode_task(encode_task(task))
    only_cost = Task(task_id="t-2", status=TaskStatus.FAILED, cost=Cost(cash=Decimal("0")))
    assert only_cost == decode_task(encode_task(only_cost))


def test_cost_refuses_a_float() -> None:
    """Money is a Decimal: a float given to Cost is a TypeError."""
    with pytest.raises(TypeError):
        Cost(units=1.5)  # type: ignore[arg-type]


# -- spending (pure) ------------------------------------------------------------------------


def _done(task_id: str, cost: Cost | None, status: TaskStatus = TaskStatus.SUCCEED) -> Task:
    return Task(task_id=task_id, status=status, cost=cost)


def test_spending_counts_each_task_once() -> None:
    """The same finished task seen three times adds its cost once; running ones add nothing."""
    spending = Spending()
    for _ in range(3):
        spending.saw(_done("a", FULL))
    spending.saw(_done("b", Cost(units=Decimal("2"))))
    spending.saw(_done("c", FULL, TaskStatus.PROCESSING))
    spending.saw(_done("d", None))
    assert (Decimal("3"), Decimal("0.35")) == (spending.units, spending.cash)


def test_spending_adds_a_part_a_first_sighting_lacked() -> None:
    """A callback without the cash, then a query with it: each part counted once."""
    spending = Spending()
    spending.saw(_done("a", Cost(units=Decimal("1"))))
    spending.saw(_done("a", FULL))
    spending.saw(_done("a", Cost(units=Decimal("9"), cash=Decimal("9"))))
    assert (Decimal("1"), Decimal("0.35")) == (spending.units, spending.cash)


# -- against the emulator -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_finished_task_reports_its_cost_and_a_running_one_none() -> None:
    """Query: no cost while running; units, cash and list price once succeeded; 0 if failed."""
    async with KlingEmulator(**PRICED) as emu, official(emu) as session:
        emu.fail_video("vid-bad")
        handle = await session.extend("vid-1")
        assert None is handle.last.cost if handle.last else True
        assert FULL == (await handle.wait()).cost
        failed = await session.extend("vid-bad")
        with pytest.raises(Exception) as caught:
            await failed.wait()
        zero = Cost(units=Decimal(0), cash=Decimal(0), list_price=Decimal(0))
        assert zero == caught.value.task.cost  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_the_emulator_leaves_out_what_is_none() -> None:
    """unit_deduction=None and no cash options: finished tasks report no cost at all."""
    async with KlingEmulator(unit_deduction=None) as emu, official(emu) as session:
        task = await (await session.extend("vid-1")).wait()
        assert None is task.cost
        assert {"final_unit_deduction", "final_balance_deduction"}.isdisjoint(
            emu.tasks[task.task_id].to_json()
        )


@pytest.mark.anyio
async def test_the_list_carries_the_cost() -> None:
    """A list page's task objects carry their cost too."""
    async with KlingEmulator(**PRICED) as emu, official(emu) as session:
        await (await session.extend("vid-1")).wait()
        listed = [task async for task in session.list_tasks(max_pages=1)]
        assert [FULL] == [task.cost for task in listed]


@pytest.mark.anyio
async def test_statistics_sum_each_finished_task_once() -> None:
    """Two waits on one task, a second handle, a query and list pages: each task counts once."""
    async with (
        KlingEmulator(**PRICED) as emu,
        official(emu, list_refresh=True) as session,
    ):
        assert (Decimal(0), Decimal(0)) == _spent(session)
        first = await session.extend("vid-1")
        second = await session.extend("vid-2")
        async with anyio.create_task_group() as group:
            group.start_soon(first.wait)
            group.start_soon(first.wait)
            group.start_soon(session.task(first.task_id).wait)
            group.start_soon(second.wait)
        await session.get_task(first.task_id)
        await session.task(second.task_id).wait()
        assert 0 < emu.count("list")  # the waits were refreshed through list pages too
        assert (Decimal("2"), Decimal("0.70")) == _spent(session)


def _spent(session: Any) -> tuple[Decimal, Decimal]:
    stats = session.statistics()
    return stats.units_spent, stats.cash_spent


@contextlib.asynccontextmanager
async def receiver_app(**options: Any) -> AsyncIterator[CallbackReceiver]:
    """A callback receiver served by aiohttp.web on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        receiver = CallbackReceiver(
            f"http://127.0.0.1:{sock.getsockname()[1]}/callbacks", **options
        )
        app = web.Application()
        app.add_subapp("/callbacks", receiver.aiohttp_app())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            yield receiver
        finally:
            await runner.cleanup()


@pytest.mark.anyio
async def test_a_trusted_callback_brings_the_cost_without_a_query() -> None:
    """confirm=False: the final callback's cost ends the wait and counts in the statistics."""
    async with (
        receiver_app(confirm=False) as receiver,
        KlingEmulator(auto_advance=False, **PRICED) as emu,
        official(emu, callbacks=receiver, poll_policy=PollPolicy()) as session,
    ):
        handle = await session.extend("vid-1")
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(handle.wait)
                await anyio.sleep(0.01)
                emu.set_status(handle.task_id, "succeed")
        assert 0 == emu.count("query")
        assert handle.last is not None
        assert FULL == handle.last.cost
        assert (Decimal("1"), Decimal("0.35")) == _spent(session)
