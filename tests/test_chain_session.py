"""Specification of `KlingSession.chain` against the emulator over real HTTP: links made one
after the other on the video the one before made, the plan checked before paying, a failed
link stopping the chain with the others reachable, watchers, cancelled waits, keys."""

from __future__ import annotations

import os
import pathlib
import random
import subprocess
import sys

import anyio
import pytest

from kling_async import (
    ChainError,
    ChainHandle,
    ImageToVideo,
    InvalidArgumentError,
    KlingSession,
    SessionClosedError,
    TaskFailedError,
    TaskFamily,
    TaskStatus,
    TextToVideo,
)
from kling_async.testing import Fault, KlingEmulator

from .helpers import official
from .test_doubt import run_or_kill

pytestmark = pytest.mark.anyio

CHILD = pathlib.Path(__file__).with_name("chain_child.py")


def _prompts(count: int) -> list[str]:
    return [f"shot {n}" for n in range(1, count + 1)]


def _chain_of(emu: KlingEmulator, first: str) -> list[str]:
    """The emulator's extends from ``first`` on, following each result to its extend."""
    extends = [task for task in emu.tasks.values() if task.family == "video-extend"]
    by_source = {task.video_id: task for task in extends}
    order, video = [], first
    while video in by_source:
        task = by_source[video]
        order.append(task.task_id)
        video = task.result_video_id
    return order


async def test_a_twelve_link_chain_from_a_text_prompt(emu: KlingEmulator) -> None:
    """The source is made, then 12 extends, each of the video the previous one made; the
    result is the last link's task and every link's handle is reachable, in order."""
    async with official(emu) as session:
        chain = session.chain(TextToVideo(prompt="a lighthouse at dusk"), _prompts(12))
        last = await chain

    source = chain.source
    assert source is not None
    assert TaskFamily.TEXT2VIDEO is source.family
    first = source.last.video.id if source.last and source.last.video else ""
    assert [h.task_id for h in chain.links] == _chain_of(emu, first)
    assert 12 == len(chain.links) == emu.count("create", family="video-extend")
    assert 1 == emu.count("create", family="text2video")
    assert chain.links[-1].task_id == last.task_id
    assert TaskStatus.SUCCEED is last.status
    assert [f"shot {n}" for n in range(1, 13)] == [emu.tasks[h.task_id].prompt for h in chain.links]
    # Durations add up along the chain (the emulator's extends add 4.1 s each).
    assert 5.0 + 12 * 4.1 == pytest.approx(last.video.duration if last.video else 0.0, abs=0.2)
    assert 13 == len(chain.finished)
    assert chain.done


async def test_a_chain_from_an_image_makes_the_source_on_image2video(emu: KlingEmulator) -> None:
    """An ImageToVideo source is made on its own route, then extended from its video."""
    async with official(emu) as session:
        chain = session.chain(ImageToVideo(image="https://example.com/first.png"), ["on"])
        last = await chain

    assert 1 == emu.count("create", family="image2video")
    source = chain.source
    assert source is not None
    assert source.last is not None
    assert source.last.video is not None
    assert source.last.video.id == emu.tasks[last.task_id].video_id


async def test_a_keyed_chain_from_a_text_prompt_resumes_without_paying_twice(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The same keyed call run again finds every link by its key: nothing is sent again."""
    journal = tmp_path / "chain.sqlite3"
    source = TextToVideo(prompt="a lighthouse at dusk")
    async with official(emu, journal=journal) as session:
        first = await session.chain(source, _prompts(12), key="lighthouse")
    creates = emu.count("create")
    async with official(emu, journal=journal) as session:
        again = await session.chain(source, _prompts(12), key="lighthouse")

    assert 13 == creates == emu.count("create")
    assert first.task_id == again.task_id


async def test_a_chain_that_would_pass_three_minutes_is_refused_before_any_create(
    emu: KlingEmulator,
) -> None:
    """Known source length + 5 s per link past 180 s: InvalidArgumentError, nothing sent."""
    emu.set_video_duration("v-long", 150.0)
    async with official(emu) as session:
        await (await session.extend("v-long")).wait()  # the session learns its length
        sent = len(emu.requests)
        with pytest.raises(InvalidArgumentError) as caught:
            session.chain("v-long", _prompts(7))
        with pytest.raises(InvalidArgumentError):
            session.chain(TextToVideo(prompt="x", duration="10"), _prompts(35))
        with pytest.raises(InvalidArgumentError):
            session.chain("v-unknown", _prompts(37))

    assert sent == len(emu.requests)
    assert "on a 150 s source could reach 185 s" in str(caught.value)


async def test_bad_arguments_raise_before_any_request(emu: KlingEmulator) -> None:
    """Prompts, source and key are checked before anything is sent."""
    async with official(emu) as session:
        with pytest.raises(ValueError, match="prompts"):
            session.chain("v1", [])
        with pytest.raises(ValueError, match="unknown keys 'seed'"):
            session.chain("v1", [{"prompt": "a", "seed": 3}])
        with pytest.raises(ValueError, match="needs a journal"):
            session.chain("v1", ["a"], key="k")
        with pytest.raises(TypeError, match="source must be"):
            session.chain(3, ["a"])  # type: ignore[arg-type]

    assert 0 == len(emu.requests)


async def test_a_failed_link_stops_the_chain_with_the_earlier_links_reachable(
    emu: KlingEmulator,
) -> None:
    """Link 3's task fails: awaiting raises ChainError naming it, links 1-2 stay finished,
    and no link 4 is made."""
    async with official(emu) as session:
        chain = session.chain("v0", _prompts(5))
        async for task in chain.watch():
            if len(chain.finished) == 2:  # the video link 3 extends: its task will fail
                emu.fail_video(task.video.id if task.video else "")
        with pytest.raises(ChainError) as caught:
            await chain

    error = caught.value
    assert 3 == error.link == len(chain.links)
    assert chain.links[2].task_id == error.task_id
    assert [h.task_id for h in chain.links[:2]] == [t.task_id for t in error.finished]
    assert isinstance(error.__cause__, TaskFailedError)
    assert "link 3 of 5" in str(error)
    assert "2 of 5 links finished" in str(error)
    assert 3 == emu.count("create")


async def test_a_refused_create_stops_the_chain(emu: KlingEmulator) -> None:
    """Link 2's create refused for content safety: ChainError with no task id, cause kept."""
    async with official(emu) as session:
        chain = session.chain("v0", _prompts(4))
        async for _ in chain.watch():
            emu.inject(Fault.business(1301, status=400), route="create")
        with pytest.raises(ChainError) as caught:
            await chain

    assert (2, None, 1) == (caught.value.link, caught.value.task_id, len(caught.value.finished))
    assert 1 == len(chain.links)


async def test_watch_yields_each_link_in_order_and_a_late_watcher_sees_all(
    emu: KlingEmulator,
) -> None:
    """Two watchers, one starting after the chain ended, see the same tasks in order."""
    async with official(emu) as session:
        chain = session.chain("v0", _prompts(4))
        early = [task.task_id async for task in chain.watch()]
        await chain
        late = [task.task_id async for task in chain.watch()]

    assert [h.task_id for h in chain.links] == early == late


async def test_a_cancelled_wait_does_not_cancel_the_chain(emu: KlingEmulator) -> None:
    """A wait given up (a cancel scope) leaves the chain running: a later wait ends it."""
    async with official(emu) as session:
        chain = session.chain("v0", _prompts(3))
        with anyio.move_on_after(0) as scope:
            await chain
        assert scope.cancelled_caught
        assert not chain.done
        last = await chain

    assert 3 == emu.count("create", family="video-extend")
    assert chain.links[-1].task_id == last.task_id


async def test_closing_the_session_stops_the_chain(emu: KlingEmulator) -> None:
    """The session closes mid-chain: the chain ends with ChainError (cause SessionClosedError)
    and makes no more links."""
    emu.auto_advance = False  # link 1 never finishes
    async with official(emu) as session:
        chain = session.chain("v0", _prompts(3))
        while not chain.links:
            await anyio.sleep(0.01)
    with pytest.raises(ChainError) as caught:
        await chain

    assert isinstance(caught.value.__cause__, SessionClosedError)
    assert 1 == emu.count("create")


async def test_a_keyed_chain_from_a_video_resumes_after_the_last_finished_link(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A keyed chain stopped by a closed session and run again: the links made are found by
    their keys (key/1, key/2, ...), the rest made once; each link is made once."""
    journal = tmp_path / "chain.sqlite3"
    async with official(emu, journal=journal) as session:
        chain = session.chain("v0", _prompts(6), key="row-1")
        async for _ in chain.watch():
            if len(chain.finished) == 3:
                break
    async with official(emu, journal=journal) as session:
        again = session.chain("v0", _prompts(6), key="row-1")
        last = await again

    assert 6 == emu.count("create") == len(emu.tasks)
    assert _chain_of(emu, "v0") == [h.task_id for h in again.links]
    assert again.links[-1].task_id == last.task_id


async def test_a_keyed_chain_from_a_finished_task(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """A succeeded source task is extended from its video (the chain gives no handle for a
    Task: it does not say its family)."""
    async with official(emu, journal=tmp_path / "j.sqlite3") as session:
        made = await (await session.text_to_video("a fox")).wait()
        chain = session.chain(made, _prompts(2), key="fox")
        last = await chain
        again = await session.chain(made, _prompts(2), key="fox")

    assert chain.source is None
    assert made.video is not None
    assert chain.finished[0].parent_video is not None
    assert made.video.id == chain.finished[0].parent_video.id
    assert last.task_id == again.task_id
    assert 3 == emu.count("create")


async def test_a_failed_keyed_link_fails_again_until_its_key_is_forgotten(
    emu: KlingEmulator, tmp_path: pathlib.Path
) -> None:
    """The journal keeps a failed link's task: a re-run sends nothing and fails the same
    way; once its key is forgotten, the re-run pays for that link again."""
    emu.fail_video("v0")
    async with official(emu, journal=tmp_path / "j.sqlite3") as session:
        with pytest.raises(ChainError) as first:
            await session.chain("v0", _prompts(2), key="k")
        with pytest.raises(ChainError) as second:
            await session.chain("v0", _prompts(2), key="k")
        sent = emu.count("create")
        assert await session.forget("k/1")
        with pytest.raises(ChainError) as third:
            await session.chain("v0", _prompts(2), key="k")

    assert 1 == sent
    assert 2 == emu.count("create")
    assert first.value.task_id == second.value.task_id != third.value.task_id
    assert (1, "k") == (second.value.link, second.value.key)


def test_a_chain_handle_is_exported_and_awaitable() -> None:
    assert hasattr(ChainHandle, "__await__")
    assert hasattr(KlingSession, "chain")


@pytest.mark.crash
async def test_a_chain_killed_at_random_links_and_run_again_pays_once_per_link(
    tmp_path: pathlib.Path,
) -> None:
    """SIGKILL at random links (creates in flight), then the same chain run again with the
    default retry policy: it ends, with exactly one task per link, each extending the
    video the link before made."""
    links = 12
    journal = tmp_path / "chain.sqlite3"
    rng = random.Random(20261219)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    async with KlingEmulator() as emulator:
        argv = [sys.executable, str(CHILD), emulator.base_url, str(journal), str(links)]
        kills, finished = 0, False
        for run in range(10):
            stop_at = emulator.count("create") + rng.randint(1, 3) if run < 4 else None
            out = tmp_path / f"run-{run}.out"
            with out.open("wb") as stdout:
                process = await anyio.open_process(
                    argv, env=env, stdout=stdout, stderr=subprocess.DEVNULL
                )
            _, killed = await run_or_kill(
                process, lambda: emulator.count("create"), stop_at, timeout=60
            )
            kills += killed
            if b"done " in out.read_bytes():
                finished = True
                break
        made = _chain_of(emulator, "v0")

    assert finished
    assert kills >= 3
    assert links == len(emulator.tasks) == len(made)  # no link paid twice
    assert [f"shot {n}" for n in range(1, links + 1)] == [emulator.tasks[t].prompt for t in made]


async def test_a_task_source_gets_no_handle_on_a_guessed_family(emu: KlingEmulator) -> None:
    """A `Task` carries no family: a chain from a text-to-video another session made has no
    source handle (one on the extend's route would meet a 404), and still chains from it."""
    async with official(emu) as first:
        made = await (await first.text_to_video("a fox")).wait()
    async with official(emu) as second:
        chain = second.chain(made, ["closer"])
        last = await chain
    assert chain.source is None
    assert made.video is not None
    assert last.parent_video is not None
    assert made.video.id == last.parent_video.id
    assert 1 == emu.count("create", family="video-extend")
