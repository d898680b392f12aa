"""Two groups, so that giving a person a role is one click (docs/design.md, "Roles"):
- analysts: view signals, anomalies, dead letters and rules; triage anomalies; add and end
  mutes; add known places;
- rule editors: the same, and edit rules.
Permissions are made after migrations run, so they are made here first."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.management import create_permissions
from django.db import migrations

ANALYST = [
    ("signals_app", "view_signal"),
    ("signals_app", "view_deadletter"),
    ("anomalies_app", "view_anomaly"),
    ("anomalies_app", "triage_anomaly"),
    ("anomalies_app", "view_rule"),
    ("anomalies_app", "view_mute"),
    ("anomalies_app", "add_mute"),
    ("anomalies_app", "change_mute"),
    ("anomalies_app", "view_userlocation"),
    ("anomalies_app", "add_userlocation"),
]
RULE_EDITOR = [*ANALYST, ("anomalies_app", "change_rule")]
GROUPS = {"analysts": ANALYST, "rule editors": RULE_EDITOR}


def groups_add(apps: Any, schema_editor: Any) -> None:
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for name, codenames in GROUPS.items():
        group, _ = group_model.objects.get_or_create(name=name)
        for app_label, codename in codenames:
            group.permissions.add(permission_model.objects.get(content_type__app_label=app_label, codename=codename))


def groups_remove(apps: Any, schema_editor: Any) -> None:
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("anomalies_app", "0008_suppressed_in_sql"),
        ("signals_app", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(groups_add, groups_remove)]
