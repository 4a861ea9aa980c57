"""kling_async: an async-first SDK for the Kling AI video-extend API.

Open a `KlingSession`, ``await session.extend(video_id)`` to submit a task, and
``await`` the returned `TaskHandle` for the finished `Task`. The emulator in
`testing` runs the same calls against a local server.
"""

from __future__ import annotations

from ._chain_run import ChainHandle
from ._handle import TaskHandle
from ._journal import Claim, ClaimOutcome, EntryState, Journal, JournalEntry
from ._policies import DownloadPolicy, PollPolicy, RetryPolicy
from ._session import KlingSession
from ._source_requests import CameraControl, ImageToVideo, TextToVideo
from ._sqlite_journal import SQLiteJournal
from .callbacks import CallbackReceiver
from .errors import (
    AccountError,
    AmbiguousCreateError,
    APIError,
    AuthenticationError,
    ChainError,
    ClaimLostError,
    ContentPolicyError,
    DownloadError,
    FleetError,
    FleetUnavailableError,
    InvalidArgumentError,
    InvalidRequestError,
    JournalError,
    KlingError,
    ListUnavailableError,
    MediaExpiredError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExhaustedError,
    RateLimitError,
    ResponseDecodeError,
    RetryAfterTooLongError,
    ServerError,
    SessionClosedError,
    SourceVideoError,
    SourceVideoInvalidError,
    SourceVideoNotFoundError,
    SubmitTimeoutError,
    TaskFailedError,
    TaskLimitError,
    TransportError,
    WaitTimeoutError,
)
from .models import (
    Cost,
    ExtendRequest,
    SessionStatistics,
    SourceVideoReason,
    Task,
    TaskFamily,
    TaskInfo,
    TaskResult,
    TaskStatus,
    Video,
)

__version__ = "0.2.0"

__all__ = [
    "APIError",
    "AccountError",
    "AmbiguousCreateError",
    "AuthenticationError",
    "CallbackReceiver",
    "CameraControl",
    "ChainError",
    "ChainHandle",
    "Claim",
    "ClaimLostError",
    "ClaimOutcome",
    "ContentPolicyError",
    "Cost",
    "DownloadError",
    "DownloadPolicy",
    "EntryState",
    "ExtendRequest",
    "FleetError",
    "FleetUnavailableError",
    "ImageToVideo",
    "InvalidArgumentError",
    "InvalidRequestError",
    "Journal",
    "JournalEntry",
    "JournalError",
    "KlingError",
    "KlingSession",
    "ListUnavailableError",
    "MediaExpiredError",
    "NotFoundError",
    "PermissionDeniedError",
    "PollPolicy",
    "QuotaExhaustedError",
    "RateLimitError",
    "ResponseDecodeError",
    "RetryAfterTooLongError",
    "RetryPolicy",
    "SQLiteJournal",
    "ServerError",
    "SessionClosedError",
    "SessionStatistics",
    "SourceVideoError",
    "SourceVideoInvalidError",
    "SourceVideoNotFoundError",
    "SourceVideoReason",
    "SubmitTimeoutError",
    "Task",
    "TaskFailedError",
    "TaskFamily",
    "TaskHandle",
    "TaskInfo",
    "TaskLimitError",
    "TaskResult",
    "TaskStatus",
    "TextToVideo",
    "TransportError",
    "Video",
    "WaitTimeoutError",
    "__version__",
]
