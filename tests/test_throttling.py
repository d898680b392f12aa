"""The API's per-user throttle (api/throttling.py) on the real Redis, its time from a clock
the test sets: what it allows and refuses does not depend on how fast the machine runs.

(The rates are per minute or slower: Redis expires a user's key in real time, after as
long as the allowance takes to come back, and it must not expire under a slow test.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory
from rest_framework.views import APIView

from api.throttling import UserThrottle
from tests.conftest import free_port

T0 = 1_700_000_000.0  # what the test's clock says first (s since the epoch)


class Clock:
    """A clock that says the time the test sets. (An object, not a function: a function
    given as a class attribute would be called as a method.)"""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(T0)
    monkeypatch.setattr(UserThrottle, "timer", clock)
    return clock


def throttle_key(user_id: int) -> str:
    return "api:" + UserThrottle.cache_format % {"scope": UserThrottle.scope, "ident": user_id}


def forget_throttle_history(user_id: int) -> None:
    redis.Redis.from_url(django_settings.REDIS_URL).delete(throttle_key(user_id))


@pytest.fixture
def user_ids() -> Iterator[list[int]]:
    """Users of this test alone (Redis outlives the test database's users, and their ids)."""
    ids = [10**12 + uuid.uuid4().int % 10**12 for _ in range(2)]
    yield ids
    for user_id in ids:
        forget_throttle_history(user_id)


def asks(user_id: int, count: int = 1) -> list[float | None]:
    """`count` requests of a user at the clock's time: for each, 0 if allowed, else the
    seconds the throttle says to wait."""
    request = Request(APIRequestFactory().get("/signals"))
    request.user = User(pk=user_id)
    waits: list[float | None] = []
    for _ in range(count):
        throttle = UserThrottle()
        waits.append(0.0 if throttle.allow_request(request, APIView()) else throttle.wait())
    return waits


# --- the arithmetic -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rate", "limit", "interval"),
    [
        ("3/min", 3, 20.0),
        ("3/hour", 3, 1200.0),
        ("1/day", 1, 86_400.0),
        ("600/min", 600, 0.1),
        ("7/min", 7, 8.571429),  # 60/7 s, rounded up to the microsecond: never above the rate
    ],
)
def test_the_limit_at_once_then_one_request_per_interval(
    settings: Any, clock: Clock, user_ids: list[int], rate: str, limit: int, interval: float
) -> None:
    settings.API_THROTTLE_RATE = rate
    user = user_ids[0]
    assert asks(user, limit) == [0.0] * limit, "a quiet user may send the limit at once"
    assert asks(user) == [interval], "the next waits one interval"
    clock.now = T0 + interval - 0.000_001
    assert asks(user) == [0.000_001], "a microsecond early"
    clock.now = T0 + interval
    assert asks(user, 2) == [0.0, interval], "exactly one interval on: one more, and only one"


def test_without_a_clock_of_its_own_the_throttle_uses_redis_clock(settings: Any, user_ids: list[int]) -> None:
    """As deployed: every api process reads the same clock, Redis's. (The margin is an
    hour, so a slow machine cannot make this fail.)"""
    assert UserThrottle.timer is None
    settings.API_THROTTLE_RATE = "1/hour"
    allowed, refused = asks(user_ids[0], 2)
    assert allowed == 0.0
    assert refused is not None and 3000 < refused <= 3600


def test_a_steady_request_per_interval_is_never_refused(settings: Any, clock: Clock, user_ids: list[int]) -> None:
    settings.API_THROTTLE_RATE = "3/hour"
    user = user_ids[0]
    assert asks(user, 3) == [0.0] * 3
    for step in range(1, 25):
        clock.now = T0 + 1200 * step
        assert asks(user, 2) == [0.0, 1200.0], f"at interval {step}"


def test_refused_requests_use_up_nothing(settings: Any, clock: Clock, user_ids: list[int]) -> None:
    settings.API_THROTTLE_RATE = "3/hour"
    user = user_ids[0]
    asks(user, 3)
    assert asks(user, 50) == [1200.0] * 50
    clock.now = T0 + 600
    assert asks(user) == [600.0], "half an interval on, half to wait"
    clock.now = T0 + 1200
    assert asks(user) == [0.0]


def test_quiet_time_gives_back_the_limit_and_no_more(settings: Any, clock: Clock, user_ids: list[int]) -> None:
    settings.API_THROTTLE_RATE = "3/hour"
    user = user_ids[0]
    asks(user, 3)
    clock.now = T0 + 2400
    assert asks(user, 3) == [0.0, 0.0, 1200.0], "two intervals on: two requests back"
    clock.now = T0 + 10 * 3600
    assert asks(user, 4) == [0.0, 0.0, 0.0, 1200.0], "ten hours quiet: the limit, not ten times it"


def test_each_user_has_an_allowance_of_their_own(settings: Any, clock: Clock, user_ids: list[int]) -> None:
    settings.API_THROTTLE_RATE = "3/hour"
    one, other = user_ids
    assert asks(one, 4) == [0.0, 0.0, 0.0, 1200.0]
    assert asks(other, 4) == [0.0, 0.0, 0.0, 1200.0]


def test_a_clock_behind_the_last_requests_waits_as_much_longer(
    settings: Any, clock: Clock, user_ids: list[int]
) -> None:
    """Two api hosts whose clocks differ: the skew moves the allowance by as much, no more."""
    settings.API_THROTTLE_RATE = "3/hour"
    user = user_ids[0]
    asks(user, 3)
    clock.now = T0 - 10
    assert asks(user) == [1210.0]
    clock.now = T0 + 1190
    assert asks(user) == [10.0]


def test_a_new_rate_applies_from_the_next_request(settings: Any, clock: Clock, user_ids: list[int]) -> None:
    settings.API_THROTTLE_RATE = "3/hour"
    user = user_ids[0]
    asks(user, 3)
    settings.API_THROTTLE_RATE = "6/hour"
    assert asks(user) == [600.0], "the hour's allowance is used up at either rate"
    clock.now = T0 + 600
    assert asks(user, 2) == [0.0, 600.0], "and comes back at the new rate"


# --- through HTTP ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_requests_beyond_the_rate_are_throttled(api: APIClient, user: User, settings: Any, clock: Clock) -> None:
    settings.API_THROTTLE_RATE = "3/hour"
    other_user = User.objects.create_user("someone-else")
    forget_throttle_history(user.pk)
    forget_throttle_history(other_user.pk)
    responses = [api.get("/signals") for _ in range(4)]
    assert [response.status_code for response in responses] == [200, 200, 200, 429]
    assert responses[-1]["Retry-After"] == "1200", "the allowance comes back one request per 20 minutes"
    assert api.get("/health").status_code in {200, 503}, "monitors are never throttled"
    other = APIClient()
    other.force_authenticate(other_user)
    assert other.get("/signals").status_code == 200, "the throttle is per user"


@pytest.mark.django_db
def test_the_allowance_comes_back_one_request_per_interval(
    api: APIClient, user: User, settings: Any, clock: Clock
) -> None:
    settings.API_THROTTLE_RATE = "2/hour"  # the limit of 2 at once, then one every 30 minutes
    forget_throttle_history(user.pk)
    assert [api.get("/signals").status_code for _ in range(3)] == [200, 200, 429]
    clock.now = T0 + 1799
    response = api.get("/signals")
    assert (response.status_code, response["Retry-After"]) == (429, "1")
    clock.now = T0 + 1800
    assert [api.get("/signals").status_code for _ in range(2)] == [200, 429]


@pytest.mark.django_db
def test_the_api_answers_when_the_throttles_redis_does_not(
    api: APIClient, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    assert api.get("/signals").status_code == 200
    assert "throttle not applied, its Redis did not answer" in caplog.text
