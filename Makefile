# Tensor Trigger developer commands. Everything installs from scratch, from the committed locks in requirements/:
#   .venv          the runtime (make run): requirements/runtime.txt + the two packages, nothing else
#   .venv-dev      development (make test, lint, proto, bench, fuzz): requirements/dev.txt + the two packages
#   .venv-checkov  checkov alone (requirements/checkov.txt): it pins an old boto3 that clashes with aiobotocore
#   .venv-uv       the pinned installer itself (requirements/uv.txt), bootstrapped with pip --require-hashes
# Every lock carries hashes; `make lock` regenerates them (see requirements/README.md).
PYTHON ?= python3
VENV     := .venv
DEV_VENV := .venv-dev
CHECKOV_VENV := .venv-checkov
UV_VENV  := .venv-uv
UV       := $(UV_VENV)/bin/uv
PY       := $(DEV_VENV)/bin/python
PROTO_SRC := $(wildcard protos/tensortrigger/v1/*.proto)
PROTO_OUT := clients/python
PACKAGES  := pyproject.toml clients/python/pyproject.toml
# Both venvs sync to their lock exactly (a package the lock does not name is removed), then take our two packages.
# UV_NO_CONFIG: no uv.toml from the machine or user changes what gets installed.
export UV_NO_CONFIG := 1

.PHONY: venv dev run test proto proto-check lint fmt bench fuzz services tools stubs clean lock

venv: $(VENV)/.installed
dev: $(DEV_VENV)/.installed

$(UV): requirements/uv.txt
	test -x $(UV_VENV)/bin/python || $(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet --no-deps --require-hashes -r requirements/uv.txt
	touch $(UV)

$(VENV)/.installed: $(UV) requirements/runtime.txt $(PACKAGES)
	test -x $(VENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(VENV)/bin/python --require-hashes requirements/runtime.txt
	$(UV) pip install --quiet --python $(VENV)/bin/python --no-deps --no-build-isolation -e clients/python -e .
	touch $@

$(DEV_VENV)/.installed: $(UV) requirements/dev.txt $(PACKAGES)
	test -x $(DEV_VENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(DEV_VENV)
	$(UV) pip sync --quiet --python $(DEV_VENV)/bin/python --require-hashes requirements/dev.txt
	$(UV) pip install --quiet --python $(DEV_VENV)/bin/python --no-deps --no-build-isolation -e clients/python -e .
	touch $@

$(CHECKOV_VENV)/.installed: $(UV) requirements/checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(CHECKOV_VENV)
	$(UV) pip sync --quiet --python $(CHECKOV_VENV)/bin/python --require-hashes requirements/checkov.txt
	touch $@
.venv-checkov: $(CHECKOV_VENV)/.installed

# Re-resolve every lock from pyproject.toml and requirements/*.in (newest versions the ranges allow). Review the
# diff, run `make proto` if grpcio-tools moved, and commit the locks with the code they were tested with.
LOCK_FLAGS := --quiet --generate-hashes --universal --python-version 3.11 \
  --no-emit-package tensortrigger-server --no-emit-package tensortrigger-client
lock: $(UV)
	cd requirements && ../$(UV) pip compile $(LOCK_FLAGS) $(LOCK_ARGS) runtime.in -o runtime.txt
	cd requirements && ../$(UV) pip compile $(LOCK_FLAGS) $(LOCK_ARGS) dev.in -o dev.txt
	cd requirements && ../$(UV) pip compile --quiet --generate-hashes --python-version 3.11 $(LOCK_ARGS) checkov.in -o checkov.txt
	cd requirements && ../$(UV) pip compile --quiet --generate-hashes --universal --python-version 3.11 $(LOCK_ARGS) uv.in -o uv.txt

# The HTTP/JSON front is on by default here (TT_HTTP_ADDRESS= turns it off); tt-server alone serves gRPC only.
run: $(VENV)/.installed
	TT_HTTP_ADDRESS=$${TT_HTTP_ADDRESS-127.0.0.1:8501} $(VENV)/bin/tt-server $(ARGS)

services:
	bash scripts/ensure-services.sh

# Debian tools some tests drive, installed when missing (one apt-get for all): make stubs needs protoc and the gRPC
# plugins; the docs examples use jq; tests/rest renders the HTTP front's /docs page in headless Chromium; the
# monitoring tests run promtool (Debian's prometheus package); the `tt top` test runs in tmux.
TEST_TOOLS := jq=jq chromium=chromium promtool=prometheus tmux=tmux
tools:
	@missing=""; \
	for tool in $(STUBS_TOOLS); do command -v $$tool >/dev/null || { missing="$(STUBS_INSTALL_PKGS)"; break; }; done; \
	for pair in $(TEST_TOOLS); do command -v $${pair%%=*} >/dev/null || missing="$$missing $${pair#*=}"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing"; apt-get update -qq && \
	  apt-get install -y -qq -o DPkg::Lock::Timeout=600 $$missing >/dev/null; fi

test: $(DEV_VENV)/.installed $(CHECKOV_VENV)/.installed services tools
	$(DEV_VENV)/bin/pytest -q $(PYTEST_ARGS)

proto: $(DEV_VENV)/.installed
	$(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	  --include_source_info --descriptor_set_out=$(PROTO_OUT)/tensortrigger/v1/descriptor_set.binpb $(PROTO_SRC)

# Fails when the committed generated code differs from what `make proto` produces.
proto-check: proto
	git diff --exit-code -- $(PROTO_OUT)/tensortrigger/v1

lint: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/ruff check .
	$(DEV_VENV)/bin/ruff format --check .
	$(DEV_VENV)/bin/mypy

fmt: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/ruff check --fix .
	$(DEV_VENV)/bin/ruff format .

# Wire fuzzing at length (CI runs 2,000 cases of the same test): FUZZ_CASES cases against a real server, the JSON
# report (statuses by method, RSS, seed) in FUZZ_REPORT. FUZZ_SEED=<n> replays a run.
FUZZ_CASES ?= 100000
FUZZ_REPORT ?= fuzz-report.json
fuzz: $(DEV_VENV)/.installed
	TT_FUZZ_CASES=$(FUZZ_CASES) TT_FUZZ_REPORT=$(FUZZ_REPORT) TT_FUZZ_SEED=$(FUZZ_SEED) \
	  $(DEV_VENV)/bin/pytest -q -s -o timeout=0 tests/fuzz

# Four benchmarks into bench/results: the Predict hot path (embedded backends; waits up to 2 min for a quiet
# machine first; BENCH_ARGS=--quick for a smoke run into /tmp/tt-bench-quick), online training (train.json) and a
# 1M-row batch job through PostgreSQL + RabbitMQ + tt-worker (jobs.json), and REST inference next to gRPC Predict
# on one server at 128 in flight (rest.json).
BENCH_ARGS ?= --wait-quiet 120
bench: $(DEV_VENV)/.installed services
	command -v h2load >/dev/null || (apt-get update && apt-get install -y nghttp2-client)
	$(PY) -m bench $(BENCH_ARGS)
	$(PY) -m bench.jobs > bench/results/jobs.json
	$(PY) -m bench.rest

clean:
	rm -rf $(VENV) $(DEV_VENV) $(CHECKOV_VENV) $(UV_VENV) var build .pytest_cache .mypy_cache .ruff_cache

# Client stubs for other languages from the same protos, into $(STUBS_OUT)/<lang>. grpc_tools' bundled protoc has
# only the Python generators, so C++, Java, C# and Ruby use Debian's protoc and gRPC plugins (install command
# below): messages and service stubs for each, except C#, which gets messages only because Debian packages no
# grpc_csharp_plugin (NuGet's Grpc.Tools has one). The well-known protos (Timestamp) come from grpc_tools.
STUBS_OUT ?= build/stubs
STUBS_LANGS := cpp java csharp ruby python
STUBS_TOOLS := protoc grpc_cpp_plugin grpc_java_plugin grpc_ruby_plugin
STUBS_INSTALL_PKGS := protobuf-compiler protobuf-compiler-grpc protobuf-compiler-grpc-java-plugin
STUBS_INSTALL := apt-get install -y $(STUBS_INSTALL_PKGS)
.PHONY: stubs
stubs: $(DEV_VENV)/.installed
	@for tool in $(STUBS_TOOLS); do command -v $$tool >/dev/null || \
	  { echo "make stubs: $$tool not found. Install it with: $(STUBS_INSTALL)" >&2; exit 1; }; done
	rm -rf $(addprefix $(STUBS_OUT)/,$(STUBS_LANGS))
	mkdir -p $(addprefix $(STUBS_OUT)/,$(STUBS_LANGS))
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(STUBS_OUT)/python --pyi_out=$(STUBS_OUT)/python \
	  --grpc_python_out=$(STUBS_OUT)/python $(PROTO_SRC)
	protoc -Iprotos -I$$($(PY) -c 'import grpc_tools, os; print(os.path.dirname(grpc_tools.__file__))')/_proto \
	  --cpp_out=$(STUBS_OUT)/cpp --grpc-cpp_out=$(STUBS_OUT)/cpp \
	  --plugin=protoc-gen-grpc-cpp=$$(command -v grpc_cpp_plugin) \
	  --java_out=$(STUBS_OUT)/java --grpc-java_out=$(STUBS_OUT)/java \
	  --plugin=protoc-gen-grpc-java=$$(command -v grpc_java_plugin) \
	  --ruby_out=$(STUBS_OUT)/ruby --grpc-ruby_out=$(STUBS_OUT)/ruby \
	  --plugin=protoc-gen-grpc-ruby=$$(command -v grpc_ruby_plugin) \
	  --csharp_out=$(STUBS_OUT)/csharp $(PROTO_SRC)
