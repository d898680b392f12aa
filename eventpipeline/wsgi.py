"""The api's entry point: gunicorn loads it, and nothing else does."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application
from django.db.backends.signals import connection_created

from eventpipeline.database import api_statement_timeout_set

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventpipeline.settings")

application = get_wsgi_application()

# Here rather than in an app's ready(): every process loads the apps, and only the api's
# requests are to be bounded (a migration or a store task may rightly run longer).
connection_created.connect(api_statement_timeout_set, dispatch_uid="api_statement_timeout_set")
