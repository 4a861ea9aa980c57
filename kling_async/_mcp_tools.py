"""The MCP server's tools, registered one group at a time on an `MCPServer`.

Each ``register_*`` function adds a group of tools that call the shared `KlingTools`
(`_mcp_server`): creates, tasks, files and spending. A tool returns at once what a person
would want to see, as structured content and one line of text; a refusal or a Kling error
is a tool error (``isError``) whose text says why, and the server keeps serving
(docs/mcp.md). Tool names, argument names and descriptions are the server's interface.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from mcp.server.mcpserver import Context  # noqa: TC002 (the server reads tool annotations at run time)
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from ._mcp_files import download_path, image_argument
from ._mcp_results import (
    MAX_WAIT,
    ToolProblem,
    check_create_key,
    check_limit,
    check_timeout,
    family_of,
    progress_message,
    task_json,
    task_text,
    waited_text,
)
from ._media import file_name
from .errors import KlingError, TaskFailedError
from .models import Task, TaskFamily, TaskStatus

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from ._handle import TaskHandle
    from ._mcp_calls import KlingTools

__all__ = [
    "INSTRUCTIONS",
    "register_create_tools",
    "register_file_tools",
    "register_task_tools",
    "tool_errors",
]

INSTRUCTIONS = (
    "Make and extend videos with Kling AI. Creating a video is a paid job that takes a few "
    "minutes: the create tools return at once with a task id; call wait_for_task to wait for "
    "it, then download_video. Give every create a key (any id you choose for this request, "
    "such as 'intro-shot-1'): calling again with the same key returns the same task and "
    "never pays twice, so retry a create with its key after a timeout or an error."
)

_KEY = (
    "Your own id for this request, such as 'intro-shot-1' (no '/'). Strongly advised: "
    "a create with a key already used returns that task and pays nothing; without a key "
    "every call creates, and pays for, a new task."
)
_FAMILY = (
    "The kind of task: video-extend (default), text2video or image2video. Needed only for a "
    "task this server did not create."
)
_CREATE = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
)
_READ = ToolAnnotations(read_only_hint=True, open_world_hint=True)

Key = Annotated[str | None, Field(description=_KEY)]
FamilyName = Annotated[str | None, Field(description=_FAMILY)]
Prompt = Annotated[str | None, Field(description="What to show, at most 2500 characters.")]
NegativePrompt = Annotated[str | None, Field(description="What to avoid, at most 2500 characters.")]
CfgScale = Annotated[
    float | None, Field(description="0 to 1: how closely to follow the prompt (default 0.5).")
]
ModelName = Annotated[
    str | None, Field(description="Kling model, such as kling-v1 (default) or kling-v1-6.")
]
Mode = Annotated[str | None, Field(description="std (default, cheaper) or pro.")]
Duration = Annotated[str | None, Field(description="Seconds of video: '5' (default) or '10'.")]
TaskId = Annotated[str, Field(description="The task id a create tool returned.")]


@contextlib.contextmanager
def tool_errors() -> Iterator[None]:
    """Refusals and Kling's errors as tool errors: their text, never a credential."""
    try:
        yield
    except (ToolProblem, KlingError, ValueError, TypeError, OSError) as error:
        raise ToolError(str(error)) from error


def _result(structured: dict[str, Any], text: str) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=structured
    )


def _shown(tools: KlingTools, task: Task, family: TaskFamily) -> CallToolResult:
    tools.saw(task, family)
    return _result(task_json(task, family), task_text(task, family))


def _created(tools: KlingTools, handle: TaskHandle) -> CallToolResult:
    task = handle.last or Task(task_id=handle.task_id, status=TaskStatus.SUBMITTED)
    return _shown(tools, task, handle.family)


def register_create_tools(server: MCPServer, tools: KlingTools) -> None:
    """``extend_video``, ``text_to_video`` and ``image_to_video``: paid creates."""
    session = tools.session

    @server.tool(annotations=_CREATE)
    async def extend_video(
        video_id: Annotated[str, Field(description="The id of the video to extend.")],
        prompt: Prompt = None,
        negative_prompt: NegativePrompt = None,
        cfg_scale: CfgScale = None,
        key: Key = None,
    ) -> CallToolResult:
        """Extend a Kling video by 4-5 seconds (a paid job; usually done within 4 minutes).

        Returns at once with the new task; call wait_for_task for the result, whose video id
        can be extended again (up to 3 minutes in all). Only videos made by Kling's v1.x
        models, less than 30 days old, can be extended.
        """
        with tool_errors():
            handle = await tools.create(
                TaskFamily.EXTEND,
                check_create_key(key),
                lambda used: session.extend(
                    video_id,
                    prompt=prompt,
                    negative_prompt=negative_prompt,
                    cfg_scale=cfg_scale,
                    key=used,
                ),
            )
            return _created(tools, handle)

    @server.tool(annotations=_CREATE)
    async def text_to_video(
        prompt: Annotated[str, Field(description="What to show, at most 2500 characters.")],
        model_name: ModelName = None,
        mode: Mode = None,
        duration: Duration = None,
        aspect_ratio: Annotated[
            str | None, Field(description="16:9 (default), 9:16 or 1:1.")
        ] = None,
        negative_prompt: NegativePrompt = None,
        cfg_scale: CfgScale = None,
        key: Key = None,
    ) -> CallToolResult:
        """Make a video from a text prompt (a paid job; a few minutes).

        Returns at once with the new task; call wait_for_task for the result. Its video id
        is a video extend_video takes.
        """
        with tool_errors():
            handle = await tools.create(
                TaskFamily.TEXT2VIDEO,
                check_create_key(key),
                lambda used: session.text_to_video(
                    prompt,
                    model_name=model_name or "kling-v1",
                    mode=mode,
                    duration=duration,
                    aspect_ratio=aspect_ratio,
                    negative_prompt=negative_prompt,
                    cfg_scale=cfg_scale,
                    key=used,
                ),
            )
            return _created(tools, handle)

    @server.tool(annotations=_CREATE)
    async def image_to_video(
        image: Annotated[
            str | None,
            Field(
                description="The first frame: an https URL, bare base64 (no 'data:' prefix), "
                "or a local file inside a folder the server allows (jpg/png, at most 10 MB)."
            ),
        ] = None,
        prompt: Prompt = None,
        image_tail: Annotated[
            str | None, Field(description="The last frame, given like image.")
        ] = None,
        model_name: ModelName = None,
        mode: Mode = None,
        duration: Duration = None,
        key: Key = None,
    ) -> CallToolResult:
        """Make a video from an image (first frame), an end image, or both (a paid job; a
        few minutes).

        Returns at once with the new task; call wait_for_task for the result. Its video id
        is a video extend_video takes.
        """
        with tool_errors():
            first = image_argument("image", image, tools.allow_dirs)
            last = image_argument("image_tail", image_tail, tools.allow_dirs)
            handle = await tools.create(
                TaskFamily.IMAGE2VIDEO,
                check_create_key(key),
                lambda used: session.image_to_video(
                    first,
                    image_tail=last,
                    prompt=prompt,
                    model_name=model_name or "kling-v1",
                    mode=mode,
                    duration=duration,
                    key=used,
                ),
            )
            return _created(tools, handle)


def register_task_tools(server: MCPServer, tools: KlingTools) -> None:
    """``get_task``, ``wait_for_task``, ``list_tasks`` and ``spending``: they pay nothing."""
    session = tools.session

    @server.tool(annotations=_READ)
    async def get_task(task_id: TaskId, family: FamilyName = None) -> CallToolResult:
        """Show a task as it is now (one query; free). It does not wait."""
        with tool_errors():
            known = tools.family(task_id, family_of(family))
            return _shown(tools, await session.get_task(task_id, family=known), known)

    @server.tool(annotations=_READ)
    async def wait_for_task(
        task_id: TaskId,
        ctx: Context,
        timeout_s: Annotated[
            float | None,
            Field(description=f"Seconds to wait, at most {MAX_WAIT:g} (default 50)."),
        ] = None,
        family: FamilyName = None,
    ) -> CallToolResult:
        """Wait until a task is done, or timeout_s runs out, and return it (free).

        Sends a progress notification at each status change. A wait that runs out is not an
        error: the task keeps running and the result says so; call again to wait on.
        """
        with tool_errors():
            seconds = check_timeout(timeout_s)
            known = tools.family(task_id, family_of(family))
            handle = session.task(task_id, family=known)
            steps: list[TaskStatus] = []

            async def report(task: Task) -> None:
                if steps and steps[-1] == task.status:
                    return
                steps.append(task.status)
                await ctx.report_progress(len(steps), None, progress_message(task))

            with anyio.move_on_after(seconds):
                await _follow(handle, report)
            last = handle.last
            if last is not None and last.done:
                return _shown(tools, last, known)
            structured = (
                {"task_id": task_id, "family": known.value, "status": None, "done": False}
                if last is None
                else task_json(last, known)
            )
            structured["waited_out"] = True
            return _result(structured, waited_text(last, task_id, known, seconds))

    @server.tool(annotations=_READ)
    async def list_tasks(
        family: FamilyName = None,
        limit: Annotated[int | None, Field(description="How many, 1 to 100 (default 20).")] = None,
    ) -> CallToolResult:
        """List the account's tasks of one kind, newest first (free; most gateways do not
        offer it)."""
        with tool_errors():
            known = family_of(family) or TaskFamily.EXTEND
            count = check_limit(limit)
            tasks = []
            async for task in session.list_tasks(page_size=count, max_pages=1, family=known):
                tools.saw(task, known)
                tasks.append(task)
            lines = [task_text(task, known) for task in tasks] or [f"no {known.value} tasks"]
            structured = {"tasks": [task_json(task, known) for task in tasks]}
            return _result(structured, "\n".join(lines))

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def spending() -> CallToolResult:
        """What this server spent (units and cash, as decimal strings), its limits, and the
        tasks it created: every task in its journal, before a restart too. Creates are
        refused once spent plus running tasks reach a limit; with a limit, a kind of task
        whose cost is not known yet runs one at a time."""
        tools.catch_up()
        ledger, limits = tools.ledger, tools.limits
        text = (
            f"spent {ledger.units} units and {ledger.cash} cash on {ledger.count} tasks created "
            f"through this server's journal (limits: units {_limit(limits.units)}, "
            f"cash {_limit(limits.cash)})"
        )
        return _result(ledger.summary(limits), text)


def _limit(limit: object) -> str:
    return "none" if limit is None else str(limit)


async def _follow(handle: TaskHandle, report: Any) -> None:
    """Report the task's newest state, then each change until it is done."""
    last = handle.last
    if last is not None:
        await report(last)
        if last.done:
            return
    task = await handle.wait_started()
    await report(task)
    if task.done:
        return
    try:
        task = await handle.wait()
    except TaskFailedError as failed:
        task = failed.task
    await report(task)


def register_file_tools(server: MCPServer, tools: KlingTools) -> None:
    """``download_video``: a finished task's video into the server's download folder."""
    session = tools.session

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, open_world_hint=True))
    async def download_video(
        task_id: TaskId,
        filename: Annotated[
            str | None,
            Field(
                description="A plain file name not yet in the download folder (default: "
                "the video id with .mp4)."
            ),
        ] = None,
        family: FamilyName = None,
    ) -> CallToolResult:
        """Download a succeeded task's video into the server's download folder (free) and
        return its path. Only a plain file name is taken: no folders, no '..'."""
        with tool_errors():
            known = tools.family(task_id, family_of(family))
            if filename is not None:  # a bad name is refused before any request
                download_path(tools.out, filename)
            last = session.task(task_id, family=known).last
            task = last if last is not None and last.done else None
            if task is None:
                task = await session.get_task(task_id, family=known)
            tools.saw(task, known)
            video = task.video
            if task.status is not TaskStatus.SUCCEED or video is None:
                raise ToolProblem(
                    f"task {task_id} is {task.status.value}, with no video to download; "
                    "call wait_for_task until it succeeds"
                )
            await anyio.to_thread.run_sync(lambda: tools.out.mkdir(parents=True, exist_ok=True))
            # The video's own name may be saved again (the same video); a chosen one not.
            named = filename or file_name(video.id, video.url)
            path = download_path(tools.out, named, replace=filename is None)
            saved = await session.download(task, path)
            structured = {"path": str(saved), "task": task_json(task, known)}
            return _result(structured, f"saved video {video.id} of task {task_id} to {saved}")
