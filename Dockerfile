# Image for every eventpipeline process (api, bridge, workers, beat, emitter, flower,
# migrate): docker-compose.yml picks the command. The default is the api under gunicorn.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=eventpipeline.settings

WORKDIR /app

# Dependencies first so that a code change does not reinstall them. Every pinned
# package ships a manylinux wheel, so no compiler is needed. Runtime dependencies only:
# local servers (requirements-local.txt) and dev tools stay out.
COPY requirements.txt .
RUN pip install -r requirements.txt

# The code belongs to root and is only readable by the process user.
COPY . .

# Static files (the admin's, Swagger UI's at /docs) hashed and compressed for whitenoise,
# which the production settings (DEBUG=false) require; this needs no server.
RUN DEBUG=false SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput --verbosity 0

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home app

USER app

EXPOSE 8000

CMD ["gunicorn", "eventpipeline.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
