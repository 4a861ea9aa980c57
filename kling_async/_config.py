"""A session's configuration: the keyword arguments checked, grouped and frozen.

Pure: the environment is passed in, nothing is sent. Every argument is checked here, before
anything could use it, so that a mistake is a clear error at construction and never a
surprise on the wire (``docs/concepts.md``, "The base URL is checked").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import attrs

from . import _urls
from ._auth import BearerKey, JWTSigner
from .errors import InvalidArgumentError
from .models import check_text

__all__ = [
    "DEFAULT_BASE_URL",
    "Limits",
    "SessionConfig",
    "Timeouts",
    "check_base_url",
    "check_count",
    "check_key",
    "check_task_id",
    "check_timeout",
    "configure",
    "credentials",
    "header_safe",
]

DEFAULT_BASE_URL = "https://api-singapore.klingai.com"  # Kling's official global endpoint


@attrs.frozen(kw_only=True)
class Timeouts:
    """How long one socket step may take, in seconds."""

    connect: float
    read: float

    @property
    def create(self) -> float:
        """How long a create's reply is awaited once it is on the wire (even when the
        caller's scope is cancelled): past it the create is in doubt and looked up."""
        return self.connect + 2 * self.read


@attrs.frozen(kw_only=True)
class Limits:
    """How much one session sends and reads at once."""

    max_in_flight: int
    max_response_bytes: int
    max_parallel_tasks: int | None = None
    """The account's parallel-task limit, or None to learn it from 1303 replies."""


@attrs.frozen(kw_only=True)
class SessionConfig:
    """Everything a `KlingSession` was configured with, checked."""

    base_url: str
    auth: BearerKey | JWTSigner
    timeouts: Timeouts
    limits: Limits
    stamp_external_id: bool
    list_refresh: bool | None

    @property
    def account(self) -> str:
        """The account's name in a fleet's Redis: a digest of the base URL and the key's
        public part (the access key, or a digest of the gateway key), never a secret."""
        auth = self.auth
        if isinstance(auth, JWTSigner):
            identity = auth.access_key
        else:
            identity = hashlib.sha256(auth.api_key.encode()).hexdigest()
        return hashlib.sha256(f"{self.base_url}\n{identity}".encode()).hexdigest()[:16]

    @property
    def gateway(self) -> bool:
        """Whether requests go through a gateway's key (no task list, no external ids)."""
        return isinstance(self.auth, BearerKey)


def configure(
    *,
    api_key: str | None,
    base_url: str | None,
    access_key: str | None,
    secret_key: str | None,
    max_in_flight: int,
    connect_timeout: float,
    read_timeout: float,
    stamp_external_id: bool | None,
    list_refresh: bool | None,
    allow_insecure_http: bool,
    max_response_bytes: int,
    environ: Mapping[str, str],
    max_parallel_tasks: int | None = None,
) -> SessionConfig:
    """Check a session's arguments (missing credentials and base URL from ``environ``)."""
    auth = credentials(api_key, access_key, secret_key, environ)
    if base_url is None:
        base_url = environ.get("KLING_BASE_URL") or DEFAULT_BASE_URL
    base = check_base_url(base_url, allow_insecure_http=allow_insecure_http)
    check_count("max_in_flight", max_in_flight, None)
    for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise InvalidArgumentError(name, f"must be a finite number > 0, got {value!r}")
    if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int):
        raise TypeError("max_response_bytes must be an int")
    if max_response_bytes < 1:
        raise ValueError(f"max_response_bytes must be >= 1, got {max_response_bytes}")
    if max_parallel_tasks is not None:
        check_count("max_parallel_tasks", max_parallel_tasks, None)
    if list_refresh not in (None, True, False):
        raise TypeError(f"list_refresh must be None, True or False, not {list_refresh!r}")
    return SessionConfig(
        base_url=base,
        auth=auth,
        timeouts=Timeouts(connect=float(connect_timeout), read=float(read_timeout)),
        limits=Limits(
            max_in_flight=max_in_flight,
            max_response_bytes=max_response_bytes,
            max_parallel_tasks=max_parallel_tasks,
        ),
        stamp_external_id=(
            isinstance(auth, JWTSigner) if stamp_external_id is None else stamp_external_id
        ),
        list_refresh=list_refresh,
    )


def check_count(name: str, value: object, maximum: int | None) -> None:
    """An int from 1 (to ``maximum``): a page size, a page number, a limit."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1 or (maximum is not None and value > maximum):
        bound = f"between 1 and {maximum}" if maximum is not None else "at least 1"
        raise ValueError(f"{name} must be {bound}, got {value}")


def credentials(
    api_key: str | None,
    access_key: str | None,
    secret_key: str | None,
    environ: Mapping[str, str],
) -> BearerKey | JWTSigner:
    """Pick the auth mode from the arguments, falling back to the environment as a whole."""
    if api_key is None and access_key is None and secret_key is None:
        api_key = environ.get("KLING_API_KEY") or None
        access_key = environ.get("KLING_ACCESS_KEY") or None
        secret_key = environ.get("KLING_SECRET_KEY") or None
        if api_key is not None:
            access_key = secret_key = None  # a gateway key in the environment wins
    if api_key is not None:
        if access_key is not None or secret_key is not None:
            raise ValueError("pass either api_key or access_key + secret_key, not both")
        return BearerKey(header_safe("api_key", api_key))
    if access_key is None and secret_key is None:
        raise ValueError(
            "no credentials: pass api_key (gateway) or access_key + secret_key (Kling), "
            "or set KLING_API_KEY or KLING_ACCESS_KEY + KLING_SECRET_KEY"
        )
    if not access_key or not secret_key:
        raise ValueError("access_key and secret_key go together; one of them is missing")
    return JWTSigner(header_safe("access_key", access_key), secret_key)


def check_base_url(url: str, *, allow_insecure_http: bool) -> str:
    """Check a base URL before anything is sent: every later request is built from it."""
    if isinstance(url, str) and not url.strip():
        raise InvalidArgumentError("base_url", "must not be empty")
    parsed = _urls.http_url(url, "base_url")
    if parsed.port == 0:
        raise InvalidArgumentError("base_url", f"port 0 is not a port to connect to: {url!r}")
    if parsed.query or parsed.fragment:
        raise InvalidArgumentError("base_url", f"must not have a query or fragment, got {url!r}")
    if _urls.insecure(parsed) and not allow_insecure_http:
        raise InvalidArgumentError(
            "base_url",
            f"refusing plain http:// to {parsed.hostname}: credentials would travel "
            "unencrypted; use https:// or pass allow_insecure_http=True",
        )
    return url.rstrip("/")


def check_timeout(timeout: float | None) -> None:
    """A wait's bound: None, or seconds >= 0 (NaN is refused)."""
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")


def check_task_id(task_id: object) -> None:
    """A task id (or external id) a caller passed: a non-empty string that can be sent."""
    if not isinstance(task_id, str):
        raise TypeError(f"task_id must be a str, not {type(task_id).__name__}")
    if not task_id.strip():
        raise InvalidArgumentError("task_id", "must not be empty")
    check_text("task_id", task_id)


def check_key(key: object, *, journal: bool) -> None:
    """A journal key a caller passed (``journal``: whether the session has a journal)."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, not {type(key).__name__}")
    if not key.strip():
        raise ValueError("key must not be empty")
    check_text("key", key)
    if not journal:
        raise ValueError("a key needs a journal: KlingSession(journal='batch.sqlite3')")


def header_safe(name: str, value: str) -> str:
    """A credential goes into a header: refuse what would break it (or smuggle another)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    value = value.strip()
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError(f"{name} contains control characters")
    check_text(name, value)
    return value
