"""`manage.py bootstrap`: make a fresh stack usable and say how to reach it."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from rest_framework.authtoken.models import Token

from emitter.services import EMITTER_CONTROL_PERMISSION


class Command(BaseCommand):
    help = (
        "Apply migrations, create the Kafka topics and a demo analyst with an API token, then print the URLs "
        "and how to log in."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data-dir", default=str(settings.BASE_DIR / ".data" / "run"))
        parser.add_argument("--host", default="127.0.0.1")

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        call_command("create_topics", verbosity=0)
        password = self._demo_password(Path(options["data_dir"]))
        token = self._demo_analyst(password)
        host = options["host"]
        flower_user, _, flower_password = settings.FLOWER_BASIC_AUTH.split(",")[0].partition(":")
        flower_login = (
            f"user {flower_user}, password {flower_password}"
            if flower_password
            else "does not start: FLOWER_BASIC_AUTH (user:password) is not set"
        )
        # devservices keeps the URLs and development settings it gave `make run` there.
        env_file = Path(options["data_dir"]) / "env"
        shown_env = env_file.relative_to(Path.cwd()) if env_file.is_relative_to(Path.cwd()) else env_file
        database = ".venv/bin/python manage.py"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "eventpipeline is starting:",
                    f"  API       http://{host}:8000/signals (browsable when logged in to the admin)",
                    f"  Docs      http://{host}:8000/docs   health http://{host}:8000/health",
                    f"  Admin     http://{host}:8000/admin/   user demo, password {password}",
                    "            demo is an analyst: triages anomalies, may not edit rules or users",
                    "  Another terminal, for the commands below (same servers and settings):",
                    f"    set -a; . {shown_env}; set +a",
                    "  Admins    who may do everything:",
                    f"    {database} createsuperuser",
                    "  Analysts  who triage anomalies but may not edit rules:",
                    f"    {database} create_analyst alice",
                    "  Status    the whole pipeline on one screen:",
                    f"    {database} pipeline_status --watch",
                    f"  Flower    http://{host}:5555/   {flower_login}",
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
    def _demo_analyst(password: str) -> Token:
        """The `demo` user: an analyst with the admin (staff), not a superuser, who may also
        steer the emitter as the README's tour does; its API token."""
        with transaction.atomic():
            user, _ = User.objects.get_or_create(username="demo")
            user.is_staff = True
            user.is_superuser = False  # an earlier version made it one
            user.set_password(password)
            user.save()
            user.groups.add(Group.objects.get(name="analysts"))
            app_label, codename = EMITTER_CONTROL_PERMISSION.split(".")
            user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
            token, _ = Token.objects.get_or_create(user=user)
        return token

    @staticmethod
    def _demo_password(data_dir: Path) -> str:
        """A random password made on the first run and kept with the run's data."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "demo-password"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(12))
            path.chmod(0o600)
        return path.read_text().strip()
