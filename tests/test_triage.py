"""Triage services: transitions, who and when, history, mutes and known places; and what
detection does with mutes and known places (against real PostgreSQL, Redis and Kafka)."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.utils import timezone

from anomalies_app.models import Anomaly, AnomalyStatus, Mute, UserLocation
from anomalies_app.selectors import MuteBook, user_risk_score
from anomalies_app.triage import (
    KEEP,
    TriageError,
    anomalies_triage,
    known_place_add,
    mute_add,
    mute_end,
)
from eventpipeline.metrics import ANOMALIES_DETECTED, ANOMALIES_MUTED
from tests.conftest import topic_values
from tests.factories import analyst_create, anomaly_create, history
from tests.test_detect_service import BASE, Detector, detect, row

__all__ = ["detect"]  # the fixture, shared with the detection tests

ACK, RESOLVED, FP, NEW = (
    AnomalyStatus.ACKNOWLEDGED,
    AnomalyStatus.RESOLVED,
    AnomalyStatus.FALSE_POSITIVE,
    AnomalyStatus.NEW,
)


@pytest.mark.django_db
class TestTriage:
    def test_a_bulk_decision_changes_what_it_can_and_says_why_not_for_the_rest(self) -> None:
        ana = analyst_create()
        fresh, done = anomaly_create(), anomaly_create(status=FP)
        result = anomalies_triage(anomaly_ids=[fresh.pk, done.pk, 999_999], by=ana, status=RESOLVED)
        assert list(result.changed) == [fresh.pk]
        assert result.refused == {
            done.pk: "false positive: reopen it (acknowledge) before marking it resolved",
            999_999: "no such anomaly",
        }
        assert result.refused_fields == {done.pk: "status", 999_999: "id"}
        fresh.refresh_from_db()
        done.refresh_from_db()
        assert (fresh.status, fresh.triaged_by, fresh.assigned_to) == (RESOLVED, ana, ana)
        assert fresh.triaged_at is not None
        assert done.status == FP and done.triaged_by is None, "a refused decision changes nothing"
        assert history(fresh) == ["status: new → resolved; assigned to: nobody → ana (admin)"]
        assert history(done) == []
        assert result.summary().startswith("1 changed, 2 left as they were")

    @pytest.mark.parametrize(
        ("start", "wanted", "allowed"),
        [
            (NEW, ACK, True),
            (NEW, RESOLVED, True),
            (NEW, FP, True),
            (ACK, RESOLVED, True),
            (ACK, FP, True),
            (RESOLVED, ACK, True),
            (FP, ACK, True),
            (ACK, ACK, False),
            (ACK, NEW, False),
            (RESOLVED, FP, False),
            (FP, RESOLVED, False),
            (RESOLVED, NEW, False),
        ],
    )
    def test_transitions(self, start: str, wanted: str, allowed: bool) -> None:
        anomaly = anomaly_create(status=start)
        result = anomalies_triage(anomaly_ids=[anomaly.pk], by=analyst_create(), status=wanted)
        assert (anomaly.pk in result.changed) is allowed, result.refused
        anomaly.refresh_from_db()
        assert anomaly.status == (wanted if allowed else start)

    def test_assigning_needs_someone_who_may_triage_and_an_open_anomaly(self) -> None:
        ana, bob = analyst_create(), analyst_create("bob")
        outsider = User.objects.create_user("outsider", is_staff=True)
        anomaly, closed = anomaly_create(), anomaly_create(status=RESOLVED)
        with pytest.raises(TriageError) as refused:
            anomalies_triage(anomaly_ids=[anomaly.pk], by=ana, assigned_to=outsider)
        assert refused.value.field == "assigned_to"
        result = anomalies_triage(anomaly_ids=[anomaly.pk, closed.pk], by=ana, assigned_to=bob)
        assert list(result.changed) == [anomaly.pk]
        assert "reopen" in result.refused[closed.pk]
        again = anomalies_triage(anomaly_ids=[anomaly.pk], by=ana, assigned_to=bob)
        assert again.refused == {anomaly.pk: "already assigned to bob"}
        anomalies_triage(anomaly_ids=[anomaly.pk], by=ana, assigned_to=None)
        anomaly.refresh_from_db()
        assert anomaly.assigned_to is None
        assert history(anomaly) == [
            "assigned to: nobody → bob (admin)",
            "assigned to: bob → nobody (admin)",
        ]
        assert anomalies_triage(anomaly_ids=[anomaly.pk], by=ana, assigned_to=None).refused == {
            anomaly.pk: "not assigned to anyone"
        }

    def test_someone_without_the_triage_permission_changes_nothing(self) -> None:
        viewer = User.objects.create_user("viewer", is_staff=True)
        anomaly = anomaly_create()
        with pytest.raises(TriageError) as refused:
            anomalies_triage(anomaly_ids=[anomaly.pk], by=viewer, status=ACK)
        assert refused.value.field == "user"
        anomaly.refresh_from_db()
        assert anomaly.status == NEW

    def test_notes_alone_are_a_change_and_keep_the_assignee(self) -> None:
        ana, bob = analyst_create(), analyst_create("bob")
        anomaly = anomaly_create()
        anomalies_triage(anomaly_ids=[anomaly.pk], by=ana, assigned_to=bob)
        result = anomalies_triage(anomaly_ids=[anomaly.pk], by=ana, triage_notes="asked the user", assigned_to=KEEP)
        assert result.changed == {anomaly.pk: "notes changed"}
        anomaly.refresh_from_db()
        assert (anomaly.triage_notes, anomaly.assigned_to) == ("asked the user", bob)

    def test_a_false_positive_with_a_mute_and_a_known_place(self) -> None:
        ana = analyst_create()
        place = anomaly_create(user_id=7, anomaly_type="unusual_location_login", episode_key="Lisbon, PT")
        other = anomaly_create(user_id=7, anomaly_type="unusual_location_login", episode_key="Porto, PT")
        result = anomalies_triage(
            anomaly_ids=[place.pk, other.pk],
            by=ana,
            status=FP,
            mute_days=7,
            mute_reason="travels for work",
            add_known_place=True,
        )
        assert len(result.changed) == 2
        (mute,) = result.mutes
        assert (mute.user_id, mute.anomaly_type, mute.reason, mute.created_by) == (
            7,
            "unusual_location_login",
            "travels for work",
            ana,
        )
        assert timedelta(days=7) - timedelta(minutes=1) < mute.until - timezone.now() <= timedelta(days=7)
        assert sorted(p.location for p in result.places) == ["Lisbon, PT", "Porto, PT"]
        assert all(p.vouched and p.added_by == ana for p in result.places)
        assert "muted for user 7 until" in history(place)[0]
        assert "Lisbon, PT added to the user's known places" in history(place)[0]
        assert history(mute) == ["muted for 7 days: travels for work (admin)"]

    def test_a_mute_needs_a_reason_and_sensible_days(self) -> None:
        ana = analyst_create()
        anomaly = anomaly_create()
        for days, reason, field_name in [(0, "why", "mute_days"), (366, "why", "mute_days"), (7, " ", "mute_reason")]:
            with pytest.raises(TriageError) as refused:
                anomalies_triage(anomaly_ids=[anomaly.pk], by=ana, status=FP, mute_days=days, mute_reason=reason)
            assert refused.value.field == field_name
        with pytest.raises(TriageError) as refused:
            anomalies_triage(anomaly_ids=[anomaly.pk], by=ana, status=RESOLVED, mute_days=7, mute_reason="why")
        assert refused.value.field == "mute_days"
        anomaly.refresh_from_db()
        assert anomaly.status == NEW and not Mute.objects.exists()

    def test_a_mute_ends_once(self) -> None:
        ana = analyst_create()
        mute = mute_add(user_id=1, anomaly_type="high_value_purchase", days=3, reason="test account", by=ana)
        assert Mute.objects.active().count() == 1
        mute_end(mute=mute, by=ana)
        assert Mute.objects.active().count() == 0
        with pytest.raises(TriageError, match="ended already"):
            mute_end(mute=mute, by=ana)
        assert history(mute) == ["muted for 3 days: test account (admin)", "ended early (admin)"]

    def test_a_known_place_added_twice_is_refused(self) -> None:
        ana = analyst_create()
        known_place_add(user_id=3, location=" Lisbon, PT ", by=ana, note="moving there")
        with pytest.raises(TriageError) as refused:
            known_place_add(user_id=3, location="Lisbon, PT", by=ana)
        assert refused.value.field == "location"
        place = UserLocation.objects.get(user_id=3)
        assert (place.location, place.first_seen_ms, place.note) == ("Lisbon, PT", None, "moving there")

    def test_groups_give_analysts_triage_but_not_rules(self) -> None:
        ana = analyst_create()
        editor = User.objects.create_user("editor", is_staff=True)
        editor.groups.add(Group.objects.get(name="rule editors"))
        editor = User.objects.get(pk=editor.pk)
        assert ana.has_perm("anomalies_app.triage_anomaly") and not ana.has_perm("anomalies_app.change_rule")
        assert editor.has_perm("anomalies_app.triage_anomaly") and editor.has_perm("anomalies_app.change_rule")
        assert not ana.has_perm("anomalies_app.delete_anomaly") and not ana.has_perm("anomalies_app.add_anomaly")


def metric(counter: Any, anomaly_type: str) -> float:
    return float(counter.labels(anomaly_type=anomaly_type)._value.get())


def test_a_muted_rule_records_the_episode_suppressed_and_raises_it_no_more(detect: Detector) -> None:
    ana = analyst_create()
    detect([row(5, BASE, "login", location="Berlin, DE")])
    mute = mute_add(user_id=5, anomaly_type="unusual_location_login", days=7, reason="travels", by=ana)
    muted_before = metric(ANOMALIES_MUTED, "unusual_location_login")
    raised_before = metric(ANOMALIES_DETECTED, "unusual_location_login")

    detect([row(5, BASE + 60_000, "login", location="Lagos, NG"), row(6, BASE, "login", location="Oslo, NO")])
    detect([row(6, BASE + 60_000, "login", location="Lagos, NG")])
    suppressed = Anomaly.objects.get(user_id=5)
    assert (suppressed.suppressed, suppressed.suppressed_by_id, suppressed.published_at) == (True, mute.pk, None)
    assert Anomaly.objects.get(user_id=6).suppressed is False, "another user's rule is not muted"
    assert metric(ANOMALIES_MUTED, "unusual_location_login") == muted_before + 1
    assert metric(ANOMALIES_DETECTED, "unusual_location_login") == raised_before + 1
    assert user_risk_score(user_id=5)["total_anomalies"] == 0, "a suppressed anomaly is not held against the user"
    (published,) = [json.loads(v) for v in topic_values(detect.topic, expected=1)]
    assert published["user_id"] == 6, "only the unmuted anomaly goes out"

    mute_end(mute=mute, by=ana)
    # The same episode (the same new place, its first login analysed again) after the
    # mute: it stays one suppressed anomaly. A new place: raised.
    detect([row(5, BASE + 60_000, "login", location="Lagos, NG")], store=False)
    detect([row(5, BASE + 120_000, "login", location="Tokyo, JP")])
    assert sorted(Anomaly.objects.filter(user_id=5).values_list("episode_key", "suppressed")) == [
        ("Lagos, NG", True),
        ("Tokyo, JP", False),
    ]


def test_a_place_added_by_hand_is_never_new_nor_home(detect: Detector) -> None:
    ana = analyst_create()
    known_place_add(user_id=8, location="Lisbon, PT", by=ana)
    detect([row(8, BASE, "login", location="Berlin, DE")])
    assert not Anomaly.objects.exists(), "the first login is home, though a place was added before it"
    detect([row(8, BASE + 60_000, "login", location="Lisbon, PT")])
    assert not Anomaly.objects.exists(), "a place added by hand is known"
    detect([row(8, BASE + 120_000, "login", location="Lagos, NG")])
    assert list(Anomaly.objects.values_list("episode_key", flat=True)) == ["Lagos, NG"]


def test_the_mute_book_rereads_after_its_period() -> None:
    loads = []
    now = [0.0]

    def load() -> dict[tuple[int, str], tuple[int, float]]:
        loads.append(now[0])
        return {(1, "high_value_purchase"): (9, 2_000.0)}

    book = MuteBook(refresh_seconds=5, load=load, clock=lambda: now[0], wall_clock=lambda: 1_000.0)
    assert book.mute_of(1, "high_value_purchase") == 9
    assert book.mute_of(2, "high_value_purchase") is None
    now[0] = 4.9
    book.mute_of(1, "high_value_purchase")
    assert loads == [0.0], "not per event"
    now[0] = 5.0
    book.mute_of(1, "high_value_purchase")
    assert loads == [0.0, 5.0]
    expired = MuteBook(refresh_seconds=5, load=load, clock=lambda: 0.0, wall_clock=lambda: 2_000.0)
    assert expired.mute_of(1, "high_value_purchase") is None, "a mute that ran out holds nothing back"


@pytest.mark.django_db
def test_create_analyst_makes_a_staff_user_in_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYST_PASSWORD", "a-long-enough-password")
    call_command("create_analyst", "alice", "--no-input", stdout=io.StringIO())
    alice = User.objects.get(username="alice")
    assert alice.is_staff and not alice.is_superuser
    assert alice.check_password("a-long-enough-password")
    assert alice.has_perm("anomalies_app.triage_anomaly") and not alice.has_perm("anomalies_app.change_rule")
    call_command("create_analyst", "alice", "--rule-editor", "--no-input", stdout=io.StringIO())
    assert User.objects.get(username="alice").has_perm("anomalies_app.change_rule")


@pytest.mark.django_db
def test_create_analyst_refuses_a_new_user_without_a_good_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANALYST_PASSWORD", raising=False)
    with pytest.raises(CommandError, match="needs a password"):
        call_command("create_analyst", "bob", "--no-input")
    monkeypatch.setenv("ANALYST_PASSWORD", "bob")
    with pytest.raises(CommandError, match="password: "):
        call_command("create_analyst", "bob", "--no-input")
    assert not User.objects.filter(username="bob").exists()


@pytest.mark.django_db
def test_resolving_and_assigning_an_open_anomaly_at_once_is_one_decision() -> None:
    ana, bob = analyst_create(), analyst_create("bob")
    anomaly = anomaly_create()
    result = anomalies_triage(anomaly_ids=[anomaly.pk], by=ana, status=RESOLVED, assigned_to=bob)
    assert anomaly.pk in result.changed, result.refused
    anomaly.refresh_from_db()
    assert (anomaly.status, anomaly.assigned_to) == (RESOLVED, bob)


@pytest.mark.django_db
def test_a_false_positive_vouches_for_the_place_exactly_as_logins_name_it() -> None:
    ana = analyst_create()
    spaced = anomaly_create(user_id=9, anomaly_type="unusual_location_login", episode_key=" Lisbon, PT ")
    blank = anomaly_create(user_id=9, anomaly_type="unusual_location_login", episode_key="  ")
    result = anomalies_triage(anomaly_ids=[spaced.pk, blank.pk], by=ana, status=FP, add_known_place=True)
    assert len(result.changed) == 2, result.refused
    assert list(UserLocation.objects.filter(user_id=9).values_list("location", flat=True)) == [" Lisbon, PT "]


def test_an_episode_raised_after_a_mute_survives_a_merge_with_one_held_back(detect: Detector) -> None:
    ana = analyst_create()
    mute = mute_add(user_id=21, anomaly_type="high_frequency_login", days=1, reason="load test", by=ana)
    detect([row(21, BASE + i * 1_000, "login") for i in range(11)])  # a burst, held back
    mute_end(mute=mute, by=ana)
    detect([row(21, BASE + 120_000 + i * 1_000, "login") for i in range(11)])  # another, raised
    assert sorted(Anomaly.objects.values_list("suppressed", flat=True)) == [False, True]
    raised = Anomaly.objects.get(suppressed=False)
    # Late logins that fill the gap make the two bursts one episode.
    detect([row(21, BASE + 10_000 + i * 5_000, "login") for i in range(1, 22)])
    (survivor,) = Anomaly.objects.all()
    assert (survivor.pk, survivor.suppressed) == (raised.pk, False), "what was raised does not vanish"
    assert survivor.published_at is not None
    assert survivor.episode_start_ms == BASE + 10_000, "from the first burst: the 11th login"
