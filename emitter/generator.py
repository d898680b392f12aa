"""Synthetic user-behaviour signals for load generation: pure, deterministic, no I/O.

Every random choice comes from one `random.Random(seed)`, in a fixed order, so the same
seed gives the same events, byte for byte. Event times come from a virtual clock, not the
wall clock: event *i* is stamped `start_ms + int(i * 1000 / rate)`. With the same seed,
start and rate, a run is therefore fully reproducible (`emit_signals --seed --start-ms`);
without `--start-ms` the command starts the clock at "now".

The mix is meant to look like a real product: clicks and API calls dominate, purchases
are rare, logins mostly succeed from the user's usual place, API calls mostly return 2xx,
purchase amounts are mostly small with a rare one above 1000, and a tenth of the users
produce almost a third of the traffic.
"""

from __future__ import annotations

import json
import random
import uuid
from bisect import bisect
from collections import deque
from itertools import accumulate
from typing import Any, Generic, TypeVar

from anomalies_app.rules import is_api_failure

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
# Logins from somewhere other than the user's usual place.
TRAVEL_SHARE = 0.03
LOGIN_SUCCESS_SHARE = 0.95

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


def home_location(user_id: int) -> str:
    """The place a user usually logs in from: fixed per user, so new places are rare."""
    return LOCATIONS[(user_id * 7919) % len(LOCATIONS)]


def home_ip_address(user_id: int) -> str:
    """A stable public-looking IPv4 address per user (a multiplicative hash of the id)."""
    spread = (user_id * 2654435761) & 0xFFFFFF
    return f"{23 + user_id % 150}.{spread >> 16}.{(spread >> 8) & 0xFF}.{spread & 0xFF}"


class SignalGenerator:
    """Deterministic stream of realistic signals, `rate` per second of virtual time.

    `clean` traffic breaks no anomaly rule, to weave known anomalies into (see
    emitter/scenarios.py): logins always succeed from the user's usual place, no
    purchase is above 1000, no API call fails on the server side, and no user has more
    than `caps[type]` = (count, window ms) events of a type within a window; an event over
    its cap becomes a click. (Keeping the event times out of the quiet hours is the
    caller's part: it picks the start.) User ids run from `first_user_id`.
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
        self.rate = rate
        self.emitted = 0
        self.clean = clean
        self.caps = caps or {}
        self.recent: dict[tuple[int, str], deque[int]] = {}
        self.first_user_id = first_user_id
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
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        user_id = rng.randint(1, self.heavy_users if rng.random() < HEAVY_USERS_SHARE else self.users)
        user_id += self.first_user_id - 1
        signal_type = TYPE_MIX(rng)
        timestamp = self.timestamp(self.emitted)
        payload = self.payloads[signal_type](rng, user_id)
        if self.clean:
            signal_type, payload = self.cleaned(user_id, timestamp, signal_type, payload, rng)
        event = {
            "event_id": event_id,
            "user_id": user_id,
            "type": signal_type,
            "timestamp": timestamp,
            "payload": payload,
        }
        self.emitted += 1
        return event

    def cleaned(
        self, user_id: int, timestamp: int, signal_type: str, payload: dict[str, Any], rng: random.Random
    ) -> tuple[str, dict[str, Any]]:
        if signal_type in self.caps:
            most, window_ms = self.caps[signal_type]
            recent = self.recent.setdefault((user_id, signal_type), deque(maxlen=most))
            if len(recent) == most and timestamp - recent[0] <= window_ms:
                return "click", self.click_payload(rng, user_id)
            recent.append(timestamp)
        if signal_type == "login":
            payload.update(success=True, location=home_location(user_id), ip_address=home_ip_address(user_id))
        elif signal_type == "purchase":
            payload["amount"] = min(payload["amount"], 999.99)
        elif is_api_failure(signal_type, payload):
            payload["status_code"] = SUCCESS_STATUS[payload["method"]]
        return signal_type, payload

    @staticmethod
    def login_payload(rng: random.Random, user_id: int) -> dict[str, Any]:
        travelling = rng.random() < TRAVEL_SHARE
        return {
            "login_method": LOGIN_METHODS(rng),
            "success": rng.random() < LOGIN_SUCCESS_SHARE,
            "location": LOCATIONS[rng.randrange(len(LOCATIONS))] if travelling else home_location(user_id),
            "ip_address": (
                f"{rng.randint(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randint(1, 254)}"
                if travelling
                else home_ip_address(user_id)
            ),
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
