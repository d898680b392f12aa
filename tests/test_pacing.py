"""The emitter's schedule (emitter/pacing.py), driven by made-up moments: no servers, no sleeping."""

from __future__ import annotations

from typing import Any

import pytest

from emitter.pacing import MAX_SLEEP_SECONDS, TICK_SECONDS, Pace, TimedBurst

# A reading of a monotonic clock: not 0, so that differences of moments round as they do in the emitter.
T0 = 4_321.987


def pace(rate: float, **options: Any) -> Pace:
    return Pace(start=T0, rate=rate, **options)


def moment(seconds: float) -> Any:
    """`seconds` after T0, give or take what float arithmetic and the epsilon of
    emitter.pacing make of it (well under a microsecond)."""
    return pytest.approx(T0 + seconds, abs=1e-6)


# --- a steady rate -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rate", "seconds", "due"),
    [
        (50, 0, 0),
        (50, 0.001, 1),  # the first event is due at once
        (50, 0.02, 1),
        (50, 0.021, 2),
        (50, 1, 50),
        (50, 18, 900),
        (1000, 0.0105, 11),
        (1000, 60, 60_000),
        (2.5, 0.39, 1),
        (2.5, 0.41, 2),
        (2.5, 10, 25),
        (70_000, 1, 70_000),
    ],
)
def test_events_due_at_a_rate_after_some_seconds(rate: float, seconds: float, due: int) -> None:
    assert pace(rate).due(T0 + seconds) == due


@pytest.mark.parametrize("rate", [0.1, 0.3, 1 / 3, 7, 50, 333.3, 1000, 12_345.6])
@pytest.mark.parametrize("events", [1, 3, 10, 99, 1000, 123_457])
def test_exactly_n_over_the_rate_seconds_in_n_events_are_due_and_the_next_just_after(rate: float, events: int) -> None:
    """Float rounding of the moments must not add an event, nor lose one."""
    schedule = pace(rate)
    assert schedule.due(T0 + events / rate) == events
    assert schedule.due(T0 + (events + 0.001) / rate) == events + 1


def test_nothing_is_due_before_the_start() -> None:
    assert pace(50).due(T0 - 5) == 0


def test_a_tiny_rate_sends_its_first_event_at_once_and_the_next_a_period_later() -> None:
    schedule = pace(0.001)  # one event every 1,000 s
    assert [schedule.due(T0 + seconds) for seconds in (0.01, 999.9, 1000.01, 2000.01)] == [1, 1, 2, 3]


@pytest.mark.parametrize("rate", [0, -1, float("nan")])
def test_a_rate_that_is_not_positive_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        pace(rate)
    with pytest.raises(ValueError, match="rate must be positive"):
        pace(50).change(T0 + 1, rate=rate, timed_burst=None)


def test_a_refused_change_changes_nothing() -> None:
    schedule = pace(50)
    with pytest.raises(ValueError):
        schedule.change(T0 + 1, rate=0, timed_burst=None)
    assert schedule.due(T0 + 2) == 100


@pytest.mark.parametrize("multiplier", [0, -5])
def test_a_multiplier_that_is_not_positive_is_refused(multiplier: float) -> None:
    with pytest.raises(ValueError, match="burst multiplier must be positive"):
        pace(50, burst_multiplier=multiplier)
    with pytest.raises(ValueError, match="burst multiplier must be positive"):
        TimedBurst(multiplier, T0 + 10)


# --- where a run ends ----------------------------------------------------------------------
def test_a_duration_ends_the_schedule_with_its_last_due_event() -> None:
    schedule = pace(50, duration=18)
    assert schedule.due(T0 + 18) == 900
    assert schedule.due(T0 + 3600) == 900, "nothing falls due after the deadline"
    assert not schedule.finished(T0 + 17.99, sent=900)
    assert schedule.finished(T0 + 18, sent=899), "the time is up, whatever was sent"


def test_a_count_caps_what_is_due_and_ends_the_run_once_sent() -> None:
    schedule = pace(50, count=10)
    assert schedule.due(T0 + 0.1) == 5
    assert schedule.due(T0 + 3600) == 10
    assert not schedule.finished(T0 + 3600, sent=9)
    assert schedule.finished(T0 + 0.2, sent=10)


def test_a_run_without_count_or_duration_never_finishes() -> None:
    assert not pace(50).finished(T0 + 10**9, sent=10**12)


# --- burst mode ------------------------------------------------------------------------------
def test_burst_mode_multiplies_the_rate() -> None:
    assert pace(50, burst=True).due(T0 + 1) == 250, "five times by default"
    assert pace(50, burst=True, burst_multiplier=3).due(T0 + 1) == 150
    assert pace(50, burst=True, burst_multiplier=3).rate_at(T0) == 150


def test_burst_mode_turned_on_and_off_while_running() -> None:
    schedule = pace(50)
    schedule.change(T0 + 1, burst=True, timed_burst=None)
    assert schedule.due(T0 + 2) == 50 + 250
    schedule.change(T0 + 2, burst=False, timed_burst=None)
    assert schedule.due(T0 + 3) == 50 + 250 + 50


# --- a change of rate while running ---------------------------------------------------------
@pytest.mark.parametrize("new_rate", [500, 5, 50])
def test_a_new_rate_keeps_what_was_due_neither_catching_up_nor_dropping(new_rate: float) -> None:
    schedule = pace(50)
    schedule.change(T0 + 1.01, rate=new_rate, timed_burst=None)  # 50.5 events due by then
    assert schedule.due(T0 + 1.01) == 51, "the events due stay due, none made up for at the new rate"
    assert schedule.due(T0 + 1.01 + 0.5 / new_rate) == 51, "the half event left is finished at the new rate"
    assert schedule.due(T0 + 1.01 + 0.501 / new_rate) == 52
    assert schedule.due(T0 + 1.01 + 10) == 51 + 10 * new_rate


def test_an_emitter_behind_follows_a_change_at_once_instead_of_sending_its_backlog() -> None:
    schedule = pace(1000)
    schedule.change(T0 + 10, rate=10, timed_burst=None, sent=4000)  # 10,000 were due, 4,000 sent
    assert schedule.due(T0 + 10) == 4000, "the backlog is dropped"
    assert schedule.due(T0 + 11) == 4010, "the new rate from what was sent"
    caught_up = pace(1000)
    caught_up.change(T0 + 10, rate=10, timed_burst=None, sent=10_000)
    assert caught_up.due(T0 + 11) == 10_010, "an emitter that kept up loses nothing"


def test_a_burst_that_ends_while_the_emitter_is_behind_drops_its_backlog() -> None:
    schedule = pace(100)
    schedule.change(T0, timed_burst=TimedBurst(10, T0 + 2), sent=0)  # 2,000 due by its end
    assert schedule.burst_end(T0 + 2.5, sent=700) == T0 + 2
    assert schedule.due(T0 + 2.5) == 700 + 50, "the steady rate from what was sent, from the burst's end"


def test_the_events_due_are_the_rates_each_over_its_own_stretch() -> None:
    schedule = pace(50)
    schedule.change(T0 + 2, rate=500, timed_burst=None)
    schedule.change(T0 + 3, rate=50, timed_burst=None)
    assert schedule.due(T0 + 5) == 100 + 500 + 100
    assert schedule.rate_at(T0 + 5) == 50


def test_a_change_that_names_neither_rate_nor_burst_mode_keeps_both() -> None:
    schedule = pace(50, burst=True, burst_multiplier=2)
    schedule.change(T0 + 1, timed_burst=None)
    assert schedule.due(T0 + 2) == 200
    assert (schedule.rate, schedule.burst) == (50, True)


def test_changes_at_one_moment_lose_and_add_nothing() -> None:
    schedule = pace(50)
    for rate in (500, 5, 5000, 50):
        schedule.change(T0 + 1.01, rate=rate, timed_burst=None)
        assert schedule.due(T0 + 1.01) == 51
    assert schedule.due(T0 + 2.01) == 101


def test_a_change_after_the_deadline_adds_nothing() -> None:
    schedule = pace(50, duration=2)
    schedule.change(T0 + 5, rate=500, timed_burst=None)
    assert schedule.due(T0 + 10) == 100


# --- a timed burst ----------------------------------------------------------------------------
def burst_at_one_second(rate: float = 50, multiplier: float = 6, length: float = 2.5, **options: Any) -> Pace:
    """A schedule at `rate` that is asked, one second in, for `multiplier` times that for `length` seconds."""
    schedule = pace(rate, **options)
    schedule.change(T0 + 1, timed_burst=TimedBurst(multiplier, T0 + 1 + length))
    return schedule


def test_a_timed_burst_multiplies_the_rate_until_its_end() -> None:
    schedule = burst_at_one_second()
    assert schedule.rate_at(T0 + 1) == 300
    assert schedule.due(T0 + 2) == 50 + 300
    assert schedule.due(T0 + 3.5) == 50 + 750


def test_a_timed_burst_ends_exactly_at_its_end() -> None:
    schedule = burst_at_one_second()
    assert schedule.due(T0 + 3.5 - 0.5 / 300) == 800, "the last event of the burst is due just before its end"
    assert schedule.due(T0 + 3.5 + 0.5 / 50) == 801, "then half an event at 50/s: the next is not yet due"
    assert schedule.due(T0 + 3.5 + 1.01 / 50) == 802
    assert schedule.rate_at(T0 + 3.5) == 50
    assert schedule.due(T0 + 13.5) == 800 + 500


def test_a_burst_that_ends_between_two_calls_counts_its_rate_only_up_to_its_end() -> None:
    schedule = burst_at_one_second()
    before = schedule.due(T0 + 3.49)
    assert schedule.due(T0 + 3.6) == 800 + 5, "not 800 + 30: a tenth of a second at 50/s after the end"
    assert schedule.burst_end(T0 + 3.49) is None, "not over yet"
    assert schedule.due(T0 + 3.49) == before
    assert schedule.burst_end(T0 + 3.6) == moment(3.5), "over, and when it ended"
    assert schedule.timed_burst is None
    assert schedule.due(T0 + 3.5) == 800, "ending it late changes nothing that was due"
    assert schedule.due(T0 + 3.6) == 805
    assert schedule.due(T0 + 4.5) == 850


def test_ending_a_burst_at_once_or_long_after_leaves_the_same_events_due() -> None:
    prompt, late = burst_at_one_second(), burst_at_one_second()
    assert prompt.burst_end(T0 + 3.5) == late.burst_end(T0 + 30) == moment(3.5)
    assert [prompt.due(T0 + s) for s in (3.5, 4, 10, 30)] == [late.due(T0 + s) for s in (3.5, 4, 10, 30)]


def test_a_timed_burst_multiplies_the_asked_rate_even_in_burst_mode() -> None:
    schedule = burst_at_one_second(burst=True, burst_multiplier=5)
    assert schedule.due(T0 + 1) == 250
    assert schedule.rate_at(T0 + 2) == 300, "50 x 6, not 250 x 6"
    assert schedule.due(T0 + 3.5) == 250 + 750
    assert schedule.due(T0 + 4.5) == 250 + 750 + 250, "back to burst mode"


def test_a_new_request_during_a_timed_burst_replaces_it() -> None:
    schedule = burst_at_one_second()
    schedule.change(T0 + 2, rate=100, timed_burst=None)
    assert schedule.due(T0 + 3) == 50 + 300 + 100
    again = burst_at_one_second()
    again.change(T0 + 2, rate=100, timed_burst=TimedBurst(2, T0 + 3.5))
    assert again.due(T0 + 3) == 50 + 300 + 200, "a burst that goes on: the new rate times its multiplier"
    assert again.due(T0 + 4.5) == 50 + 300 + 300 + 100


def test_a_timed_burst_already_over_when_given_changes_nothing() -> None:
    schedule = pace(50)
    schedule.change(T0 + 1, timed_burst=TimedBurst(6, T0 + 1))
    assert schedule.due(T0 + 2) == 100
    assert schedule.burst_end(T0 + 2) == moment(1)
    assert schedule.due(T0 + 2) == 100


def test_a_burst_that_outlasts_the_run_ends_with_it() -> None:
    schedule = burst_at_one_second(length=100, duration=3)
    assert schedule.due(T0 + 50) == 50 + 2 * 300
    assert schedule.burst_end(T0 + 200) == moment(101)
    assert schedule.due(T0 + 300) == 650


def test_a_burst_that_outlasts_the_count_ends_with_it() -> None:
    schedule = burst_at_one_second(count=200)
    assert schedule.due(T0 + 1.25) == 50 + 75
    assert schedule.due(T0 + 3) == 200, "not 650"


# --- when to wake ----------------------------------------------------------------------------
def test_events_due_wake_the_emitter_at_once() -> None:
    schedule = pace(1000)
    assert schedule.wake_at(T0 + 0.0123, sent=5) == T0 + 0.0123


def test_above_one_event_a_tick_it_wakes_at_the_next_tick_of_the_schedule() -> None:
    schedule = pace(1000)
    now = T0 + 0.0123
    assert schedule.wake_at(now, sent=schedule.due(now)) == moment(2 * TICK_SECONDS)


def test_below_one_event_a_tick_it_wakes_when_the_next_event_falls_due() -> None:
    schedule = pace(10)
    assert schedule.wake_at(T0 + 0.05, sent=1) == moment(0.1)
    assert schedule.wake_at(T0 + 0.1001, sent=2) == moment(0.2)


def test_a_slow_rate_still_wakes_every_so_often() -> None:
    schedule = pace(0.5)
    assert schedule.wake_at(T0 + 0.01, sent=1) == moment(0.01 + MAX_SLEEP_SECONDS)


def test_it_does_not_sleep_past_the_deadline() -> None:
    schedule = pace(2, duration=1.1)
    assert schedule.wake_at(T0 + 1.01, sent=3) == moment(1.1)


def test_the_next_event_after_a_burst_that_ends_first_comes_at_the_steady_rate() -> None:
    schedule = pace(4)
    schedule.change(T0, timed_burst=TimedBurst(10, T0 + 0.49))  # 19.6 events by its end
    assert schedule.wake_at(T0 + 0.485, sent=20) == moment(0.49 + 0.4 / 4), "not T0 + 20 / 40"
    assert schedule.wake_at(T0 + 0.205, sent=9) == moment(0.225), "in the burst: at the burst's rate"


def test_the_ticks_are_counted_from_the_last_change() -> None:
    schedule = pace(1000)
    schedule.change(T0 + 1.005, rate=2000, timed_burst=None)
    now = T0 + 1.011
    assert schedule.wake_at(now, sent=schedule.due(now)) == moment(1.005 + TICK_SECONDS), "not T0 + 1.02"
