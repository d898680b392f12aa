"""Rules are data: seeded with docs/design.md's defaults, tuned in the admin, re-read by workers."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from anomalies_app.models import Rule
from anomalies_app.rules import DEFAULT_RULES, HIGH_FREQUENCY_LOGIN, UNUSUAL_TIME_ACTIVITY, breaks
from anomalies_app.selectors import RuleBook, rule_settings_list

pytestmark = pytest.mark.django_db


def test_the_migration_seeds_the_seven_rules_with_their_defaults() -> None:
    assert Rule.objects.count() == 7
    assert rule_settings_list() == DEFAULT_RULES


def test_a_rule_tuned_in_the_database_changes_the_decision() -> None:
    Rule.objects.filter(anomaly_type=HIGH_FREQUENCY_LOGIN).update(threshold=20, severity="high", enabled=False)
    rule = rule_settings_list()[HIGH_FREQUENCY_LOGIN]
    assert (rule.threshold, rule.severity, rule.enabled) == (20, "high", False)
    assert not breaks(rule, 11)
    assert rule.comparison is DEFAULT_RULES[HIGH_FREQUENCY_LOGIN].comparison


def test_a_worker_sees_an_edit_within_the_refresh_period() -> None:
    now = [0.0]
    book = RuleBook(refresh_seconds=5, clock=lambda: now[0])
    assert book.rules()[HIGH_FREQUENCY_LOGIN].threshold == 10
    Rule.objects.filter(anomaly_type=HIGH_FREQUENCY_LOGIN).update(threshold=15)
    now[0] = 4.9
    assert book.rules()[HIGH_FREQUENCY_LOGIN].threshold == 10, "read again before the refresh period"
    now[0] = 5.0
    assert book.rules()[HIGH_FREQUENCY_LOGIN].threshold == 15


@pytest.mark.parametrize(
    ("threshold", "window_seconds", "field"),
    [(24, 3600, "threshold"), (2.5, 3600, "threshold"), (2, 0, "window_seconds"), (2, 90_000, "window_seconds")],
)
def test_quiet_hours_must_be_a_whole_hour_and_at_most_a_day(threshold: float, window_seconds: int, field: str) -> None:
    rule = Rule.objects.get(anomaly_type=UNUSUAL_TIME_ACTIVITY)
    rule.threshold, rule.window_seconds = threshold, window_seconds
    with pytest.raises(ValidationError) as refused:
        rule.full_clean()
    assert field in refused.value.message_dict


def test_analysts_tune_rules_in_the_admin_but_do_not_add_or_delete_them(admin_client: Client) -> None:
    page = admin_client.get("/admin/anomalies_app/rule/")
    assert page.status_code == 200
    assert b"high_frequency_login" in page.content
    assert admin_client.get("/admin/anomalies_app/rule/add/").status_code == 403
    rule = Rule.objects.get(anomaly_type=HIGH_FREQUENCY_LOGIN)
    edit = admin_client.post(
        f"/admin/anomalies_app/rule/{rule.pk}/change/",
        {"enabled": "on", "threshold": "12", "window_seconds": "30", "severity": "high"},
    )
    assert edit.status_code == 302
    assert rule_settings_list()[HIGH_FREQUENCY_LOGIN].threshold == 12
