"""Read-only queries of the emitter: the control the running emitters follow, and how an
injection run's ground truth compares with what detection raised."""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings

from anomalies_app.models import Anomaly
from anomalies_app.rules import DEFAULT_RULES
from emitter.models import InjectionRun
from signals_app.models import Signal


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
    return emitter_control_of(control_redis().hgetall(settings.EMITTER_CONTROL_KEY))


def emitter_control_of(fields: dict[Any, Any]) -> EmitterControl:
    """The control as its Redis hash holds it (decoded to text)."""

    def number(name: str) -> float | None:
        return float(fields[name]) if name in fields else None

    return EmitterControl(
        version=int(fields.get("version", 0)),
        signals_per_second=number("signals_per_second"),
        burst_mode=fields["burst_mode"] == "1" if "burst_mode" in fields else None,
        burst_multiplier=number("burst_multiplier"),
        burst_until=number("burst_until"),
    )


@dataclass(frozen=True)
class RuleVerdict:
    anomaly_type: str
    injected: int
    detected: int
    true_positives: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.detected if self.detected else 1.0  # no false positive

    @property
    def recall(self) -> float:
        return self.true_positives / self.injected if self.injected else 0.0


def detection_verdict(*, run: InjectionRun) -> list[RuleVerdict]:
    """Per rule: how many anomalies the run injected, how many were detected among its
    users, and how many of those match an injected one (the same user and rule; a second
    anomaly for one scenario is a false positive, as is any for a near miss or for the
    clean background)."""
    injected: dict[str, set[int]] = defaultdict(set)
    for anomaly_type, user_id in run.scenarios.exclude(anomaly_type="").values_list("anomaly_type", "user_id"):
        injected[anomaly_type].add(user_id)
    detected: dict[str, list[int]] = defaultdict(list)
    for anomaly_type, user_id in Anomaly.objects.filter(
        user_id__gte=run.first_user_id, user_id__lte=run.last_user_id
    ).values_list("anomaly_type", "user_id"):
        detected[anomaly_type].append(user_id)
    verdicts = []
    for anomaly_type in DEFAULT_RULES:
        matched = set(detected[anomaly_type]) & injected[anomaly_type]
        verdicts.append(
            RuleVerdict(anomaly_type, len(injected[anomaly_type]), len(detected[anomaly_type]), len(matched))
        )
    return verdicts


def injection_progress(*, run: InjectionRun) -> tuple[int, int]:
    """(events of the run stored, anomalies among its users): to tell when detection is done."""
    users = {"user_id__gte": run.first_user_id, "user_id__lte": run.last_user_id}
    return Signal.objects.filter(**users).count(), Anomaly.objects.filter(**users).count()
