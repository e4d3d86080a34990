# Two commands do all set-up: `make test` and `make demo`. Both create .venv and install everything.
# GPU users: choose your torch build with TORCH_SPEC, e.g.
#   make demo TORCH_SPEC="torch==2.8.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lint format test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	# DeepSpeed's CPU collective op, built once here instead of inside the first training run.
	$(BIN)/python -m photogenic.train.distributed
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check src tests bench components pipelines
	$(BIN)/ruff format --check src tests bench components pipelines

format: setup
	$(BIN)/ruff check --fix src tests bench components pipelines
	$(BIN)/ruff format src tests bench components pipelines

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The main job on this machine, with the demo preset: data in ./photogenic-workspace.
demo: setup
	$(BIN)/photogenic run --preset demo $(DEMO_ARGS)

bench: setup
	$(BIN)/python bench/ingest.py --samples 20000 --repeats 2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache photogenic-workspace
