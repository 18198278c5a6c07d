# madrec — common tasks. Two commands set up a fresh machine and test it:
#   make setup && make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, as TORCH_SPEC from pip's configured index and find-links (nothing
# detects a GPU): TORCH_INDEX=https://download.pytorch.org/whl/cpu picks the CPU build.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
ARGS ?=
GPUS ?= 1

.PHONY: help setup test test-shuffled test-fast lint lint-infra train train-gpu run submit compile-pipeline \
        build-images build-image-cpu build-image-cuda push-images test-images lock-images bench-sids bench-quality clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup:  ## create .venv and install madrec with its test dependencies
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[test]'
	@$(BIN)/python -c "import torch, madrec; print('madrec', madrec.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"

test:  ## run the whole test suite
	$(BIN)/pytest -q

test-shuffled:  ## the whole suite in a random order (the seed is printed; RANDOM_ORDER_SEED=N repeats one)
	@seed=$${RANDOM_ORDER_SEED:-$$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}; \
	echo "random order seed $$seed (make test-shuffled RANDOM_ORDER_SEED=$$seed repeats this order)"; \
	$(BIN)/pytest -q -p random_order --random-order-seed=$$seed

test-fast:  ## the suite without tests marked slow
	$(BIN)/pytest -q -m "not slow"

lint:  ## ruff lint and format check (settings: pyproject.toml [tool.ruff]; `ruff format .` fixes the format)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Training (configs/experiment/*.yaml); ARGS are key=value overrides (`madrec train --help`):
#   make train ARGS="experiment=tiny data_dir=DIR sid_data_path=OUT/sids.pt output_dir=RUN"
#   make train-gpu GPUS=8 ARGS="experiment=discrete_diffusion_train ... ckpt_path=RUN/checkpoints/last.ckpt"
train:  ## train in one process (CPU or one GPU); ARGS="experiment=tiny data_dir=… sid_data_path=…"
	$(BIN)/madrec train $(ARGS)

train-gpu:  ## DDP over $(GPUS) local GPUs via torchrun; ARGS as for train (ckpt_path=… resumes)
	$(BIN)/torchrun --standalone --nproc_per_node=$(GPUS) -m madrec.cli train trainer.accelerator=gpu $(ARGS)

# Container images (docker/): `madrec` (CPU torch) for data/SID steps and the pipeline's
# launchers, `madrec-cuda` (CUDA torch) for train/evaluate; names as in madrec.ops.images.
# DOCKER: the container CLI, detected: `docker` when a Docker engine answers, else `podman`
# (machines without a Docker engine; docker/podman/setup.sh installs it). BUILDER: the build
# command (`docker build`, or `podman build --isolation chroot`). PYTHON_IMAGE: the base image
# (default: the Dockerfile's python:3.11.13-slim-bookworm; with podman, the local
# localhost/python:3.11-bookworm from docker/podman/setup.sh when it exists).
# CPU_TORCH_WHEEL: a torch CPU wheel file handed to the CPU build instead of CPU_TORCH_INDEX
# (default: torch-$(TORCH_VERSION)+cpu in pip's find-links folders, when there is one).
REGISTRY ?= $(or $(MADREC_REGISTRY),ghcr.io/madrec-project)
TAG ?= $(or $(MADREC_TAG),0.1.0)
# A machine with no Docker engine gets podman: installed already, or installable here (root with
# apt-get; `make test-images` installs it through docker/podman/setup.sh); else docker.
DOCKER ?= $(shell if docker info >/dev/null 2>&1; then echo docker; \
	elif command -v podman >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; }; then echo podman; \
	else echo docker; fi)
DOCKER := $(DOCKER)
BUILDER ?= $(if $(filter podman,$(notdir $(DOCKER))),$(DOCKER) build --isolation chroot,$(DOCKER) build)
LOCAL_PYTHON_IMAGE := localhost/python:3.11-bookworm
PYTHON_IMAGE ?= $(if $(filter podman,$(notdir $(DOCKER))),$(shell podman image exists $(LOCAL_PYTHON_IMAGE) 2>/dev/null && echo $(LOCAL_PYTHON_IMAGE)))
CPU_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
CUDA_TORCH_INDEX ?= https://pypi.org/simple
TORCH_VERSION := $(shell sed -n 's/^torch==//p' docker/constraints.txt)
PIP_WHEEL_DIRS = $(PIP_FIND_LINKS) $(shell sed -n 's/^find-links *= *//p' /etc/pip.conf /etc/xdg/pip/pip.conf $(HOME)/.config/pip/pip.conf 2>/dev/null)
CPU_TORCH_WHEEL ?= $(firstword $(wildcard $(addsuffix /torch-$(TORCH_VERSION)+cpu-cp311-*.whl,$(PIP_WHEEL_DIRS))))
IMAGE_ARGS = -f docker/Dockerfile --build-arg MADREC_REGISTRY=$(REGISTRY) --build-arg MADREC_TAG=$(TAG) \
	$(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE))
CPU_TORCH_ARGS = --build-arg TORCH_INDEX_URL=$(CPU_TORCH_INDEX) $(if $(CPU_TORCH_WHEEL),--build-arg TORCH_WHEEL=$(notdir $(CPU_TORCH_WHEEL)))
K8S_VERSION ?= 1.32

build-images: build-image-cpu build-image-cuda  ## build $(REGISTRY)/madrec:$(TAG) and $(REGISTRY)/madrec-cuda:$(TAG)

build-image-cpu:  ## build $(REGISTRY)/madrec:$(TAG) (CPU torch: CPU_TORCH_WHEEL when found, else CPU_TORCH_INDEX)
	$(if $(CPU_TORCH_WHEEL),[ docker/wheels/$(notdir $(CPU_TORCH_WHEEL)) -ef $(CPU_TORCH_WHEEL) ] || ln -f $(CPU_TORCH_WHEEL) docker/wheels/ 2>/dev/null || cp -f $(CPU_TORCH_WHEEL) docker/wheels/)
	$(BUILDER) $(IMAGE_ARGS) $(CPU_TORCH_ARGS) -t $(REGISTRY)/madrec:$(TAG) .

build-image-cuda:  ## build $(REGISTRY)/madrec-cuda:$(TAG) (CUDA torch from CUDA_TORCH_INDEX)
	$(BUILDER) $(IMAGE_ARGS) --build-arg TORCH_INDEX_URL=$(CUDA_TORCH_INDEX) -t $(REGISTRY)/madrec-cuda:$(TAG) .

push-images:  ## push both images (after build-images and `docker login`)
	$(DOCKER) push $(REGISTRY)/madrec:$(TAG)
	$(DOCKER) push $(REGISTRY)/madrec-cuda:$(TAG)

# Builds the CPU image and runs every step in containers as the image's user: madrec --help,
# prepare-data, build-sids (no network), train, evaluate, recommend, one compose service, and
# the pipeline under kfp's DockerRunner (tests/test_images_build.py). Without a Docker engine
# it installs podman and makes the base image first (docker/podman/setup.sh, as root).
test-images:  ## build the CPU image and run every step and the pipeline in containers
	$(if $(filter podman,$(notdir $(DOCKER))),nice -n 19 docker/podman/setup.sh)
	nice -n 19 $(BIN)/pip install --quiet $(IMAGE_TEST_PACKAGES)
	nice -n 19 $(MAKE) --no-print-directory build-image-cpu TAG=$(TAG) DOCKER=$(DOCKER)
	MADREC_IMAGE_TESTS=1 MADREC_TEST_IMAGE=$(REGISTRY)/madrec:$(TAG) MADREC_TEST_DOCKER=$(DOCKER) \
		nice -n 19 $(BIN)/pytest -v -rP -m slow -p no:cacheprovider tests/test_images_build.py
IMAGE_TEST_PACKAGES ?= docker==7.1.0 podman-compose==1.5.0

lock-images:  ## re-pin docker/constraints.txt from .venv after changing dependencies
	$(BIN)/python docker/freeze_constraints.py

lint-infra:  ## hadolint, Compose spec, kustomize overlays vs Kubernetes and Trainer schemas
	$(BIN)/hadolint $(wildcard docker/Dockerfile*)
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml
	$(BIN)/python manifests/validate.py --kubernetes-version $(K8S_VERSION)

clean:  ## remove build and run outputs (keeps .venv)
	rm -rf runs outputs .pytest_cache build dist

# The Kubeflow pipeline (pipelines/, components/). `make run` runs it locally on CPU with the
# tiny experiment: MovieLens-1M from GroupLens by default, or DATA=folder or file (ml-1m.zip,
# a sequences .txt, an interactions .csv / .parquet); SEQUENCES= / ITEMS= pick files when a
# folder has several, DATASET= names the kind when the file name does not (ml-1m, sequences,
# interactions); ARGS are training overrides and `madrec run-local` options.
DATA ?=
SEQUENCES ?=
ITEMS ?=
DATASET ?=

run:  ## run the whole pipeline locally (KFP SubprocessRunner, CPU, experiment tiny); DATA=, SEQUENCES=, ITEMS=, DATASET=
	$(BIN)/madrec run-local $(if $(DATA),--data "$(DATA)") $(if $(SEQUENCES),--sequences "$(SEQUENCES)") \
		$(if $(ITEMS),--items "$(ITEMS)") $(if $(DATASET),--dataset "$(DATASET)") $(ARGS)

submit:  ## upload pipelines/madrec_pipeline.yaml and start a run on $$KFP_HOST (token: $$KFP_TOKEN); ARGS="--param k=v"
	$(BIN)/madrec submit $(ARGS)

compile-pipeline:  ## recompile pipelines/madrec_pipeline.yaml (images from REGISTRY / TAG)
	MADREC_REGISTRY=$(REGISTRY) MADREC_TAG=$(TAG) $(BIN)/python -m pipelines.madrec_pipeline --out pipelines/madrec_pipeline.yaml

SID_DATA ?= data/beauty
bench-sids:  ## SID quality vs random SIDs + RK-Means speed/memory -> bench/sids/results.json; SID_DATA=prepared Beauty
	$(BIN)/python bench/sids/bench_sids.py all --data $(SID_DATA) --embeddings $(SID_DATA)_sids/embeddings.pt

# Equal-budget quality benchmark (bench/quality): masked diffusion vs tiger vs sasrec.
SIDS ?=
BUDGET ?= 30m
JOBS ?= 1
EXPERIMENTS ?= small,tiger_cpu,sasrec_cpu
bench-quality:  ## train EXPERIMENTS for BUDGET each on DATA (prepared) + SIDS -> bench/quality/results.md, curves.html
	$(BIN)/python bench/quality/bench_quality.py --data "$(DATA)" --sids "$(SIDS)" --budget $(BUDGET) \
		--experiments $(EXPERIMENTS) --jobs $(JOBS) $(ARGS)
