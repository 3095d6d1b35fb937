#!/usr/bin/env bash
# Configures and builds the CMake project (the same sources as setup.py plus the C++ test
# program) and runs ctest. With a CUDA toolkit and a CUDA build of torch, the CUDA kernels
# are compiled too; the test program runs them only where a GPU is present.
# Usage: tools/cmake_check.sh [PYTHON]     (SE_KERNELS_SKIP_CUDA=1: no CUDA sources;
#                                           SE_KERNELS_SKIP_CTEST=1: build only)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
BUILD=${CMAKE_BUILD_DIR:-build/cmake}
prefix=$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
torch_cuda=$("$PY" -c 'import torch; print(torch.version.cuda or "")')
cuda_home=$("$PY" tools/find_cuda.py)
args=(-S . -B "$BUILD" -DCMAKE_PREFIX_PATH="$prefix" -DPython3_EXECUTABLE="$(command -v "$PY")")
if [[ -n "$torch_cuda" && -n "$cuda_home" ]]; then
  # torch's CMake config looks for the toolkit even for a CPU-only build of ours
  # and for the CUDA libraries it links, which may live in torch's nvidia wheels only
  helper='import sys; sys.path.insert(0, "tools"); import find_cuda as f'
  extra=$("$PY" -c "$helper; print(';'.join(f.wheel_cuda_includes()))")
  args+=(-DCMAKE_CUDA_COMPILER="$cuda_home/bin/nvcc" -DCUDA_TOOLKIT_ROOT_DIR="$cuda_home"
         -DCUDAToolkit_ROOT="$cuda_home" -DSE_KERNELS_EXTRA_INCLUDES="$extra")
  if ! ls "$cuda_home"/lib64/libnvrtc.so* >/dev/null 2>&1; then
    nvrtc=$("$PY" -c "$helper; print(f.wheel_cuda_library('libnvrtc') or '')")
    [[ -n "$nvrtc" ]] && args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
  fi
fi
if [[ "${SE_KERNELS_SKIP_CUDA:-0}" == 1 ]]; then
  args+=(-DSE_KERNELS_CUDA=OFF)
fi
# torch's CMake config probes for GPUs unless it is told the archs
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0a}
cmake "${args[@]}"
cmake --build "$BUILD" -j "${CMAKE_JOBS:-$(nproc)}"
if [[ "${SE_KERNELS_SKIP_CTEST:-0}" != 1 ]]; then
  ctest --test-dir "$BUILD" --output-on-failure
fi
