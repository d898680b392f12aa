"""`manage.py pipeline_status`: the pipeline on one screen; exit status 1 when something is wrong."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from bridge.pipeline_status import (
    Thresholds,
    pipeline_problems,
    pipeline_status_document,
    pipeline_status_read,
    pipeline_status_text,
)

CLEAR_SCREEN = "\033[H\033[2J"


class Command(BaseCommand):
    help = (
        "Consumer lag per partition, Celery queue depths, workers, bridges, the newest stored event, "
        "dead letters of the last hour and the enabled rules. Exits 1 when something is wrong "
        "(thresholds STATUS_MAX_LAG, STATUS_MAX_STORE_AGE_SECONDS; no worker; no bridge), else 0."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="one JSON document (with --watch, one per line)")
        parser.add_argument("--watch", action="store_true", help="show again every --interval seconds until Ctrl-C")
        parser.add_argument("--interval", type=float, default=5.0, help="seconds between looks with --watch")
        parser.add_argument("--topic", default=settings.SIGNALS_TOPIC)
        parser.add_argument("--group-id", default=settings.BRIDGE_GROUP_ID)

    def handle(self, *args: Any, **options: Any) -> None:
        thresholds = Thresholds.from_settings()
        clear = options["watch"] and not options["json"] and self.stdout.isatty()
        healthy = False
        try:
            while True:
                status = pipeline_status_read(
                    topic=options["topic"],
                    group_id=options["group_id"],
                    ping_timeout=settings.STATUS_PING_TIMEOUT_SECONDS,
                )
                problems = pipeline_problems(status, thresholds)
                healthy = not problems
                if options["json"]:
                    self.stdout.write(json.dumps(pipeline_status_document(status, problems)))
                else:
                    self.stdout.write((CLEAR_SCREEN if clear else "") + pipeline_status_text(status, problems))
                self.stdout.flush()
                if not options["watch"]:
                    break
                time.sleep(options["interval"])
                # A connection PostgreSQL dropped meanwhile is opened again for the next look.
                close_old_connections()
        except KeyboardInterrupt:
            pass
        sys.exit(0 if healthy else 1)
