"""The session-wide pace: a client-side token bucket that slows down on 1302 and recovers.

Pure: the caller passes the loop's time and does the waiting. Until the server first answers
1302 (requests too frequent) the pace is off and costs nothing. From then on every request
takes a token; the rate falls by ``beta`` on each 1302 and climbs back along a CUBIC curve
(the shape of botocore's adaptive retry mode), so that a thousand waits slow down together
instead of each backing off alone and the rate returns gradually once the server is happy.

A request waits its turn with a ticket: tickets are served in the order they were taken, a
token is never lent in advance (the bucket never goes below zero), and a waiter is told only
how long to sleep before asking again, so a rate that climbs back reaches every sleeper that
asks again (`succeeded` says when to wake them).
"""

from __future__ import annotations

import bisect

__all__ = ["Pace"]

_MIN_RATE = 0.5  # requests per second: never slower than this
_BETA = 0.7  # a 1302 keeps this share of the rate
_SCALE = 0.4  # CUBIC's C: how fast the rate climbs back
_SMOOTHING = 0.8  # weight of the past in the measured send rate
_BUCKET = 0.5  # seconds over which the measured send rate is counted
_WAKE_GROWTH = 1.1  # sleepers recompute when the rate has grown by this factor
_EPSILON = 1e-9  # a token short by less than this (float rounding) is a whole token


class Pace:
    """How fast the whole session may send; `join` and `turn` hand out the turns in order."""

    __slots__ = (
        "_bucket_sends",
        "_bucket_start",
        "_head",
        "_k",
        "_last_cut",
        "_last_refill",
        "_left",
        "_measured",
        "_next_ticket",
        "_rate",
        "_tokens",
        "_w_max",
        "_woken_rate",
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
        self._woken_rate = 0.0  # the rate sleepers last computed their sleep with
        # Tickets: `_head` is the oldest not yet served, `_next_ticket` the next to hand out;
        # `_left` lists (sorted) the tickets above the head served early or given up.
        self._head = 0
        self._next_ticket = 0
        self._left: list[int] = []

    @property
    def rate(self) -> float | None:
        """Requests per second allowed now, or None while the pace is off."""
        return self._rate if self.enabled else None

    @property
    def tokens(self) -> float:
        """Tokens in the bucket at the last update (never below zero)."""
        return self._tokens

    @property
    def waiting(self) -> int:
        """Tickets taken and neither served nor given up."""
        return self._next_ticket - self._head - len(self._left)

    def recent(self, now: float) -> float:
        """The rate (requests per second) this pace has measured requests leaving at, now: what
        a fleet adds up across its processes to cut the account's rate (``_redis_pace``)."""
        return self._recent(now)

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

    def join(self) -> int:
        """Take a ticket: a place in the queue for a request's turn."""
        ticket = self._next_ticket
        self._next_ticket += 1
        return ticket

    def turn(self, ticket: int, now: float) -> float:
        """0.0 when ``ticket``'s turn has come (its token is taken: send now); else the
        seconds to sleep before asking again.

        A ticket goes when the bucket holds a token for it and for every ticket ahead of it.
        The sleep is when that would be at today's rate: for the first ticket in line, the
        next token. A waiter must ask again after it (or sooner, when woken): the rate may
        have changed meanwhile.
        """
        left = self._left
        index = bisect.bisect_left(left, ticket)
        if not self._head <= ticket < self._next_ticket or (
            index < len(left) and left[index] == ticket
        ):
            raise ValueError(f"ticket {ticket} is not waiting (served, given up or never taken)")
        if not self.enabled:
            self._served(ticket)
            return 0.0
        self._refill(now)
        ahead = ticket - self._head - index
        needed = ahead + 1.0
        if self._tokens + _EPSILON >= needed:
            self._tokens = max(0.0, self._tokens - 1.0)
            self._served(ticket)
            return 0.0
        return (needed - self._tokens) / self._rate

    def leave(self, ticket: int) -> None:
        """Give up a ticket not served (its request was cancelled or ran out of time)."""
        self._served(ticket)

    def throttled(self, now: float, sent_at: float) -> None:
        """A 1302 for a request sent at ``sent_at``: cut the rate, once per round trip.

        Replies to requests sent before the last cut say nothing new about the cut rate, so a
        burst of 1302s for one burst of requests cuts the rate once, not once per reply. The
        rate cut is the lower of the allowed and the really sent one: that is what met the
        1302.
        """
        if sent_at < self._last_cut:
            return
        recent = self._recent(now)
        if not self.enabled:
            self.enabled = True
            self._tokens = 1.0  # the request that met the 1302 may try again at once
            self._last_refill = now
            current = recent
        else:
            self._refill(now)
            current = min(self._rate, recent)
        self._w_max = max(current, _MIN_RATE)
        self._rate = max(_MIN_RATE, current * _BETA)
        self._woken_rate = self._rate
        self._k = (self._w_max * (1 - _BETA) / _SCALE) ** (1 / 3)
        self._last_cut = now
        self._tokens = min(self._tokens, 1.0)

    def succeeded(self, now: float) -> bool:
        """A reply that was not a 1302: let the rate climb back along the CUBIC curve.

        True when the rate has grown enough since the waiters last computed their sleep that
        they should be woken to compute it again.
        """
        if not self.enabled:
            return False
        t = now - self._last_cut
        cubic = _SCALE * (t - self._k) ** 3 + self._w_max
        # Never run far ahead of what the session really sends (botocore caps at 2x too).
        ceiling = max(2.0 * self._recent(now), _MIN_RATE)
        self._refill(now)
        self._rate = max(_MIN_RATE, min(cubic, max(ceiling, self._rate)))
        if self._rate < self._woken_rate * _WAKE_GROWTH:
            return False
        self._woken_rate = self._rate
        return self.waiting > 0

    def _served(self, ticket: int) -> None:
        """Take ``ticket`` out of the queue (served, or given up)."""
        if ticket < self._head or ticket >= self._next_ticket:
            return
        left = self._left
        if ticket == self._head:
            self._head += 1
            while left and left[0] == self._head:  # tickets behind it that went early
                del left[0]
                self._head += 1
        else:
            index = bisect.bisect_left(left, ticket)
            if index == len(left) or left[index] != ticket:
                left.insert(index, ticket)

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
