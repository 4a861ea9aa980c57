"""Specification of the public surface: what ``import kling_async`` offers, and nothing else."""

from __future__ import annotations

import importlib.resources

import pytest

import kling_async
import kling_async.errors

EXPECTED_ALL = {
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
    "FleetError",
    "FleetUnavailableError",
    "ImageToVideo",
    "EntryState",
    "ExtendRequest",
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
}

PUBLIC_EXCEPTIONS = [
    value
    for name in kling_async.__all__
    if isinstance(value := getattr(kling_async, name), type) and issubclass(value, BaseException)
]


TESTING_ALL = [
    "EmulatedTask",
    "Fault",
    "KlingEmulator",
    "MockTransport",
    "RecordedCallback",
    "RecordedRequest",
    "emulator_command",
]


def test_the_testing_package_has_its_expected_sorted_surface() -> None:
    """`kling_async.testing` exports exactly these names, sorted, each importable."""
    import kling_async.testing

    assert TESTING_ALL == kling_async.testing.__all__
    for name in TESTING_ALL:
        assert getattr(kling_async.testing, name) is not None


def test_all_is_sorted() -> None:
    """``__all__`` is kept sorted so that additions show up plainly in review."""
    assert sorted(kling_async.__all__) == kling_async.__all__


def test_all_has_no_duplicates() -> None:
    """Each public name is listed once."""
    assert len(set(kling_async.__all__)) == len(kling_async.__all__)


def test_all_is_the_expected_surface() -> None:
    """The public surface is exactly this list; changing it is a deliberate act."""
    assert EXPECTED_ALL == set(kling_async.__all__)


@pytest.mark.parametrize("name", kling_async.__all__)
def test_every_public_name_resolves(name: str) -> None:
    """Every name in ``__all__`` is an attribute of the package."""
    assert getattr(kling_async, name) is not None


def test_star_import_gives_exactly_all() -> None:
    """``from kling_async import *`` binds exactly the names in ``__all__``."""
    namespace: dict[str, object] = {}
    exec("from kling_async import *", namespace)
    namespace.pop("__builtins__")
    assert EXPECTED_ALL == set(namespace)


def test_version_is_a_string() -> None:
    """``__version__`` is the package version as a string."""
    assert isinstance(kling_async.__version__, str)
    assert kling_async.__version__.count(".") >= 1


def test_every_error_is_re_exported() -> None:
    """Every name in ``kling_async.errors.__all__`` is importable from the package itself."""
    assert set() == set(kling_async.errors.__all__) - set(kling_async.__all__)


@pytest.mark.parametrize("name", kling_async.errors.__all__)
def test_re_exported_errors_are_the_same_objects(name: str) -> None:
    """The package re-exports the errors module's classes, not copies."""
    assert getattr(kling_async.errors, name) is getattr(kling_async, name)


def test_every_public_exception_is_listed_in_errors() -> None:
    """All exceptions the package exports live in ``kling_async.errors``."""
    names = {exc.__name__ for exc in PUBLIC_EXCEPTIONS}
    assert set(kling_async.errors.__all__) == names


@pytest.mark.parametrize(
    "exc",
    [exc for exc in PUBLIC_EXCEPTIONS if exc is not kling_async.InvalidArgumentError],
    ids=lambda exc: exc.__name__,
)
def test_every_public_exception_is_a_kling_error(exc: type[BaseException]) -> None:
    """Every failure of a call is a KlingError, so one ``except`` catches them all."""
    assert issubclass(exc, kling_async.KlingError)


def test_invalid_argument_error_is_a_value_error_not_a_kling_error() -> None:
    """Misuse raises builtins: InvalidArgumentError is a ValueError, outside KlingError."""
    exc = kling_async.InvalidArgumentError
    assert (True, False) == (issubclass(exc, ValueError), issubclass(exc, kling_async.KlingError))


def test_wait_timeout_error_is_a_timeout_error() -> None:
    """A bounded wait that ran out can be caught as the builtin TimeoutError."""
    assert issubclass(kling_async.WaitTimeoutError, TimeoutError)


def test_session_closed_error_is_a_runtime_error() -> None:
    """Using a closed session can be caught as the builtin RuntimeError (api.md "Opening")."""
    assert issubclass(kling_async.SessionClosedError, RuntimeError)


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        ("AuthenticationError", "APIError"),
        ("AccountError", "APIError"),
        ("QuotaExhaustedError", "AccountError"),
        ("PermissionDeniedError", "AccountError"),
        ("InvalidRequestError", "APIError"),
        ("NotFoundError", "APIError"),
        ("ContentPolicyError", "APIError"),
        ("RateLimitError", "APIError"),
        ("TaskLimitError", "RateLimitError"),
        ("ServerError", "APIError"),
        ("MediaExpiredError", "DownloadError"),
    ],
)
def test_exception_tree(child: str, parent: str) -> None:
    """The API errors form the tree drawn in the ``errors`` module docstring."""
    assert issubclass(getattr(kling_async, child), getattr(kling_async, parent))


def test_py_typed_marker_is_shipped() -> None:
    """The package ships ``py.typed`` so type checkers read its annotations."""
    assert importlib.resources.files("kling_async").joinpath("py.typed").is_file()
