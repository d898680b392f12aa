# The injection runs and their scenarios, moved here from anomalies_app with their tables
# (injection_runs, injected_scenarios) and rows as they are: this migration only tells
# Django that the emitter app owns them, and moves their content types along so that their
# permissions and admin history stay attached.

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

MOVED_MODELS = ["injectionrun", "injectedscenario"]


def content_types_move(apps, schema_editor, from_app="anomalies_app", to_app="emitter"):
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    for model in MOVED_MODELS:
        if not ContentType.objects.using(db).filter(app_label=to_app, model=model).exists():
            ContentType.objects.using(db).filter(app_label=from_app, model=model).update(app_label=to_app)


def content_types_move_back(apps, schema_editor):
    content_types_move(apps, schema_editor, from_app="emitter", to_app="anomalies_app")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("anomalies_app", "0006_injection_runs_to_emitter"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="InjectionRun",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("seed", models.BigIntegerField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("first_user_id", models.BigIntegerField()),
                        ("last_user_id", models.BigIntegerField()),
                        (
                            "events",
                            models.PositiveBigIntegerField(
                                default=0, help_text="Events the emitter had delivered when it ended."
                            ),
                        ),
                        ("finished", models.BooleanField(default=False)),
                    ],
                    options={"db_table": "injection_runs"},
                ),
                migrations.CreateModel(
                    name="InjectedScenario",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("kind", models.CharField(max_length=64)),
                        ("user_id", models.BigIntegerField()),
                        ("anomaly_type", models.CharField(blank=True, default="", max_length=64)),
                        ("first_event_ms", models.BigIntegerField()),
                        ("last_event_ms", models.BigIntegerField()),
                        ("events", models.PositiveIntegerField()),
                        (
                            "run",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="scenarios",
                                to="emitter.injectionrun",
                            ),
                        ),
                    ],
                    options={"db_table": "injected_scenarios"},
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_move, content_types_move_back),
    ]
