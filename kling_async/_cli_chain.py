"""``kling-async chain SOURCE --prompt ...``: a chain of extends, resumable, then a download.

The source is a video id, or ``--text`` / ``--image`` make one. Every argument (the prompts,
the plan's length) is checked before anything is sent. The chain runs keyed through a
journal, so the same command run again after Ctrl+C or a crash resumes where it stopped and
pays for no link twice (``docs/chains.md``, "From the command line"); its key is derived
from the source and the prompts unless ``--key`` gives one. Progress per link goes to
stderr; the last task, and the file it was downloaded to, to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import pathlib
import shlex
from collections.abc import Mapping, Sequence

import anyio
import attrs

from . import (
    ChainError,
    ChainHandle,
    ImageToVideo,
    KlingSession,
    SQLiteJournal,
    TaskHandle,
    TextToVideo,
)
from ._chain import link_prompts
from ._cli_output import (
    INTERRUPTED,
    PROG,
    OutputClosed,
    check_command,
    clean,
    clock_text,
    file_problem,
    folder_problem,
    in_flags,
    remote_session,
    say,
    usage_error,
)
from ._cli_progress import Display, Frame, progress_view
from ._cli_task import show
from ._images import image_value
from ._media import file_name
from .errors import InvalidArgumentError, KlingError
from .models import Task

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "chain_frame", "default_key", "run"]

HELP = "extend a video once per prompt, each extend on the one before (resumable)"
DESCRIPTION = (
    "Make a chain of extends (paid jobs): SOURCE (a video id), or the video --text or\n"
    "--image makes first, extended once per prompt, each extend on the video the one before\n"
    "made; the last video is downloaded into --out. A journal records each link, so running\n"
    "the same command again after Ctrl+C or a crash resumes: no link is paid for twice.\n"
    "Exits 2 if the command cannot run (nothing sent), 1 if a link failed or was refused."
)
_TICK = 0.25
_JOURNAL = "kling-chain.journal.sqlite3"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The chain command's arguments (its connection options are added by the parser)."""
    parser.add_argument("source", nargs="?", metavar="SOURCE", help="the video id to extend")
    parser.add_argument("--text", metavar="PROMPT", help="make the source from this prompt")
    parser.add_argument("--image", metavar="PATH_OR_URL", help="make the source from an image")
    parser.add_argument(
        "--duration", choices=("5", "10"), help="the source's seconds, with --text or --image"
    )
    parser.add_argument(
        "--prompt", action="append", default=[], metavar="TEXT", help="one extend; repeat it"
    )
    parser.add_argument(
        "--prompts",
        type=pathlib.Path,
        metavar="FILE",
        help='more extends: JSON Lines, one object per line with a "prompt" key',
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("."),
        metavar="DIR",
        help="download the last video into DIR (made if missing; default: here)",
    )
    parser.add_argument(
        "--key",
        metavar="K",
        help="the chain's journal key (default: chain-<hash of the source and the prompts>)",
    )
    parser.add_argument(
        "--journal",
        type=pathlib.Path,
        metavar="PATH",
        help=f"the journal of links (default: {_JOURNAL} in --out)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="show no progress on stderr")


# -- what the command line asks (pure, but for reading --prompts and --image) ---------------


class _Problem(Exception):
    """A command line that cannot run; its words name the flag."""


def _prompts(args: argparse.Namespace) -> list[str | Mapping[str, object]]:
    prompts: list[str | Mapping[str, object]] = list(args.prompt)
    if args.prompts is not None:
        try:
            lines = args.prompts.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise _Problem(f"--prompts: cannot read {str(args.prompts)!r} ({error})") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise _Problem(f"--prompts line {number}: not JSON ({error.msg})") from None
            if not isinstance(item, dict) or "prompt" not in item:
                raise _Problem(f'--prompts line {number}: an object with a "prompt" key')
            _check(f"--prompts line {number}", [item])
            prompts.append(item)
    if not prompts:
        raise _Problem("give at least one --prompt TEXT or --prompts FILE")
    _check("--prompt", args.prompt)  # --prompt TEXT i is prompts[i - 1]
    return prompts


def _check(flag: str, prompts: list[str | Mapping[str, object]]) -> None:
    """``prompts`` checked as a chain checks them; a problem names ``flag`` (a file's line
    says the line: an index across the flags and the file would name none)."""
    if not prompts:
        return
    try:
        link_prompts(prompts)
    except (TypeError, ValueError) as error:
        said = str(error)
        if flag != "--prompt":
            said = said.removeprefix("prompts[0]: ")
        raise _Problem(f"{flag}: {said}") from None


def _source(args: argparse.Namespace) -> str | TextToVideo | ImageToVideo:
    given = [flag for flag, value in (("SOURCE", args.source), ("--text", args.text),
             ("--image", args.image)) if value is not None]  # fmt: skip
    if len(given) != 1:
        said = " and ".join(given) if given else "none"
        raise _Problem(f"give exactly one source: SOURCE, --text or --image (got {said})")
    if args.duration is not None and args.source is not None:
        raise _Problem("--duration is the length of the source --text or --image makes")
    try:
        if args.text is not None:
            return TextToVideo(prompt=args.text, duration=args.duration)
        if args.image is not None:
            return ImageToVideo(image=image_value("--image", args.image), duration=args.duration)
    except (TypeError, ValueError) as error:
        raise _Problem(str(error)) from None
    return str(args.source)


def default_key(source: str | TextToVideo | ImageToVideo, prompts: Sequence[object]) -> str:
    """``chain-`` and 16 hex digits of the SHA-256 of the source (a video id, or the
    ``--text``/``--image`` and ``--duration`` given) and the prompts: the same command line,
    the same key."""
    if isinstance(source, TextToVideo):
        what: object = {"text": source.prompt, "duration": source.duration}
    elif isinstance(source, ImageToVideo):
        what = {"image": source.image, "duration": source.duration}
    else:
        what = source
    text = json.dumps([what, list(prompts)], sort_keys=True, ensure_ascii=False)
    return "chain-" + hashlib.sha256(text.encode()).hexdigest()[:16]


# -- progress -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ChainSnapshot:
    """What a chain has done: its finished tasks of ``total``, and the running one's state."""

    finished: int
    total: int
    stage: str
    elapsed: float


def chain_frame(snap: ChainSnapshot) -> Frame:
    """A chain's progress: a line per link finished or changing stage; on a terminal, a bar
    of the links with the running one's stage under it."""
    line = f"{clock_text(snap.elapsed)}  {snap.finished}/{snap.total} done  {clean(snap.stage)}"
    return Frame(
        key=(snap.finished, snap.stage),
        line=line,
        repeat=line,
        live=f"  {clean(snap.stage)}  [dim](Ctrl+C stops; the same command resumes)[/]",
        done=snap.finished,
        total=snap.total,
        final=f"chain {snap.finished}/{snap.total} done in {clock_text(snap.elapsed)}",
    )


def _snapshot(chain: ChainHandle, total: int, made_source: bool, elapsed: float) -> ChainSnapshot:
    """The chain's progress now: the task running (or the link being created) and its status."""
    links = chain.links
    running = links[-1] if links else chain.source if made_source else None
    where = f"link {len(links)}" if links else "source"
    if chain.done:
        stage = "ended"
    elif running is None or running.done:  # the next create is on its way
        stage = (
            f"link {len(links) + 1}: creating" if links or not made_source else "source: creating"
        )
    else:
        stage = f"{where}: {running.status.value if running.status else 'submitted'}"
    return ChainSnapshot(finished=len(chain.finished), total=total, stage=stage, elapsed=elapsed)


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace, command: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """``kling-async chain``: check everything, run the chain, download the last video."""
    try:
        source = _source(args)
        prompts = _prompts(args)
    except _Problem as error:
        return usage_error(command, str(error))
    problem = check_command(args) or _outputs(args)
    if problem is not None:
        return usage_error(command, problem)
    key = args.key if args.key is not None else default_key(source, prompts)
    try:
        store = SQLiteJournal(args.journal or args.out / _JOURNAL)
        session = remote_session(args, journal=store)
    except ValueError as error:
        return usage_error(command, in_flags(error, args))
    made_source = not isinstance(source, str)
    total = len(prompts) + made_source
    display: Display[ChainSnapshot] = Display(
        frame=lambda snap, elapsed: chain_frame(snap),
        header=f"chain {key}: {total} tasks (Ctrl+C stops waiting; the same command resumes)",
        interval=0.0,
        heartbeat=30.0,
        bar="count",
        label="chain",
    )
    started = anyio.current_time
    progress = progress_view(
        display, ChainSnapshot(finished=0, total=total, stage="", elapsed=0), args.quiet
    )
    result: list[pathlib.Path | Task] = []
    made: list[str] = []  # the source task the chain made: say its id and family

    async def main() -> None:
        begun = started()
        async with store, session:
            chain = session.chain(source, prompts, key=key)

            async def beat() -> None:
                while True:
                    progress.update(_snapshot(chain, total, made_source, started() - begun))
                    progress.tick()
                    await anyio.sleep(_TICK)

            async with anyio.create_task_group() as group:
                group.start_soon(beat)
                outcome = await _outcome(chain)
                progress.update(_snapshot(chain, total, made_source, started() - begun))
                group.cancel_scope.cancel()
            if chain.source is not None:
                made.append(_source_line(chain.source))
            if isinstance(outcome, ChainError):
                raise outcome
            task = outcome
            result.append(task)
            progress.close()
            result.append(await _download(session, task, args.out))

    try:
        anyio.run(main)
    except INTERRUPTED:
        progress.close()
        say(
            f"interrupted: the running link keeps running; resume with: {shlex.join([PROG, *argv])}"
        )
        return 130
    except ValueError as error:  # the session refused the plan: nothing was sent
        progress.close()
        if isinstance(error, InvalidArgumentError) and error.field == "prompts":
            return usage_error(command, f"--prompt: {str(error).removeprefix('prompts: ')}")
        return usage_error(command, in_flags(error, args))
    except ChainError as error:
        progress.close()
        say(f"error: {error}")
        for line in made:
            say(line)
        say(f"resume with: {shlex.join([PROG, *argv])}")
        return 1
    except KlingError as error:  # the download, or the journal
        progress.close()
        say(f"error: {error}")
        if result:
            _show(result[0], None, args.json)
        return 1
    task, path = result
    assert isinstance(task, Task)
    assert isinstance(path, pathlib.Path)
    if not args.quiet:
        for line in made:
            say(line)
    _show(task, path, args.json)
    return 0


def _source_line(source: TaskHandle) -> str:
    """The source task a chain made, as stderr says it: only the last task is printed, and
    a source's task is queried on its own family's routes (docs/cli.md, "get TASK_ID")."""
    task_id, family = source.task_id, source.family.value
    return f"source: {family} task {task_id} (kling-async get {task_id} --family {family})"


async def _outcome(chain: ChainHandle) -> Task | ChainError:
    """The chain's last task, or the error it stopped with (raised outside the task group)."""
    try:
        return await chain
    except ChainError as error:
        return error


def _show(task: pathlib.Path | Task, path: pathlib.Path | None, as_json: bool) -> None:
    assert isinstance(task, Task)
    with contextlib.suppress(OutputClosed):
        show(task, as_json, file=path)


async def _download(session: KlingSession, task: Task, out: pathlib.Path) -> pathlib.Path:
    """The last video in ``out``; a file already there (a finished download: ``download()``
    renames only whole files into place) is not fetched again."""
    video = task.video
    if video is not None:
        target = out / file_name(video.id, video.url)
        if target.exists():
            return target
    return await session.download(task, out)


def _outputs(args: argparse.Namespace) -> str | None:
    problem = folder_problem(args.out)
    if problem is not None:
        return f"--out: {problem}"
    if args.journal is not None:
        problem = file_problem(args.journal)
        if problem is not None:
            return f"--journal: {problem}"
    return None
