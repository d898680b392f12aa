"""Request throttling for the query API: per user, and per address for /health."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)

# GCRA (the generic cell rate algorithm): the key holds the user's "theoretical arrival
# time", when their allowance would be used up if every request took one interval of it.
# A request is allowed while that stays within `burst` (the limit's intervals) of now, so
# a user may send the limit's requests at once and then one per interval. Atomic in
# Redis, one key per user, one round trip, whatever the rate. Times are microseconds of
# Redis's own clock, which every api process asks, unless the caller passes `now` (a test's
# clock). Returns 0 when allowed, else the microseconds to
# wait. Numbers go back to Redis through string.format: Lua would print 1.7e15 as
# "1.7e+15".
THROTTLE_SCRIPT = """
local now = tonumber(ARGV[1])
if now == nil then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
end
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local arrival = tonumber(redis.call('GET', KEYS[1]) or now)
if arrival < now then arrival = now end
local next_arrival = arrival + interval
local wait = next_arrival - now - burst
if wait > 0 then return wait end
redis.call('SET', KEYS[1], string.format('%.0f', next_arrival), 'PX', math.ceil((next_arrival - now) / 1000))
return 0
"""


@functools.cache
def _throttle_script(redis_url: str) -> Any:
    # One client (and connection pool) per process and URL. Short timeouts: a Redis that
    # does not answer must not hold requests.
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    return client.register_script(THROTTLE_SCRIPT)


class SharedRateThrottle(SimpleRateThrottle):
    """The rate named by `rate_setting`, counted in Redis so that every api process shares
    the count (GCRA, above). Which requests share a count is the subclass's cache key.

    DRF's own throttle keeps the time of every request of the last period in a list that
    it reads, unpickles, extends, pickles and writes back on each request, and two
    processes doing it at once lose each other's (docs/performance.md, "Throttling").
    This one keeps one number per user, changed atomically by a Lua script (GCRA, above):
    a user who has been quiet may send the limit's requests at once, then one request per
    period/limit; Retry-After says when the next one is allowed. A period that
    starts with that burst can so see up to twice the rate; any longer stretch, the rate.

    The rate is read on each request rather than once at import, as DRF does, so that a
    test can change the setting. The time is Redis's clock, one for every api process,
    unless `timer` is set: a test sets it to a clock of its own. When
    Redis does not answer, the request goes through: the throttle guards against a
    runaway client, and losing it for a while costs less than refusing every reader of
    the API.
    """

    # DRF's `timer` is time.time; None here means Redis's clock (see THROTTLE_SCRIPT).
    timer: Callable[[], float] | None = None  # type: ignore[assignment]
    rate_setting: str

    def get_rate(self) -> str:
        return str(getattr(settings, self.rate_setting))

    def allow_request(self, request: Request, view: Any) -> bool:
        num_requests, duration = self.parse_rate(self.get_rate())
        assert num_requests is not None and duration is not None  # the setting is checked at start
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        interval_us = -(-duration * 1_000_000 // num_requests)  # rounded up: never above the rate
        # The limit's intervals rather than the period: with the interval rounded up, a
        # period would hold one request fewer than the limit at once.
        burst_us = num_requests * interval_us
        now_us = "" if self.timer is None else round(self.timer() * 1_000_000)
        try:
            wait_us = _throttle_script(settings.REDIS_URL)(keys=[f"api:{key}"], args=[now_us, interval_us, burst_us])
        except redis.RedisError as error:
            logger.warning("throttle not applied, its Redis did not answer: %s", error)
            return True
        self.wait_seconds = int(wait_us) / 1_000_000
        return self.wait_seconds <= 0

    def wait(self) -> float | None:
        return self.wait_seconds


class UserThrottle(SharedRateThrottle, UserRateThrottle):
    """`API_THROTTLE_RATE` requests per user, sustained (an anonymous caller: per address)."""

    rate_setting = "API_THROTTLE_RATE"


class HealthThrottle(SharedRateThrottle, AnonRateThrottle):
    """`HEALTH_THROTTLE_RATE` requests to /health per caller's address: plenty for load
    balancers and monitors, and a bound on the checks that a flood of anonymous requests
    can make the api run against every server."""

    scope = "health"
    rate_setting = "HEALTH_THROTTLE_RATE"
