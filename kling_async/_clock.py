"""The server's clock, as learned from its replies: pure, the caller passes every time.

Kling's ``created_at`` and ``updated_at`` are the server's clock, and the machine's clock may
be minutes off (``docs/concepts.md``, "Clocks"). Times are never compared across the two
clocks: a local time is carried onto the server's clock with an offset learned from what the
server said (the ``created_at`` of a task this session made, or a reply's ``Date`` header),
together with how uncertain that offset is.
"""

from __future__ import annotations

import datetime as dt
import email.utils

__all__ = ["ServerClock", "parse_http_date"]

_MILLISECOND = dt.timedelta(milliseconds=1)
_SECOND = dt.timedelta(seconds=1)


class ServerClock:
    """The offset of the server's clock from this machine's, as an interval that every
    observation narrows.

    A reply that says the server read ``T`` (to a resolution ``r``) between the local times
    ``sent`` and ``received`` bounds the offset to ``[T - received, T + r - sent]``. The
    intersection of those bounds is the offset's interval; replies at different phases of a
    second narrow even a ``Date`` header's whole seconds. An empty intersection means a
    clock was stepped: the newest observation starts over. Task times (Kling's own clock)
    are kept apart from ``Date`` headers, which a gateway may write on its own clock: once
    a task time was seen, it is what the offset is.
    """

    __slots__ = ("_date", "_task", "seconds")

    def __init__(self) -> None:
        self._task: tuple[dt.timedelta, dt.timedelta] | None = None
        self._date: tuple[dt.timedelta, dt.timedelta] | None = None
        self.seconds = 0.0
        """`offset` in seconds, 0.0 until known: what to add to ``time.time()``."""

    @property
    def _interval(self) -> tuple[dt.timedelta, dt.timedelta] | None:
        return self._task if self._task is not None else self._date

    @property
    def offset(self) -> dt.timedelta | None:
        """Server time minus local time (the interval's middle), or None until known."""
        interval = self._interval
        if interval is None:
            return None
        low, high = interval
        return low + (high - low) / 2

    @property
    def uncertainty(self) -> dt.timedelta:
        """How far the true offset may be from `offset` (half the interval)."""
        interval = self._interval
        if interval is None:
            return dt.timedelta(0)
        low, high = interval
        return (high - low) / 2

    def observe(
        self,
        server_time: dt.datetime,
        sent: dt.datetime,
        received: dt.datetime,
        *,
        resolution: dt.timedelta = _MILLISECOND,
    ) -> None:
        """A task time: the server read ``server_time`` (truncated to ``resolution``)
        between ``sent`` and ``received``, both local times."""
        self._task = _narrowed(self._task, server_time, sent, received, resolution)
        self._update()

    def observe_date(self, header: str | None, sent: dt.datetime, received: dt.datetime) -> None:
        """Learn from a reply's ``Date`` header (whole seconds), if it has a valid one."""
        when = parse_http_date(header)
        if when is not None:
            self._date = _narrowed(self._date, when, sent, received, _SECOND)
            self._update()

    def to_server(self, local: dt.datetime) -> dt.datetime | None:
        """``local`` carried onto the server's clock, or None while no offset is known."""
        offset = self.offset
        return None if offset is None else local + offset

    def _update(self) -> None:
        offset = self.offset
        self.seconds = 0.0 if offset is None else offset.total_seconds()


def _narrowed(
    interval: tuple[dt.timedelta, dt.timedelta] | None,
    server_time: dt.datetime,
    sent: dt.datetime,
    received: dt.datetime,
    resolution: dt.timedelta,
) -> tuple[dt.timedelta, dt.timedelta] | None:
    """``interval`` narrowed by one observation (or started over by it, after a step)."""
    if received < sent:  # the local clock was stepped back during the exchange
        return interval
    low, high = server_time - received, server_time + resolution - sent
    if interval is not None:
        narrowed_low, narrowed_high = max(low, interval[0]), min(high, interval[1])
        if narrowed_low <= narrowed_high:
            return narrowed_low, narrowed_high
    return low, high


def parse_http_date(header: str | None) -> dt.datetime | None:
    """An HTTP ``Date`` value as an aware UTC datetime, or None when absent or malformed."""
    if not header:
        return None
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses naive
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)
