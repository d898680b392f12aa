from __future__ import annotations

from eventpipeline.celery import app as celery_app

__all__ = ["celery_app"]
