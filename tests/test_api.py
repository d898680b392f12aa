"""The query API through HTTP, as a client uses it (docs/design.md, "Query API"), on real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, Permission, User
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from anomalies_app.models import Anomaly, Mute, UserLocation
from signals_app.models import Signal
from tests.conftest import REPO, free_port, wait_for
from tests.factories import anomaly_create, dead_letter_create, signal_create

pytestmark = pytest.mark.django_db

T0 = 1_700_000_000_000  # a fixed event time (ms) for the list tests

PROTECTED = [
    "/signals",
    "/anomalies",
    "/users/42/signals",
    "/users/42/anomalies",
    "/users/42/risk",
    "/metrics",
    "/metrics?hours=1",
]


def get(api: APIClient, url: str, **params: Any) -> Any:
    response = api.get(url, params)
    assert response.status_code == 200, response.content
    return response.json()


def ids(body: dict[str, Any]) -> list[int]:
    return [row["id"] for row in body["results"]]


def walk(api: APIClient, url: str, key: str = "next") -> list[list[int]]:
    """Follow `key` links from `url` to the end; the ids of each page."""
    pages = []
    next_url: str | None = url
    while next_url:
        body = get(api, next_url)
        pages.append(ids(body))
        next_url = body[key]
        assert len(pages) < 1000, "the links never end"
    return pages


# --- authentication --------------------------------------------------------------------
@pytest.mark.parametrize("url", PROTECTED)
def test_every_endpoint_but_health_and_docs_needs_credentials(url: str) -> None:
    response = APIClient().get(url)
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize("url", PROTECTED)
def test_a_token_opens_every_endpoint(api: APIClient, url: str) -> None:
    assert api.get(url).status_code == 200


def test_a_wrong_token_is_401() -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    response = client.get("/signals")
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token."}


def test_a_deleted_token_or_an_inactive_user_is_refused_at_once(api: APIClient, user: User) -> None:
    assert api.get("/signals").status_code == 200
    user.is_active = False
    user.save()
    response = api.get("/signals")
    assert (response.status_code, response.json()) == (401, {"detail": "User inactive or deleted."})
    user.is_active = True
    user.save()
    Token.objects.filter(user=user).delete()
    response = api.get("/signals")
    assert (response.status_code, response.json()) == (401, {"detail": "Invalid token."})


def test_the_token_gives_the_request_its_user_and_token(user: User, token: str) -> None:
    from rest_framework.test import APIRequestFactory

    from api.authentication import TokenAuthentication

    request = APIRequestFactory().get("/signals", HTTP_AUTHORIZATION=f"Token {token}")
    found = TokenAuthentication().authenticate(request)
    assert found is not None
    found_user, found_token = found
    assert (found_user.pk, found_user.username, found_user.email) == (user.pk, user.username, user.email)
    assert found_user.date_joined == user.date_joined
    assert (found_token.key, found_token.user_id, found_token.created) == (token, user.pk, Token.objects.get().created)


def test_a_session_opens_the_api_too(user: User) -> None:
    client = APIClient()
    assert client.login(username="analyst", password="a-long-enough-password")
    assert client.get("/signals").status_code == 200


def test_the_drf_token_command_makes_a_working_token(user: User) -> None:
    from django.core.management import call_command

    call_command("drf_create_token", "analyst")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=user).key}")
    assert client.get("/signals").status_code == 200


@pytest.mark.parametrize("url", ["/health", "/docs", "/schema"])
def test_health_and_docs_need_no_credentials(url: str) -> None:
    assert APIClient().get(url).status_code in {200, 503}  # /health says 503 when a server is away


# --- /signals --------------------------------------------------------------------------
@pytest.fixture
def signals() -> list[Signal]:
    """Two users, every type, event times a second apart, newest last."""
    types = ["login", "purchase", "click", "api_call", "file_access"]
    return [
        signal_create(user_id=42 if n % 3 else 7, signal_type=types[n % 5], timestamp=T0 + 1000 * n) for n in range(12)
    ]


def test_signals_newest_event_first_with_every_field(api: APIClient, signals: list[Signal]) -> None:
    body = get(api, "/signals")
    assert ids(body) == [s.id for s in reversed(signals)]
    newest = body["results"][0]
    assert newest["event_id"] == str(signals[-1].event_id)
    assert (newest["user_id"], newest["type"], newest["timestamp"]) == (42, "purchase", T0 + 11_000)
    assert newest["payload"] == signals[-1].payload
    assert set(newest) == {"id", "event_id", "user_id", "type", "timestamp", "payload", "processed_at", "created_at"}
    assert "count" not in body


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"user_id": "7"}, lambda s: s.user_id == 7),
        ({"signal_type": "login"}, lambda s: s.type == "login"),
        ({"start_timestamp": T0 + 3000}, lambda s: s.timestamp >= T0 + 3000),
        ({"end_timestamp": T0 + 3000}, lambda s: s.timestamp <= T0 + 3000),
        ({"start_timestamp": T0 + 2000, "end_timestamp": T0 + 2000}, lambda s: s.timestamp == T0 + 2000),
        (
            {"user_id": "42", "signal_type": "purchase", "start_timestamp": T0 + 5000, "end_timestamp": T0 + 11_000},
            lambda s: s.user_id == 42 and s.type == "purchase" and T0 + 5000 <= s.timestamp <= T0 + 11_000,
        ),
        ({"user_id": "999"}, lambda s: False),
        ({"signal_type": ""}, lambda s: True),
    ],
)
def test_signal_filters(api: APIClient, signals: list[Signal], params: dict[str, Any], expected: Any) -> None:
    assert ids(get(api, "/signals", **params)) == [s.id for s in reversed(signals) if expected(s)]


def test_signal_ordering_on_whitelisted_fields(api: APIClient, signals: list[Signal]) -> None:
    assert ids(get(api, "/signals", ordering="timestamp")) == [s.id for s in signals]
    assert ids(get(api, "/signals", ordering="-timestamp")) == [s.id for s in reversed(signals)]
    # By id would read every daily partition: refused, with the orders there are.
    assert api.get("/signals", {"ordering": "id"}).json() == {
        "ordering": ["must be one of timestamp, -timestamp; got 'id'"]
    }


def test_user_signals(api: APIClient, signals: list[Signal]) -> None:
    assert ids(get(api, "/users/7/signals")) == [s.id for s in reversed(signals) if s.user_id == 7]
    assert ids(get(api, "/users/42/signals", signal_type="click")) == [
        s.id for s in reversed(signals) if s.user_id == 42 and s.type == "click"
    ]
    # The path names the user: a user_id in the query cannot widen it.
    assert ids(get(api, "/users/7/signals", user_id="42")) == ids(get(api, "/users/7/signals"))


def test_a_user_with_nothing_is_an_empty_list(api: APIClient, signals: list[Signal]) -> None:
    for url in ["/users/123456/signals", "/users/123456/anomalies", "/users/-1/signals"]:
        assert get(api, url) == {"next": None, "previous": None, "results": []}


# --- /anomalies and risk ---------------------------------------------------------------
@pytest.fixture
def anomalies() -> list[Anomaly]:
    now = timezone.now()
    specs = [
        (42, "high_value_purchase", "medium", "new"),
        (42, "repeated_login_failures", "high", "acknowledged"),
        (7, "unusual_time_activity", "low", "resolved"),
        (42, "unusual_location_login", "high", "false_positive"),
        (7, "high_frequency_login", "medium", "new"),
    ]
    return [
        anomaly_create(
            user_id=user_id,
            anomaly_type=anomaly_type,
            severity=severity,
            status=status,
            detection_timestamp=now - timedelta(minutes=10 * (len(specs) - n)),
        )
        for n, (user_id, anomaly_type, severity, status) in enumerate(specs)
    ]


@pytest.mark.parametrize("url", ["/signals", "/anomalies", "/users/7/signals", "/users/7/anomalies"])
def test_every_list_filter_is_optional_and_named_as_its_parameter(url: str) -> None:
    """A request naming no filter skips the filter set (api.filters.FilterBackend):
    right only while no filter is required and the form has no field of its own."""
    from django.urls import resolve

    view = resolve(url).func.view_class  # type: ignore[attr-defined]
    filterset_class = view.filterset_class
    assert not [name for name, filter_ in filterset_class.base_filters.items() if filter_.extra.get("required")]
    form_class = filterset_class(queryset=view.queryset).get_form_class()
    assert set(form_class.base_fields) == set(filterset_class.base_filters)


def test_list_rows_are_what_drf_itself_writes(api: APIClient, user: User) -> None:
    """The lists read rows as dicts, pass JSON columns through as text and write with
    orjson; the JSON must be the same as DRF's ModelSerializer and renderer give."""
    from rest_framework import serializers
    from rest_framework.renderers import JSONRenderer

    from api.serializers import AnomalySerializer, SignalSerializer

    payload = {"amount": 12.5, "note": "line\u2028break, ünïcode", "nested": {"list": [1, None, True]}}
    signal = signal_create(user_id=9001)
    Signal.objects.filter(pk=signal.pk).update(payload=payload)
    signal.refresh_from_db()
    anomaly = anomaly_create(
        user_id=9001,
        evidence={"rule": {"threshold": 10}, "event_ids": ["a", "b"], "value": 11.5},
        original_signal_data={"type": "login"},
        assigned_to=user,
        triaged_at=timezone.now(),
        triaged_by=user,
    )
    anomaly.refresh_from_db()

    class DRFSignal(serializers.ModelSerializer):  # type: ignore[type-arg]
        class Meta:
            model = Signal
            fields = SignalSerializer.Meta.fields

    class DRFAnomaly(serializers.ModelSerializer):  # type: ignore[type-arg]
        assigned_to: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
            slug_field="username", read_only=True
        )
        triaged_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
            slug_field="username", read_only=True
        )

        class Meta:
            model = Anomaly
            fields = AnomalySerializer.Meta.fields

    for url, row in (("/users/9001/signals", DRFSignal(signal)), ("/users/9001/anomalies", DRFAnomaly(anomaly))):
        response = api.get(url)
        expected = JSONRenderer().render(row.data)
        assert response.json()["results"] == [json.loads(expected)]
    assert b"\\u2028" in api.get("/users/9001/signals").content, "escaped as DRF escapes it"
    browsable = api.get("/users/9001/signals", HTTP_ACCEPT="text/html")
    assert browsable.status_code == 200 and b"&quot;nested&quot;" in browsable.content


def test_the_metrics_report_is_written_as_drfs_fields_would_write_it(api: APIClient) -> None:
    from rest_framework import serializers

    from api.selectors import pipeline_metrics
    from api.serializers import MetricsSerializer

    signal_create(user_id=5, signal_type="login")
    anomaly_create(user_id=5)
    dead_letter_create(offset=1)
    report = pipeline_metrics(hours=3, until_ms=int(time.time() * 1000))
    drfs = serializers.Serializer.to_representation(MetricsSerializer(), report)
    assert MetricsSerializer(report).data == drfs
    assert drfs["signals"]["total"] == 1 and len(drfs["by_hour"]) in {3, 4}


def test_anomalies_latest_first(api: APIClient, anomalies: list[Anomaly]) -> None:
    body = get(api, "/anomalies")
    assert ids(body) == [a.id for a in reversed(anomalies)]
    assert body["results"][0]["anomaly_type"] == "high_frequency_login"
    assert {"severity", "status", "description", "evidence", "detection_timestamp"} <= set(body["results"][0])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"severity": "high"}, lambda a: a.severity == "high"),
        ({"anomaly_type": "unusual_time_activity"}, lambda a: a.anomaly_type == "unusual_time_activity"),
        ({"status": "new"}, lambda a: a.status == "new"),
        ({"user_id": "7"}, lambda a: a.user_id == 7),
        ({"user_id": "42", "severity": "high", "status": "acknowledged"}, lambda a: a.status == "acknowledged"),
    ],
)
def test_anomaly_filters(api: APIClient, anomalies: list[Anomaly], params: dict[str, Any], expected: Any) -> None:
    assert ids(get(api, "/anomalies", **params)) == [a.id for a in reversed(anomalies) if expected(a)]


def test_anomaly_ordering(api: APIClient, anomalies: list[Anomaly]) -> None:
    assert ids(get(api, "/anomalies", ordering="detection_timestamp")) == [a.id for a in anomalies]


def test_user_anomalies(api: APIClient, anomalies: list[Anomaly]) -> None:
    assert ids(get(api, "/users/42/anomalies")) == [a.id for a in reversed(anomalies) if a.user_id == 42]
    assert ids(get(api, "/users/42/anomalies", severity="high")) == [
        a.id for a in reversed(anomalies) if a.user_id == 42 and a.severity == "high"
    ]


@pytest.fixture
def suppressed() -> list[Anomaly]:
    """Anomalies of user 42 recorded while a mute was on, between those of the `anomalies` fixture."""
    mute = Mute.objects.create(user_id=42, anomaly_type="high_value_purchase", until=timezone.now(), reason="test")
    return [
        anomaly_create(
            user_id=42,
            suppressed=True,
            suppressed_by=mute,
            status=status,
            detection_timestamp=timezone.now() - timedelta(minutes=minutes),
        )
        for minutes, status in [(25, "new"), (5, "acknowledged")]
    ]


def test_suppressed_anomalies_are_left_out_unless_asked_for(
    api: APIClient, anomalies: list[Anomaly], suppressed: list[Anomaly]
) -> None:
    shown = [a.id for a in reversed(anomalies)]
    assert ids(get(api, "/anomalies")) == shown
    assert ids(get(api, "/anomalies", suppressed="false")) == shown
    assert ids(get(api, "/anomalies", cursor="")) == shown
    assert ids(get(api, "/anomalies", suppressed="true")) == [suppressed[1].id, suppressed[0].id]
    assert ids(get(api, "/anomalies", status="new")) == [a.id for a in reversed(anomalies) if a.status == "new"]
    assert ids(get(api, "/anomalies", status="new", suppressed="true")) == [suppressed[0].id]
    assert ids(get(api, "/users/42/anomalies")) == [a.id for a in reversed(anomalies) if a.user_id == 42]
    assert ids(get(api, "/users/42/anomalies", suppressed="true")) == [suppressed[1].id, suppressed[0].id]
    assert ids(get(api, "/users/7/anomalies", suppressed="true")) == []
    rows = get(api, "/anomalies", suppressed="true")["results"]
    assert [row["suppressed"] for row in rows] == [True, True]
    assert {row["suppressed"] for row in get(api, "/anomalies")["results"]} == {False}


def test_risk_is_the_sql_functions_row(api: APIClient, anomalies: list[Anomaly], signals: list[Signal]) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM get_user_risk_score(42)")
        columns = [column.name for column in cursor.description]
        expected = dict(zip(columns, cursor.fetchone(), strict=True))
    body = get(api, "/users/42/risk")
    assert body == expected
    # high + medium (the false positive does not count): 10 + 5
    assert (body["total_anomalies"], body["risk_score"], body["risk_level"]) == (2, 15, "low")


def test_risk_of_a_user_with_nothing(api: APIClient) -> None:
    assert get(api, "/users/5/risk") == {
        "user_id": 5,
        "total_signals": 0,
        "total_anomalies": 0,
        "high_severity": 0,
        "medium_severity": 0,
        "low_severity": 0,
        "risk_score": 0,
        "risk_level": "low",
    }


# --- pagination ------------------------------------------------------------------------
@pytest.fixture
def many_signals() -> list[Signal]:
    """23 signals, several sharing an event time: the id must break the ties."""
    return [signal_create(user_id=1, timestamp=T0 + 1000 * (n // 3)) for n in range(23)]


def newest_first(rows: list[Signal]) -> list[int]:
    return [s.id for s in sorted(rows, key=lambda s: (s.timestamp, s.id), reverse=True)]


def test_page_and_size(api: APIClient, many_signals: list[Signal]) -> None:
    expected = newest_first(many_signals)
    first = get(api, "/signals", size=10)
    assert ids(first) == expected[:10]
    assert first["previous"] is None
    assert first["next"] == "http://testserver/signals?page=2&size=10"
    second = get(api, first["next"])
    assert ids(second) == expected[10:20]
    assert second["previous"] == "http://testserver/signals?size=10"
    last = get(api, second["next"])
    assert ids(last) == expected[20:]
    assert last["next"] is None
    assert last["previous"] == "http://testserver/signals?page=2&size=10"


def test_a_last_page_that_is_exactly_full_has_no_next(api: APIClient, many_signals: list[Signal]) -> None:
    body = get(api, "/signals", size=23)
    assert len(body["results"]) == 23
    assert body["next"] is None


def test_a_page_past_the_end_is_empty(api: APIClient, many_signals: list[Signal]) -> None:
    body = get(api, "/signals", size=10, page=9)
    assert body["results"] == []
    assert body["next"] is None


def test_page_mode_reaches_row_10000_and_no_further(api: APIClient, many_signals: list[Signal]) -> None:
    """No request makes PostgreSQL step over more than 10,000 rows; `cursor` goes on from there."""
    assert get(api, "/signals", size=50, page=200)["results"] == []
    assert get(api, "/signals", size=1000, page=10)["results"] == []
    for size, page in [(50, 201), (1000, 11), (1, 10_001), (3, 3334)]:
        response = api.get("/signals", {"size": size, "page": page})
        assert response.status_code == 400, (size, page)
        assert list(response.json()) == ["page"]
    assert get(api, "/signals", size=1, page=10_000)["results"] == []


def test_the_default_size_is_50_and_the_cap_1000(api: APIClient) -> None:
    Signal.objects.bulk_create(
        Signal(event_id=f"00000000-0000-0000-0000-{n:012d}", user_id=1, type="click", timestamp=T0 + n, payload={})
        for n in range(1001)
    )
    assert len(get(api, "/signals")["results"]) == 50
    capped = get(api, "/signals", size=1000)
    assert len(capped["results"]) == 1000
    assert capped["next"] is not None
    assert api.get("/signals", {"size": 1001}).json() == {
        "size": ["is capped at 1000: ask for 1000 or fewer rows per page"]
    }


@pytest.mark.parametrize("ordering", ["-timestamp", "timestamp"])
def test_a_cursor_walk_gives_each_row_once_both_ways(api: APIClient, many_signals: list[Signal], ordering: str) -> None:
    forward = walk(api, f"/signals?cursor=&size=5&ordering={ordering}")
    assert [len(page) for page in forward] == [5, 5, 5, 5, 3]
    walked = [row for page in forward for row in page]
    expected = newest_first(many_signals)
    if ordering == "timestamp":
        expected.reverse()
    assert walked == expected
    # From the last page back to the first, by the `previous` links.
    last = get(api, f"/signals?cursor=&size=5&ordering={ordering}")
    while last["next"]:
        last = get(api, last["next"])
    assert walk(api, last["previous"], key="previous") == list(reversed(forward[:-1]))


def test_lists_never_count_and_cursor_pages_never_offset(api: APIClient, many_signals: list[Signal]) -> None:
    with CaptureQueriesContext(connection) as pages:
        body = get(api, "/signals", size=5, page=3)
        get(api, "/anomalies", size=5)
    with CaptureQueriesContext(connection) as cursors:
        assert len(walk(api, "/signals?cursor=&size=5")) == 5
    page_reads = [query["sql"].upper() for query in pages.captured_queries]
    cursor_reads = [query["sql"].upper() for query in cursors.captured_queries]
    assert not [sql for sql in page_reads + cursor_reads if "COUNT(" in sql]
    assert any("OFFSET 10" in sql for sql in page_reads), "page 3 of 5 skips 10 rows"
    assert not [sql for sql in cursor_reads if "OFFSET" in sql]
    assert len(body["results"]) == 5


def test_cursor_pages_follow_the_filters(api: APIClient, signals: list[Signal]) -> None:
    pages = walk(api, "/signals?cursor=&size=2&user_id=42&signal_type=click")
    assert [row for page in pages for row in page] == [
        s.id for s in reversed(signals) if s.user_id == 42 and s.type == "click"
    ]


def test_cursor_walk_of_anomalies_and_of_a_user(api: APIClient, anomalies: list[Anomaly]) -> None:
    pages = walk(api, "/anomalies?cursor=&size=2")
    assert [row for page in pages for row in page] == [a.id for a in reversed(anomalies)]
    pages = walk(api, "/users/7/anomalies?cursor=&size=1")
    assert [row for page in pages for row in page] == [a.id for a in reversed(anomalies) if a.user_id == 7]


def test_rows_added_while_walking_do_not_shift_a_cursor_walk(api: APIClient, many_signals: list[Signal]) -> None:
    first = get(api, "/signals", cursor="", size=10)
    signal_create(user_id=1, timestamp=T0 + 100_000)  # newer than everything: before the cursor
    rest = walk(api, first["next"])
    assert ids(first) + [row for page in rest for row in page] == newest_first(many_signals)


# --- errors ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "field", "reason"),
    [
        ("/signals?user_id=abc", "user_id", "must be a whole number"),
        ("/signals?user_id=1.5", "user_id", "must be a whole number"),
        ("/signals?user_id=9223372036854775808", "user_id", "must be at most 9223372036854775807"),
        ("/signals?size=0", "size", "must be at least 1"),
        ("/signals?size=100000", "size", "is capped at 1000: ask for 1000 or fewer rows per page"),
        ("/signals?size=ten", "size", "must be a whole number"),
        ("/signals?page=0", "page", "must be at least 1 (the first page is 1)"),
        ("/signals?page=x", "page", "must be a whole number"),
        (
            "/signals?page=201",
            "page",
            "must be at most 200 with size 50: page x size is capped at 10,000 rows; read further with `cursor`",
        ),
        (
            "/anomalies?page=1000000000000&size=1000",
            "page",
            "must be at most 10 with size 1000: page x size is capped at 10,000 rows; read further with `cursor`",
        ),
        (
            "/signals?signal_type=logon",
            "signal_type",
            "Select a valid choice. logon is not one of the available choices.",
        ),
        ("/signals?start_timestamp=yesterday", "start_timestamp", "must be a whole number"),
        ("/signals?start_timestamp=2000&end_timestamp=1000", "end_timestamp", "must not be before start_timestamp"),
        ("/signals?ordering=payload", "ordering", "must be one of timestamp, -timestamp; got 'payload'"),
        ("/signals?ordering=timestamp,id", "ordering", "must be one of"),
        ("/signals?cursor=abc", "cursor", "is not a cursor this API gave out; start again with `cursor=`"),
        ("/signals?cursor=&page=2", "cursor", "use either `page` or `cursor`, not both"),
        ("/anomalies?severity=critical", "severity", "Select a valid choice. critical is not one of"),
        ("/anomalies?anomaly_type=fraud", "anomaly_type", "Select a valid choice. fraud is not one of"),
        ("/anomalies?status=closed", "status", "Select a valid choice. closed is not one of"),
        ("/anomalies?user_id=x", "user_id", "must be a whole number"),
        ("/anomalies?suppressed=yes", "suppressed", "must be true or false"),
        ("/users/7/anomalies?suppressed=1", "suppressed", "must be true or false"),
        ("/anomalies?ordering=severity", "ordering", "must be one of detection_timestamp, -detection_timestamp"),
        ("/users/abc/signals", "user_id", "must be a whole number"),
        ("/users/abc/anomalies", "user_id", "must be a whole number"),
        ("/users/abc/risk", "user_id", "must be a whole number"),
        ("/users/99999999999999999999/risk", "user_id", "must be at most 9223372036854775807"),
        ("/users/7/signals?signal_type=nope", "signal_type", "Select a valid choice."),
        ("/metrics?hours=0", "hours", "must be one of 1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720"),
        ("/metrics?hours=5", "hours", "must be one of 1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720"),
        ("/metrics?hours=721", "hours", "must be one of 1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720"),
        ("/metrics?hours=day", "hours", "must be one of 1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(api: APIClient, url: str, field: str, reason: str) -> None:
    response = api.get(url)
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body, body
    assert any(message.startswith(reason) for message in body[field]), body


def test_a_cursor_made_for_another_ordering_is_a_400(api: APIClient, many_signals: list[Signal]) -> None:
    next_url = get(api, "/signals", cursor="", size=5)["next"]
    response = api.get(next_url + "&ordering=timestamp")
    assert response.status_code == 400
    assert response.json() == {
        "cursor": ["was made for ordering '-timestamp', not 'timestamp'; keep the ordering while paging"]
    }


def test_a_tampered_cursor_is_a_400(api: APIClient, many_signals: list[Signal]) -> None:
    next_url = get(api, "/signals", cursor="", size=5)["next"]
    assert api.get(next_url.replace("cursor=", "cursor=x")).status_code == 400


# --- /metrics --------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def metrics_computed_each_time(settings: Any) -> None:
    """The report is cached for METRICS_CACHE_SECONDS; these tests count what they just made."""
    settings.METRICS_CACHE_SECONDS = 0


def test_metrics_counts_rates_and_breakdowns(api: APIClient) -> None:
    now_ms = int(timezone.now().timestamp() * 1000)
    for n, signal_type in enumerate(["login", "login", "purchase", "click"]):
        signal_create(user_id=10 + (n % 2), signal_type=signal_type, timestamp=now_ms - 60_000 * (n + 1))
    signal_create(user_id=11, signal_type="click", timestamp=now_ms - 3 * 3_600_000 - 60_000)  # 3 h ago
    signal_create(user_id=12, signal_type="click", timestamp=now_ms - 30 * 3_600_000)  # outside 24 h
    anomaly_create(user_id=11, severity="high", anomaly_type="repeated_login_failures")
    anomaly_create(user_id=11, severity="low", anomaly_type="unusual_time_activity", status="resolved")
    anomaly_create(user_id=10, detection_timestamp=timezone.now() - timedelta(hours=2, minutes=30))
    anomaly_create(user_id=13, detection_timestamp=timezone.now() - timedelta(days=2))  # outside 24 h
    dead_letter_create(offset=1)
    dead_letter_create(offset=2, received_at=timezone.now() - timedelta(days=3))

    body = get(api, "/metrics")
    assert body["hours"] == 24
    assert body["signals"]["total"] == 5
    assert body["signals"]["by_type"] == {"login": 2, "purchase": 1, "click": 2, "api_call": 0, "file_access": 0}
    anomalies = body["anomalies"]
    assert anomalies["total"] == 3
    assert anomalies["by_severity"] == {"low": 1, "medium": 1, "high": 1}
    assert anomalies["by_status"] == {"new": 2, "acknowledged": 0, "resolved": 1, "false_positive": 0}
    assert anomalies["by_type"]["repeated_login_failures"] == 1
    assert anomalies["by_type"]["high_frequency_login"] == 0
    assert anomalies["per_hour"] == 0.125  # 3 in 24 hours
    assert anomalies["per_1000_signals"] == 600.0
    assert body["dead_letters"] == {"total": 1, "per_hour": 0.042}  # 1 in 24 hours, to three places
    assert len(body["by_hour"]) in {24, 25}  # every clock hour the period touches
    assert sum(hour["signals"] for hour in body["by_hour"]) == 5
    assert sum(hour["anomalies"] for hour in body["by_hour"]) == 3
    assert body["by_hour"][-1]["dead_letters"] == 1
    assert body["by_hour"][0]["hour"] < body["by_hour"][-1]["hour"]
    assert body["top_users"]["by_signals"] == [{"user_id": 11, "signals": 3}, {"user_id": 10, "signals": 2}]
    assert body["top_users"]["by_anomalies"] == [{"user_id": 11, "anomalies": 2}, {"user_id": 10, "anomalies": 1}]

    two_hours = get(api, "/metrics", hours=2)
    assert (two_hours["signals"]["total"], two_hours["anomalies"]["total"]) == (4, 2)
    assert get(api, "/metrics", hours=720)["signals"]["total"] == 6


def test_metrics_rates_are_the_counts_over_the_length_of_the_period(api: APIClient) -> None:
    now = timezone.now()
    now_ms = int(now.timestamp() * 1000)
    # 7,200 signals, 4 a second over the last half hour (well inside the last hour, however
    # long making them takes); 30 anomalies and 3 dead letters in the same half hour.
    Signal.objects.bulk_create(
        Signal(event_id=uuid.uuid4(), user_id=1, type="click", timestamp=now_ms - 1000 - 250 * n, payload={})
        for n in range(7200)
    )
    for n in range(30):
        anomaly_create(user_id=1, detection_timestamp=now - timedelta(minutes=1 + n // 2))
    for offset in range(3):
        dead_letter_create(offset=offset, received_at=now - timedelta(minutes=5))

    def rates(hours: int) -> tuple[float, float, float, float]:
        """Signals per second, anomalies per hour and per 1,000 signals, dead letters per hour."""
        body = get(api, "/metrics", hours=hours)
        anomalies = body["anomalies"]
        return (
            body["signals"]["per_second"],
            anomalies["per_hour"],
            anomalies["per_1000_signals"],
            body["dead_letters"]["per_hour"],
        )

    assert rates(1) == (2.0, 30.0, 4.167, 3.0)
    assert rates(2) == (1.0, 15.0, 4.167, 1.5)
    assert rates(24) == (0.083, 1.25, 4.167, 0.125)


def test_a_report_is_computed_once_per_cache_period_for_every_process(api: APIClient, settings: Any) -> None:
    settings.METRICS_CACHE_SECONDS = 30
    cache.delete("metrics-report:3")
    now_ms = int(timezone.now().timestamp() * 1000)
    signal_create(user_id=1, signal_type="click", timestamp=now_ms - 60_000)
    first = get(api, "/metrics", hours=3)
    signal_create(user_id=1, signal_type="click", timestamp=now_ms - 30_000)
    again = get(api, "/metrics", hours=3)
    assert again == first, "the same report, `until` included, within the cache period"
    assert first["signals"]["total"] == 1
    assert get(api, "/metrics", hours=2)["signals"]["total"] == 2, "each period its own report"
    cache.delete("metrics-report:3")
    assert get(api, "/metrics", hours=3)["signals"]["total"] == 2, "recomputed once the period is over"
    cache.delete("metrics-report:2")


def test_metrics_leave_out_suppressed_anomalies(api: APIClient) -> None:
    mute = Mute.objects.create(user_id=20, anomaly_type="high_value_purchase", until=timezone.now(), reason="test")
    anomaly_create(user_id=21, severity="high")
    for _ in range(3):
        anomaly_create(user_id=20, severity="low", suppressed=True, suppressed_by=mute)
    anomalies = get(api, "/metrics", hours=1)["anomalies"]
    assert (anomalies["total"], anomalies["by_severity"]) == (1, {"low": 0, "medium": 0, "high": 1})
    assert anomalies["by_type"]["high_value_purchase"] == 1
    assert anomalies["by_status"]["new"] == 1
    body = get(api, "/metrics", hours=1)
    assert body["top_users"]["by_anomalies"] == [{"user_id": 21, "anomalies": 1}]
    assert sum(hour["anomalies"] for hour in body["by_hour"]) == 1


def test_metrics_of_an_empty_period(api: APIClient) -> None:
    body = get(api, "/metrics", hours=1)
    assert body["signals"]["total"] == 0
    assert body["anomalies"]["per_1000_signals"] is None
    assert body["top_users"] == {"by_signals": [], "by_anomalies": []}


# --- triage: PATCH /anomalies/{id}, POST /anomalies/triage ------------------------------
@pytest.fixture
def ana() -> User:
    """An analyst: in the analysts group, which gives the triage permission."""
    analyst = User.objects.create_user("ana", password="a-long-enough-password")
    analyst.groups.add(Group.objects.get(name="analysts"))
    return analyst


@pytest.fixture
def triage_api(ana: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=ana).key}")
    return client


# Stand-ins in parametrized bodies for ids known only once the test runs.
ANA_ID, PLAIN_USER_ID = "<ana's id>", "<the id of a user who may not triage>"


def patch(client: APIClient, anomaly_id: int | str, body: Any) -> Any:
    # json.dumps escapes what DRF's test renderer would fail to encode (a lone surrogate).
    return client.patch(f"/anomalies/{anomaly_id}", json.dumps(body), content_type="application/json")


def bulk(client: APIClient, body: Any) -> Any:
    return client.post("/anomalies/triage", json.dumps(body), content_type="application/json")


def with_ids(body: Any, **ids: int) -> Any:
    """`body` with the stand-ins ANA_ID and PLAIN_USER_ID replaced by these ids."""
    if not isinstance(body, dict):
        return body
    stand_ins = {ANA_ID: ids["ana"], PLAIN_USER_ID: ids["plain"]}
    return {key: stand_ins.get(value, value) if isinstance(value, str) else value for key, value in body.items()}


def history(anomaly: Anomaly) -> list[str]:
    return list(
        LogEntry.objects.filter(object_id=str(anomaly.pk), content_type__model="anomaly")
        .order_by("id")
        .values_list("change_message", flat=True)
    )


def test_patch_triages_an_anomaly_and_answers_it_as_the_list_shows_it(triage_api: APIClient, ana: User) -> None:
    anomaly = anomaly_create(user_id=5)
    response = patch(triage_api, anomaly.pk, {"status": "acknowledged", "triage_notes": "calling the user"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body == get(triage_api, "/users/5/anomalies")["results"][0]
    assert (body["id"], body["status"], body["triage_notes"]) == (anomaly.pk, "acknowledged", "calling the user")
    assert (body["assigned_to"], body["triaged_by"], body["suppressed"]) == ("ana", "ana", False)
    anomaly.refresh_from_db()
    assert (anomaly.status, anomaly.assigned_to, anomaly.triaged_by) == ("acknowledged", ana, ana)
    assert anomaly.triaged_at is not None and body["triaged_at"] is not None
    assert history(anomaly) == ["status: new → acknowledged; assigned to: nobody → ana; notes changed (API)"]


def test_patch_assigns_to_an_analyst_by_id_and_unassigns_with_null(triage_api: APIClient, ana: User) -> None:
    bob = User.objects.create_user("bob")
    bob.groups.add(Group.objects.get(name="analysts"))
    anomaly = anomaly_create()
    assert patch(triage_api, anomaly.pk, {"assigned_to": bob.pk}).json()["assigned_to"] == "bob"
    response = patch(triage_api, anomaly.pk, {"assigned_to": None})
    assert (response.status_code, response.json()["assigned_to"]) == (200, None)
    anomaly.refresh_from_db()
    assert (anomaly.assigned_to, anomaly.status) == (None, "new")
    assert history(anomaly) == ["assigned to: nobody → bob (API)", "assigned to: bob → nobody (API)"]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            "false_positive",
            {"status": "resolved"},
            {"status": ["false positive: reopen it (acknowledge) before marking it resolved"]},
        ),
        ("acknowledged", {"status": "acknowledged", "triage_notes": "again"}, {"status": ["already acknowledged"]}),
        ("acknowledged", {"status": "new"}, {"status": ["an anomaly someone has looked at cannot be new again"]}),
        (
            "resolved",
            {"assigned_to": ANA_ID},
            {"assigned_to": ["resolved: reopen it (acknowledge) before assigning it"]},
        ),
        ("new", {"assigned_to": None}, {"assigned_to": ["not assigned to anyone"]}),
        ("new", {"triage_notes": ""}, {"triage_notes": ["nothing to change"]}),
    ],
)
def test_a_decision_that_makes_no_sense_for_the_anomaly_is_a_409_naming_the_field(
    triage_api: APIClient, ana: User, status: str, body: dict[str, Any], expected: dict[str, list[str]]
) -> None:
    anomaly = anomaly_create(status=status)
    response = patch(triage_api, anomaly.pk, with_ids(body, ana=ana.pk, plain=0))
    assert (response.status_code, response.json()) == (409, expected)
    anomaly.refresh_from_db()
    assert (anomaly.status, anomaly.triaged_by, anomaly.triage_notes) == (status, None, ""), "nothing changed"
    assert history(anomaly) == []


def test_patch_of_no_such_anomaly_is_a_404_and_a_bad_id_a_400(triage_api: APIClient) -> None:
    missing = anomaly_create().pk + 1000
    response = patch(triage_api, missing, {"status": "acknowledged"})
    assert (response.status_code, response.json()) == (404, {"detail": f"no anomaly has the id {missing}"})
    for bad, reason in [("abc", "must be a whole number"), ("9223372036854775808", "must be at most")]:
        response = patch(triage_api, bad, {"status": "acknowledged"})
        assert response.status_code == 400
        assert response.json()["id"][0].startswith(reason)


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"status": "closed"}, "status", "must be one of new, acknowledged, resolved, false_positive; got 'closed'"),
        ({"assigned_to": 2_000_000_000}, "assigned_to", "no user has the id 2000000000"),
        ({"assigned_to": 2**62}, "assigned_to", f"no user has the id {2**62}"),
        ({"assigned_to": "ana"}, "assigned_to", "must be a whole number"),
        ({"assigned_to": "12"}, "assigned_to", "must be a whole number"),
        ({"assigned_to": True}, "assigned_to", "must be a whole number"),
        ({"assigned_to": 1.5}, "assigned_to", "must be a whole number"),
        ({"assigned_to": PLAIN_USER_ID}, "assigned_to", "analyst may not triage anomalies, so cannot be assigned one"),
        ({"triage_notes": None}, "triage_notes", "This field may not be null."),
        ({"triage_notes": "nul \x00"}, "triage_notes", "Null characters are not allowed."),
        ({"triage_notes": "\ud800"}, "triage_notes", "must be text that UTF-8 can encode"),
        ({"severity": "low", "status": "resolved"}, "severity", "is read-only"),
        ({"colour": "red"}, "colour", "is not a field of this request"),
        ({}, "non_field_errors", "give status, assigned_to, triage_notes or several of them"),
        ([1, 2], "non_field_errors", "Invalid data. Expected a dictionary, but got list."),
    ],
)
def test_a_bad_triage_request_is_a_400_naming_the_field_and_changes_nothing(
    triage_api: APIClient, user: User, body: Any, field: str, reason: str
) -> None:
    anomaly = anomaly_create()
    body = with_ids(body, ana=0, plain=user.pk)  # the `user` fixture has no triage permission
    response = patch(triage_api, anomaly.pk, body)
    assert response.status_code == 400, response.content
    assert response.json()[field][0].startswith(reason), response.json()
    if isinstance(body, dict):
        response = bulk(triage_api, {"ids": [anomaly.pk], **body})
        assert response.status_code == 400, response.content
        assert response.json()[field][0].startswith(reason), response.json()
    anomaly.refresh_from_db()
    assert (anomaly.status, anomaly.triaged_at, anomaly.triage_notes) == ("new", None, "")


def test_every_bad_field_is_named_at_once(triage_api: APIClient) -> None:
    response = patch(triage_api, anomaly_create().pk, {"status": "closed", "severity": "low", "colour": "red"})
    assert response.status_code == 400
    assert set(response.json()) == {"status", "severity", "colour"}


def test_a_triage_body_must_be_json(triage_api: APIClient) -> None:
    anomaly = anomaly_create()
    response = triage_api.patch(f"/anomalies/{anomaly.pk}", "status=resolved", content_type="text/plain")
    assert response.status_code == 415
    response = triage_api.post("/anomalies/triage", "{not json", content_type="application/json")
    assert response.status_code == 400 and "JSON parse error" in response.json()["detail"]


def test_triage_needs_the_permission_403_and_a_user_401(api: APIClient) -> None:
    """`api` is a user in no group, without the triage permission."""
    anomaly = anomaly_create()
    for client, status, detail in [
        (api, 403, "you may not triage anomalies: that takes the permission anomalies_app.triage_anomaly"),
        (APIClient(), 401, "Authentication credentials were not provided."),
    ]:
        for response in (
            patch(client, anomaly.pk, {"status": "resolved"}),
            bulk(client, {"ids": [anomaly.pk], "status": "resolved"}),
            patch(client, anomaly.pk + 1000, {"status": "resolved"}),  # no such anomaly: still 403 / 401
        ):
            assert response.status_code == status, response.content
            assert response.json()["detail"].startswith(detail)
    anomaly.refresh_from_db()
    assert (anomaly.status, history(anomaly)) == ("new", [])


def test_a_user_given_the_permission_itself_may_triage(api: APIClient, user: User) -> None:
    user.user_permissions.add(Permission.objects.get(codename="triage_anomaly"))
    anomaly = anomaly_create()
    assert patch(api, anomaly.pk, {"status": "resolved"}).status_code == 200


def test_bulk_triage_changes_what_it_can_and_names_every_refusal(triage_api: APIClient, ana: User) -> None:
    fresh, seen, closed = (
        anomaly_create(),
        anomaly_create(status="acknowledged"),
        anomaly_create(status="false_positive"),
    )
    missing = closed.pk + 1000
    ids = [closed.pk, fresh.pk, missing, seen.pk, fresh.pk]  # fresh twice: counted once
    response = bulk(triage_api, {"ids": ids, "status": "resolved", "triage_notes": "batch 7"})
    assert response.status_code == 200, response.content
    assert response.json() == {
        "changed": [
            {"id": fresh.pk, "change": "status: new → resolved; assigned to: nobody → ana; notes changed"},
            {"id": seen.pk, "change": "status: acknowledged → resolved; assigned to: nobody → ana; notes changed"},
        ],
        "refused": [
            {
                "id": closed.pk,
                "field": "status",
                "reason": "false positive: reopen it (acknowledge) before marking it resolved",
            },
            {"id": missing, "field": "id", "reason": "no such anomaly"},
        ],
        "mutes": [],
        "known_places": [],
        "summary": "2 changed, 2 left as they were (1 false positive: reopen it (acknowledge) before marking it "
        "resolved; 1 no such anomaly).",
    }
    assert dict(Anomaly.objects.filter(pk__in=ids).values_list("id", "status")) == {
        fresh.pk: "resolved",
        seen.pk: "resolved",
        closed.pk: "false_positive",
    }
    assert history(fresh) == ["status: new → resolved; assigned to: nobody → ana; notes changed (API)"]
    assert history(closed) == []


def test_bulk_false_positive_mutes_the_rule_and_adds_known_places(triage_api: APIClient, ana: User) -> None:
    lisbon = anomaly_create(user_id=7, anomaly_type="unusual_location_login", episode_key="Lisbon, PT")
    porto = anomaly_create(user_id=7, anomaly_type="unusual_location_login", episode_key="Porto, PT")
    purchase = anomaly_create(user_id=8)
    response = bulk(
        triage_api,
        {
            "ids": [lisbon.pk, porto.pk, purchase.pk],
            "status": "false_positive",
            "mute_days": 7,
            "mute_reason": "travels for work",
            "add_known_place": True,
        },
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert [row["id"] for row in body["changed"]] == [lisbon.pk, porto.pk, purchase.pk]
    assert body["refused"] == []
    mutes = {(mute.user_id, mute.anomaly_type): mute for mute in Mute.objects.all()}
    assert set(mutes) == {(7, "unusual_location_login"), (8, "high_value_purchase")}
    assert all(mute.reason == "travels for work" and mute.created_by == ana for mute in mutes.values())
    assert sorted((m["user_id"], m["anomaly_type"], m["reason"]) for m in body["mutes"]) == [
        (7, "unusual_location_login", "travels for work"),
        (8, "high_value_purchase", "travels for work"),
    ]
    muted = mutes[(8, "high_value_purchase")]
    answered = next(m for m in body["mutes"] if m["user_id"] == 8)
    assert (answered["id"], answered["until"]) == (muted.pk, muted.until.isoformat().replace("+00:00", "Z"))
    assert timedelta(days=7) - timedelta(minutes=1) < muted.until - timezone.now() <= timedelta(days=7)
    assert sorted((p["user_id"], p["location"]) for p in body["known_places"]) == [(7, "Lisbon, PT"), (7, "Porto, PT")]
    assert UserLocation.objects.filter(user_id=7, added_by=ana).count() == 2
    assert "unusual_location_login muted for user 7 until" in body["changed"][0]["change"]
    assert "Lisbon, PT added to the user's known places" in history(lisbon)[0]
    assert history(lisbon)[0].endswith("(API)")
    assert body["summary"] == "3 changed, 2 mutes added, 2 known places added."


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"ids": list(range(1, 1002)), "status": "resolved"}, "ids", "at most 1000 ids at once"),
        ({"ids": [], "status": "resolved"}, "ids", "give at least one anomaly id"),
        ({"ids": 5, "status": "resolved"}, "ids", "must be a list of anomaly ids"),
        ({"ids": [1, "2", 3.5], "status": "resolved"}, "ids", "item 1: must be a whole number"),
        ({"status": "resolved"}, "ids", "This field is required."),
        ({"ids": [1], "status": "resolved", "mute_days": 7, "mute_reason": "x"}, "mute_days", "comes with marking"),
        (
            {"ids": [1], "status": "false_positive", "mute_days": 0, "mute_reason": "x"},
            "mute_days",
            "a mute lasts 1 to 365 days",
        ),
        ({"ids": [1], "status": "false_positive", "mute_days": 7}, "mute_reason", "say why the rule is muted"),
        ({"ids": [1], "status": "false_positive", "mute_reason": "x"}, "mute_reason", "comes with mute_days"),
        ({"ids": [1], "status": "resolved", "add_known_place": True}, "add_known_place", "comes with marking"),
        ({"ids": [1], "mute_days": 3}, "non_field_errors", "give status, assigned_to, triage_notes"),
    ],
)
def test_a_bad_bulk_request_is_a_400_naming_the_field(
    triage_api: APIClient, body: dict[str, Any], field: str, reason: str
) -> None:
    response = bulk(triage_api, body)
    assert response.status_code == 400, response.content
    assert response.json()[field][0].startswith(reason), response.json()
    assert not Mute.objects.exists()


def test_a_thousand_ids_are_taken_at_once(triage_api: APIClient) -> None:
    first = anomaly_create().pk
    response = bulk(triage_api, {"ids": list(range(first, first + 1000)), "status": "acknowledged"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert [row["id"] for row in body["changed"]] == [first]
    assert len(body["refused"]) == 999


# --- docs and the browsable API ---------------------------------------------------------
def test_the_schema_describes_every_endpoint() -> None:
    response = APIClient().get("/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert set(paths) == {
        "/signals",
        "/anomalies",
        "/users/{user_id}/signals",
        "/users/{user_id}/anomalies",
        "/users/{user_id}/risk",
        "/metrics",
        "/health",
        "/emitter/configure",
        "/emitter/burst",
        "/anomalies/{id}",
        "/anomalies/triage",
    }
    assert set(paths["/anomalies/{id}"]) == {"patch"} and set(paths["/anomalies/triage"]) == {"post"}
    for operation in (paths["/anomalies/{id}"]["patch"], paths["/anomalies/triage"]["post"]):
        assert {"200", "400", "401", "403", "415", "429"} <= set(operation["responses"])
        assert "requestBody" in operation
    assert {"404", "409"} <= set(paths["/anomalies/{id}"]["patch"]["responses"])
    assert "suppressed" in {p["name"] for p in paths["/anomalies"]["get"]["parameters"]}
    parameters = {p["name"] for p in paths["/signals"]["get"]["parameters"]}
    assert parameters == {
        "user_id",
        "signal_type",
        "start_timestamp",
        "end_timestamp",
        "page",
        "size",
        "cursor",
        "ordering",
    }


def test_swagger_ui_is_served_from_this_server() -> None:
    page = APIClient().get("/docs").content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "/schema" in page


@pytest.mark.parametrize("url", [*PROTECTED, "/health", "/signals?user_id=abc"])
def test_the_browsable_api_renders_every_endpoint(api: APIClient, signals: list[Signal], url: str) -> None:
    response = api.get(url, HTTP_ACCEPT="text/html")
    assert response.status_code in {200, 400, 503}
    assert response["Content-Type"].startswith("text/html")
    assert b"Django REST framework" in response.content
    if response.status_code == 200 and url.split("?")[0].endswith(("/signals", "/anomalies")):
        assert b"Filters" in response.content, "a list offers its filters and orderings as a form"


def test_the_browsable_api_offers_a_login(signals: list[Signal]) -> None:
    response = APIClient().get("/signals", HTTP_ACCEPT="text/html")
    assert response.status_code == 401
    assert b"/api-auth/login/" in response.content


# --- /health ---------------------------------------------------------------------------
def health(settings: Any, timeout: float = 1.0) -> tuple[int, dict[str, Any]]:
    settings.HEALTH_TIMEOUT_SECONDS = timeout
    response = APIClient().get("/health")
    return response.status_code, response.json()


@pytest.fixture
def celery_worker(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker on a queue of its own (it answers pings whatever its queues)."""
    name = f"health-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "celery", "-A", "eventpipeline", "worker", "-Q", name, "--pool", "solo"]
    command += ["--without-gossip", "--without-mingle", "--loglevel", "WARNING", "-n", f"{name}@%h"]
    with open(tmp_path / "worker.log", "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "WORKER_METRICS_PORT": "0"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def test_health_names_what_fails_when_no_worker_answers(settings: Any) -> None:
    status, body = health(settings)
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["failed"] == ["celery"]
    assert body["checks"]["celery"] == {"ok": False, "detail": "no worker answered a ping within 1 s"}
    for server in ["postgresql", "redis", "kafka"]:
        assert body["checks"][server]["ok"], body


def test_health_is_200_when_every_server_and_a_worker_answer(
    settings: Any, celery_worker: subprocess.Popen[bytes]
) -> None:
    wait_for(lambda: health(settings)[0] == 200, timeout=90, what="the worker to answer pings")
    status, body = health(settings)
    assert (status, body["status"], body["failed"]) == (200, "ok", [])
    assert set(body["checks"]) == {"postgresql", "redis", "kafka", "celery"}
    assert "answered" in body["checks"]["celery"]["detail"]


def test_health_names_a_kafka_that_does_not_answer(settings: Any) -> None:
    settings.KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{free_port()}"
    status, body = health(settings, timeout=0.5)
    assert status == 503
    assert "kafka" in body["failed"]
    assert body["checks"]["kafka"]["ok"] is False


def test_health_names_a_redis_that_does_not_answer(settings: Any) -> None:
    settings.REDIS_URL = settings.DETECT_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    status, body = health(settings, timeout=0.5)
    assert status == 503
    assert "redis" in body["failed"]
    assert body["checks"]["redis"] == {"ok": False, "detail": "results and detection: ConnectionError"}
