# The interface: everything a person or CI does goes through these targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install deps run test lint clean kafka-fetch kafka-up kafka-down

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# System packages for the real servers the tests start (Java for Kafka, ...): root + apt.
deps:
	bash deploy/install-deps.sh

run: $(STAMP)
	$(BIN)/beacon run

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check collector consumers tests
	$(BIN)/ruff format --check collector consumers tests
	$(BIN)/mypy

# A real single-node Kafka (KRaft) from the Maven Central jars, on loopback; Java 17 + Maven.
KAFKA_DIR ?= data/kafka
kafka-fetch:
	$(PYTHON) deploy/kafka/kafka.py fetch

kafka-up:
	$(PYTHON) deploy/kafka/kafka.py up --dir $(KAFKA_DIR)

kafka-down:
	$(PYTHON) deploy/kafka/kafka.py down --dir $(KAFKA_DIR)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
