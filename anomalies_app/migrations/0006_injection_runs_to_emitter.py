# The injection runs and their scenarios moved to the emitter app (emitter/migrations/0001).
# Their tables stay as they are, with their rows: only Django's idea of which app owns the
# models changes here.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("anomalies_app", "0005_detection"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="InjectedScenario"),
                migrations.DeleteModel(name="InjectionRun"),
            ],
            database_operations=[],
        ),
    ]
