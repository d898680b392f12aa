"""The anomaly in the admin, where analysts triage it: what it shows, what can be changed."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from anomalies_app.models import Anomaly, AnomalyStatus

pytestmark = pytest.mark.django_db


def test_an_anomaly_shows_its_evidence_and_takes_a_triage(client: Client, admin_user: User) -> None:
    anomaly = Anomaly.objects.create(
        user_id=42,
        anomaly_type="high_frequency_login",
        severity="medium",
        description="12 logins in 60 s, threshold 10",
        episode_start_ms=1_772_359_200_000,  # 2026-03-01 10:00:00 UTC
        episode_end_ms=1_772_359_230_000,
        evidence={"value": 12, "event_ids": ["e-1", "e-2"], "rule": {"threshold": 10}},
    )
    client.force_login(admin_user)
    url = f"/admin/anomalies_app/anomaly/{anomaly.pk}/change/"
    page = client.get(url).content.decode()
    assert "12 logins in 60 s, threshold 10" in page
    assert "2026-03-01 10:00:00+00:00 to 2026-03-01 10:00:30+00:00" in page
    assert "e-2" in page

    form: dict[str, Any] = {"status": AnomalyStatus.ACKNOWLEDGED, "assigned_to": "", "triage_notes": "on it"}
    response = client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    anomaly.refresh_from_db()
    assert (anomaly.status, anomaly.triage_notes, anomaly.assigned_to) == ("acknowledged", "on it", admin_user)
    assert anomaly.triaged_at is not None, "when it was triaged is kept"
    assert anomaly.description == "12 logins in 60 s, threshold 10", "the finding itself is read-only"
