"""Synthetic user-behaviour signals for load generation: pure, deterministic, no I/O.

Every random choice comes from one `random.Random(seed)`, in a fixed order (a trip is a
hash of a salt drawn from it first), so the same seed gives the same events, byte for
byte; a user's places are a hash of its id alone. Event times come from a virtual clock, not the
wall clock: event *i* is stamped `start_ms + int(i * 1000 / rate)`. With the same seed,
start and rate, a run is therefore fully reproducible (`emit_signals --seed --start-ms`);
without `--start-ms` the command starts the clock at "now". What a user does can depend
on the event time (trips, the night), never on the wall clock.

The mix is meant to look like a real product: clicks and API calls dominate, purchases
are rare, logins mostly succeed, API calls mostly return 2xx, purchase amounts are mostly
small with a rare one above 1000, and a tenth of the users produce almost a third of the
traffic. Its users are people with habits (docs/design.md, "Synthetic traffic"), so an
analyst faces rare incidents, not constant noise:

- Each user has a home and one to three other places, fixed per user (`user_places`).
  A user is away on a trip for about one stretch of `TRIP_MS` in a hundred, and logs in
  from one of those places (one trip in twenty, somewhere new) for the whole stretch.
- By habit nobody logs in more than 10 times a minute, buys more than 4 times an hour
  (`HABITS`), or fails a third login in a row; a login or purchase over a habit becomes a
  click, a third failure a success.
- In the quiet hours (02:00-04:59 UTC, `QUIET_HOURS`) most users sleep: only the night
  owls, one user in `NIGHT_OWL_EVERY`, are active, and the events other users would have
  sent are their browsing (clicks, file access, API calls that succeed).
- One event in `INCIDENT_EVERY` starts an incident of its user, whose events follow in
  event time among the others: a login storm (11 to 16 logins within a minute), a
  forgotten password (3 to 5 failed logins in a row), a shopping spree (5 to 7 purchases
  within an hour) or a failing client (5 to 9 server errors within a minute).
"""

from __future__ import annotations

import heapq
import json
import random
import uuid
from bisect import bisect
from collections import deque
from functools import lru_cache
from itertools import accumulate
from typing import Any, Generic, TypeVar

from anomalies_app.rules import (
    DEFAULT_RULES,
    HIGH_FREQUENCY_LOGIN,
    RAPID_SUCCESSIVE_PURCHASES,
    REPEATED_LOGIN_FAILURES,
    UNUSUAL_TIME_ACTIVITY,
    fewest_to_break,
    in_quiet_hours,
    is_api_failure,
)

T = TypeVar("T")

Event = dict[str, Any]


class Weighted(Generic[T]):
    """Picks one of `choices` with probability proportional to its weight.

    Cheaper than `Random.choices` per call (the emitter draws several per event at tens
    of thousands of events per second) and consumes exactly one `random()` per pick.
    """

    def __init__(self, choices: dict[T, float]) -> None:
        self.values = list(choices)
        self.cumulative = list(accumulate(choices.values()))
        self.total = self.cumulative[-1]

    def __call__(self, rng: random.Random) -> T:
        return self.values[bisect(self.cumulative, rng.random() * self.total)]


TYPE_MIX = Weighted({"click": 40, "api_call": 35, "login": 12, "file_access": 10, "purchase": 3})

# Share of events that come from the most active tenth of the users.
HEAVY_USERS_SHARE = 0.3

LOCATIONS = [
    "New York, US",
    "San Francisco, US",
    "Chicago, US",
    "Toronto, CA",
    "London, GB",
    "Paris, FR",
    "Berlin, DE",
    "München, DE",
    "Madrid, ES",
    "Amsterdam, NL",
    "Stockholm, SE",
    "Warsaw, PL",
    "São Paulo, BR",
    "Mexico City, MX",
    "Tokyo, JP",
    "Seoul, KR",
    "Singapore, SG",
    "Mumbai, IN",
    "Sydney, AU",
    "Lagos, NG",
]
LOGIN_METHODS = Weighted({"password": 55, "sso": 20, "oauth_google": 12, "oauth_github": 5, "passkey": 8})
LOGIN_SUCCESS_SHARE = 0.95
# Trips: time is cut into stretches of TRIP_MS (each user's start at a time of its own);
# a user is away for AWAY_SHARE of its stretches, and one trip in 1 / NEW_PLACE_SHARE goes
# to a place outside the user's own.
TRIP_MS = 4 * 3_600_000
AWAY_SHARE = 0.01
NEW_PLACE_SHARE = 0.05

CURRENCIES = Weighted({"USD": 70, "EUR": 20, "GBP": 10})
PAYMENT_METHODS = Weighted({"credit_card": 50, "debit_card": 20, "paypal": 15, "apple_pay": 10, "gift_card": 5})
PRODUCTS = 5000
# Log-normal purchase amounts: median about 27, one in a couple of thousand above 1000.
AMOUNT_MU = 3.3
AMOUNT_SIGMA = 1.1

ENDPOINTS = Weighted(
    {
        "/api/v1/products": 25,
        "/api/v1/search": 20,
        "/api/v1/cart": 12,
        "/api/v1/users/me": 12,
        "/api/v1/orders": 10,
        "/api/v1/recommendations": 8,
        "/api/v1/notifications": 6,
        "/api/v1/checkout": 4,
        "/api/v1/files": 3,
    }
)
HTTP_METHODS = Weighted({"GET": 70, "POST": 20, "PUT": 6, "DELETE": 4})
SUCCESS_STATUS = {"GET": 200, "POST": 201, "PUT": 200, "DELETE": 204}
CLIENT_ERRORS = Weighted({400: 25, 401: 15, 403: 10, 404: 40, 409: 3, 429: 7})
SERVER_ERRORS = Weighted({500: 50, 502: 20, 503: 20, 504: 10})
CLIENT_ERROR_SHARE = 0.05
SERVER_ERROR_SHARE = 0.015
# Log-normal response times: median about 60 ms, long tail; server errors are slower.
RESPONSE_MU = 4.1
RESPONSE_SIGMA = 0.7

PAGES = Weighted(
    {
        "/": 20,
        "/products": 18,
        "/product/detail": 16,
        "/search": 12,
        "/cart": 8,
        "/checkout": 4,
        "/account": 6,
        "/orders": 5,
        "/help": 3,
        "/blog": 8,
    }
)
ELEMENTS = Weighted(
    {
        "nav-link": 25,
        "product-card": 20,
        "search-button": 10,
        "add-to-cart": 10,
        "buy-now": 3,
        "banner": 8,
        "filter-toggle": 8,
        "pagination-next": 8,
        "footer-link": 4,
        "logout": 4,
    }
)

FOLDERS = Weighted(
    {
        "documents": 40,
        "reports": 20,
        "shared": 15,
        "downloads": 15,
        "finance": 5,
        "hr": 5,
    }
)
FILE_NAMES = Weighted(
    {
        "notes.txt": 15,
        "report.pdf": 20,
        "budget.xlsx": 10,
        "presentation.pptx": 10,
        "contract.docx": 10,
        "photo.jpg": 15,
        "export.csv": 15,
        "backup.zip": 5,
    }
)
FILE_ACTIONS = Weighted({"read": 65, "write": 20, "download": 10, "share": 3, "delete": 2})

# The realistic mix's habits (docs/design.md, "Synthetic traffic"): the most logins and
# purchases a user makes within a window, as (count, window ms), and the most failed
# logins in a row: as many as the default rules let through.
HABITS = {
    "login": (fewest_to_break(DEFAULT_RULES[HIGH_FREQUENCY_LOGIN]) - 1, 60_000),
    "purchase": (fewest_to_break(DEFAULT_RULES[RAPID_SUCCESSIVE_PURCHASES]) - 1, 3_600_000),
}
FAILURES_IN_A_ROW = fewest_to_break(DEFAULT_RULES[REPEATED_LOGIN_FAILURES]) - 1
# The night: most users sleep in the default rule's quiet hours; the night owls do not.
QUIET_HOURS = DEFAULT_RULES[UNUSUAL_TIME_ACTIVITY]
NIGHT_OWL_EVERY = 50
# What the night owls do instead of the sleepers: browse (an API call that fails succeeds).
NIGHT_MIX = Weighted({"click": 40, "api_call": 35, "file_access": 10})
# One event in this many starts an incident of its user, of one of these kinds.
INCIDENT_EVERY = 60_000
INCIDENTS = Weighted({"login_storm": 1, "forgotten_password": 1, "shopping_spree": 1, "failing_client": 1})

_MASK64 = (1 << 64) - 1
# What `fixed_unit` of a user id and one of these decides (place indexes are 0 and up).
_PLACE_COUNT = -1
_TRIP_PHASE = -2


def home_location(user_id: int) -> str:
    """The place a user usually logs in from: fixed per user, so new places are rare."""
    return LOCATIONS[(user_id * 7919) % len(LOCATIONS)]


def home_ip_address(user_id: int) -> str:
    """A stable public-looking IPv4 address per user (a multiplicative hash of the id)."""
    spread = (user_id * 2654435761) & 0xFFFFFF
    return f"{23 + user_id % 150}.{spread >> 16}.{(spread >> 8) & 0xFF}.{spread & 0xFF}"


def fixed_unit(*values: int) -> float:
    """A number in [0, 1) that depends on `values` alone (splitmix64 steps): a user's
    fixed traits, and what its trips are, without state and without drawing from a run's
    random sequence."""
    mixed = 0
    for value in values:
        mixed = (mixed + value + 0x9E3779B97F4A7C15) & _MASK64
        mixed = ((mixed ^ (mixed >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        mixed = ((mixed ^ (mixed >> 27)) * 0x94D049BB133111EB) & _MASK64
        mixed ^= mixed >> 31
    return mixed / 2**64


@lru_cache(maxsize=100_000)
def user_places(user_id: int) -> tuple[str, ...]:
    """Where a user logs in from: home (`home_location`) first, then the one to three
    other places it travels to; fixed per user."""
    home = home_location(user_id)
    others = sorted(
        (index for index, place in enumerate(LOCATIONS) if place != home),
        key=lambda index: fixed_unit(user_id, index),
    )
    return (home, *(LOCATIONS[index] for index in others[: 1 + int(fixed_unit(user_id, _PLACE_COUNT) * 3)]))


class SignalGenerator:
    """Deterministic stream of realistic signals, `rate` per second of virtual time.

    The realistic mix is the module docstring's. `clean` traffic breaks no anomaly rule,
    to weave known anomalies into (see emitter/scenarios.py): logins always succeed from
    the user's usual place, no purchase is above 1000, no API call fails on the server
    side, no user has more than `caps[type]` = (count, window ms) events of a type within a
    window (an event over its cap becomes a click), and there are no trips, nights or
    incidents. (Keeping the event times out of the quiet hours is the caller's part: it
    picks the start.) User ids run from `first_user_id`.
    """

    def __init__(
        self,
        *,
        seed: int | None,
        users: int,
        start_ms: int,
        rate: float,
        clean: bool = False,
        caps: dict[str, tuple[int, int]] | None = None,
        first_user_id: int = 1,
    ) -> None:
        if users < 1:
            raise ValueError(f"users must be at least 1, got {users}")
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rng = random.Random(seed)
        self.users = users
        self.heavy_users = max(1, users // 10)
        self.night_owls = (users + NIGHT_OWL_EVERY - 1) // NIGHT_OWL_EVERY
        self.rate = rate
        self.emitted = 0
        self.clean = clean
        self.caps = caps if caps is not None else ({} if clean else HABITS)
        self.recent: dict[tuple[int, str], deque[int]] = {}
        self.failures_in_a_row: dict[int, int] = {}
        # Incident events waiting for their time: (timestamp, sequence, event).
        self.pending: list[tuple[int, int, Event]] = []
        self.sequence = 0
        self.first_user_id = first_user_id
        # What this run's trips are: the same seed, the same trips.
        self.trips_salt = 0 if clean else self.rng.getrandbits(64)
        # The virtual clock restarts from (clock_index, clock_ms) when the rate changes.
        self.clock_index = 0
        self.clock_ms = start_ms
        self.payloads = {
            "login": self.login_payload,
            "purchase": self.purchase_payload,
            "api_call": self.api_call_payload,
            "click": self.click_payload,
            "file_access": self.file_access_payload,
        }
        self.incidents = {
            "login_storm": self.login_storm,
            "forgotten_password": self.forgotten_password,
            "shopping_spree": self.shopping_spree,
            "failing_client": self.failing_client,
        }

    def timestamp(self, index: int) -> int:
        """Virtual event time of event number `index` (counting from 0) in milliseconds."""
        return self.clock_ms + int((index - self.clock_index) * 1000 / self.rate)

    def rate_change(self, rate: float) -> None:
        """Space the events from the next one on for `rate` per second; earlier ones keep their times."""
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.clock_ms = self.timestamp(self.emitted)
        self.clock_index = self.emitted
        self.rate = rate

    def next(self) -> Event:
        rng = self.rng
        timestamp = self.timestamp(self.emitted)
        if self.pending and self.pending[0][0] <= timestamp:
            self.emitted += 1
            return heapq.heappop(self.pending)[2]
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        user_id = rng.randint(1, self.heavy_users if rng.random() < HEAVY_USERS_SHARE else self.users)
        user_id += self.first_user_id - 1
        signal_type = TYPE_MIX(rng)
        if self.clean:
            payload = self.payloads[signal_type](rng, user_id)
            signal_type, payload = self.cleaned(user_id, timestamp, signal_type, payload, rng)
        elif in_quiet_hours(QUIET_HOURS, timestamp) and not self.night_owl(user_id):
            user_id = self.first_user_id + NIGHT_OWL_EVERY * rng.randrange(self.night_owls)
            signal_type = NIGHT_MIX(rng)
            payload = self.payloads[signal_type](rng, user_id)
            if is_api_failure(signal_type, payload):
                payload["status_code"] = SUCCESS_STATUS[payload["method"]]
        else:
            payload = self.payloads[signal_type](rng, user_id)
            signal_type, payload = self.lived(user_id, timestamp, signal_type, payload, rng)
            if rng.random() * INCIDENT_EVERY < 1:
                self.incident_start(INCIDENTS(rng), user_id, timestamp)
        event = {
            "event_id": event_id,
            "user_id": user_id,
            "type": signal_type,
            "timestamp": timestamp,
            "payload": payload,
        }
        self.emitted += 1
        return event

    def night_owl(self, user_id: int) -> bool:
        """Whether a user is awake in the quiet hours: one in NIGHT_OWL_EVERY, the first included."""
        return (user_id - self.first_user_id) % NIGHT_OWL_EVERY == 0

    def capped(self, user_id: int, timestamp: int, signal_type: str) -> bool:
        """Whether an event would put its user over its cap; if not, it counts towards it."""
        if signal_type not in self.caps:
            return False
        most, window_ms = self.caps[signal_type]
        recent = self.recent.setdefault((user_id, signal_type), deque(maxlen=most))
        if len(recent) == most and timestamp - recent[0] <= window_ms:
            return True
        recent.append(timestamp)
        return False

    def cleaned(
        self, user_id: int, timestamp: int, signal_type: str, payload: dict[str, Any], rng: random.Random
    ) -> tuple[str, dict[str, Any]]:
        if self.capped(user_id, timestamp, signal_type):
            return "click", self.click_payload(rng, user_id)
        if signal_type == "login":
            payload.update(success=True, location=home_location(user_id), ip_address=home_ip_address(user_id))
        elif signal_type == "purchase":
            payload["amount"] = min(payload["amount"], 999.99)
        elif is_api_failure(signal_type, payload):
            payload["status_code"] = SUCCESS_STATUS[payload["method"]]
        return signal_type, payload

    def lived(
        self, user_id: int, timestamp: int, signal_type: str, payload: dict[str, Any], rng: random.Random
    ) -> tuple[str, dict[str, Any]]:
        """The realistic mix's event as its user's habits and trips make it."""
        if self.capped(user_id, timestamp, signal_type):
            return "click", self.click_payload(rng, user_id)
        if signal_type == "login":
            failures = self.failures_in_a_row.get(user_id, 0)
            if payload["success"] or failures >= FAILURES_IN_A_ROW:
                payload["success"] = True
                self.failures_in_a_row.pop(user_id, None)
            else:
                self.failures_in_a_row[user_id] = failures + 1
            payload["location"], payload["ip_address"] = self.place(user_id, timestamp)
        return signal_type, payload

    def place(self, user_id: int, timestamp: int) -> tuple[str, str]:
        """Where a user logs in from at a time, and its address: home, or the place of the
        trip it is on (the same for the whole stretch of TRIP_MS)."""
        stretch = (timestamp + int(fixed_unit(user_id, _TRIP_PHASE) * TRIP_MS)) // TRIP_MS
        if fixed_unit(self.trips_salt, user_id, stretch) >= AWAY_SHARE:
            return home_location(user_id), home_ip_address(user_id)
        places = user_places(user_id)
        trip = fixed_unit(self.trips_salt, user_id, stretch, 1)
        if trip < NEW_PLACE_SHARE:
            elsewhere = [place for place in LOCATIONS if place not in places]
            location = elsewhere[int(trip / NEW_PLACE_SHARE * len(elsewhere))]
        else:
            location = places[1 + int((trip - NEW_PLACE_SHARE) / (1 - NEW_PLACE_SHARE) * (len(places) - 1))]
        address = int(fixed_unit(self.trips_salt, user_id, stretch, 2) * 2**32)
        return (
            location,
            f"{1 + address % 223}.{(address >> 8) & 0xFF}.{(address >> 16) & 0xFF}.{1 + (address >> 24) % 254}",
        )

    # --- incidents: a user's burst of events, spread over event time from `at_ms` --------
    def incident_start(self, kind: str, user_id: int, at_ms: int) -> None:
        for at, signal_type, payload in self.incidents[kind](self.rng, user_id, at_ms):
            self.sequence += 1
            event = {
                "event_id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
                "user_id": user_id,
                "type": signal_type,
                "timestamp": at,
                "payload": payload,
            }
            heapq.heappush(self.pending, (at, self.sequence, event))

    @staticmethod
    def spread(rng: random.Random, at_ms: int, count: int, shortest_ms: int, longest_ms: int) -> list[int]:
        span = rng.randint(shortest_ms, longest_ms)
        return [at_ms + 1 + span * i // (count - 1) for i in range(count)]

    def incident_login(self, rng: random.Random, user_id: int, at_ms: int, success: bool) -> dict[str, Any]:
        location, ip_address = self.place(user_id, at_ms)
        return {
            "login_method": LOGIN_METHODS(rng),
            "success": success,
            "location": location,
            "ip_address": ip_address,
        }

    def login_storm(self, rng: random.Random, user_id: int, at_ms: int) -> list[tuple[int, str, dict[str, Any]]]:
        """A client stuck in a loop: 11 to 16 successful logins within a minute."""
        times = self.spread(rng, at_ms, rng.randint(11, 16), 5_000, 55_000)
        return [(at, "login", self.incident_login(rng, user_id, at, True)) for at in times]

    def forgotten_password(self, rng: random.Random, user_id: int, at_ms: int) -> list[tuple[int, str, dict[str, Any]]]:
        """3 to 5 failed logins in a row within a minute; then, for half, a success."""
        times = self.spread(rng, at_ms, rng.randint(3, 5), 5_000, 40_000)
        attempts = [(at, "login", self.incident_login(rng, user_id, at, False)) for at in times]
        if rng.random() < 0.5:
            at = times[-1] + rng.randint(10_000, 60_000)
            attempts.append((at, "login", self.incident_login(rng, user_id, at, True)))
        return attempts

    def shopping_spree(self, rng: random.Random, user_id: int, at_ms: int) -> list[tuple[int, str, dict[str, Any]]]:
        """5 to 7 purchases within 5 to 50 minutes."""
        times = self.spread(rng, at_ms, rng.randint(5, 7), 300_000, 3_000_000)
        return [(at, "purchase", self.purchase_payload(rng, user_id)) for at in times]

    def failing_client(self, rng: random.Random, user_id: int, at_ms: int) -> list[tuple[int, str, dict[str, Any]]]:
        """5 to 9 calls to one endpoint within a minute, each a server error."""
        endpoint = ENDPOINTS(rng)
        times = self.spread(rng, at_ms, rng.randint(5, 9), 2_000, 55_000)
        return [
            (
                at,
                "api_call",
                {
                    "endpoint": endpoint,
                    "method": "GET",
                    "status_code": SERVER_ERRORS(rng),
                    "response_time_ms": max(1, int(rng.lognormvariate(RESPONSE_MU, RESPONSE_SIGMA) * 5)),
                },
            )
            for at in times
        ]

    @staticmethod
    def login_payload(rng: random.Random, user_id: int) -> dict[str, Any]:
        """A login from the user's home (the realistic mix moves it on a trip)."""
        return {
            "login_method": LOGIN_METHODS(rng),
            "success": rng.random() < LOGIN_SUCCESS_SHARE,
            "location": home_location(user_id),
            "ip_address": home_ip_address(user_id),
        }

    @staticmethod
    def purchase_payload(rng: random.Random, user_id: int) -> dict[str, Any]:
        return {
            "amount": round(max(0.99, rng.lognormvariate(AMOUNT_MU, AMOUNT_SIGMA)), 2),
            "currency": CURRENCIES(rng),
            "product_id": f"SKU-{rng.randint(1, PRODUCTS):05d}",
            "payment_method": PAYMENT_METHODS(rng),
        }

    @staticmethod
    def api_call_payload(rng: random.Random, user_id: int) -> dict[str, Any]:
        method = HTTP_METHODS(rng)
        outcome = rng.random()
        response_time_ms = rng.lognormvariate(RESPONSE_MU, RESPONSE_SIGMA)
        if outcome < SERVER_ERROR_SHARE:
            status_code = SERVER_ERRORS(rng)
            response_time_ms *= 5
        elif outcome < SERVER_ERROR_SHARE + CLIENT_ERROR_SHARE:
            status_code = CLIENT_ERRORS(rng)
        else:
            status_code = SUCCESS_STATUS[method]
        return {
            "endpoint": ENDPOINTS(rng),
            "method": method,
            "status_code": status_code,
            "response_time_ms": max(1, int(response_time_ms)),
        }

    @staticmethod
    def click_payload(rng: random.Random, user_id: int) -> dict[str, Any]:
        return {"page": PAGES(rng), "element": ELEMENTS(rng)}

    @staticmethod
    def file_access_payload(rng: random.Random, user_id: int) -> dict[str, Any]:
        return {
            "path": f"/home/user{user_id}/{FOLDERS(rng)}/{FILE_NAMES(rng)}",
            "action": FILE_ACTIONS(rng),
        }


def encode(event: Event) -> tuple[bytes, bytes]:
    """The Kafka record of an event: key is the user id as text, value compact UTF-8 JSON."""
    return (
        str(event["user_id"]).encode(),
        json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode(),
    )
