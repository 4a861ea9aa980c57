"""A batch file: JSON Lines or CSV rows, read and checked whole before anything is sent.

Each row's request is built by `_cli_request` (the rules ``extend`` uses); this module adds
what a file needs: the line of each problem, keys that repeat, size bounds, and the file
name each key's download gets. No I/O but reading the file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import pathlib
import re
from collections.abc import Iterable, Sequence

import attrs

from ._cli_output import SURROGATE
from ._cli_request import FIELDS, RequestProblem, extend_request
from .models import ExtendRequest

__all__ = [
    "COLUMNS",
    "MAX_FILE_BYTES",
    "MAX_LINE_BYTES",
    "BatchFileError",
    "Row",
    "file_stems",
    "read_rows",
]

COLUMNS = ("key", *FIELDS)
# A row is a few kB at most (two prompts of 2500 characters); longer lines or a larger file
# are not a batch file (``/dev/zero``, a video passed by mistake) and are refused unread.
MAX_LINE_BYTES = 1 << 20
MAX_FILE_BYTES = 64 << 20


class BatchFileError(ValueError):
    """The batch file cannot be used as it is; the message names the line."""


@attrs.frozen(kw_only=True)
class Row:
    """One request of the batch file: its line, its key and the checked request."""

    line: int
    key: str
    request: ExtendRequest


# -- reading the file -------------------------------------------------------------------------


def _row(line: int, record: dict[str, object]) -> Row:
    """One record as a checked row: valid text, known fields, a key, a valid request."""
    for text in (*record, *record.values()):
        if isinstance(text, str) and SURROGATE.search(text):
            shown = text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            raise BatchFileError(
                f"line {line}: {shown[:40]!r} is not valid Unicode text (a lone surrogate)"
            )
    unknown = [name for name in record if name not in COLUMNS]
    if unknown:
        raise BatchFileError(
            f"line {line}: unknown field {unknown[0]!r} (known: {', '.join(COLUMNS)})"
        )
    key = record.get("key")
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    if not isinstance(key, str) or not key.strip():
        raise BatchFileError(f"line {line}: every row needs a key (a non-empty string)")
    try:
        request = extend_request(record, cells=True)
    except RequestProblem as problem:
        raise BatchFileError(f"line {line}: {problem}") from None
    return Row(line=line, key=key, request=request)


def _json_records(text: str) -> Iterable[tuple[int, dict[str, object]]]:
    for line, source in enumerate(text.splitlines(), 1):
        if not source.strip():
            continue
        try:
            record = json.loads(source)
        except json.JSONDecodeError as error:
            raise BatchFileError(f"line {line}: not valid JSON ({error.msg})") from None
        except RecursionError:
            raise BatchFileError(f"line {line}: the JSON is nested too deeply") from None
        if not isinstance(record, dict):
            raise BatchFileError(f"line {line}: expected a JSON object, got {source.strip()!r}")
        yield line, record


def _csv_records(text: str) -> Iterable[tuple[int, dict[str, object]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    unknown = [name for name in header if name not in COLUMNS]
    if unknown:
        raise BatchFileError(f"line 1: unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})")
    if "key" not in header or "video_id" not in header:
        raise BatchFileError("line 1: the header needs the columns key and video_id")
    if len(set(header)) != len(header):
        raise BatchFileError("line 1: a column repeats in the header")
    reader.fieldnames = header
    for record in reader:
        if None in record:  # more cells than columns
            raise BatchFileError(f"line {reader.line_num}: more cells than columns")
        if not any(value for value in record.values()):
            continue
        yield reader.line_num, {name: value for name, value in record.items() if value != ""}


def _read(path: pathlib.Path) -> str:
    """The file as text, read a line at a time under `MAX_LINE_BYTES` and `MAX_FILE_BYTES`,
    so that an endless source (``/dev/zero``, a pipe that never ends) is refused, not read."""
    lines: list[bytes] = []
    size = 0
    with path.open("rb") as file:
        while line := file.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES:
                raise BatchFileError(
                    f"line {len(lines) + 1} is longer than {MAX_LINE_BYTES // 2**20} MiB: "
                    "not a batch file"
                )
            size += len(line)
            if size > MAX_FILE_BYTES:
                raise BatchFileError(
                    f"larger than {MAX_FILE_BYTES // 2**20} MiB: split it into several batches"
                )
            lines.append(line)
    return b"".join(lines).decode("utf-8-sig")


def read_rows(path: pathlib.Path) -> list[Row]:
    """Every row of the batch file, checked; raises `BatchFileError` naming the line."""
    try:
        text = _read(path)
    except OSError as error:
        raise BatchFileError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise BatchFileError(f"cannot read {path}: it is not UTF-8 text") from None
    except BatchFileError as error:
        raise BatchFileError(f"{path}: {error}") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        as_json = True
    elif suffix == ".csv":
        as_json = False
    else:  # sniff: JSON Lines start with an object
        as_json = text.lstrip().startswith("{")
    try:
        return _checked(_json_records(text) if as_json else _csv_records(text))
    except BatchFileError as error:
        raise BatchFileError(f"{path}: {error}") from None


def _checked(records: Iterable[tuple[int, dict[str, object]]]) -> list[Row]:
    rows: list[Row] = []
    keys: dict[str, int] = {}
    external: dict[str, int] = {}
    for line, record in records:
        row = _row(line, record)
        if row.key in keys:
            raise BatchFileError(f"line {line}: key {row.key!r} repeats line {keys[row.key]}")
        keys[row.key] = line
        stamp = row.request.external_task_id
        if stamp is not None:
            if stamp in external:
                raise BatchFileError(
                    f"line {line}: external_task_id {stamp!r} repeats line {external[stamp]}"
                )
            external[stamp] = line
        rows.append(row)
    if not rows:
        raise BatchFileError("no rows")
    return rows


# -- file names ----------------------------------------------------------------------------

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_NAME_CHARS = 100


def _stem(key: str, *, hashed: bool) -> str:
    safe = _UNSAFE_NAME.sub("_", key)
    safe = re.sub(r"^[.-]+", lambda m: "_" * len(m.group()), safe)  # not hidden, not . or ..
    if hashed or safe != key or len(safe) > _NAME_CHARS:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        return f"{safe[:_NAME_CHARS]}-{digest}"
    return safe


def file_stems(keys: Sequence[str]) -> dict[str, str]:
    """Each row key's file name without its suffix, safe on any file system.

    A key made of ``A-Z a-z 0-9 . _ -`` (not starting with ``.`` or ``-``, at most 100
    characters) is its own name; any other key keeps those characters, the others replaced by
    ``_``, cut at 100, plus ``-`` and 8 hex digits of its SHA-256. Keys whose names would be
    equal, ignoring case (macOS and Windows), all get the digest. The name never holds a path
    separator, never is ``.`` or ``..``, and depends only on the keys of the file.
    """
    hashed: set[str] = set()
    while True:
        stems = {key: _stem(key, hashed=key in hashed) for key in keys}
        owners: dict[str, list[str]] = {}
        for key, stem in stems.items():
            owners.setdefault(stem.casefold(), []).append(key)
        clashing = {key for group in owners.values() if len(group) > 1 for key in group}
        if clashing <= hashed:
            return stems
        hashed |= clashing
