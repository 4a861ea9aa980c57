"""The exceptions kling_async raises.

Every failure of a public call is a `KlingError`; misuse of the API (a bad argument,
a closed session) raises a builtin (``ValueError``, ``TypeError``, ``RuntimeError``) or a
subclass of one. The tree::

    KlingError
    ├── APIError                      the server answered with an error envelope
    │   ├── AuthenticationError       401, codes 1000-1004
    │   ├── AccountError              the account cannot do this; never retried
    │   │   ├── QuotaExhaustedError   1101 arrears, 1102 resource pack used up
    │   │   └── PermissionDeniedError 1103 no permission, 1304 IP whitelist
    │   ├── InvalidRequestError       1200-1202 (400)
    │   │   └── SourceVideoInvalidError     the source video cannot be extended (too long)
    │   ├── NotFoundError             1203 (404): task or video does not exist
    │   │   └── SourceVideoNotFoundError    the source video, or its model, is gone
    │   ├── ContentPolicyError        1300-1301: platform policy, content safety
    │   ├── RateLimitError            1302: too many requests, retried with backoff
    │   │   └── TaskLimitError        1303: too many running tasks, waits for a slot
    │   ├── ServerError               5000-5002 and other 5xx
    │   └── SourceVideoError          a create refused for its source video (``reason``):
    │                                 the base of the two SourceVideo*Error above
    ├── TransportError                no usable response (connection, timeout)
    ├── ResponseDecodeError           the body is not the promised JSON
    ├── RetryAfterTooLongError        the server asked for a wait over the cap
    ├── AmbiguousCreateError          a create may or may not have made a (paid) task
    ├── ListUnavailableError          the base URL does not offer the list endpoint
    ├── TaskFailedError               the task ended with status ``failed``
    ├── WaitTimeoutError              a bounded wait ran out (also a ``TimeoutError``)
    ├── SubmitTimeoutError            extend_many() ran out of time before a send (nothing sent)
    ├── SessionClosedError            the session is closed (also a ``RuntimeError``)
    ├── ChainError                    a chain of extends stopped at one of its links
    ├── JournalError                  the journal file cannot be used
    └── DownloadError                 a result video could not be downloaded
        └── MediaExpiredError         403/404/410 from the media host: the result is gone

    InvalidArgumentError (a ValueError): an argument failed validation before any I/O.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._source_requests import CreateRequest
    from .models import SourceVideoReason, Task

__all__ = [
    "APIError",
    "AccountError",
    "AmbiguousCreateError",
    "AuthenticationError",
    "ChainError",
    "ClaimLostError",
    "ContentPolicyError",
    "DownloadError",
    "FleetError",
    "FleetUnavailableError",
    "InvalidArgumentError",
    "InvalidRequestError",
    "JournalError",
    "KlingError",
    "ListUnavailableError",
    "MediaExpiredError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExhaustedError",
    "RateLimitError",
    "ResponseDecodeError",
    "RetryAfterTooLongError",
    "ServerError",
    "SessionClosedError",
    "SourceVideoError",
    "SourceVideoInvalidError",
    "SourceVideoNotFoundError",
    "SubmitTimeoutError",
    "TaskFailedError",
    "TaskLimitError",
    "TransportError",
    "WaitTimeoutError",
]


class InvalidArgumentError(ValueError):
    """An argument failed validation before anything was sent; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class KlingError(Exception):
    """Base class of every error kling_async raises for a failed call."""


class APIError(KlingError):
    """The server answered with an error: HTTP status plus Kling business code.

    ``code`` is the Kling business code (``None`` when a gateway lost it; then
    ``gateway_code`` holds the gateway's own string code). ``retry_after`` is the wait the
    server asked for, in seconds, when it sent a ``Retry-After`` header.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: int | None = None,
        request_id: str | None = None,
        task_id: str | None = None,
        gateway_code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.task_id = task_id
        self.gateway_code = gateway_code
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code is not None:
            parts.append(f"code {self.code}")
        if self.gateway_code is not None:
            parts.append(f"gateway code {self.gateway_code!r}")
        if self.task_id:
            parts.append(f"task {self.task_id}")
        if self.request_id:
            parts.append(f"request {self.request_id}")
        return f"{self.message} ({', '.join(parts)})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status}, code={self.code}, "
            f"request_id={self.request_id!r}, task_id={self.task_id!r})"
        )


class AuthenticationError(APIError):
    """Authentication failed (401, codes 1000-1004): a wrong key or an invalid token."""


class AccountError(APIError):
    """The account cannot run this request (1100-1103, 1304); waiting does not help."""


class QuotaExhaustedError(AccountError):
    """The account is in arrears (1101) or its resource pack is used up or expired (1102)."""


class PermissionDeniedError(AccountError):
    """No permission for the resource (1103) or the IP whitelist refused the caller (1304)."""


class InvalidRequestError(APIError):
    """The request was refused as invalid (1200-1202)."""


class NotFoundError(APIError):
    """The task or video does not exist (1203), or the route is not there (HTTP 404)."""


# What each `SourceVideoReason` means, in words (keyed by its value: a str enum).
_SOURCE_WORDS = {
    "model_retired": (
        "it was made by a model Kling retired (video-extend takes only videos made by its "
        "V1.0, V1.5 and V1.6 models)"
    ),
    "video_expired": (
        "it has expired or was deleted (Kling deletes videos 30 days after they are made)"
    ),
    "too_long": (
        "it is too long: an extended video may be at most 3 minutes, and each extend adds 4-5 s"
    ),
    "not_found": "Kling did not find it (a wrong id, or another account's video)",
}


class SourceVideoError(APIError):
    """Kling refused a create because of its source video ``video_id``; ``reason`` (a
    `SourceVideoReason`) says why, and ``str()`` says it in words.

    It is raised as `SourceVideoNotFoundError` for Kling's 404 (code 1203), and as
    `SourceVideoInvalidError` for a 400 (code 1200 or 1201), so that an ``except
    NotFoundError`` or ``except InvalidRequestError`` written before still catches it.
    ``message`` is the server's own text.

    Added in version 0.3.
    """

    def __init__(
        self,
        message: str,
        *,
        video_id: str,
        reason: SourceVideoReason,
        status: int,
        code: int | None = None,
        request_id: str | None = None,
        task_id: str | None = None,
        gateway_code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message,
            status=status,
            code=code,
            request_id=request_id,
            task_id=task_id,
            gateway_code=gateway_code,
            retry_after=retry_after,
        )
        self.video_id = video_id
        self.reason = reason

    @property
    def explanation(self) -> str:
        """Why, in words (without the server's message)."""
        return _SOURCE_WORDS.get(self.reason.value, "Kling refused it")

    def __str__(self) -> str:
        return (
            f"video {self.video_id!r} cannot be extended: {self.explanation}: {super().__str__()}"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, video_id={self.video_id!r}, "
            f"reason={self.reason.value!r}, status={self.status}, code={self.code}, "
            f"request_id={self.request_id!r})"
        )


class SourceVideoNotFoundError(SourceVideoError, NotFoundError):
    """A `SourceVideoError` answered as "not found" (404, code 1203): the video, or the
    model that made it, is gone.

    Added in version 0.3.
    """


class SourceVideoInvalidError(SourceVideoError, InvalidRequestError):
    """A `SourceVideoError` answered as an invalid request (400, code 1200 or 1201), such
    as a video too long to extend.

    Added in version 0.3.
    """


class ContentPolicyError(APIError):
    """Platform policy or content safety refused the request (1300, 1301)."""


class RateLimitError(APIError):
    """Requests came too fast (1302); retried with backoff where that is safe."""


class TaskLimitError(RateLimitError):
    """The account already runs as many tasks as it may (1303); a slot frees when one finishes."""


class ServerError(APIError):
    """The server failed (5000-5002, or an HTTP 5xx)."""


class TransportError(KlingError):
    """No usable response arrived: connection refused or dropped, or a timeout.

    ``sent`` is False only when the request certainly never reached the server (a refused
    connection or a connect timeout); a create with ``sent`` True may have made a task.
    """

    def __init__(self, message: str, *, method: str, path: str, sent: bool) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.sent = sent


class ResponseDecodeError(KlingError):
    """The reply is not the promised JSON: an HTML page, a truncated body, or a wrong shape.

    ``is_json`` tells a body that is not JSON at all (a gateway page; worth retrying on a
    query) from JSON of the wrong shape (a bug or a contract change; never retried).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        is_json: bool,
        excerpt: str = "",
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.is_json = is_json
        self.excerpt = excerpt
        self.request_id = request_id


class RetryAfterTooLongError(KlingError):
    """The server asked to wait ``retry_after`` seconds, more than the policy's ``cap``.

    The error the server sent is the ``__cause__`` and ``error``.
    """

    def __init__(self, error: APIError, *, retry_after: float, cap: float) -> None:
        super().__init__(
            f"the server asked to retry after {retry_after:g} s, over the cap of {cap:g} s "
            f"(RetryPolicy.retry_after_cap): {error}"
        )
        self.error = error
        self.retry_after = retry_after
        self.cap = cap


class AmbiguousCreateError(KlingError):
    """A create may or may not have made a task, and it could not be found out.

    Carries what is needed to resolve it by hand: the ``request`` that was sent, when it was
    sent (``sent_at``, aware UTC, this machine's clock), the ``external_task_id`` it carried
    (if any), which `get_task()` accepts, the tasks it may have made (``candidates``) and the
    journal ``key`` it was made under (if any), which `KlingSession.settle` and
    `KlingSession.forget` resolve. Resending blindly may pay for a second task.
    """

    def __init__(
        self,
        message: str,
        *,
        request: CreateRequest,
        sent_at: dt.datetime,
        external_task_id: str | None,
        candidates: tuple[Task, ...] = (),
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.request = request
        self.sent_at = sent_at
        self.external_task_id = external_task_id
        self.candidates = candidates
        self.key = key

    @property
    def candidate_ids(self) -> tuple[str, ...]:
        """The ids of the tasks it may have made."""
        return tuple(task.task_id for task in self.candidates)

    def __str__(self) -> str:
        ref = (
            f"look it up with get_task({self.external_task_id!r})"
            if self.external_task_id
            else "look for it in the task list or the Kling console"
        )
        which = "" if self.key is None else f" (key {self.key!r})"
        listed = f" (candidates: {', '.join(self.candidate_ids)})" if self.candidates else ""
        return (
            f"{self.args[0]}; the create for {self.request.subject}{which} sent at "
            f"{self.sent_at.isoformat()} may have made a task{listed}: {ref} before sending "
            "it again"
        )


class ListUnavailableError(KlingError):
    """The base URL does not offer the list endpoint (most gateways do not route it)."""


class TaskFailedError(KlingError):
    """The task ended with status ``failed``; ``task`` is its final state, ``reason`` why."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.task_id = task.task_id
        self.reason = task.status_message
        super().__init__(f"task {task.task_id} failed: {task.status_message or 'no reason given'}")


class WaitTimeoutError(KlingError, TimeoutError):
    """A bounded wait ran out; the remote task keeps running and the handle stays usable.

    ``task_id`` is the task a handle waited on; for `KlingSession.as_completed` it is None
    and ``pending`` holds the ids of the tasks that had not finished.
    """

    def __init__(
        self,
        task_id: str | None,
        *,
        timeout: float,
        last: Task | None,
        pending: tuple[str, ...] = (),
    ) -> None:
        if task_id is not None:
            status = last.status.value if last is not None else "unknown"
            message = (
                f"task {task_id} was still {status} after waiting {timeout:g} s; "
                "it keeps running on the server and the handle can wait again"
            )
        else:
            shown = ", ".join(pending[:5]) + (", ..." if len(pending) > 5 else "")
            message = (
                f"{len(pending)} task(s) were still running after waiting {timeout:g} s "
                f"({shown}); they keep running on the server and their handles can wait again"
            )
        super().__init__(message)
        self.task_id = task_id
        self.timeout = timeout
        self.last = last
        self.pending = pending if pending or task_id is None else (task_id,)


class SubmitTimeoutError(KlingError, TimeoutError):
    """`KlingSession.extend_many`'s timeout ran out before this create was sent.

    No task was made for ``request``: it is safe to submit it again. ``last_error`` is the
    refusal it was waiting out (a 1303 or a 1302), if any.

    Added in version 0.2.
    """

    def __init__(
        self, *, request: CreateRequest, timeout: float, last_error: KlingError | None
    ) -> None:
        why = f" (last refused: {last_error})" if last_error is not None else ""
        super().__init__(
            f"the create for {request.subject} was not sent within {timeout:g} s; "
            f"nothing was sent, so it is safe to submit again{why}"
        )
        self.request = request
        self.timeout = timeout
        self.last_error = last_error


class SessionClosedError(KlingError, RuntimeError):
    """The session is closed (or was closed while this call was pending)."""


class ChainError(KlingError):
    """A chain (`KlingSession.chain`) stopped at link ``link`` (0: the source, i: the
    extend for prompt i): its task failed, its create was refused, or the session closed.

    ``key`` is the chain's key (None: unkeyed), ``task_id`` the stopped link's task (None
    when no task was made), ``finished`` the tasks the chain finished before it, in order;
    the cause is chained. Re-running the same keyed call resumes after the last finished
    link (docs/chains.md, "When a link fails").

    Added in version 0.3.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None,
        link: int,
        task_id: str | None,
        finished: tuple[Task, ...],
    ) -> None:
        super().__init__(message)
        self.key = key
        self.link = link
        self.task_id = task_id
        self.finished = finished


class DownloadError(KlingError):
    """A result video could not be downloaded (`KlingSession.download`).

    ``url`` is the media URL without its query string or fragment (signed CDN URLs carry
    their secret there); ``status`` is the last HTTP status the media host sent, or None when
    no reply came; ``received`` is how many bytes of the video had arrived when it stopped.
    The partial file is removed.

    Added in version 0.2.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        video_id: str | None = None,
        status: int | None = None,
        received: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.video_id = video_id
        self.status = status
        self.received = received

    def __str__(self) -> str:
        parts = [f"HTTP {self.status}" if self.status is not None else "no reply"]
        parts.append(f"{self.received} bytes received")
        video = f"video {self.video_id} " if self.video_id is not None else ""
        return f"{self.message}: {video}from {self.url} ({', '.join(parts)})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, url={self.url!r}, "
            f"video_id={self.video_id!r}, status={self.status}, received={self.received})"
        )


class MediaExpiredError(DownloadError):
    """The media host answered 403, 404 or 410: the URL has expired or the result is gone.

    Kling keeps result videos for 30 days. A signed URL can also expire sooner than the
    video: query the task again for a fresh URL; past 30 days the result cannot be had.

    Added in version 0.2.
    """


class _KeyedError(KlingError):
    """An error about a journal key (``key``) and the task made for it (``task_id``), either
    possibly None; both are named in the message."""

    def __init__(self, message: str, *, key: str | None = None, task_id: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.task_id = task_id

    def __str__(self) -> str:
        named = (("key", self.key), ("task", self.task_id))
        details = [f"{name} {value!r}" for name, value in named if value is not None]
        return f"{self.args[0]} ({', '.join(details)})" if details else str(self.args[0])


class JournalError(_KeyedError):
    """The journal file cannot be used: not a journal, a newer schema, an I/O failure, a
    record that cannot be read, or a file deleted while open.

    ``key`` names the journal key concerned and ``task_id`` the task the server made for it
    when the failure came after the create (that task exists and is paid for: a later run
    finds it, or `KlingSession.settle` records it).

    Added in version 0.2.
    """


class FleetError(_KeyedError):
    """The fleet's Redis could not do what a shared promise needs (``docs/fleet.md``).

    ``key`` names the journal key concerned, when one is, and ``task_id`` the task the server
    made for it when the failure came after the create (that task exists and is paid for).
    Nothing was sent for a create that raised it before its send; see the subclasses for
    what else is known.

    Added in version 0.3.
    """


class FleetUnavailableError(FleetError):
    """The fleet's Redis did not answer (refused, reset, timed out); the cause is chained.

    Raised before a create sends anything when its claim or its slot could not be recorded:
    the create was not sent and may be tried again. The fleet's journal raises it as a class
    that is a `JournalError` too, so that ``except JournalError`` keeps catching journal
    failures; once the server made the task, a journal failure is a plain `JournalError`
    with ``task_id`` set (the task exists: it is not "not sent").

    Added in version 0.3.
    """


class ClaimLostError(FleetError):
    """This process's claim on a key ended (its lease ran out and another process took the
    key over), so it may no longer write the key's record (fencing). The other process now
    settles the key; nothing this process sent is forgotten by the fleet.

    Added in version 0.3.
    """
