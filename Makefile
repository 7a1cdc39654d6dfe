# digitloop: `make help` lists every target.
SHELL := bash
.SHELLFLAGS := -o pipefail -ec
.DEFAULT_GOAL := help

##@ Settings (override on the command line: make train EPOCHS=2)

# Python used to create the virtual environment (3.11).
PYTHON ?= python3.11
# The project's virtual environment.
VENV ?= .venv
# torch is pinned; on Linux the CPU build comes from PyTorch's CPU wheel index.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Arguments passed to pytest by `make test` (e.g. PYTEST_ARGS="-k preprocess").
PYTEST_ARGS ?=
# Epochs for `make train` (empty: the CLI's default).
EPOCHS ?=

BIN := $(VENV)/bin
UNAME_S := $(shell uname -s)
ifeq ($(UNAME_S),Linux)
TORCH_SPEC := torch==$(TORCH_VERSION)+cpu --extra-index-url $(TORCH_INDEX)
else
TORCH_SPEC := torch==$(TORCH_VERSION)
endif

##@ General

.PHONY: help
help: ## List every target with a one-line description.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target> [VAR=value]\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

$(BIN)/digitloop: pyproject.toml bench/pyproject.toml requirements/serving.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	@# torch alone first, without its dependencies: the CPU index serves torch, PyPI the rest.
	$(BIN)/pip install --no-deps $(TORCH_SPEC)
	@# The serving closure at the serving image's exact pins: the venv the tests run in is what
	@# the image installs (requirements/serving.txt, from `make lock-serving`).
	@# bench/ (benchmarks, simulator) is its own distribution: it never ships in the wheel or
	@# the images, and adds `digitloop bench` and `digitloop simulate` here.
	$(BIN)/pip install -c requirements/serving.txt -e ".[all,dev]" -e ./bench
	@touch $@

.PHONY: install
install: $(BIN)/digitloop ## Create .venv/ with CPU torch and the project with all extras.

.PHONY: test
test: install ## Run the whole test suite.
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: install ## Check style and common mistakes with ruff.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.PHONY: format
format: install ## Format the code with ruff.
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: docs
docs: install ## Write the README's configuration table from the settings classes.
	$(BIN)/python scripts/settings-docs.py

##@ Model and serving

.PHONY: train
train: install ## Train a model, log it to MLflow and register a new version.
	$(BIN)/digitloop train $(if $(EPOCHS),--epochs $(EPOCHS))

.PHONY: serve
serve: install ## Serve the champion on http://127.0.0.1:3000 (BentoML; DIGITLOOP_WORKERS workers).
	$(BIN)/digitloop serve

.PHONY: bench
bench: install ## Benchmark serving: BentoML vs FastAPI vs KServe and a bare-ASGI floor, side by side (a few minutes).
	$(BIN)/digitloop bench

.PHONY: bench-loop
bench-loop: install ## Benchmark one loop run over 1 and 30 days of stored history, local and S3 (about 20 min).
	$(BIN)/digitloop bench loop --json

.PHONY: bento
bento: install ## Build the serving Bento (bentoml build); containerize it where Docker runs.
	$(BIN)/python scripts/lock-serving.py --check
	$(BIN)/bentoml build

.PHONY: lock-serving
lock-serving: install ## Pin the serving image's packages to the venv's (requirements/serving.txt, serving-torch.sh).
	$(BIN)/python scripts/lock-serving.py

##@ Loop

.PHONY: loop-once
loop-once: install ## Run the loop's DAG once against the embedded stack.
	$(BIN)/digitloop loop run --once

.PHONY: dev
dev: install ## Run everything on this machine: MLflow, serving, sketchpad, loop (Ctrl-C stops).
	$(BIN)/digitloop dev

.PHONY: simulate
simulate: install ## Simulated users, drift and the loop end to end; summary and plot in .digitloop/simulate/out.
	$(BIN)/digitloop simulate

.PHONY: workflow
workflow: install ## Render the Argo workflows from their Hera definitions into the chart's templates.
	$(BIN)/digitloop workflow render --out charts/digitloop/templates

##@ Housekeeping

.PHONY: clean
clean: ## Remove caches and build output (keeps .venv/ and the data directory).
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
include mk/cluster.mk
