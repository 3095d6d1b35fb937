# se_kernels: the two commands of the README (`make bench`, `make test`) and their parts.
#
# By default everything runs in a virtual environment, .venv, made on first use with a CUDA
# build of torch (it runs on the CPU too). To use an interpreter you already have (e.g. the
# GPU machines' preinstalled torch), pass PYTHON=python3: nothing is installed into it but
# se_kernels itself, built with --no-build-isolation against that torch.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# test-only and benchmark extras (never needed to import se_kernels)
EXTRAS_SPEC ?= ninja setuptools wheel pytest pytest-benchmark pytest-timeout hypothesis \
	expecttest numpy rich matplotlib tqdm tabulate timm safetensors scikit-learn
BUILD_LOG ?= build/build.log
PYTEST_ARGS ?=
OUT ?= out

ifdef PYTHON
PY := $(PYTHON)
ENV_STAMP :=
else
PY := $(VENV)/bin/python
ENV_STAMP := $(VENV)/.se_kernels-env
endif

.PHONY: help env build test test-fast bench gpu-check cmake-check sass-check clean

help:
	@echo "make bench      the main job: benchmark the fused SE block (CPU table by default)"
	@echo "make test       create the environment if needed, build, run the test suite"
	@echo "make gpu-check  on a GPU machine: build, all tests, benchmarks; logs/JSON to \$$OUT"
	@echo "make cmake-check  build the same sources with CMake and run ctest"
	@echo "make sass-check   global-load widths of the hot CUDA kernels in the built sm_90a SASS"
	@echo "variables: PYTHON=python3 (use that interpreter, no venv), TORCH_SPEC, OUT"

$(VENV)/.se_kernels-env:
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install $(EXTRAS_SPEC)
	touch $@

env: $(ENV_STAMP)

# Builds se_kernels._C in place (CPU kernels always; CUDA kernels whenever nvcc and a CUDA
# build of torch are present, GPU or not). The full log goes to $(BUILD_LOG); the summary
# lines (toolkit, archs, ptxas reports of the hot kernels) are printed.
build: $(ENV_STAMP)
	@mkdir -p $(dir $(BUILD_LOG))
	SE_KERNELS_PTXAS_VERBOSE=1 $(PY) -m pip install -v --no-build-isolation --no-deps -e . \
		> $(BUILD_LOG) 2>&1 || { tail -n 60 $(BUILD_LOG); exit 1; }
	@grep -E "^\s*\[se_kernels build\]" $(BUILD_LOG) | sed 's/^\s*//' | sort -u || true
	$(PY) tools/check_build_log.py $(BUILD_LOG)

test: build
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

bench: build
	$(PY) -m se_kernels bench --output $(OUT)/bench

gpu-check:
	tools/gpu_check.sh

# Static evidence without a GPU (tools/check_sass.py): counts the global loads of every hot
# kernel by width in the sm_90a SASS of the built extension, fails when a hot loop that must
# be 16-byte vectorised is not. Skips (exit 0, says why) on a CPU-only build.
sass-check:
	rc=0; $(PY) tools/check_sass.py || rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 2 ]

cmake-check: $(ENV_STAMP)
	tools/cmake_check.sh $(PY)

clean:
	rm -rf build se_kernels/_C*.so *.egg-info
