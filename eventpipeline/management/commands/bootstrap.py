"""`manage.py bootstrap`: make a fresh stack usable and say how to reach it."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Apply migrations, create the Kafka topics and a demo user with an API token, then print the URLs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data-dir", default=str(settings.BASE_DIR / ".data" / "run"))
        parser.add_argument("--host", default="127.0.0.1")

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        call_command("create_topics", verbosity=0)
        password = self._demo_password(Path(options["data_dir"]))
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username="demo", defaults={"is_staff": True, "is_superuser": True})
        user.set_password(password)
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        host = options["host"]
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "eventpipeline is starting:",
                    f"  API       http://{host}:8000/signals (browsable when logged in to the admin)",
                    f"  Docs      http://{host}:8000/docs   health http://{host}:8000/health",
                    f"  Admin     http://{host}:8000/admin/   user demo, password {password}",
                    "  Analysts  who triage anomalies but may not edit rules, in another terminal:",
                    f"    DATABASE_URL={settings.DATABASE_URL} .venv/bin/python manage.py create_analyst alice",
                    f"  Flower    http://{host}:5555/",
                    f"  Metrics   http://{host}:8000/prometheus/metrics; emitter :8011, bridge :8012, worker :8013",
                    f"  Kafka     {settings.KAFKA_BOOTSTRAP_SERVERS}, topic {settings.SIGNALS_TOPIC}",
                    f"  Token     {token.key}",
                    "  Try it:",
                    f'    curl -H "Authorization: Token {token.key}" "http://{host}:8000/signals?size=5"',
                    "  Ctrl-C stops everything.",
                    "",
                ]
            )
        )

    @staticmethod
    def _demo_password(data_dir: Path) -> str:
        """A random password made on the first run and kept with the run's data."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "demo-password"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(12))
            path.chmod(0o600)
        return path.read_text().strip()
