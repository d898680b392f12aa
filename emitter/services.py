"""Changes the emitter makes: injection runs and their ground truth, and the control that
POST /emitter/configure and /emitter/burst hand to the running emitters through Redis."""

from __future__ import annotations

import time
from collections.abc import Sequence

from django.conf import settings
from django.db import transaction

from emitter.models import InjectedScenario, InjectionRun
from emitter.pacing import DEFAULT_BURST_MULTIPLIER
from emitter.scenarios import Scenario
from emitter.selectors import EmitterControl, control_redis, emitter_control_get, emitter_control_of

# Who may call emitter_configure and emitter_burst through a door (the API).
EMITTER_CONTROL_PERMISSION = "emitter.control_emitter"

# --- ground truth -------------------------------------------------------------------
# An injection run's users: background and scenarios, in a range of their own.
INJECTION_USERS_BASE = 1_000_000_000
INJECTION_USERS_PER_RUN = 10_000_000


def injection_run_start(*, seed: int | None) -> InjectionRun:
    run = InjectionRun.objects.create(seed=seed, first_user_id=0, last_user_id=0)
    run.first_user_id = INJECTION_USERS_BASE + run.pk * INJECTION_USERS_PER_RUN
    run.last_user_id = run.first_user_id + INJECTION_USERS_PER_RUN - 1
    run.save(update_fields=["first_user_id", "last_user_id"])
    return run


def injection_run_finish(*, run: InjectionRun, scenarios: Sequence[Scenario], events: int) -> None:
    with transaction.atomic():
        InjectedScenario.objects.bulk_create(
            InjectedScenario(
                run=run,
                kind=scenario.kind,
                user_id=scenario.user_id,
                anomaly_type=scenario.anomaly_type or "",
                first_event_ms=scenario.first_ms,
                last_event_ms=scenario.last_ms,
                events=scenario.events,
            )
            for scenario in scenarios
        )
        run.events = events
        run.finished = True
        run.save(update_fields=["events", "finished"])


class EmitterControlRefused(Exception):
    """A request the control refuses as a whole, changing nothing; `field` is the one to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _fastest(*, rate: float, multiplier: float, field: str) -> None:
    """Refuse a pace above EMITTER_MAX_RATE, naming the field that asked for it."""
    ceiling = settings.EMITTER_MAX_RATE
    if rate * multiplier <= ceiling:
        return
    if multiplier == 1:
        raise EmitterControlRefused(field, f"must be at most {ceiling:,} events/s (EMITTER_MAX_RATE)")
    raise EmitterControlRefused(
        field,
        f"would make {rate:g} events/s x {multiplier:g} = {rate * multiplier:,.0f} events/s, "
        f"above EMITTER_MAX_RATE ({ceiling:,})",
    )


def emitter_configure(*, signals_per_second: float | None = None, burst_mode: bool | None = None) -> EmitterControl:
    """Set the running emitters' rate and burst mode (None leaves one as it is). They
    follow within EMITTER_CONTROL_POLL_SECONDS; an emitter started later uses its own
    settings until the next request.

    The pace it leads to, with burst mode's multiplier or a timed burst under way, must
    stay within EMITTER_MAX_RATE. What is not asked is taken as the emitters' defaults
    (SIGNALS_PER_SECOND, a burst multiplier of 5): the control cannot see an emitter's
    own options."""
    current = emitter_control_get()
    rate = signals_per_second or current.signals_per_second or settings.SIGNALS_PER_SECOND
    field = "signals_per_second" if signals_per_second is not None else "burst_mode"
    _fastest(rate=rate, multiplier=1, field=field)
    if burst_mode if burst_mode is not None else current.burst_mode:
        _fastest(rate=rate, multiplier=DEFAULT_BURST_MULTIPLIER, field=field)
    if current.burst_until is not None and current.burst_until > time.time():
        _fastest(rate=rate, multiplier=current.burst_multiplier or DEFAULT_BURST_MULTIPLIER, field=field)
    fields: dict[str, str] = {}
    if signals_per_second is not None:
        fields["signals_per_second"] = repr(float(signals_per_second))
    if burst_mode is not None:
        fields["burst_mode"] = "1" if burst_mode else "0"
    return _emitter_control_change(fields)


def emitter_burst(*, duration_seconds: float, multiplier: float) -> EmitterControl:
    """Run the emitters at `multiplier` times their rate for `duration_seconds` from now,
    then back to what they were doing. Their rate times `multiplier` must stay within
    EMITTER_MAX_RATE."""
    current = emitter_control_get()
    rate = current.signals_per_second or settings.SIGNALS_PER_SECOND
    _fastest(rate=rate, multiplier=multiplier, field="multiplier")
    until = time.time() + duration_seconds
    return _emitter_control_change({"burst_multiplier": repr(float(multiplier)), "burst_until": repr(until)})


def _emitter_control_change(fields: dict[str, str]) -> EmitterControl:
    # Fields change one by one in a hash, and the version with them, in one transaction:
    # two requests at once each keep what they set, and no emitter misses either.
    pipe = control_redis().pipeline(transaction=True)
    if fields:
        pipe.hset(settings.EMITTER_CONTROL_KEY, items=[part for field in fields.items() for part in field])
    pipe.hincrby(settings.EMITTER_CONTROL_KEY, "version", 1)
    pipe.hgetall(settings.EMITTER_CONTROL_KEY)  # the control as this request left it
    return emitter_control_of(pipe.execute()[-1])
