"""gunicorn's own settings; gunicorn reads this file from its working directory.

Its error and access logs follow LOG_FORMAT like every other process: with json, the
master and the workers log through settings' LOGGING, one JSON object per line. With
text they keep gunicorn's own format.
"""

from __future__ import annotations

import os

from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventpipeline.settings")
logconfig_dict = settings.LOGGING if settings.LOG_FORMAT == "json" else {}
