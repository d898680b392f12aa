"""`manage.py verify_detection`: detected against injected, per rule."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from emitter.models import InjectionRun
from emitter.selectors import detection_verdict, injection_progress


class Command(BaseCommand):
    help = (
        "Compare the anomalies detected among the users of an `emit_signals --inject-anomalies` run with "
        "what it injected: per rule, injected, detected, precision and recall. Exits 1 when any rule is "
        "below 1.0, 2 when the pipeline did not finish the run in time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--run", type=int, help="Injection run id (default: the latest finished run).")
        parser.add_argument(
            "--wait",
            type=float,
            default=300.0,
            help="Seconds to wait for the pipeline to store the run's events (default %(default)s).",
        )
        parser.add_argument(
            "--settle",
            type=float,
            default=10.0,
            help="Then wait until no anomaly has been added for this long (default %(default)s; "
            "detection runs beside storing and may retry).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        run = self.run_find(options["run"])
        self.stdout.write(f"injection run {run.pk}: {run.events} events, users {run.first_user_id} and up")
        self.wait_done(run, options["wait"], options["settle"])
        verdicts = detection_verdict(run=run)
        self.stdout.write(f"{'rule':<28} {'injected':>8} {'detected':>8} {'precision':>9} {'recall':>7}")
        for verdict in verdicts:
            self.stdout.write(
                f"{verdict.anomaly_type:<28} {verdict.injected:>8} {verdict.detected:>8} "
                f"{verdict.precision:>9.3f} {verdict.recall:>7.3f}"
            )
        failing = [v.anomaly_type for v in verdicts if v.precision < 1.0 or v.recall < 1.0]
        if any(v.injected == 0 for v in verdicts):
            raise CommandError(
                "some rules had nothing injected: emit more events or a lower --inject-every", returncode=1
            )
        if failing:
            raise CommandError(f"below 1.0: {', '.join(failing)}", returncode=1)
        self.stdout.write("every rule: precision 1.000, recall 1.000")

    def run_find(self, run_id: int | None) -> InjectionRun:
        runs = InjectionRun.objects.filter(finished=True)
        run = runs.filter(pk=run_id).first() if run_id else runs.order_by("-pk").first()
        if run is None:
            raise CommandError(
                f"no finished injection run {run_id}"
                if run_id
                else "no injection run yet: "
                "run `python manage.py emit_signals --inject-anomalies --count 100000` first",
                returncode=2,
            )
        return run

    def wait_done(self, run: InjectionRun, wait: float, settle: float) -> None:
        """Until every event of the run is stored, then until the anomalies stop changing
        for `settle` seconds (detection runs beside storing, not after it)."""
        deadline = time.monotonic() + wait
        stored, found = injection_progress(run=run)
        while stored < run.events:
            if time.monotonic() > deadline:
                raise CommandError(
                    f"only {stored} of the run's {run.events} events were stored after {wait:.0f} s: "
                    "is the pipeline (bridge and worker) running?",
                    returncode=2,
                )
            time.sleep(1.0)
            stored, found = injection_progress(run=run)
        stable_since = time.monotonic()
        while time.monotonic() - stable_since < settle:
            time.sleep(min(1.0, settle))
            _, now_found = injection_progress(run=run)
            if now_found != found:
                found, stable_since = now_found, time.monotonic()
