"""The emitter's schedule: how many events are due by a moment, and when to wake for the next.

Pure arithmetic on the moments it is given (seconds on one clock of the caller's: the
emitter's monotonic clock), so that a test can drive it with made-up moments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The pacing loop wakes this often; each wake-up produces the events due by then.
TICK_SECONDS = 0.01
# A slow emitter still wakes this often, to serve delivery reports and notice a signal.
MAX_SLEEP_SECONDS = 0.25
# A millionth of an event: float rounding must not add an event, as 18 s at 50/s computed
# as 900.0000000001 events would.
DUE_EPSILON = 1e-6
# Burst mode's multiplier unless the emitter is started with another (--burst-multiplier).
DEFAULT_BURST_MULTIPLIER = 5.0


def positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


@dataclass(frozen=True)
class TimedBurst:
    """`multiplier` times the rate until the moment `until` (on the schedule's clock)."""

    multiplier: float
    until: float

    def __post_init__(self) -> None:
        positive("the burst multiplier", self.multiplier)


class Pace:
    """Events due at `rate` per second from `start`: `burst_multiplier` times that in
    burst mode, a timed burst's multiplier times `rate` until the burst ends (burst mode
    or not); at most `count` events, and none due after `start + duration`.

    Event n (counting from 0) falls due as the schedule's position, the events due so far
    counted in fractions too, passes n; the position grows at the rate in force, so at a
    steady rate event n is due at start + n / rate, the time its virtual timestamp says.
    The emitter produces what is due rather than sleeping per event, so sleep overshoot
    and slow steps do not add up into a lower rate: whatever a late tick missed, the next
    one produces.

    A change of pace at a moment keeps the position reached, so the events due by then
    stay due (none taken back, none made up for at the new rate) and the next ones come at
    the new rate; but an emitter that is behind is told how many it has `sent`, and its
    backlog is not carried over: the new pace starts from what it sent, so it follows the
    change at once instead of sending its backlog at full speed first. A timed burst ends
    at its `until` exactly, wherever that falls between two calls.
    """

    def __init__(
        self,
        *,
        start: float,
        rate: float,
        burst: bool = False,
        burst_multiplier: float = DEFAULT_BURST_MULTIPLIER,
        count: int | None = None,
        duration: float | None = None,
    ) -> None:
        self.start = start
        self.rate = positive("rate", rate)
        self.burst = burst
        self.burst_multiplier = positive("the burst multiplier", burst_multiplier)
        self.timed_burst: TimedBurst | None = None
        self.count = count
        self.deadline = start + duration if duration else None
        # The schedule goes on from `position` events at the moment `origin`; both move
        # when the pace changes.
        self.origin = start
        self.position = 0.0

    def steady_rate(self) -> float:
        """The rate without the timed burst."""
        return self.rate * self.burst_multiplier if self.burst else self.rate

    def rate_at(self, now: float) -> float:
        burst = self.timed_burst
        if burst is not None and now < burst.until:
            return self.rate * burst.multiplier
        return self.steady_rate()

    def position_at(self, now: float) -> float:
        if self.deadline is not None:
            now = min(now, self.deadline)
        now = max(now, self.origin)
        burst = self.timed_burst
        if burst is not None and burst.until < now:
            # The burst ended in this stretch (not yet told by burst_end): its rate up to
            # its end, the steady rate after.
            in_burst = max(0.0, burst.until - self.origin)
            after = now - self.origin - in_burst
            return self.position + in_burst * self.rate * burst.multiplier + after * self.steady_rate()
        return self.position + (now - self.origin) * self.rate_at(self.origin)

    def due(self, now: float) -> int:
        """How many events should have been sent by `now`."""
        due = math.ceil(self.position_at(now) - DUE_EPSILON)
        return min(due, self.count) if self.count is not None else due

    def moment_of(self, position: float) -> float:
        """When the schedule reaches `position` (the deadline and the count aside)."""
        if position <= self.position:
            return self.origin
        burst = self.timed_burst
        if burst is not None and burst.until > self.origin:
            burst_rate = self.rate * burst.multiplier
            at_end = self.position + (burst.until - self.origin) * burst_rate
            if position <= at_end:
                return self.origin + (position - self.position) / burst_rate
            return burst.until + (position - at_end) / self.steady_rate()
        return self.origin + (position - self.position) / self.steady_rate()

    def change(
        self,
        now: float,
        *,
        rate: float | None = None,
        burst: bool | None = None,
        timed_burst: TimedBurst | None,
        sent: int | None = None,
    ) -> None:
        """Go on at a new pace from `now`: a rate or burst mode of None stays as it is; the
        timed burst is replaced (None: none). `sent`: how many the emitter sent, to drop
        a backlog it did not keep up with."""
        if rate is not None:
            positive("rate", rate)
        self.restart(now, sent)
        if rate is not None:
            self.rate = rate
        if burst is not None:
            self.burst = burst
        self.timed_burst = timed_burst

    def burst_end(self, now: float, sent: int | None = None) -> float | None:
        """End the timed burst if it is over by `now`, and say when it ended; from then on
        the schedule runs at the steady rate. Whether called at once or later, the same
        events are due (but for a backlog of the burst's that `sent` says was not sent,
        which is dropped, as at any change of pace)."""
        burst = self.timed_burst
        if burst is None or burst.until > now:
            return None
        self.restart(burst.until, sent)
        self.timed_burst = None
        return burst.until

    def restart(self, now: float, sent: int | None = None) -> None:
        now = max(now, self.origin)
        self.position = self.position_at(now)
        if sent is not None:
            self.position = min(self.position, float(sent))
        self.origin = now

    def wake_at(self, now: float, sent: int) -> float:
        """When an emitter that has sent `sent` events should next wake: now if some are
        due; otherwise the next tick of the schedule, or when the next event falls due if
        that is later (below 1/TICK_SECONDS events per second a tick would wake it for
        nothing), but within MAX_SLEEP_SECONDS and not after the deadline."""
        if self.due(now) > sent:
            return now
        next_tick = self.origin + (int((now - self.origin) / TICK_SECONDS) + 1) * TICK_SECONDS
        next_event = self.moment_of(sent + DUE_EPSILON)
        wake = min(max(next_tick, next_event), now + MAX_SLEEP_SECONDS)
        return min(wake, self.deadline) if self.deadline is not None else wake

    def finished(self, now: float, sent: int) -> bool:
        if self.count is not None:
            return sent >= self.count
        return self.deadline is not None and now >= self.deadline
