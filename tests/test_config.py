"""A session's configuration: its arguments checked and grouped, the environment passed in."""

from __future__ import annotations

from typing import Any

import pytest

from kling_async import InvalidArgumentError
from kling_async._auth import BearerKey, JWTSigner
from kling_async._config import DEFAULT_BASE_URL, Limits, Timeouts, configure


def _configure(environ: dict[str, str] | None = None, **changes: Any) -> Any:
    arguments: dict[str, Any] = {
        "api_key": None,
        "base_url": None,
        "access_key": "ak",
        "secret_key": "sk",
        "max_in_flight": 32,
        "connect_timeout": 10.0,
        "read_timeout": 60.0,
        "stamp_external_id": None,
        "list_refresh": None,
        "allow_insecure_http": False,
        "max_response_bytes": 1024,
        "environ": environ or {},
    }
    return configure(**{**arguments, **changes})


def test_access_keys_sign_jwts_and_stamp_external_ids_by_default() -> None:
    """Kling's own keys: a JWT signer, the official base URL, stamping on."""
    config = _configure()
    assert isinstance(config.auth, JWTSigner)
    assert (DEFAULT_BASE_URL, True, False) == (
        config.base_url,
        config.stamp_external_id,
        config.gateway,
    )


def test_a_gateway_key_from_the_environment_wins_and_does_not_stamp() -> None:
    """Only when no credential is passed is the environment read, and its gateway key wins."""
    environ = {
        "KLING_API_KEY": "gw",
        "KLING_ACCESS_KEY": "ak",
        "KLING_SECRET_KEY": "sk",
        "KLING_BASE_URL": "https://gw.example.com/kling/",
    }
    config = _configure(environ, access_key=None, secret_key=None)
    assert isinstance(config.auth, BearerKey)
    assert ("https://gw.example.com/kling", False, True) == (
        config.base_url,
        config.stamp_external_id,
        config.gateway,
    )


def test_timeouts_and_limits_are_grouped_and_a_creates_reply_is_awaited_longer() -> None:
    """A create's reply is awaited for the connect timeout and two read timeouts."""
    config = _configure(connect_timeout=2, read_timeout=3, max_in_flight=4)
    assert Timeouts(connect=2.0, read=3.0) == config.timeouts
    assert 8.0 == config.timeouts.create
    assert Limits(max_in_flight=4, max_response_bytes=1024) == config.limits


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"connect_timeout": 0}, InvalidArgumentError),
        ({"read_timeout": float("inf")}, InvalidArgumentError),
        ({"max_in_flight": 0}, ValueError),
        ({"max_in_flight": True}, TypeError),
        ({"max_response_bytes": 0}, ValueError),
        ({"list_refresh": "yes"}, TypeError),
        ({"base_url": "http://example.com"}, InvalidArgumentError),
        ({"base_url": "https://example.com/?q=1"}, InvalidArgumentError),
        ({"access_key": None}, ValueError),
        ({"api_key": "gw"}, ValueError),
        ({"access_key": "a\nb"}, ValueError),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(
    changes: dict[str, Any], error: type[Exception]
) -> None:
    """Every argument is checked at construction, with the builtin or typed error it earns."""
    with pytest.raises(error):
        _configure(**changes)
