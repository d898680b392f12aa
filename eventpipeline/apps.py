from __future__ import annotations

from django.apps import AppConfig
from django.db.backends.signals import connection_created


class EventpipelineConfig(AppConfig):
    """The project's own settings of shared parts (database connections)."""

    name = "eventpipeline"
    verbose_name = "eventpipeline"

    def ready(self) -> None:
        from eventpipeline.database import timestamptz_loader_install

        connection_created.connect(timestamptz_loader_install, dispatch_uid="timestamptz_loader_install")
