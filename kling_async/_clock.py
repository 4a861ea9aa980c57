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
    clock was stepped: the newest observation starts over.
    """

    __slots__ = ("_high", "_low", "seconds")

    def __init__(self) -> None:
        self._low: dt.timedelta | None = None
        self._high: dt.timedelta | None = None
        self.seconds = 0.0
        """`offset` in seconds, 0.0 until known: what to add to ``time.time()``."""

    @property
    def offset(self) -> dt.timedelta | None:
        """Server time minus local time (the interval's middle), or None until known."""
        if self._low is None or self._high is None:
            return None
        return self._low + (self._high - self._low) / 2

    @property
    def uncertainty(self) -> dt.timedelta:
        """How far the true offset may be from `offset` (half the interval)."""
        if self._low is None or self._high is None:
            return dt.timedelta(0)
        return (self._high - self._low) / 2

    def observe(
        self,
        server_time: dt.datetime,
        sent: dt.datetime,
        received: dt.datetime,
        *,
        resolution: dt.timedelta = _MILLISECOND,
    ) -> None:
        """The server read ``server_time`` (truncated to ``resolution``) between ``sent``
        and ``received``, both local times."""
        if received < sent:  # the local clock was stepped back during the exchange
            return
        low, high = server_time - received, server_time + resolution - sent
        if self._low is not None and self._high is not None:
            narrowed_low, narrowed_high = max(low, self._low), min(high, self._high)
            if narrowed_low <= narrowed_high:
                low, high = narrowed_low, narrowed_high
        self._low, self._high = low, high
        self.seconds = (low + (high - low) / 2).total_seconds()

    def observe_date(self, header: str | None, sent: dt.datetime, received: dt.datetime) -> None:
        """Learn from a reply's ``Date`` header (whole seconds), if it has a valid one."""
        when = parse_http_date(header)
        if when is not None:
            self.observe(when, sent, received, resolution=_SECOND)

    def to_server(self, local: dt.datetime) -> dt.datetime | None:
        """``local`` carried onto the server's clock, or None while no offset is known."""
        offset = self.offset
        return None if offset is None else local + offset


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
