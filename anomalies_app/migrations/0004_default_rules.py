"""The seven rules of docs/design.md with their default settings (values copied here, so this
migration means the same whatever the code becomes)."""

from __future__ import annotations

from typing import Any

from django.db import migrations

DEFAULTS = [
    ("high_frequency_login", 10, 60, "medium"),
    ("repeated_login_failures", 3, 0, "high"),
    ("high_value_purchase", 1000, 0, "medium"),
    ("rapid_successive_purchases", 5, 3600, "medium"),
    ("high_api_failure_rate", 5, 60, "high"),
    ("unusual_time_activity", 2, 3 * 3600, "low"),
    ("unusual_location_login", 1, 0, "high"),
]


def add_defaults(apps: Any, schema_editor: Any) -> None:
    rule_model = apps.get_model("anomalies_app", "Rule")
    for anomaly_type, threshold, window_seconds, severity in DEFAULTS:
        rule_model.objects.get_or_create(
            anomaly_type=anomaly_type,
            defaults={"threshold": threshold, "window_seconds": window_seconds, "severity": severity},
        )


class Migration(migrations.Migration):
    dependencies = [("anomalies_app", "0003_rule")]

    operations = [migrations.RunPython(add_defaults, migrations.RunPython.noop)]
