# eventpipeline: every command a developer runs. `make run` and `make test` set up
# everything themselves on a machine with only Python 3.11.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
DEVSERVICES := $(PY) scripts/devservices.py
# Production-like settings for `check --deploy`.
DEPLOY_ENV := DEBUG=false SECRET_KEY=check-deploy-$(shell date +%s)-a-long-random-enough-secret-key-value ALLOWED_HOSTS=eventpipeline.example.com

.PHONY: run test test-here lint bench bench-detect bench-api bench-indexes bench-retention chaos venv clean promtool hey chromium pgbouncer bench-sizes bench-messages

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# `make run`'s local servers and Procfile runner, on top of the runtime (the image has only that).
$(VENV)/.local: $(VENV)/.runtime requirements-local.txt
	$(PY) -m pip install --quiet -r requirements-local.txt
	touch $@

$(VENV)/.dev: $(VENV)/.local requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.dev

## run: start the whole pipeline (infrastructure that is not configured, then every process)
run: $(VENV)/.local
	DATA_DIR=$(CURDIR)/.data/run $(DEVSERVICES) --data-dir .data/run -- \
		sh -c 'python manage.py bootstrap --data-dir "$$DATA_DIR" && exec honcho start -f Procfile'

## test: lint, type-check, deploy checks, then the whole suite against real servers
test: $(VENV)/.dev promtool chromium pgbouncer
	$(DEVSERVICES) --data-dir .data/test -- $(MAKE) --no-print-directory test-here

# The settings refuse to start without SECRET_KEY and take a missing DEBUG as false (closed
# by default). scripts/devservices.py supplies development values to what it runs; these
# are for the targets that may run without it (mypy's Django plugin loads the settings too).
lint test-here: export SECRET_KEY ?= development-only-not-a-secret-0123456789-abcdefghijklmnopqrstuvwxyz
test-here: export DEBUG ?= true

# The suite itself, against servers named by KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, REDIS_URL.
test-here: lint
	$(PY) manage.py makemigrations --check --dry-run
	$(DEPLOY_ENV) $(PY) manage.py check --deploy --fail-level WARNING
	$(PY) -m pytest -v; status=$$?; \
		if [ $$status -eq 5 ]; then echo "pytest collected no tests: that is a failure here"; exit 1; fi; \
		exit $$status

## lint: ruff, formatting, mypy, and the import rules between apps (pyproject.toml, [tool.importlinter])
lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .
	$(VENV)/bin/lint-imports --no-cache

## bench: events/s from Kafka, stored and analysed, vs the raw COPY limit (median of 3 runs), then latency and memory at 5,000 events/s (ARGS="--runs 0": the latency run alone)
bench: $(VENV)/.dev
	$(DEVSERVICES) --data-dir .data/bench -- $(PY) scripts/bench.py $(ARGS)

## bench-detect: the detect worker's CPU per 1,000 events, on one Redis and on a local Redis Cluster
bench-detect: $(VENV)/.dev
	$(DEVSERVICES) --data-dir .data/bench -- sh -c 'DEBUG=false $(PY) scripts/bench_detect.py && DEBUG=false $(PY) scripts/bench_detect.py --cluster'

## bench-api: p50/p95 of every query endpoint on 10M signals, at concurrency 1 and 16
bench-api: $(VENV)/.dev hey
	$(DEVSERVICES) --data-dir .data/bench -- $(PY) scripts/bench_api.py

## bench-retention: cleanup on bench-api's data, and dropping a day's partition against DELETE of its rows
bench-retention: $(VENV)/.dev
	$(DEVSERVICES) --data-dir .data/bench -- $(PY) scripts/bench_retention.py

## bench-indexes: the insert rate each choice of indexes on signals allows
bench-indexes: $(VENV)/.dev
	$(DEVSERVICES) --data-dir .data/bench -- $(PY) scripts/bench_indexes.py

## bench-sizes: bytes per event on Kafka, through the broker, in the WAL and in the table
bench-sizes: $(VENV)/.dev
	$(DEVSERVICES) --data-dir .data/bench -- $(PY) scripts/bench_sizes.py

## bench-messages: Celery's CPU per task handed over and received, kombu's Redis client per message against one per channel
bench-messages: $(VENV)/.dev
	$(DEVSERVICES) --data-dir .data/bench -- sh -c 'DEBUG=false LOG_LEVEL=WARNING $(PY) scripts/bench_messages.py $(ARGS)'

## chaos: 20 seeded faults under load, one line per fault with its recovery time (ARGS="--seed 2", ARGS="--scenario crash-loop")
# It starts servers of its own (it kills and restarts Redis and PostgreSQL), so not under devservices.
chaos: $(VENV)/.local
	$(PY) scripts/chaos.py --data-dir .data/chaos $(ARGS)

# The monitoring-config tests need promtool (Debian package "prometheus").
promtool:
	@command -v promtool >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
		else echo "promtool is missing: install the 'prometheus' package (it carries promtool)"; exit 1; fi; }

# The browser test drives a headless Chromium through its driver (Debian packages
# "chromium" and "chromium-driver"; selenium must not download a browser of its own).
chromium:
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
		else echo "chromium or chromedriver is missing: install the 'chromium' and 'chromium-driver' packages"; exit 1; fi; }

# The pipeline is tested behind PgBouncer in transaction mode (Debian package "pgbouncer").
pgbouncer:
	@{ command -v pgbouncer || test -x /usr/sbin/pgbouncer; } >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null; \
		else echo "pgbouncer is missing: install the 'pgbouncer' package"; exit 1; fi; }

# bench-api's HTTP load generator (Debian package "hey").
hey:
	@command -v hey >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends hey >/dev/null; \
		else echo "hey is missing: install the 'hey' package (an HTTP load generator)"; exit 1; fi; }

clean:
	rm -rf .data/test .data/bench .data/chaos
