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
	expecttest numpy rich matplotlib tqdm tabulate timm safetensors scikit-learn \
	onnx onnxscript onnxruntime
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

.PHONY: help env build test test-fast bench gpu-check gpu-check-more gpu-check-dry cmake-check install-check sass-check clean FORCE

help:
	@echo "make bench      the main job: benchmark the fused SE block (CPU table by default)"
	@echo "make test       create the environment if needed, build, run the test suite"
	@echo "make gpu-check  on a GPU machine, <= 480 s: build, smoke tests, stress, timed probe; to \$$OUT"
	@echo "make gpu-check-more  the second GPU call: rest of the suite, compute-sanitizer, > 2^31"
	@echo "make gpu-check-dry   the plans of both, checked without a GPU (node counts, budgets)"
	@echo "make cmake-check  build the same sources with CMake and run ctest"
	@echo "make install-check  sdist -> wheel -> install outside the checkout -> se-kernels bench"
	@echo "make build      (part of test and bench) one summary line; V=1 adds the ptxas table"
	@echo "make sass-check   global-load widths of the hot CUDA kernels in the built sm_90a SASS"
	@echo "variables: PYTHON=python3 (use that interpreter, no venv), TORCH_SPEC, OUT"

$(VENV)/.se_kernels-env:
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install $(EXTRAS_SPEC)
	touch $@

env: $(ENV_STAMP)

# Builds se_kernels._C in place (CPU kernels always; CUDA kernels whenever nvcc and a CUDA
# build of torch are present, GPU or not) and prints one summary line: toolkit, archs, entry
# points, spills, warnings, time. The full log and the ptxas table go to $(BUILD_LOG); V=1
# prints the table too. Incremental: nothing runs when no source, build setting or the
# environment changed since the last build; otherwise ninja (objects kept in build/temp)
# recompiles only the sources that changed.
BUILD_DIR := $(patsubst %/,%,$(dir $(BUILD_LOG)))
BUILD_STAMP := $(BUILD_DIR)/.built
BUILD_SOURCES := $(shell find csrc -type f -not -path 'csrc/tests/*' 2>/dev/null) \
	setup.py pyproject.toml tools/find_cuda.py
# The settings a build depends on: $(BUILD_DIR)/settings is rewritten (and the build rerun)
# only when they change.
BUILD_SETTINGS := python=$(PY) skip_cuda=$(SE_KERNELS_SKIP_CUDA) skip_ext=$(SE_KERNELS_SKIP_EXT) \
	archs=$(TORCH_CUDA_ARCH_LIST) cuda_home=$(CUDA_HOME)
ifeq ($(filter clean help,$(or $(MAKECMDGOALS),help)),)
$(shell mkdir -p $(BUILD_DIR) && echo '$(BUILD_SETTINGS)' > $(BUILD_DIR)/settings.new \
	&& { cmp -s $(BUILD_DIR)/settings.new $(BUILD_DIR)/settings \
	     || mv $(BUILD_DIR)/settings.new $(BUILD_DIR)/settings; }; rm -f $(BUILD_DIR)/settings.new)
endif
# a missing library forces a build
ifneq ($(SE_KERNELS_SKIP_EXT),1)
ifeq ($(wildcard se_kernels/_C*.so),)
BUILD_FORCE := FORCE
endif
endif

$(BUILD_STAMP): $(ENV_STAMP) $(BUILD_SOURCES) $(BUILD_DIR)/settings $(BUILD_FORCE)
	@t0=$$(date +%s); rm -f $@; \
	SE_KERNELS_PTXAS_VERBOSE=1 $(PY) -m pip install -v --no-build-isolation --no-deps -e . \
		> $(BUILD_LOG) 2>&1 || { tail -n 60 $(BUILD_LOG); \
		echo "make build: failed; the full log is $(BUILD_LOG)"; exit 1; }; \
	$(PY) tools/check_build_log.py $(BUILD_LOG) --quiet --seconds $$(( $$(date +%s) - t0 )) \
		> $(BUILD_DIR)/summary.txt || { cat $(BUILD_DIR)/summary.txt; \
		echo "make build: the checks failed; the table is in $(BUILD_LOG)"; exit 1; }
	@touch $@ $(BUILD_DIR)/.just-built

build: $(BUILD_STAMP)
	@if [ -e $(BUILD_DIR)/.just-built ]; then rm -f $(BUILD_DIR)/.just-built; \
		cat $(BUILD_DIR)/summary.txt; \
	else echo "$$(cat $(BUILD_DIR)/summary.txt) [up to date: nothing rebuilt]"; fi
ifdef V
	@tail -n +2 $(BUILD_DIR)/build-report.txt
endif

FORCE:

test: build
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

bench: build
	$(PY) -m se_kernels bench --output $(OUT)/bench

# On the GPU machines: their preinstalled python3 and torch unless PYTHON says otherwise
# (no .venv is made there: nothing can be downloaded).
GPU_PY := $(if $(PYTHON),$(PYTHON),python3)
gpu-check:
	PYTHON=$(GPU_PY) tools/gpu_check.sh first

gpu-check-more:
	PYTHON=$(GPU_PY) tools/gpu_check.sh more

# CI: both plans' selections are non-empty and their limits add up to <= 480 s.
gpu-check-dry: $(ENV_STAMP)
	PYTHON=$(PY) tools/gpu_check.sh --dry-run first
	PYTHON=$(PY) tools/gpu_check.sh --dry-run more

# Static evidence without a GPU (tools/check_sass.py): counts the global loads of every hot
# kernel by width in the sm_90a SASS of the built extension, fails when a hot loop that must
# be 16-byte vectorised is not. Skips (exit 0, says why) on a CPU-only build, except under CI
# (CI=true), where the CUDA kernels are always built and nothing to check is a failure.
sass-check:
	rc=0; $(PY) tools/check_sass.py || rc=$$?; \
	[ $$rc -eq 0 ] || { [ $$rc -eq 2 ] && [ -z "$${CI:-}" ]; }

cmake-check: $(ENV_STAMP)
	tools/cmake_check.sh $(PY)

# The install as users do it (tools/install_check.sh): an sdist, a wheel built from it (CPU
# kernels only, for CI time), installed outside the checkout, `se-kernels bench` run there.
install-check: $(ENV_STAMP)
	@tools/install_check.sh $(PY)

clean:
	rm -rf build se_kernels/_C*.so *.egg-info
