"""The session-wide pace: a client-side token bucket that slows down on 1302 and recovers.

Pure: the caller passes the loop's time and does the waiting. Until the server first answers
1302 (requests too frequent) the pace is off and costs nothing. From then on every request
takes a token; the rate falls by ``beta`` on each 1302 and climbs back along a CUBIC curve
(the shape of botocore's adaptive retry mode), so that a thousand waits slow down together
instead of each backing off alone and the rate returns gradually once the server is happy.
"""

from __future__ import annotations

__all__ = ["Pace"]

_MIN_RATE = 0.5  # requests per second: never slower than this
_BETA = 0.7  # a 1302 keeps this share of the rate
_SCALE = 0.4  # CUBIC's C: how fast the rate climbs back
_SMOOTHING = 0.8  # weight of the past in the measured send rate
_BUCKET = 0.5  # seconds over which the measured send rate is counted


class Pace:
    """How fast the whole session may send; `delay()` reserves one request's turn."""

    __slots__ = (
        "_bucket_sends",
        "_bucket_start",
        "_k",
        "_last_cut",
        "_last_refill",
        "_measured",
        "_rate",
        "_tokens",
        "_w_max",
        "enabled",
    )

    def __init__(self) -> None:
        self.enabled = False
        self._rate = 0.0  # requests per second once enabled
        self._tokens = 0.0
        self._last_refill = 0.0
        self._last_cut = float("-inf")
        self._w_max = 0.0
        self._k = 0.0
        self._measured = 0.0
        self._bucket_start = 0.0
        self._bucket_sends = 0

    @property
    def rate(self) -> float | None:
        """Requests per second allowed now, or None while the pace is off."""
        return self._rate if self.enabled else None

    def sent(self, now: float) -> None:
        """Count one request leaving (measures the rate the session really sends at)."""
        if self._bucket_sends == 0 and self._measured == 0:
            self._bucket_start = now  # the first request starts the first bucket
        elif now - self._bucket_start >= _BUCKET:
            elapsed = now - self._bucket_start
            current = self._bucket_sends / elapsed if elapsed > 0 else 0.0
            self._measured = _SMOOTHING * self._measured + (1 - _SMOOTHING) * current
            self._bucket_start = now
            self._bucket_sends = 0
        self._bucket_sends += 1

    def delay(self, now: float) -> float:
        """Take a turn: the seconds to wait before sending (0 when a token is free)."""
        if not self.enabled:
            return 0.0
        self._refill(now)
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self._rate

    def throttled(self, now: float, sent_at: float) -> None:
        """A 1302 for a request sent at ``sent_at``: cut the rate, once per round trip.

        Replies to requests sent before the last cut say nothing new about the cut rate, so a
        burst of 1302s for one burst of requests cuts the rate once, not once per reply.
        """
        if sent_at < self._last_cut:
            return
        current = self._rate if self.enabled else self._recent(now)
        if not self.enabled:
            self.enabled = True
            self._tokens = 1.0  # the request that met the 1302 may try again at once
            self._last_refill = now
        self._w_max = max(current, _MIN_RATE)
        self._rate = max(_MIN_RATE, current * _BETA)
        self._k = (self._w_max * (1 - _BETA) / _SCALE) ** (1 / 3)
        self._last_cut = now
        self._tokens = min(self._tokens, 1.0)

    def succeeded(self, now: float) -> None:
        """A reply that was not a 1302: let the rate climb back along the CUBIC curve."""
        if not self.enabled:
            return
        t = now - self._last_cut
        cubic = _SCALE * (t - self._k) ** 3 + self._w_max
        # Never run far ahead of what the session really sends (botocore caps at 2x too).
        ceiling = max(2.0 * self._recent(now), _MIN_RATE)
        self._refill(now)
        self._rate = max(_MIN_RATE, min(cubic, max(ceiling, self._rate)))

    def _recent(self, now: float) -> float:
        """The send rate now: the smoothed one, or the current bucket's if that is higher (a
        burst shows in the bucket long before it shows in the average)."""
        elapsed = max(now - self._bucket_start, _BUCKET / 10)
        return max(self._measured, self._bucket_sends / elapsed)

    def _refill(self, now: float) -> None:
        elapsed = now - self._last_refill
        if elapsed > 0:
            self._tokens = min(max(1.0, self._rate), self._tokens + elapsed * self._rate)
            self._last_refill = now
