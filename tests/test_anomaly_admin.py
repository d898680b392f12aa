"""The admin an analyst triages in, used as a browser would (Django's test client, real
PostgreSQL): the anomaly list and its actions, the false-positive form, an anomaly's
evidence, the page per user, mutes, known places, history, and who may do what."""

from __future__ import annotations

import html
import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission, User
from django.db import connection, transaction
from django.db.models import QuerySet
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from anomalies_app.models import Anomaly, AnomalyStatus, Mute, Rule, UserLocation
from anomalies_app.rules import DEFAULT_RULES, rule_in_words, value_in_words
from anomalies_app.triage import known_place_add, mute_add
from signals_app.models import Signal
from tests.factories import analyst_create, anomaly_create, history, signal_create, staff_create

pytestmark = pytest.mark.django_db

ADMIN = "/admin/anomalies_app/anomaly/"
ACK, RESOLVED, FP, NEW = (
    AnomalyStatus.ACKNOWLEDGED,
    AnomalyStatus.RESOLVED,
    AnomalyStatus.FALSE_POSITIVE,
    AnomalyStatus.NEW,
)
T0 = 1_772_359_200_000  # 2026-03-01 10:00:00 UTC


@pytest.fixture
def ana(client: Client) -> User:
    """An analyst, logged in."""
    user = analyst_create()
    client.force_login(user)
    return user


def text(response: Any) -> str:
    return html.unescape(response.content.decode())


def shown_messages(response: Any) -> list[tuple[str, str]]:
    return [(message.level_tag, message.message) for message in response.context["messages"]]


def listed(client: Client, query: str = "") -> list[int]:
    """The anomalies the list shows, in its order."""
    response = client.get(ADMIN + query)
    assert response.status_code == 200, text(response)[:2000]
    return [
        int(pk) for pk in re.findall(r'href="/admin/anomalies_app/anomaly/(\d+)/change/', response.content.decode())
    ]


def act(client: Client, action: str, selected: list[Any], url: str = ADMIN, **fields: Any) -> Any:
    """Tick rows, choose an action, press Go (and fill in what the next page asks)."""
    data = {"action": action, ACTION_CHECKBOX_NAME: [row.pk for row in selected], "index": 0, **fields}
    return client.post(url, data, follow=True)


def refreshed(anomaly: Anomaly) -> Anomaly:
    anomaly.refresh_from_db()
    return anomaly


def counting_evidence(*event_ids: str, value: float = 12) -> dict[str, Any]:
    return {
        "rule": {"threshold": 10, "window_seconds": 60, "comparison": ">", "severity": "medium"},
        "value": value,
        "window_start_ms": T0,
        "window_end_ms": T0 + 59_500,
        "event_ids": list(event_ids),
    }


# --- the list ---------------------------------------------------------------------------
def test_the_list_shows_who_what_how_bad_and_since_when(client: Client, ana: User) -> None:
    anomaly = anomaly_create(
        user_id=42, anomaly_type="high_frequency_login", severity="high", episode_start_ms=T0, assigned_to=ana
    )
    anomaly.detection_timestamp = timezone.now() - timedelta(hours=3)
    anomaly.save()
    with CaptureQueriesContext(connection) as queries:
        page = text(client.get(ADMIN))
    assert f'<a href="{ADMIN}user/42/" class="user-link">42</a>' in page
    assert 'class="severity severity-high"' in page
    assert "2026-03-01 10:00:00</span>" in page, "the episode's start, in event time"
    assert "3\xa0hours" in page, "its age since detection"
    assert ">ana<" in page, "the assignee"
    assert 'id="changelist-search"' in page and "?detection_timestamp__year=" in page
    touched = [query["sql"] for query in queries.captured_queries if '"signals"' in query["sql"]]
    assert touched == [], "the list never reads (nor counts) the signals table"


def test_no_delete_no_add(client: Client, ana: User) -> None:
    anomaly = anomaly_create()
    page = text(client.get(ADMIN))
    assert 'value="delete_selected"' not in page
    for action in ["acknowledge", "resolve", "mark_false_positive", "assign_to_me", "unassign"]:
        assert f'value="{action}"' in page
    assert f'href="{ADMIN}add/"' not in page
    assert client.get(ADMIN + "add/").status_code == 403
    assert client.post(f"{ADMIN}{anomaly.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Anomaly.objects.filter(pk=anomaly.pk).exists()


@pytest.mark.parametrize(
    ("action", "start", "expected"),
    [
        ("acknowledge", NEW, {"status": ACK}),
        ("resolve", ACK, {"status": RESOLVED}),
        ("assign_to_me", NEW, {"assigned_to": "ana", "status": NEW}),
        ("unassign", ACK, {"assigned_to": None}),
    ],
)
def test_each_action_is_one_triage_and_says_what_it_did(
    client: Client, ana: User, action: str, start: str, expected: dict[str, Any]
) -> None:
    bob = analyst_create("bob")
    anomaly = anomaly_create(status=start, assigned_to=bob if action == "unassign" else None)
    response = act(client, action, [anomaly])
    assert response.redirect_chain[-1][0].startswith(ADMIN)
    assert shown_messages(response) == [("success", "1 changed.")]
    anomaly = refreshed(anomaly)
    got = {"status": anomaly.status, "assigned_to": anomaly.assigned_to and anomaly.assigned_to.username}
    assert {key: got[key] for key in expected} == expected
    assert anomaly.triaged_by == ana
    assert history(anomaly)[-1].endswith("(admin)")


def test_an_action_that_makes_no_sense_for_some_says_which_and_why(client: Client, ana: User) -> None:
    fresh, seen, closed = anomaly_create(), anomaly_create(status=ACK), anomaly_create(status=FP)
    response = act(client, "resolve", [fresh, seen, closed])
    assert shown_messages(response) == [
        (
            "warning",
            "2 changed, 1 left as they were (1 false positive: reopen it (acknowledge) before marking it resolved).",
        )
    ]
    assert [refreshed(a).status for a in (fresh, seen, closed)] == [RESOLVED, RESOLVED, FP]
    response = act(client, "resolve", [fresh])
    assert shown_messages(response) == [("warning", "0 changed, 1 left as they were (1 already resolved).")]


# --- false positive -------------------------------------------------------------------
def test_false_positive_asks_then_mutes_and_adds_the_place(client: Client, ana: User) -> None:
    travel = anomaly_create(user_id=7, anomaly_type="unusual_location_login", episode_key="Lisbon, PT")
    burst = anomaly_create(user_id=7, anomaly_type="high_frequency_login")
    form = act(client, "mark_false_positive", [travel, burst])
    page = text(form)
    assert form.status_code == 200 and form.redirect_chain == []
    assert '<input type="submit" name="apply" value="Mark false positive"' in page
    for field in ['name="mute_days"', 'name="mute_reason"', 'name="add_known_place"']:
        assert field in page
    assert "Only for unusual_location_login" in page
    assert refreshed(travel).status == NEW, "nothing happens before the form is sent"

    done = act(
        client,
        "mark_false_positive",
        [travel, burst],
        apply="Mark false positive",
        mute_days="14",
        mute_reason="travels for work",
        add_known_place="on",
    )
    assert done.redirect_chain[-1][0] == ADMIN
    assert shown_messages(done) == [("success", "2 changed, 2 mutes added, 1 known place added.")]
    assert refreshed(travel).status == FP and refreshed(burst).status == FP
    assert sorted(Mute.objects.active().values_list("user_id", "anomaly_type", "reason", "created_by")) == [
        (7, "high_frequency_login", "travels for work", ana.pk),
        (7, "unusual_location_login", "travels for work", ana.pk),
    ]
    place = UserLocation.objects.get(user_id=7)
    assert (place.location, place.added_by, place.first_seen_ms) == ("Lisbon, PT", ana, None)
    assert "Lisbon, PT added to the user's known places" in history(travel)[-1]


@pytest.mark.parametrize(
    ("fields", "field_name", "error"),
    [
        ({"mute_days": "7", "mute_reason": " "}, "mute_reason", "say why the rule is muted"),
        ({"mute_days": "400", "mute_reason": "why"}, "mute_days", "a mute lasts 1 to 365 days, not 400"),
        ({"mute_days": "soon", "mute_reason": "why"}, "mute_days", "Enter a whole number."),
        ({"mute_days": "", "mute_reason": "why"}, "mute_days", "say for how many days to mute"),
    ],
)
def test_false_positive_with_bad_input_shows_the_form_again_with_the_error(
    client: Client, ana: User, fields: dict[str, str], field_name: str, error: str
) -> None:
    anomaly = anomaly_create()
    response = act(client, "mark_false_positive", [anomaly], apply="Mark false positive", **fields)
    page = text(response)
    assert response.status_code == 200 and response.redirect_chain == []
    row = page[page.index(f"field-{field_name}") :]
    assert row.index(error) < row.index(f'name="{field_name}"'), "the error is shown on its field"
    assert f'value="{anomaly.pk}"' in page, "the selection is kept"
    assert refreshed(anomaly).status == NEW and not Mute.objects.exists()


def test_false_positive_of_everything_the_filter_selects(client: Client, ana: User) -> None:
    purchases = [anomaly_create(anomaly_type="high_value_purchase") for _ in range(3)]
    other = anomaly_create(anomaly_type="unusual_time_activity")
    url = ADMIN + "?anomaly_type__exact=high_value_purchase"
    response = act(client, "mark_false_positive", purchases[:1], url=url, select_across="1")
    assert "Mark 3 anomalies false positive" in text(response)
    act(client, "mark_false_positive", purchases[:1], url=url, select_across="1", apply="Mark false positive")
    assert [refreshed(a).status for a in purchases] == [FP, FP, FP]
    assert refreshed(other).status == NEW


def test_false_positive_from_the_anomaly_page(client: Client, ana: User) -> None:
    anomaly = anomaly_create(user_id=9, anomaly_type="unusual_location_login", episode_key="Oslo, NO")
    page = text(client.get(f"{ADMIN}{anomaly.pk}/change/"))
    link = f'<a href="{ADMIN}{anomaly.pk}/false-positive/" id="false-positive-link">'
    assert link in page
    form = client.get(f"{ADMIN}{anomaly.pk}/false-positive/")
    assert '<input type="submit" name="apply" value="Mark false positive"' in text(form)
    bad = client.post(f"{ADMIN}{anomaly.pk}/false-positive/", {"apply": "1", "mute_days": "0", "mute_reason": "x"})
    assert bad.status_code == 200 and "a mute lasts 1 to 365 days, not 0" in text(bad)
    done = client.post(
        f"{ADMIN}{anomaly.pk}/false-positive/",
        {"apply": "Mark false positive", "mute_days": "", "mute_reason": "", "add_known_place": "on"},
    )
    assert done.status_code == 302 and done["Location"] == f"{ADMIN}{anomaly.pk}/change/"
    assert refreshed(anomaly).status == FP and not Mute.objects.exists()
    assert UserLocation.objects.get(user_id=9).location == "Oslo, NO"
    closed = text(client.get(f"{ADMIN}{anomaly.pk}/change/"))
    assert "false-positive-link" not in closed, "a false positive is not marked again"


# --- one anomaly ------------------------------------------------------------------------
def test_the_change_form_triages_through_the_service(client: Client, ana: User) -> None:
    bob = analyst_create("bob")
    staff_create("outsider")  # staff, but may not triage: not offered as an assignee
    anomaly = anomaly_create(description="12 logins in 60 s, threshold 10")
    url = f"{ADMIN}{anomaly.pk}/change/"
    page = text(client.get(url))
    status_options = re.findall(r'<option value="(\w+)"', page[page.index('name="status"') :].split("</select>")[0])
    assert status_options == ["new", "acknowledged", "resolved", "false_positive"]
    assignees = page[page.index('name="assigned_to"') :].split("</select>")[0]
    assert ">bob<" in assignees and ">ana<" in assignees and "outsider" not in assignees

    response = client.post(url, {"status": ACK, "assigned_to": bob.pk, "triage_notes": "on it"})
    assert response.status_code == 302, text(response)[:2000]
    anomaly = refreshed(anomaly)
    assert (anomaly.status, anomaly.assigned_to, anomaly.triage_notes, anomaly.triaged_by) == (ACK, bob, "on it", ana)
    assert history(anomaly) == ["status: new → acknowledged; assigned to: nobody → bob; notes changed (admin)"]
    assert anomaly.description == "12 logins in 60 s, threshold 10", "the finding itself is read-only"


def test_a_refused_change_is_an_error_and_saves_nothing(client: Client, ana: User) -> None:
    anomaly = anomaly_create(status=RESOLVED, triage_notes="done")
    url = f"{ADMIN}{anomaly.pk}/change/"
    response = client.post(url, {"status": RESOLVED, "assigned_to": ana.pk, "triage_notes": "more"}, follow=True)
    assert response.redirect_chain == [(url, 302)]
    assert shown_messages(response) == [
        ("error", "Nothing was saved: resolved: reopen it (acknowledge) before assigning it.")
    ]
    anomaly = refreshed(anomaly)
    assert (anomaly.assigned_to, anomaly.triage_notes) == (None, "done")
    assert history(anomaly) == []


def test_the_evidence_reads_as_sentences_and_links_each_event(client: Client, ana: User) -> None:
    late = signal_create(user_id=42, signal_type="login", timestamp=T0 + 59_500)
    early = signal_create(user_id=42, signal_type="login", timestamp=T0)
    middle = signal_create(user_id=42, signal_type="login", timestamp=T0 + 30_000)
    gone = str(uuid.uuid4())
    anomaly = anomaly_create(
        anomaly_type="high_frequency_login",
        episode_start_ms=T0,
        episode_end_ms=T0 + 59_500,
        evidence=counting_evidence(str(late.event_id), gone, str(early.event_id), str(middle.event_id)),
        original_signal_data={"user_id": 42, "type": "login"},
    )
    response = client.get(f"{ADMIN}{anomaly.pk}/change/")
    page = text(response)
    assert "more than 10 logins within 60 s (threshold 10, window 60 s, comparison >, severity medium)" in page
    assert "2026-03-01 10:00:00.000 UTC to 2026-03-01 10:00:59.500 UTC" in page
    assert "12 logins within 60 s, where the rule allows at most 10" in page
    table = page[page.index('id="evidence-events"') :].split("</table>")[0]
    links = re.findall(r'href="/admin/signals_app/signal/(\d+)/change/"', table)
    assert links == [str(early.pk), str(middle.pk), str(late.pk)], "in event-time order"
    assert table.index(str(late.event_id)) < table.index(gone), "an event no longer stored is listed last"
    assert "not stored (any more)" in table
    raw = page[page.index("Raw") :]
    assert "collapse" in page[: page.index("Evidence (JSON)")].rsplit("<fieldset", 1)[-1]
    assert '"event_ids"' in raw and '"type": "login"' in raw
    signal_page = client.get(f"/admin/signals_app/signal/{early.pk}/change/")
    assert signal_page.status_code == 200, "an analyst may open the evidence's signals"
    assert str(early.event_id) in text(signal_page)


def test_evidence_in_words_for_every_rule() -> None:
    words = {name: (rule_in_words(rule), value_in_words(rule, 7, "x")) for name, rule in DEFAULT_RULES.items()}
    assert words["high_frequency_login"][0] == "more than 10 logins within 60 s"
    assert words["repeated_login_failures"] == (
        "at least 3 failed logins in a row, each within 900 s of the latest",
        "7 failed logins in a row, where the rule allows at most 2",
    )
    assert words["rapid_successive_purchases"][1] == "7 purchases within 3600 s, where the rule allows at most 4"
    assert value_in_words(DEFAULT_RULES["high_value_purchase"], 1000.01) == (
        "a purchase of 1000.01, where the rule allows at most 1000"
    )
    assert words["unusual_time_activity"][0] == "any event in the quiet hours, 02:00-04:59 UTC"
    assert words["unusual_location_login"][1] == "successful login from x, never seen for this user"


def test_history_shows_the_services_lines(client: Client, ana: User) -> None:
    anomaly = anomaly_create()
    act(client, "acknowledge", [anomaly])
    act(client, "resolve", [anomaly])
    page = text(client.get(f"{ADMIN}{anomaly.pk}/history/"))
    assert "status: new → acknowledged; assigned to: nobody → ana (admin)" in page
    assert "status: acknowledged → resolved (admin)" in page
    assert len(history(anomaly)) == 2, "one line per change, not Django's as well"


# --- filters and search -----------------------------------------------------------------
def test_filters_mine_unassigned_and_suppressed_by_default_hidden(client: Client, ana: User) -> None:
    bob = analyst_create("bob")
    mine, bobs, nobodys = anomaly_create(assigned_to=ana), anomaly_create(assigned_to=bob), anomaly_create()
    mute = mute_add(user_id=5, anomaly_type="high_value_purchase", days=3, reason="test account", by=ana)
    muted = anomaly_create(user_id=5, suppressed=True, suppressed_by=mute)
    assert sorted(listed(client)) == sorted([mine.pk, bobs.pk, nobodys.pk]), "suppressed ones are not shown"
    assert listed(client, "?assignee=mine") == [mine.pk]
    assert listed(client, "?assignee=unassigned") == [nobodys.pk]
    assert listed(client, "?suppressed=yes") == [muted.pk]
    assert sorted(listed(client, "?suppressed=all")) == sorted([mine.pk, bobs.pk, nobodys.pk, muted.pk])
    assert sorted(listed(client, "?suppressed=no")) == sorted(listed(client))
    page = text(client.get(ADMIN))
    assert "suppressed by a mute (default: no)" in page and "?suppressed=all" in page
    assert client.get(ADMIN + "?suppressed=maybe").status_code == 302, "a value it does not know is refused"
    muted_page = text(client.get(f"{ADMIN}{muted.pk}/change/"))
    assert f'held back by <a href="/admin/anomalies_app/mute/{mute.pk}/change/">' in muted_page


def test_filters_by_status_severity_rule_and_day(client: Client, ana: User) -> None:
    high = anomaly_create(severity="high", anomaly_type="repeated_login_failures")
    low = anomaly_create(severity="low", status=ACK, anomaly_type="unusual_time_activity")
    assert listed(client, "?severity__exact=high") == [high.pk]
    assert listed(client, "?status__exact=acknowledged") == [low.pk]
    assert listed(client, "?anomaly_type__exact=unusual_time_activity") == [low.pk]
    today = timezone.now()
    assert len(listed(client, f"?detection_timestamp__year={today.year}")) == 2
    assert listed(client, f"?detection_timestamp__year={today.year - 1}") == []


def test_search_by_user_id_and_by_event_id_each_on_an_index(client: Client, ana: User) -> None:
    event = str(uuid.uuid4())
    user_42 = anomaly_create(user_id=42, evidence=counting_evidence(event, str(uuid.uuid4())))
    user_421 = anomaly_create(user_id=421, evidence=counting_evidence(str(uuid.uuid4())))
    assert listed(client, "?q=42") == [user_42.pk], "a user id is exact"
    assert listed(client, "?q=421") == [user_421.pk]
    assert listed(client, f"?q={event.upper()}") == [user_42.pk], "an event id finds the evidence that holds it"
    with CaptureQueriesContext(connection) as queries:
        response = client.get(ADMIN + "?q=lisbon")
    assert listed(client, "?q=lisbon") == []
    assert ("warning", "Search takes a user id or an event id (a UUID).") in shown_messages(response)
    sql = " ".join(query["sql"] for query in queries.captured_queries)
    assert "LIKE" not in sql and "::text" not in sql, "no term makes a substring scan"

    plan = explain_without_seqscan(Anomaly.objects.filter(evidence__event_ids__contains=[event]))
    assert "idx_anomalies_event_ids" in plan, plan


def test_the_signal_list_searches_on_its_indexes(client: Client, ana: User) -> None:
    signal = signal_create(user_id=77)
    signal_create(user_id=770)
    with CaptureQueriesContext(connection) as queries:
        by_user = text(client.get("/admin/signals_app/signal/?q=77"))
    assert f"/admin/signals_app/signal/{signal.pk}/change/" in by_user and by_user.count("/change/") == 1
    assert not any("::text" in query["sql"] for query in queries.captured_queries)
    by_event = text(client.get(f"/admin/signals_app/signal/?q={signal.event_id}"))
    assert f"/admin/signals_app/signal/{signal.pk}/change/" in by_event


@pytest.mark.parametrize(
    "path",
    [
        "/admin/signals_app/signal/",
        "/admin/signals_app/signal/?type__exact=login",
        "/admin/signals_app/signal/?q=77",
        f"{ADMIN}",
        f"{ADMIN}?status__exact=new&severity__exact=high",
        "/admin/anomalies_app/userlocation/",
    ],
)
def test_large_lists_count_no_more_than_they_show(
    client: Client, ana: User, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("signals_app.paging.COUNT_CAP", 3)
    for at in range(5):
        signal_create(user_id=77, signal_type="login", timestamp=T0 + at)
        anomaly_create(user_id=77, severity="high")
        UserLocation.objects.create(user_id=77, location=f"place {at}", first_seen_ms=T0, first_event_id=uuid.uuid4())
    with CaptureQueriesContext(connection) as queries:
        page = text(client.get(path))
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts, "the paginator counted something"
    assert all("LIMIT 4" in sql for sql in counts), counts
    assert "more than 3 " in page, "past the cap the list says so"


def explain_without_seqscan(queryset: Any) -> str:
    """The plan PostgreSQL picks when a sequential scan is the last resort (the test tables
    are too small for it to prefer an index on its own)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        return str(queryset.explain())


# --- the user page ----------------------------------------------------------------------
def test_the_user_page_shows_what_there_is_to_know(client: Client, ana: User) -> None:
    bob = analyst_create("bob")
    open_one = anomaly_create(user_id=42, severity="high", description="12 logins in 60 s, threshold 10")
    closed = anomaly_create(user_id=42, status=RESOLVED)
    mute = mute_add(user_id=42, anomaly_type="high_value_purchase", days=3, reason="test account", by=ana)
    muted = anomaly_create(user_id=42, suppressed=True, suppressed_by=mute)
    ended = mute_add(user_id=42, anomaly_type="high_frequency_login", days=3, reason="over and done", by=ana)
    Mute.objects.filter(pk=ended.pk).update(ended_at=timezone.now())
    anomaly_create(user_id=43)
    UserLocation.objects.create(user_id=42, location="Berlin, DE", first_seen_ms=T0, first_event_id=uuid.uuid4())
    known_place_add(user_id=42, location="Lisbon, PT", by=bob, note="moving there")
    signals = [signal_create(user_id=42, timestamp=T0 + i * 1000) for i in range(105)]
    signal_create(user_id=43, timestamp=T0 + 999_999)

    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"{ADMIN}user/42/")
    assert response.status_code == 200
    page = text(response)
    assert "User 42" in page and "15 of 100 (low)" in page, "the risk score: a high anomaly and a medium one"
    opened = page[page.index('id="open-anomalies"') : page.index('id="mutes"')]
    assert f'name="_selected_action" value="{open_one.pk}"' in opened
    assert f"#{closed.pk}<" not in opened and f"#{muted.pk}<" not in opened
    assert '<option value="acknowledge">' in opened and '<option value="mark_false_positive">' in opened
    mutes = page[page.index('id="mutes"') : page.index('id="known-places"')]
    assert "high_value_purchase" in mutes and "test account" in mutes and "over and done" not in mutes
    assert f'name="mute_end" value="{mute.pk}"' in mutes
    places = page[page.index('id="known-places"') : page.index('id="signals"')]
    assert "Berlin, DE" in places and "2026-03-01 10:00:00 UTC" in places
    assert "Lisbon, PT" in places and "none yet" in places and "by bob" in places and "moving there" in places
    table = page[page.index('id="user-signals"') :].split("</table>")[0]
    shown = [int(pk) for pk in re.findall(r'href="/admin/signals_app/signal/(\d+)/change/"', table)]
    assert shown == [s.pk for s in reversed(signals[5:])], "the latest 100, newest first"

    signal_sql = [q["sql"] for q in queries.captured_queries if 'FROM "signals"' in q["sql"]]
    assert len(signal_sql) == 1 and "COUNT" not in signal_sql[0].upper() and "LIMIT 100" in signal_sql[0]
    plan = explain_without_seqscan(Signal.objects.filter(user_id=42).order_by("-timestamp", "-id")[:100])
    # Each day's partition has its own copy of idx_signals_user_time, named after its columns.
    assert "_user_id_timestamp_idx" in plan, plan


def test_the_list_and_each_anomaly_lead_to_the_user_page(client: Client, ana: User) -> None:
    anomaly = anomaly_create(user_id=42)
    assert f'href="{ADMIN}user/42/"' in text(client.get(ADMIN))
    assert f'<a href="{ADMIN}user/42/" id="user-page-link">' in text(client.get(f"{ADMIN}{anomaly.pk}/change/"))


def test_the_user_page_runs_the_lists_actions_and_comes_back(client: Client, ana: User) -> None:
    first, second = anomaly_create(user_id=42), anomaly_create(user_id=42, anomaly_type="unusual_time_activity")
    someone_else = anomaly_create(user_id=43)
    url = f"{ADMIN}user/42/"
    response = act(client, "acknowledge", [first, someone_else], url=url)
    assert response.redirect_chain == [(url, 302)]
    assert shown_messages(response) == [("success", "1 changed.")], "only this user's anomalies"
    assert refreshed(first).status == ACK and refreshed(someone_else).status == NEW

    form = act(client, "mark_false_positive", [second], url=url)
    assert '<input type="submit" name="apply" value="Mark false positive"' in text(form)
    done = act(client, "mark_false_positive", [second], url=url, apply="1", mute_days="30", mute_reason="night shift")
    assert done.redirect_chain == [(url, 302)]
    assert refreshed(second).status == FP
    assert Mute.objects.active().get().reason == "night shift"


def test_the_user_page_adds_and_ends_mutes_and_adds_places(client: Client, ana: User) -> None:
    url = f"{ADMIN}user/42/"
    bad = client.post(url, {"mute_add": "Mute", "anomaly_type": "high_value_purchase", "days": "0", "reason": "r"})
    assert bad.status_code == 200 and "a mute lasts 1 to 365 days, not 0" in text(bad)
    assert not Mute.objects.exists()
    response = client.post(
        url, {"mute_add": "Mute", "anomaly_type": "high_value_purchase", "days": "5", "reason": "test account"}
    )
    assert response.status_code == 302 and response["Location"] == url
    mute = Mute.objects.get()
    assert (mute.user_id, mute.created_by, mute.reason) == (42, ana, "test account")
    assert history(mute) == ["muted for 5 days: test account (admin)"]

    ended = client.post(url, {"mute_end": str(mute.pk)}, follow=True)
    assert ("success", f"Ended: {mute}.") in shown_messages(ended)
    mute.refresh_from_db()
    assert mute.ended_by == ana and not mute.active
    again = client.post(url, {"mute_end": str(mute.pk)}, follow=True)
    assert ("error", f"Mute {mute.pk}: ended already.") in shown_messages(again)
    assert client.post(f"{ADMIN}user/43/", {"mute_end": str(mute.pk)}).status_code == 404, "another user's mute"

    placed = client.post(url, {"known_place_add": "1", "location": "Lisbon, PT", "note": "moving"}, follow=True)
    assert ("success", "Known place added: Lisbon, PT.") in shown_messages(placed)
    twice = client.post(url, {"known_place_add": "1", "location": "Lisbon, PT", "note": ""})
    assert twice.status_code == 200 and "Lisbon, PT is a known place of user 42 already" in text(twice)
    place = UserLocation.objects.get(user_id=42)
    assert (place.added_by, place.note) == (ana, "moving")


# --- mutes and known places -------------------------------------------------------------
def test_mutes_are_added_listed_filtered_and_ended_never_deleted(client: Client, ana: User) -> None:
    url = "/admin/anomalies_app/mute/"
    bad = client.post(url + "add/", {"user_id": "42", "anomaly_type": "high_value_purchase", "days": "5"})
    assert bad.status_code == 200 and "This field is required." in text(bad)
    added = client.post(
        url + "add/", {"user_id": "42", "anomaly_type": "high_value_purchase", "days": "5", "reason": "test"}
    )
    assert added.status_code == 302
    mute = Mute.objects.get()
    assert (mute.user_id, mute.created_by) == (42, ana)
    assert history(mute) == ["muted for 5 days: test (admin)"], "one line, the service's"
    other = mute_add(user_id=43, anomaly_type="high_frequency_login", days=1, reason="other", by=ana)

    page = text(client.get(url))
    assert f'href="{ADMIN}user/42/"' in page and "active" in page
    assert 'value="delete_selected"' not in page and 'value="end_now"' in page
    assert f"/admin/anomalies_app/mute/{other.pk}/change/" not in text(client.get(url + "?q=42"))

    change = text(client.get(f"{url}{mute.pk}/change/"))
    assert f'<a href="{url}{mute.pk}/end/" id="end-mute-link">' in change and 'name="_save"' not in change
    confirm = client.get(f"{url}{mute.pk}/end/")
    assert 'value="End now"' in text(confirm)
    assert client.post(f"{url}{mute.pk}/end/").status_code == 302
    mute.refresh_from_db()
    assert mute.ended_by == ana
    assert "ended" in text(client.get(f"{url}?active=no")) and str(other.pk) in text(client.get(f"{url}?active=yes"))

    response = act(client, "end_now", [mute, other], url=url)
    assert shown_messages(response) == [("warning", f"1 ended, 1 left as they were (mute {mute.pk}: ended already).")]
    assert client.post(f"{url}{other.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.post(f"{url}{other.pk}/change/", {"reason": "edited"}).status_code == 403
    assert Mute.objects.count() == 2 and Mute.objects.get(pk=other.pk).reason == "other"
    assert "ended early (admin)" in text(client.get(f"{url}{mute.pk}/history/"))


def test_known_places_are_added_by_hand_and_read_only(client: Client, ana: User) -> None:
    url = "/admin/anomalies_app/userlocation/"
    seen = UserLocation.objects.create(user_id=42, location="Berlin, DE", first_seen_ms=T0, first_event_id=uuid.uuid4())
    added = client.post(url + "add/", {"user_id": "42", "location": "Lisbon, PT", "note": "moving"})
    assert added.status_code == 302
    place = UserLocation.objects.get(location="Lisbon, PT")
    assert (place.added_by, place.first_seen_ms) == (ana, None)
    assert history(place) == ["added by hand as a known place (admin)"]
    twice = client.post(url + "add/", {"user_id": "42", "location": "Lisbon, PT"})
    assert twice.status_code == 200 and "Lisbon, PT is a known place of user 42 already" in text(twice)

    page = text(client.get(url + "?q=42"))
    assert "Berlin, DE" in page and "Lisbon, PT" in page and "by ana" in page
    assert "Lisbon, PT" not in text(client.get(url + "?source=login"))
    change = text(client.get(f"{url}{seen.pk}/change/"))
    assert 'name="_save"' not in change and 'name="location"' not in change
    assert client.post(f"{url}{seen.pk}/change/", {"location": "Paris, FR"}).status_code == 403
    assert client.post(f"{url}{seen.pk}/delete/", {"post": "yes"}).status_code == 403
    seen.refresh_from_db()
    assert seen.location == "Berlin, DE"


# --- roles ------------------------------------------------------------------------------
def test_analysts_triage_but_do_not_edit_rules(client: Client, ana: User) -> None:
    rule = Rule.objects.get(anomaly_type="high_value_purchase")
    assert client.get("/admin/anomalies_app/rule/").status_code == 200
    assert client.get(f"/admin/anomalies_app/rule/{rule.pk}/change/").status_code == 200
    form = {"enabled": "on", "threshold": "5", "window_seconds": "0", "severity": "low"}
    assert client.post(f"/admin/anomalies_app/rule/{rule.pk}/change/", form).status_code == 403
    rule.refresh_from_db()
    assert rule.threshold == 1000

    editor = staff_create("eddie", "rule editors")
    client.force_login(editor)
    assert client.post(f"/admin/anomalies_app/rule/{rule.pk}/change/", form).status_code == 302
    rule.refresh_from_db()
    assert rule.threshold == 5
    anomaly = anomaly_create()
    act(client, "acknowledge", [anomaly])
    assert refreshed(anomaly).status == ACK, "a rule editor triages too"


def test_staff_in_neither_group_sees_no_anomaly(client: Client) -> None:
    anomaly = anomaly_create(user_id=42)
    client.force_login(staff_create("visitor"))
    index = text(client.get("/admin/"))
    assert "/admin/anomalies_app/" not in index
    for url in [ADMIN, f"{ADMIN}{anomaly.pk}/change/", f"{ADMIN}user/42/", f"{ADMIN}{anomaly.pk}/false-positive/"]:
        assert client.get(url).status_code == 403, url
    assert act(client, "acknowledge", [anomaly]).status_code == 403
    assert client.get("/admin/anomalies_app/mute/").status_code == 403
    assert refreshed(anomaly).status == NEW


def test_who_may_only_look_sees_the_user_page_without_its_forms(client: Client) -> None:
    viewer = staff_create("viewer")
    viewer.user_permissions.add(*_permissions("view_anomaly"))
    client.force_login(User.objects.get(pk=viewer.pk))
    anomaly = anomaly_create(user_id=42)
    page = text(client.get(f"{ADMIN}user/42/"))
    assert f"#{anomaly.pk}<" in page
    assert "_selected_action" not in page and 'name="mute_add"' not in page and "known_place_add" not in page
    assert client.post(f"{ADMIN}user/42/", {"mute_add": "1"}).status_code == 403
    change = text(client.get(f"{ADMIN}{anomaly.pk}/change/"))
    assert "false-positive-link" not in change and 'name="status"' not in change
    assert 'value="acknowledge"' not in text(client.get(ADMIN)), "no triage actions"


def _permissions(*codenames: str) -> QuerySet[Permission]:
    return Permission.objects.filter(content_type__app_label="anomalies_app", codename__in=codenames)


def test_the_signal_list_is_newest_event_first_on_the_primary_key(client: Client, ana: User) -> None:
    """Not by id: `signals` has no btree index on id (it is partitioned by event time), so
    that order would read every partition."""
    for at in range(3):
        signal_create(timestamp=T0 + at)
    for asked, order in (("", "DESC"), ("?o=0", "DESC"), ("?o=1.-0", "DESC"), ("?o=3", "ASC")):
        with CaptureQueriesContext(connection) as queries:
            assert client.get(f"/admin/signals_app/signal/{asked}").status_code == 200
        listing = [
            q["sql"] for q in queries.captured_queries if 'FROM "signals"' in q["sql"] and "ORDER BY" in q["sql"]
        ]
        expected = f'ORDER BY "signals"."timestamp" {order}, "signals"."id" {order}'
        assert listing and all(sql.endswith(expected) or f"{expected} LIMIT" in sql for sql in listing), (
            asked,
            listing,
        )
