"""The MCP server's pure rules: the spending-limit decision, its arguments and result shapes,
and where files may be read and written (values in, values out; no server, no network)."""

from __future__ import annotations

import datetime as dt
import decimal
import os
import pathlib

import pytest

from kling_async import (
    Cost,
    EntryState,
    ExtendRequest,
    JournalEntry,
    Task,
    TaskFamily,
    TaskResult,
    TaskStatus,
    TextToVideo,
    Video,
)
from kling_async._mcp_files import download_path, image_argument
from kling_async._mcp_results import (
    DEFAULT_WAIT,
    ToolProblem,
    check_create_key,
    check_limit,
    check_timeout,
    family_of,
    task_json,
)
from kling_async._mcp_spending import Ledger, Limits
from kling_async._task_codec import task_json as wire_json

D = decimal.Decimal
EXTEND = TaskFamily.EXTEND


def finished(task_id: str, units: str, cash: str | None = None) -> Task:
    cost = Cost(units=D(units), cash=None if cash is None else D(cash))
    return Task(task_id=task_id, status=TaskStatus.SUCCEED, cost=cost)


def running(task_id: str) -> Task:
    return Task(task_id=task_id, status=TaskStatus.PROCESSING)


def made(ledger: Ledger, task_id: str, family: TaskFamily = EXTEND, key: str | None = None):
    ledger.created(ledger.reserve(family), task_id, key)


# -- the spending limit -----------------------------------------------------------------------


def test_no_limit_never_refuses() -> None:
    """Without --max-units or --max-cash every create may go."""
    ledger = Ledger()
    made(ledger, "a")
    ledger.saw(finished("a", "1000"), EXTEND)
    assert ledger.refusal(Limits()) is None


def test_spent_reaching_the_limit_refuses_and_says_what_was_spent() -> None:
    """Units spent equal to --max-units: the next create is refused, naming limit and spent."""
    ledger = Ledger()
    made(ledger, "a")
    ledger.saw(finished("a", "1"), EXTEND)
    refusal = ledger.refusal(Limits(units=D(1)))
    assert refusal is not None
    assert "--max-units 1" in refusal
    assert "units spent or committed come to 1 (1 units" in refusal
    assert "0 tasks still running" in refusal
    assert ledger.refusal(Limits(units=D(2))) is None


def test_a_running_task_counts_at_the_highest_cost_seen_for_its_family() -> None:
    """Spent 1 + one extend running (highest extend cost 3) = 4: a limit of 4 refuses."""
    ledger = Ledger()
    made(ledger, "a")
    ledger.saw(finished("a", "1"), EXTEND)
    made(ledger, "b")
    ledger.saw(finished("b", "3"), EXTEND)
    made(ledger, "c")
    ledger.saw(running("c"), EXTEND)
    assert (D(7), D(0)) == ledger.committed()
    assert ledger.refusal(Limits(units=D(7))) is not None
    assert ledger.refusal(Limits(units=D("7.5"))) is None


def test_other_families_costs_do_not_price_a_running_task() -> None:
    """The highest cost is per family: a running text2video task with no text2video cost
    seen counts 0 in the sums, however dear the extends were; it is unpriced instead."""
    ledger = Ledger()
    made(ledger, "a")
    ledger.saw(finished("a", "5"), EXTEND)
    made(ledger, "t", TaskFamily.TEXT2VIDEO)
    assert (D(5), D(0)) == ledger.committed()
    assert [("t", TaskFamily.TEXT2VIDEO)] == ledger.unpriced("units")


def test_a_task_of_a_kind_with_no_cost_seen_lets_no_other_create_pass_the_limit() -> None:
    """A fresh server knows no cost: a running (or reserved) task of an unpriced kind would
    count 0, so with a limit nothing more may go until one finishes with its cost. Without a
    limit nothing is refused; a kind priced in units only stays unpriced for --max-cash."""
    ledger = Ledger()
    reservation = ledger.reserve(EXTEND)
    refusal = ledger.refusal(Limits(units=D(2)))
    assert refusal is not None
    assert "--max-units 2" in refusal
    assert "nothing was sent" in refusal
    assert ledger.refusal(Limits()) is None
    ledger.created(reservation, "a", None)
    assert "wait_for_task on it" in (ledger.refusal(Limits(units=D(2))) or "")
    assert "task a (video-extend)" in (ledger.refusal(Limits(units=D(2))) or "")
    ledger.saw(finished("a", "1"), EXTEND)
    made(ledger, "b")
    assert ledger.refusal(Limits(units=D(3))) is None
    assert "--max-cash 5" in (ledger.refusal(Limits(cash=D(5))) or "")


def test_a_create_on_its_way_counts_until_released() -> None:
    """A reserved create counts as running; a released one no longer does."""
    ledger = Ledger()
    made(ledger, "a")
    ledger.saw(finished("a", "2"), EXTEND)
    reservation = ledger.reserve(EXTEND)
    assert (D(4), D(0)) == ledger.committed()
    ledger.released(reservation)
    assert (D(2), D(0)) == ledger.committed()


def test_a_cash_limit_refuses_once_a_task_of_ours_finished_without_cash() -> None:
    """Kling's own API states units only: the cash spent cannot be known, so --max-cash
    refuses every create after the first such task instead of never being reached."""
    ledger = Ledger()
    made(ledger, "a")
    ledger.saw(finished("a", "1"), EXTEND)
    refusal = ledger.refusal(Limits(cash=D(5)))
    assert refusal is not None
    assert "--max-cash 5" in refusal
    assert "task a" in refusal
    assert ledger.refusal(Limits(units=D(5))) is None


def test_cash_is_limited_on_its_own_in_exact_decimals() -> None:
    """--max-cash compares exact decimals: 0.1 + 0.2 reaches 0.3."""
    ledger = Ledger()
    made(ledger, "a")
    ledger.saw(finished("a", "1", cash="0.1"), EXTEND)
    made(ledger, "b")
    ledger.saw(finished("b", "1", cash="0.2"), EXTEND)
    assert D("0.3") == ledger.cash
    assert "--max-cash 0.3" in (ledger.refusal(Limits(cash=D("0.3"))) or "")


def test_a_task_is_counted_once_and_tasks_of_others_not_at_all() -> None:
    """Seeing a task twice adds its cost once; a task this server did not create only
    teaches the family's highest cost."""
    ledger = Ledger()
    made(ledger, "a", key="k")
    made(ledger, "a", key="k")
    ledger.saw(finished("a", "1"), EXTEND)
    ledger.saw(finished("a", "1"), EXTEND)
    ledger.saw(finished("someone-else", "9"), EXTEND)
    assert D(1) == ledger.units
    assert "a" == ledger.known_key("k")
    summary = ledger.summary(Limits(units=D(10)))
    assert "1" == summary["units_spent"]
    assert "10" == summary["max_units"]
    assert [{"task_id": "a", "family": "video-extend", "running": False}] == summary[
        "tasks_created"
    ]


def entry(key: str, state: EntryState, task_id: str | None = None, **more: object) -> JournalEntry:
    request = more.pop("request", ExtendRequest(video_id="v1"))
    return JournalEntry(
        key=key,
        request=request,  # type: ignore[arg-type]
        stamped=True,
        state=state,
        claimed_at=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc),
        task_id=task_id,
        **more,  # type: ignore[arg-type]
    )


def test_the_journal_restores_what_was_spent_running_and_in_doubt() -> None:
    """A restarted server counts its journal: finished tasks at their recorded cost (the
    highest of their family pricing the running ones), running tasks and creates in doubt
    as running; refused keys, intents and a finished task without its JSON cost nothing."""
    ledger = Ledger()
    ledger.restore(
        [
            entry("f1", EntryState.FINISHED, "a", task=wire_json(finished("a", "1", "0.1"))),
            entry("f2", EntryState.FINISHED, "b", task=wire_json(finished("b", "3"))),
            entry("old", EntryState.FINISHED, "c", task=None),
            entry("run", EntryState.CREATED, "d"),
            entry("doubt", EntryState.SENDING),
            entry("t", EntryState.SENDING, request=TextToVideo(prompt="a fox")),
            entry("no", EntryState.REFUSED, refusal_reason="no such video"),
            entry("later", EntryState.INTENT),
        ]
    )
    assert (D(4), D("0.1")) == (ledger.units, ledger.cash)
    assert (D(10), D("0.3")) == ledger.committed()  # two extends running, each at 3 and 0.1
    assert ledger.refusal(Limits(units=D(10))) is not None
    assert [("d", EXTEND)] == ledger.running()
    assert "a" == ledger.known_key("f1")
    assert 4 == ledger.count


def test_creates_in_doubt_are_settled_from_the_journal_once_looked_up() -> None:
    """After resume(): a doubt that made a task counts as that task (once, even if a tool
    call made it meanwhile), one that made none counts nothing, one still in doubt stays."""
    ledger = Ledger()
    ledger.restore(
        [
            entry("f", EntryState.FINISHED, "a", task=wire_json(finished("a", "2"))),
            entry("found", EntryState.SENDING),
            entry("again", EntryState.SENDING),
            entry("none", EntryState.SENDING),
            entry("still", EntryState.SENDING),
        ]
    )
    assert (D(10), D(0)) == ledger.committed()
    made(ledger, "y", key="again")  # a tool call retried the key meanwhile
    ledger.settled(
        [
            entry("found", EntryState.CREATED, "x"),
            entry("again", EntryState.CREATED, "y"),
            entry("none", EntryState.REFUSED, refusal_reason="no"),
            entry("still", EntryState.SENDING),
        ]
    )
    assert {"x", "y"} == {task_id for task_id, _ in ledger.running()}
    assert (D(8), D(0)) == ledger.committed()  # 2 + x, y and "still" at 2 each
    ledger.saw(finished("x", "2"), EXTEND)
    assert D(4) == ledger.units


def test_a_create_in_doubt_counts_until_its_key_names_a_task() -> None:
    """A create whose outcome is unknown keeps counting (once per key, however often it is
    tried again in doubt) until a create under its key names the task."""
    ledger = Ledger()
    made(ledger, "a", key="a")
    ledger.saw(finished("a", "2"), EXTEND)
    ledger.in_doubt(ledger.reserve(EXTEND), "k")
    ledger.in_doubt(ledger.reserve(EXTEND), "k")  # tried again, in doubt again
    assert (D(4), D(0)) == ledger.committed()
    assert ledger.refusal(Limits(units=D(4), cash=None)) is not None
    made(ledger, "b", key="k")  # the key's task, found at last
    assert (D(4), D(0)) == ledger.committed()
    assert ["b"] == [task_id for task_id, _ in ledger.running()]


def test_a_create_in_doubt_of_an_unpriced_kind_is_named_with_its_way_out() -> None:
    """A restored create in doubt whose kind has no cost seen: no wait ends it, so the
    refusal names its key and how the operator settles it, not a task to wait for."""
    ledger = Ledger()
    ledger.restore([entry("shot-3", EntryState.SENDING)])
    said = ledger.refusal(Limits(units=D(10), cash=None))
    assert said is not None
    assert "'shot-3'" in said
    assert "kling-async journal settle JOURNAL shot-3 TASK_ID" in said
    assert "wait_for_task" not in said


# -- arguments and results --------------------------------------------------------------------


def test_a_create_key_may_not_name_a_chain_link() -> None:
    """'/' is the chain links' separator (KEY/1): a create's key may not hold one."""
    assert check_create_key(None) is None
    assert "shot-1" == check_create_key("shot-1")
    with pytest.raises(ToolProblem, match="'/'"):
        check_create_key("film/1")


def test_wait_seconds_default_and_bounds() -> None:
    """timeout_s: 50 by default, 0 to 300, never NaN."""
    assert DEFAULT_WAIT == check_timeout(None)
    assert 0.0 == check_timeout(0)
    for bad in (-1.0, 301.0, float("nan"), float("inf")):
        with pytest.raises(ToolProblem, match="timeout_s"):
            check_timeout(bad)


def test_list_limit_and_family_names() -> None:
    """limit is 1 to 100; a family is named by its route or its tool."""
    assert 20 == check_limit(None)
    with pytest.raises(ToolProblem, match="limit"):
        check_limit(0)
    assert TaskFamily.TEXT2VIDEO == family_of("text_to_video")
    assert TaskFamily.IMAGE2VIDEO == family_of("image2video")
    assert family_of(None) is None
    with pytest.raises(ToolProblem, match="family"):
        family_of("cartoon")


def test_a_task_as_json_has_money_as_strings_and_iso_times() -> None:
    """The structured task: cost as decimal strings, times in ISO 8601, videos listed."""
    task = Task(
        task_id="t1",
        status=TaskStatus.SUCCEED,
        created_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        result=TaskResult(videos=(Video(id="v2", url="https://x/v2.mp4", duration=9.1),)),
        cost=Cost(units=D("1.5"), cash=D("0.10"), list_price=None),
    )
    shaped = task_json(task, EXTEND)
    assert {"units": "1.5", "cash": "0.10", "list_price": None} == shaped["cost"]
    assert "2026-01-02T03:04:05+00:00" == shaped["created_at"]
    assert [{"id": "v2", "url": "https://x/v2.mp4", "duration": 9.1}] == shaped["videos"]
    assert shaped["done"] is True


# -- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../x.mp4", "/etc/passwd", "a/b.mp4", "a\\b.mp4", "..", ".", "", " ", ".hidden"]
)
def test_download_names_with_folders_or_dots_are_refused(tmp_path: pathlib.Path, name: str) -> None:
    """A download is a plain file name inside --out: no folder part, no '..', no absolute."""
    with pytest.raises(ToolProblem):
        download_path(tmp_path, name)


def test_a_download_name_that_is_a_symlink_out_is_refused(tmp_path: pathlib.Path) -> None:
    """A name whose place in --out is a symlink (to anywhere) is refused."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.mp4").symlink_to(tmp_path / "elsewhere.mp4")
    with pytest.raises(ToolProblem, match="outside"):
        download_path(out, "clip.mp4")
    assert out.resolve() / "fine.mp4" == download_path(out, "fine.mp4")
    assert out.resolve() / "bare.mp4" == download_path(out, "bare")


def test_a_download_name_that_exists_is_refused_unless_replacing(tmp_path: pathlib.Path) -> None:
    """A chosen name never replaces a file in --out; the video's own name may (replace)."""
    (tmp_path / "mine.mp4").write_bytes(b"kept")
    with pytest.raises(ToolProblem, match="exists already"):
        download_path(tmp_path, "mine.mp4")
    assert tmp_path.resolve() / "mine.mp4" == download_path(tmp_path, "mine.mp4", replace=True)


def test_local_images_only_inside_allowed_folders(tmp_path: pathlib.Path) -> None:
    """A local path is read only inside an --allow-dir folder (symlinks resolved); URLs and
    base64 pass as they are."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    inside = allowed / "frame.png"
    inside.write_bytes(b"png")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"png")
    (allowed / "link.png").symlink_to(outside)
    assert inside.resolve() == image_argument("image", str(inside), [allowed])
    for refused, folders in ((outside, [allowed]), (inside, []), (allowed / "link.png", [allowed])):
        with pytest.raises(ToolProblem, match="allow"):
            image_argument("image", str(refused), folders)
    assert "https://example.com/a.png" == image_argument("image", "https://example.com/a.png", [])
    assert "aGVsbG8=" == image_argument("image", "aGVsbG8=", [])
    assert image_argument("image", None, []) is None
    relative = os.path.relpath(outside)
    with pytest.raises(ToolProblem):
        image_argument("image", relative, [allowed])
