# Tensor Trigger developer commands. Everything installs from scratch into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/tensortrigger/v1/*.proto)
PROTO_OUT := clients/python

.PHONY: venv run test proto proto-check lint fmt bench services tools stubs clean

venv: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml tests/deploy/checkov-requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e 'clients/python[cli]' -e '.[dev,deploy]'
	# checkov pins an old boto3 that clashes with aiobotocore: it gets a venv of its own.
	test -x $(VENV)/checkov/bin/python || $(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet -r tests/deploy/checkov-requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tt-server

services:
	bash scripts/ensure-services.sh

# Debian tools some tests drive (make stubs needs protoc and the gRPC plugins); installed when missing.
tools:
	@for tool in $(STUBS_TOOLS); do command -v $$tool >/dev/null || { \
	  echo "installing $(STUBS_INSTALL_PKGS)"; apt-get update -qq && apt-get install -y -qq $(STUBS_INSTALL_PKGS) >/dev/null; break; }; done

test: $(STAMP) services tools
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

# Three benchmarks into bench/results: the Predict hot path (embedded backends; waits up to 2 min for a quiet
# machine first; BENCH_ARGS=--quick for a smoke run into /tmp/tt-bench-quick), online training (train.json) and a
# 1M-row batch job through PostgreSQL + RabbitMQ + tt-worker (jobs.json).
BENCH_ARGS ?= --wait-quiet 120
bench: $(STAMP) services
	command -v h2load >/dev/null || (apt-get update && apt-get install -y nghttp2-client)
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PIP) install --quiet -e '.[dev,bench]'
	$(PY) -m bench $(BENCH_ARGS)
	$(PY) -m bench.train > bench/results/train.json
	$(PY) -m bench.jobs > bench/results/jobs.json

clean:
	rm -rf $(VENV) var build .pytest_cache .mypy_cache .ruff_cache

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
stubs: $(STAMP)
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
