"""The MCP server's file rules: which local images a tool may read, where a download may go.

The server's own journal lives where every start finds it again (`default_journal`).
A model's arguments are untrusted (a prompt can ask for anything): a local image path is
read only inside a folder the operator allowed with ``--allow-dir`` (none by default), and a
download is written only into ``--out`` under a plain file name (docs/mcp.md, "Safety
rules"). Paths are resolved, symlinks included, before they are compared.
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Sequence

from ._mcp_results import ToolProblem

__all__ = ["default_journal", "download_path", "image_argument"]

_DEFAULT_SUFFIX = ".mp4"
_MAX_NAME = 200


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    return path == folder or folder in path.parents


def image_argument(
    field: str, value: str | None, allowed: Sequence[pathlib.Path]
) -> str | pathlib.Path | None:
    """``value`` as the SDK's image argument: a URL or base64 passed on as it is, a local
    file as its resolved path when it lies inside one of the ``allowed`` folders.

    A value that names an existing file (or a symlink) is a local path; the SDK reads such
    strings, so every one is checked here first.
    """
    if value is None or value.startswith(("http://", "https://")) or "\n" in value:
        return value
    try:
        local = len(value) <= 4096 and os.path.lexists(os.path.expanduser(value))
    except (OSError, ValueError):  # an embedded NUL, a name too long: not a file
        local = False
    if not local:
        return value
    path = pathlib.Path(os.path.expanduser(value)).resolve()
    if not any(_inside(path, folder.resolve()) for folder in allowed):
        where = (
            "no folder is allowed (the server runs without --allow-dir)"
            if not allowed
            else "it is outside the folders allowed with --allow-dir"
        )
        raise ToolProblem(
            f"{field}: local files may be read only inside allowed folders, and {where}; "
            "pass an https URL or base64 image data instead"
        )
    return path


def download_path(out: pathlib.Path, name: str, *, replace: bool = False) -> pathlib.Path:
    """Where a download named ``name`` goes: a plain file name directly inside ``out``.

    Refused: an empty name, an absolute one, one with a folder part or ``..``, one whose
    place is a symlink or resolves outside ``out``, and, unless ``replace``, one that
    exists already (a name the model chose must not replace another video or the
    operator's file). A name without a suffix gets ``.mp4`` (the SDK would take a bare
    name for a folder).
    """
    if not name or not name.strip():
        raise ToolProblem("filename must not be empty")
    if "\x00" in name or len(name) > _MAX_NAME:
        raise ToolProblem(f"filename must be a plain file name of at most {_MAX_NAME} characters")
    if os.path.isabs(name) or "/" in name or "\\" in name or name in {".", ".."}:
        raise ToolProblem(
            f"filename must be a plain file name inside the download folder, without '/', "
            f"'\\' or '..'; got {name!r}"
        )
    if name.startswith("."):
        raise ToolProblem(f"filename must not start with '.'; got {name!r}")
    if not pathlib.PurePath(name).suffix:
        name += _DEFAULT_SUFFIX
    folder = out.resolve()
    target = folder / name
    if target.is_symlink() or target.resolve().parent != folder:
        raise ToolProblem(f"filename {name!r} leads outside the download folder")
    if not replace and os.path.lexists(target):
        raise ToolProblem(
            f"filename {name!r} exists already in the download folder: choose another name "
            "(or leave filename out to save the video under its id)"
        )
    return target


def default_journal() -> pathlib.Path:
    """The journal every run of the server finds again, wherever a client starts it: this
    user's data folder (``$XDG_DATA_HOME``, ``~/.local/share``, or the platform's own), never
    the working folder, which a client may change from one start to the next."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(pathlib.Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(pathlib.Path.home() / "Library" / "Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(pathlib.Path.home() / ".local" / "share")
    return pathlib.Path(base) / "kling-async" / "mcp.journal.sqlite3"
