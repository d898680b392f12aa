"""`manage.py bootstrap`, as `make run` calls it: the demo user it makes and what it prints."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from anomalies_app.triage import can_triage


def bootstrap(tmp_path: Path) -> str:
    out = io.StringIO()
    call_command("bootstrap", data_dir=str(tmp_path), stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_demo_is_an_analyst_not_a_superuser(tmp_path: Path, settings: Any) -> None:
    settings.FLOWER_BASIC_AUTH = "flower:a-flower-password"
    User.objects.create_superuser("demo", password="from-an-earlier-version")
    printed = bootstrap(tmp_path)
    demo = User.objects.get(username="demo")
    assert demo.is_staff and not demo.is_superuser
    assert [group.name for group in demo.groups.all()] == ["analysts"]
    assert can_triage(demo) and demo.has_perm("emitter.control_emitter"), "the tour triages and steers the emitter"
    assert not demo.has_perm("anomalies_app.change_rule") and not demo.has_perm("auth.change_user")
    password = (tmp_path / "demo-password").read_text().strip()
    assert demo.check_password(password)
    assert f"user demo, password {password}" in printed
    assert f"set -a; . {tmp_path / 'env'}; set +a" in printed, "what devservices wrote for another terminal"
    assert ".venv/bin/python manage.py createsuperuser" in printed
    assert "user flower, password a-flower-password" in printed
    assert bootstrap(tmp_path) == printed, "a second run changes nothing"
