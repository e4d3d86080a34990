# Two commands do all set-up: `make test` and `make demo`. Both create .venv and install everything.
# GPU users: choose your torch build with TORCH_SPEC, e.g.
#   make demo TORCH_SPEC="torch==2.8.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Two test processes: much of the suite waits on process start-up, servers and subprocesses, so two
# workers finish sooner even on 2 cores; a file's tests stay in one worker (they share fixtures).
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15

.PHONY: setup lint format test demo bench clean manifests images image-local base-image

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
	$(BIN)/ruff check src tests bench components pipelines images docs
	$(BIN)/ruff format --check src tests bench components pipelines images docs

format: setup
	$(BIN)/ruff check --fix src tests bench components pipelines images docs
	$(BIN)/ruff format src tests bench components pipelines images docs

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The main job on this machine, with the demo preset: data in ./photogenic-workspace.
demo: setup
	$(BIN)/photogenic run --preset demo $(DEMO_ARGS)

# Everything generated from the code and checked in (tests fail while any is stale).
JOB_ARGS = --preset gpu --nodes 2 --gpus-per-node 8 \
	--data s3://photogenic/runs/datasets/validated-0000000000000000/manifest.json \
	--base s3://photogenic/runs/runs/autoencoder-0000000000000000/model \
	--out s3://photogenic/runs/runs/pretrain-0000000000000000 storage.root=s3://photogenic/runs
manifests: setup
	$(BIN)/python -c "from photogenic.components.images import write_kustomize; write_kustomize('manifests/base/images/kustomization.yaml')"
	$(BIN)/photogenic pipeline compile
	$(BIN)/photogenic pipeline compile --kubernetes-manifest --out manifests/pipeline/quality-tuning.yaml
	for b in pytorchjob trainjob; do \
	  { echo "# photogenic job render --backend $$b $(JOB_ARGS)"; \
	    $(BIN)/photogenic job render --backend $$b $(JOB_ARGS); } > manifests/jobs/pretrain-$$b.yaml; done

# Containers (docs/stages.md, "Run in containers"): Docker, podman or buildah, whichever works here.
# BASE_IMAGE: the CPU image's base; empty, the Dockerfile's (from a registry). Without registry access,
# `make base-image` makes $(LOCAL_BASE) from Debian's packages (mmdebstrap).
BASE_IMAGE ?=
LOCAL_BASE := localhost/photogenic-python:3.11-bookworm
IMAGE_BASE_ARG = $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))

# Build both images, write their tags to components/images.json, and regenerate what names them.
# IMAGE_ARGS, e.g. "--registry registry.example.com/ml --push".
images: setup
	$(BIN)/python images/build.py $(IMAGE_BASE_ARG) $(IMAGE_ARGS)
	$(MAKE) manifests

# The CPU image as localhost/photogenic:local, for `photogenic run --containers`; changes no file here.
image-local: setup
	$(BIN)/python images/build.py --local $(IMAGE_BASE_ARG) $(IMAGE_ARGS)

base-image:
	images/base-image.sh $(LOCAL_BASE)

bench: setup
	$(BIN)/python bench/ingest.py --samples 20000 --repeats 2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache photogenic-workspace
