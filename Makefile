# Tensor Trigger developer commands. Everything installs from scratch into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/tensortrigger/v1/*.proto)
PROTO_OUT := clients/python

.PHONY: venv run test proto proto-check lint fmt bench services clean

venv: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e clients/python -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tt-server

services:
	bash scripts/ensure-services.sh

test: $(STAMP) services
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	  --include_source_info --descriptor_set_out=$(PROTO_OUT)/tensortrigger/v1/descriptor_set.binpb $(PROTO_SRC)

# Fails when the committed generated code differs from what `make proto` produces.
proto-check: proto
	git diff --exit-code -- $(PROTO_OUT)/tensortrigger/v1

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Embedded backends only (no `services`): the benchmark measures the Predict hot path. BENCH_ARGS=--quick for a smoke run.
bench: $(STAMP)
	command -v h2load >/dev/null || (apt-get update && apt-get install -y nghttp2-client)
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PIP) install --quiet -e '.[dev,bench]'
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var build .pytest_cache .mypy_cache .ruff_cache
