"""An image for image-to-video as Kling takes it: an http(s) URL or bare base64.

A local file (a path object, or a string naming an existing file) is read and encoded here,
so that a caller need not; what is neither is refused before anything is sent
(docs/concepts.md, "Task families"). Kling takes jpg and png up to 10 MB.
"""

from __future__ import annotations

import base64
import binascii
import os
import pathlib
import urllib.parse

from .errors import InvalidArgumentError
from .models import check_text

__all__ = ["MAX_IMAGE_BYTES", "image_value"]

MAX_IMAGE_BYTES = 10 * 1024 * 1024  # Kling refuses a larger image
_MAX_PATH = 4096  # a longer string is no file name: it is read as base64
_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def image_value(field: str, value: object) -> str | None:
    """``value`` as Kling's ``image``/``image_tail`` field: a URL or bare base64 (or None).

    A path object, or a string that names an existing file, is read and base64-encoded; a
    ``data:`` URI, a file over 10 MB, text that is none of these: `InvalidArgumentError`.
    """
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        return _read(field, pathlib.Path(os.fspath(value)))
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str or a path, not {type(value).__name__}")
    check_text(field, value)
    if not value.strip():
        raise InvalidArgumentError(field, "must not be empty")
    if value[:5].lower() == "data:":
        raise InvalidArgumentError(
            field, "must be bare base64: leave out the 'data:...;base64,' prefix"
        )
    if value.startswith(("http://", "https://")):
        if not urllib.parse.urlsplit(value).hostname:
            raise InvalidArgumentError(field, f"is not a valid URL: {value!r}")
        return value
    if len(value) <= _MAX_PATH and "\n" not in value and os.path.isfile(value):
        return _read(field, pathlib.Path(value))
    if _is_base64(value):
        if len(value) // 4 * 3 > MAX_IMAGE_BYTES + 2:
            raise InvalidArgumentError(field, f"an image may be at most {MAX_IMAGE_BYTES} bytes")
        return value
    raise InvalidArgumentError(
        field, "must be an http(s) URL, bare base64 image data, or the path of an existing file"
    )


def _is_base64(value: str) -> bool:
    if not value.isascii() or len(value) % 4 or not _BASE64.issuperset(value.encode()):
        return False
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        return False
    return True


def _read(field: str, path: pathlib.Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise InvalidArgumentError(
                field, f"{path} is {size} bytes; an image may be at most {MAX_IMAGE_BYTES} bytes"
            )
        if size == 0:
            raise InvalidArgumentError(field, f"{path} is empty")
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    return base64.b64encode(data).decode("ascii")
