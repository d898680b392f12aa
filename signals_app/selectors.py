"""Read-only queries on signals."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db.models import QuerySet

from signals_app.models import Signal


def signal_list() -> QuerySet[Signal]:
    """Signals, newest event first."""
    return Signal.objects.order_by("-timestamp", "-id")


@dataclass(frozen=True)
class EmitterControl:
    """What POST /emitter/configure and /emitter/burst asked of the running emitters.
    None: not asked (the emitter keeps its own setting). `version` grows with each request."""

    version: int
    signals_per_second: float | None
    burst_mode: bool | None
    burst_multiplier: float | None
    burst_until: float | None  # a timed burst, until this time (s since the epoch)


@functools.cache
def control_redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)


def emitter_control_get() -> EmitterControl:
    fields = control_redis().hgetall(settings.EMITTER_CONTROL_KEY)

    def number(name: str) -> float | None:
        return float(fields[name]) if name in fields else None

    return EmitterControl(
        version=int(fields.get("version", 0)),
        signals_per_second=number("signals_per_second"),
        burst_mode=fields["burst_mode"] == "1" if "burst_mode" in fields else None,
        burst_multiplier=number("burst_multiplier"),
        burst_until=number("burst_until"),
    )
