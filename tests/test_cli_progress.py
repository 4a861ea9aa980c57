"""Value tests of the CLI's progress words, its views' pacing and its request builder.

Pure functions and views on a fake clock and a string stream: no event loop, no terminal.
"""

from __future__ import annotations

import io
from decimal import Decimal

import pytest

from kling_async import Cost, ExtendRequest, Task, TaskStatus
from kling_async._cli_batch_file import Row
from kling_async._cli_batch_state import Run, batch_frame
from kling_async._cli_progress import Display, Frame, PlainView, markup
from kling_async._cli_request import RequestProblem, extend_arguments, extend_request
from kling_async._cli_task import download_display, download_frame, task_frame


@pytest.mark.parametrize(
    ("task", "elapsed", "line", "repeat", "final"),
    [
        (None, 0.0, "", "", "[yellow]…[/] task t1  [bold]querying[/]  0:00"),
        (
            Task(task_id="t1", status=TaskStatus.PROCESSING),
            61.0,
            "1:01  processing",
            "1:01  still processing",
            "[yellow]…[/] task t1  [bold]processing[/]  1:01",
        ),
        (
            Task(task_id="t1", status=TaskStatus.FAILED, status_message="risk [red]x"),
            2.0,
            "0:02  failed  (risk [red]x)",
            "0:02  still failed",
            "[red]✗[/] task t1  [bold]failed[/] (risk \\[red]x)  0:02",
        ),
        (
            Task(task_id="t1", status=TaskStatus.SUCCEED),
            3.0,
            "0:03  succeed",
            "0:03  still succeed",
            "[green]✓[/] task t1  [bold]succeed[/]  0:03",
        ),
    ],
)
def test_a_wait_in_words(
    task: Task | None, elapsed: float, line: str, repeat: str, final: str
) -> None:
    """A line per status, `still` as the heartbeat, a mark when the live view closes (the
    server's text is escaped in rich markup, never styled)."""
    frame = task_frame("t1", task, elapsed)

    assert (line, repeat, final) == (frame.line, frame.repeat, frame.final)
    assert frame.live == final.split(" ", 1)[1] + "  [dim](Ctrl+C stops waiting)[/]"


@pytest.mark.parametrize(
    ("received", "line", "final"),
    [
        ((0, None), "downloading v1: 0 B", ""),
        ((1_200_000, 4_500_000), "downloading v1: 1.2 MB of 4.5 MB", ""),
        ((812, 812), "downloading v1: 812 B of 812 B", "[green]✓[/] downloaded v1 (812 B)"),
    ],
)
def test_a_download_in_words(received: tuple[int, int | None], line: str, final: str) -> None:
    """Bytes as people read them; the ✓ line only once every byte is in."""
    frame = download_frame("v1", received)

    assert (line, final, received) == (frame.line, frame.final, (frame.done, frame.total))


def test_a_batch_in_words() -> None:
    """The counts per status and the downloads; ✗ when a row failed, … while rows remain."""
    rows = [Row(line=n, key=f"k{n}", request=ExtendRequest(video_id="v")) for n in range(3)]
    run = Run(rows, clock=lambda: 65.0)
    run.started = 0.0
    first, second, third = run.outcomes
    first.status, second.status, third.status = "succeed", "failed", "processing"

    frame = batch_frame(run.snapshot())

    assert "1:05  2/3 done  processing 1, succeed 1, failed 1  ETA 0:32" == frame.line
    assert "2/3 done  processing 1, succeed 1, failed 1" == frame.key
    assert frame.final.startswith("[yellow]…[/] batch 2/3 done in 1:05  [cyan]processing 1[/]")
    third.status = "succeed"
    assert batch_frame(run.snapshot()).final.startswith("[red]✗[/] batch 3/3 done")


def test_a_batch_shows_what_it_spent_in_every_view() -> None:
    """Plain line, rich live line and final line: the rows' costs summed, once any is known."""
    rows = [Row(line=n, key=f"k{n}", request=ExtendRequest(video_id="v")) for n in range(3)]
    run = Run(rows, clock=lambda: 5.0)
    first, second, third = run.outcomes
    assert "spent" not in batch_frame(run.snapshot()).line  # nothing known yet: no total
    first.status, second.status = "succeed", "failed"
    first.cost = Cost(units=Decimal("1.5"), cash=Decimal("0.35"), list_price=Decimal("0.5"))
    second.cost = Cost(units=Decimal("0"), cash=Decimal("0.00"))

    frame = batch_frame(run.snapshot())

    assert frame.line.endswith("failed 1  spent 1.5 units, 0.35 cash  ETA 0:00")
    assert "[bold]spent 1.5 units, 0.35 cash[/]" in frame.live
    assert "[bold]spent 1.5 units, 0.35 cash[/]" in frame.final
    assert ("1.5", "0.35") == (first.as_json()["units"], first.as_json()["cash"])
    assert (None, None) == (third.as_json()["units"], third.as_json()["cash"])


def test_markup_keeps_text_literal() -> None:
    """Text from a server is shown as written: brackets escaped, control characters gone."""
    assert "a \\[bold]b\\[/] c" == markup("a [bold]b[/] \x1b[31mc")
    assert "ends\\\\" == markup("ends\\")
    assert "[1, 2]" == markup("[1, 2]")  # not a tag


def test_plain_downloads_write_at_most_once_an_interval_and_the_last_state() -> None:
    """A plain download line at most every second; close writes the last state if unseen."""
    now = [0.0]
    stream = io.StringIO()
    view = PlainView(download_display("v1"), (0, None), stream, clock=lambda: now[0])
    for step in range(1, 11):  # 10 chunks in 2.5 s
        now[0] = step / 4
        view.update((step * 100, 1000))
    view.close()

    assert [
        "downloading v1: 100 B of 1.0 kB",
        "downloading v1: 500 B of 1.0 kB",
        "downloading v1: 900 B of 1.0 kB",
        "downloading v1: 1.0 kB of 1.0 kB",
    ] == stream.getvalue().splitlines()


def test_plain_view_repeats_only_what_it_has_and_notes_at_once() -> None:
    """No heartbeat before a first state worth a line; a note is written as it comes."""
    now = [0.0]
    stream = io.StringIO()

    def frame(state: int | None, elapsed: float) -> Frame:
        if state is None:
            return Frame()
        return Frame(key=state, line=f"state {state}", repeat=f"still {state} at {elapsed:g}")

    view = PlainView(
        Display(frame=frame, header="hello", heartbeat=10), None, stream, clock=lambda: now[0]
    )
    for second in range(1, 25):
        now[0] = second
        if second == 12:
            view.update(1)
        view.tick()
    view.note("a note")
    view.close()

    assert ["hello", "state 1", "still 1 at 22", "a note"] == stream.getvalue().splitlines()


@pytest.mark.parametrize(
    ("values", "cells", "message"),
    [
        ({"prompt": "x"}, True, "video_id is missing"),
        ({"video_id": "v", "cfg_scale": "high"}, True, "cfg_scale must be a number, got 'high'"),
        ({"video_id": "v", "watermark": "maybe"}, True, "watermark must be true or false"),
        ({"video_id": "v", "cfg_scale": 7.0}, False, "cfg_scale: must be"),
        ({"video_id": "v", "parent_task_id": ""}, False, "parent_task_id: must not be empty"),
        ({"video_id": "v", "prompt": 5}, True, "prompt"),
    ],
)
def test_a_request_refused(values: dict[str, object], cells: bool, message: str) -> None:
    """One set of checks for flags and rows; the message names the field at fault."""
    with pytest.raises(RequestProblem) as caught:
        extend_request(values, cells=cells)

    assert str(caught.value).startswith(message)


def test_a_request_from_cells_and_from_flags() -> None:
    """Cells: empty is absent, text becomes numbers and truth values; flags come typed."""
    cells = {"video_id": "v", "cfg_scale": "0.5", "watermark": "Yes", "prompt": "", "key": "k"}
    request = extend_request(cells, cells=True)

    assert ExtendRequest(video_id="v", cfg_scale=0.5, watermark=True) == request
    assert {"video_id": "v", "cfg_scale": 0.5, "watermark": True} == {
        name: value for name, value in extend_arguments(request).items() if value is not None
    }
    assert "" == extend_request({"video_id": "v", "prompt": ""}).prompt


def test_a_problem_speaks_in_the_front_ends_names() -> None:
    """The CLI names a flag where the batch file names a field."""
    problem = RequestProblem("cfg_scale", "must be from 0 to 1")

    assert "--cfg-scale: must be from 0 to 1" == problem.naming("--cfg-scale")
    assert "no field: odd" == RequestProblem(None, "no field: odd").naming("--x")
