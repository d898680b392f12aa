"""`manage.py replay_dead_letters`: put refused records back on the signals topic."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from signals_app.models import DeadLetter
from signals_app.services import dead_letters_replay


class Command(BaseCommand):
    help = "Replay dead letters (not yet replayed) onto SIGNALS_TOPIC, e.g. after fixing a producer or a limit."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--id", type=int, nargs="*", dest="ids", help="only these dead letters")
        parser.add_argument("--reason-contains", default="", help="only those whose reason contains this text")
        parser.add_argument("--topic", default=settings.SIGNALS_TOPIC)
        parser.add_argument("--again", action="store_true", help="include dead letters replayed before")

    def handle(self, *args: Any, **options: Any) -> None:
        dead_letters = DeadLetter.objects.order_by("id")
        if not options["again"]:
            dead_letters = dead_letters.filter(replayed_at__isnull=True)
        if options["ids"]:
            dead_letters = dead_letters.filter(id__in=options["ids"])
        if options["reason_contains"]:
            dead_letters = dead_letters.filter(reason__icontains=options["reason_contains"])
        count = dead_letters_replay(dead_letters=dead_letters.iterator(), topic=options["topic"])
        self.stdout.write(f"replayed {count} dead letters onto {options['topic']}")
