from __future__ import annotations

from django.apps import AppConfig
from django.db.backends.signals import connection_created


class EventpipelineConfig(AppConfig):
    """The project's own settings of shared parts. One process-wide change, made here and
    nowhere else: every new PostgreSQL connection reads timestamptz with psycopg's compiled
    loader (eventpipeline/database.py)."""

    name = "eventpipeline"
    verbose_name = "eventpipeline"

    def ready(self) -> None:
        from eventpipeline.database import timestamptz_loader_install

        connection_created.connect(timestamptz_loader_install, dispatch_uid="timestamptz_loader_install")
