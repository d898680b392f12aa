"""The risk score and the anomaly statistics leave out anomalies raised under a mute, as the
API and the admin do by default (docs/design.md, "Mutes and known places")."""

from __future__ import annotations

import importlib

from django.db import migrations

EXTRAS = importlib.import_module("anomalies_app.migrations.0002_database_extras")

RISK_SCORE = EXTRAS.RISK_SCORE.replace(
    "AND status <> 'false_positive'", "AND status <> 'false_positive'\n          AND NOT suppressed"
)
ANOMALY_STATS = EXTRAS.ANOMALY_STATS.replace(
    "WHERE detection_timestamp >= now() - interval '24 hours'",
    "WHERE detection_timestamp >= now() - interval '24 hours' AND NOT suppressed",
)
assert RISK_SCORE != EXTRAS.RISK_SCORE and ANOMALY_STATS != EXTRAS.ANOMALY_STATS


class Migration(migrations.Migration):
    dependencies = [("anomalies_app", "0007_triage")]

    operations = [
        migrations.RunSQL(RISK_SCORE, EXTRAS.RISK_SCORE),
        migrations.RunSQL(ANOMALY_STATS, EXTRAS.ANOMALY_STATS),
    ]
