"""`manage.py cleanup`: retention now, for every table or some (docs/design.md, "Retention")."""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from eventpipeline.retention import (
    TABLES,
    NoProgress,
    ProgressBar,
    RetentionBusy,
    TableDone,
    TablePlan,
    retention_apply,
    retention_plan,
)


def parse_days(values: list[str] | None) -> dict[str, int]:
    """`--days 30` for every table, `--days signals=7` for one; the rest from settings."""
    days = dict(settings.RETENTION_DAYS_BY_TABLE)
    for value in values or []:
        table, _, number = value.rpartition("=")
        if table and table not in TABLES:
            raise CommandError(f"--days {value}: unknown table {table!r}, expected one of {', '.join(TABLES)}")
        try:
            count = int(number)
        except ValueError:
            raise CommandError(f"--days {value}: {number!r} is not a whole number of days") from None
        if count < 1:
            raise CommandError(f"--days {value}: must be at least 1 day, got {count}")
        days.update({table: count} if table else dict.fromkeys(TABLES, count))
    return days


def _rows(count: int, estimated: bool) -> str:
    return f"about {count:,}" if estimated else f"{count:,}"


class Command(BaseCommand):
    help = (
        "Remove signals, anomalies, dead letters and injection runs older than their retention "
        "(RETENTION_DAYS, or each table's own setting). Signals go a day's partition at a time; "
        "the rest in short transactions. Open anomalies are kept unless --include-open."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            action="append",
            metavar="[TABLE=]N",
            help=f"keep N days: of every table, or of one ({', '.join(TABLES)}); may be repeated",
        )
        parser.add_argument("--dry-run", action="store_true", help="say what would go, per table, and remove nothing")
        parser.add_argument(
            "--include-open",
            action="store_true",
            help="also remove anomalies past retention that are still new or acknowledged",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = parse_days(options["days"])
        include_open = options["include_open"]
        if options["dry_run"]:
            plan = retention_plan(days=days, include_open=include_open)
            self.stdout.write("Dry run: nothing is removed.")
            for part in plan:
                self.stdout.write(self._planned(part))
            self._kept(sum(part.kept for part in plan))
            return
        try:
            done = retention_apply(
                days=days, include_open=include_open, chunk_rows=settings.RETENTION_CHUNK_ROWS, progress=self._progress
            )
        except RetentionBusy as busy:
            raise CommandError(f"{busy}; try again when it ends") from None
        for finished in done:
            self.stdout.write(self._done(finished))
        self._kept(sum(finished.kept for finished in done))

    @staticmethod
    def _planned(part: TablePlan) -> str:
        days = f"{part.days} day" + ("" if part.days == 1 else "s")
        line = f"{part.table}: keeps {days} (from {part.before:%Y-%m-%d %H:%M} UTC); would remove "
        if part.table != "signals":
            return line + f"{part.rows:,} rows"
        if not part.partitions:
            return line + "no partition (signals go a whole day at a time)"
        first, last = part.partitions[0].day, part.partitions[-1].day
        return (
            line
            + f"{len(part.partitions)} daily partitions, {first} to {last}, {_rows(part.rows, part.estimated)} rows"
        )

    @staticmethod
    def _done(part: TableDone) -> str:
        unit = "rows in dropped partitions" if part.table == "signals" else "rows"
        return f"{part.table}: removed {_rows(part.removed, part.estimated)} {unit} in {part.seconds:.1f} s"

    def _kept(self, kept: int) -> None:
        if kept:
            self.stdout.write(
                f"kept {kept:,} anomalies past retention that are still open (new or acknowledged); "
                "--include-open removes them too"
            )

    @staticmethod
    def _progress(table: str, total: int) -> ProgressBar:
        """A progress bar on a terminal; nothing in a log or a pipe."""
        if total == 0 or not sys.stderr.isatty():
            return NoProgress()
        return tqdm(total=total, desc=table, unit=" rows", unit_scale=True, leave=True)
